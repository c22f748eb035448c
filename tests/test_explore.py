"""``digitlab explore``: numbers checked against independent numpy/scipy/sklearn computations."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

from digitlab.analysis import explore as ex
from digitlab.cli import main as cli_main
from digitlab.data import pixel_stats as ps

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def stats(mnist) -> dict:
    return ex.explore_dataset(mnist)


@pytest.fixture(scope="module")
def train(mnist) -> tuple[np.ndarray, np.ndarray]:
    return mnist.train_images.numpy().reshape(60000, -1), mnist.train_labels.numpy()


def _sk_f_classif(x: np.ndarray, y: np.ndarray):
    from sklearn.feature_selection import f_classif

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about constant features (F = NaN)
        return f_classif(x, y)


def test_class_distribution(stats: dict) -> None:
    tr, te = stats["class_distribution"]["train"], stats["class_distribution"]["test"]
    assert tr["counts"] == TRAIN_COUNTS and te["counts"] == TEST_COUNTS
    assert tr["count"] == 60000 and te["count"] == 10000
    # the notebook's percentages: 9.87, 11.24, 9.93, 10.22, 9.74, 9.04, 9.86, 10.44, 9.75, 9.91
    assert [round(p, 2) for p in tr["percent"]] == [9.87, 11.24, 9.93, 10.22, 9.74, 9.04, 9.86, 10.44,
                                                   9.75, 9.91]
    assert te["percent"][1] == pytest.approx(11.35)
    assert tr["balance_cv"] == pytest.approx(np.std(TRAIN_COUNTS) / np.mean(TRAIN_COUNTS))


def test_constant_pixels_match_independent_numpy(stats: dict, train) -> None:
    x, _ = train
    var = np.var(x.astype(np.float32), axis=0)  # the notebook's computation
    constant = np.flatnonzero(var == 0)
    assert stats["pixels"]["constant_pixels"] == constant.size
    assert stats["pixels"]["active_pixels"] == 784 - constant.size
    assert stats["pixels"]["constant_pixel_indices"] == constant.tolist()
    # notebook 000 reports 67 constant / 717 active on the training set; we measure the same
    assert constant.size == 67
    assert stats["pixels"]["constant_pixel_values"] == [0]
    # the corners are constant, the centre is not
    assert 0 in constant and 27 in constant and 14 * 28 + 14 not in constant


def test_pixel_statistics(stats: dict, train, mnist) -> None:
    x, y = train
    xf = x.astype(np.float64)
    assert stats["pixels"]["mean"] == pytest.approx(xf.mean(), rel=1e-12)
    assert stats["pixels"]["std"] == pytest.approx(xf.std(), rel=1e-9)
    assert stats["pixels"]["zero_percent"] == pytest.approx(100 * (x == 0).mean(), rel=1e-12)
    np.testing.assert_allclose(np.array(stats["mean_image"]).ravel(), xf.mean(axis=0), atol=6e-5)
    np.testing.assert_allclose(np.array(stats["pixel_variance"]["map"]).ravel(), xf.var(axis=0), atol=6e-4)
    for c in (0, 1, 8):
        xc = xf[y == c]
        np.testing.assert_allclose(np.array(stats["class_mean_images"][c]).ravel(), xc.mean(axis=0), atol=6e-5)
        np.testing.assert_allclose(np.array(stats["class_std_images"][c]).ravel(), xc.std(axis=0), atol=1e-4)
        pc = stats["per_class"][c]
        assert pc["count"] == TRAIN_COUNTS[c]
        assert pc["mean_intensity"] == pytest.approx(xc.mean(), rel=1e-12)
        assert pc["std_intensity"] == pytest.approx(xc.std(), rel=1e-9)
        assert pc["zero_percent"] == pytest.approx(100 * (xc == 0).mean(), rel=1e-12)
    hist, edges = np.histogram(x, bins=50, range=(0, 255))  # what plt.hist(x.ravel(), bins=50) bins
    assert stats["intensity_histogram"]["counts"] == hist.tolist()
    np.testing.assert_allclose(stats["intensity_histogram"]["bin_edges"], edges)
    assert sum(stats["intensity_histogram"]["value_counts"]) == x.size
    assert stats["data"]["value_range"] == [0, 255] and stats["data"]["train_shape"] == [60000, 28, 28]


def test_anova_matches_scipy(stats: dict, train) -> None:
    x, y = train
    per_image = x.astype(np.float64).mean(axis=1)
    ref = sps.f_oneway(*[per_image[y == c] for c in range(10)])
    an = stats["anova_mean_intensity"]
    assert an["F"] == pytest.approx(ref.statistic, rel=1e-9)
    assert an["p_value"] == ref.pvalue
    assert (an["df_between"], an["df_within"]) == (9, 59990)
    assert an["significant_at_0.05"] is True
    assert an["log10_p_value"] < -300 and math.isfinite(an["log10_p_value"])  # p underflows; its log doesn't


def test_f_test_matches_sklearn_and_top_pixels(stats: dict, train) -> None:
    x, y = train
    f_ref, _ = _sk_f_classif(x.astype(np.float64), y)
    ours = np.array(stats["f_test"]["scores"], dtype=np.float64).ravel()  # None → NaN
    np.testing.assert_array_equal(np.isnan(ours), np.isnan(f_ref))
    np.testing.assert_allclose(ours, f_ref, rtol=1e-9, atol=5.1e-5, equal_nan=True)  # JSON: 4 decimals
    full, _ = ps.f_classif(x, y)  # unrounded, straight from the uint8 images
    np.testing.assert_allclose(full, f_ref, rtol=1e-9, equal_nan=True)
    ft = stats["f_test"]
    assert ft["pixels"] == 196 and ft["pixels_scored"] == 717
    # the notebook: SelectKBest(f_classif, k=196) fitted on the non-constant pixels
    keep = np.flatnonzero(~np.isnan(f_ref))
    top_ref = keep[np.argsort(-f_ref[keep], kind="stable")[:196]]
    assert set(ft["top_pixel_indices"]) == set(top_ref.tolist())
    fs = [t["f"] for t in ft["top_pixels"]]
    assert fs == sorted(fs, reverse=True) and ft["max_f"] == pytest.approx(fs[0])
    assert all(t["index"] == t["row"] * 28 + t["col"] for t in ft["top_pixels"])
    imp = np.array(ft["importance_map"], dtype=float)
    assert imp.min() == 0.0 and imp.max() == pytest.approx(1.0)


def test_f_classif_vectorised_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 500)
    x = rng.standard_normal((500, 30)) + y[:, None] * np.linspace(0, 1, 30)  # informative features
    x[:, 3] = 2.5  # a constant feature → NaN in both
    f, p = ps.f_classif(x, y)
    f_ref, p_ref = _sk_f_classif(x, y)
    np.testing.assert_allclose(f, f_ref, rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(p, p_ref, rtol=1e-6, atol=1e-300, equal_nan=True)
    # integer images with string-like labels
    xi = rng.integers(0, 256, (300, 49), dtype=np.uint8)
    labels = np.array(["a", "b", "c"])[rng.integers(0, 3, 300)]
    np.testing.assert_allclose(ps.f_classif(xi, labels)[0], _sk_f_classif(xi.astype(float), labels)[0],
                               rtol=1e-9)


def test_f_classif_refuses_undefined_cases() -> None:
    from digitlab.errors import DataError

    x = np.arange(12, dtype=np.uint8).reshape(6, 2)
    with pytest.raises(DataError, match="at least 2 classes"):
        ps.f_classif(x, np.zeros(6, dtype=int))  # one class: F undefined
    with pytest.raises(DataError, match="6 samples but 5 labels"):
        ps.f_classif(x, np.arange(5))
    with pytest.raises(DataError, match="labels must be in"):
        ps.class_sums(x, np.array([0, 1, 2, 0, 1, 3]), 3)


def test_mlp_selection_uses_the_one_f_test(train) -> None:
    import torch

    from digitlab.models.mlp import f_classif_scores

    x, y = train
    x, y = x[:3000], y[:3000]
    mine = f_classif_scores(torch.from_numpy(x.reshape(-1, 28, 28)), torch.from_numpy(y)).numpy()
    np.testing.assert_array_equal(mine, ps.f_classif(x, y)[0])  # bit-identical: the same code


def test_class_sums_float_and_int() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 100)
    for x in (rng.standard_normal((100, 4, 5)), rng.integers(0, 256, (100, 4, 5)).astype(np.uint8)):
        cs = ps.class_sums(x, y, 4, chunk=7)  # class 3 has no samples
        flat = x.reshape(100, -1).astype(np.float64)
        for c in range(3):
            np.testing.assert_allclose(cs.sums[c], flat[y == c].sum(0))
            np.testing.assert_allclose(cs.sumsq[c], (flat[y == c] ** 2).sum(0))
            np.testing.assert_array_equal(cs.zeros[c], (flat[y == c] == 0).sum(0))
        assert cs.counts.tolist() == np.bincount(y, minlength=4).tolist() and not cs.sums[3].any()
        np.testing.assert_allclose(cs.image_sums, flat.sum(1))


def test_log10_f_sf() -> None:
    for f in (0.5, 5.0, 50.0):
        assert ex.log10_f_sf(f, 9, 59990) == pytest.approx(sps.f.logsf(f, 9, 59990) / math.log(10), rel=1e-9)
        assert ex._log10_f_sf_tail(f, 9, 59990) == pytest.approx(ex.log10_f_sf(f, 9, 59990), rel=1e-8)
    # where scipy's logsf underflows to -inf; the value is cross-checked against mpmath's betainc
    assert ex.log10_f_sf(3497.9353711449057, 9, 59990) == pytest.approx(-5482.29757770143, rel=1e-10)


def test_stats_are_strict_json_and_summary_is_small(stats: dict) -> None:
    text = json.dumps(stats, allow_nan=False)
    assert json.loads(text)["pixels"]["constant_pixels"] == 67
    small = ex.summary(stats)
    assert "mean_image" not in small and "scores" not in small["f_test"] and "map" not in small["pixel_variance"]
    assert small["pixels"]["active_pixels"] == 717 and "mean_image" in stats  # the original is untouched
    assert len(json.dumps(small)) < len(text) / 10


def test_augmentation_examples_are_deterministic(mnist, stats: dict) -> None:
    idx, orig, aug = ex.augmentation_examples(mnist, seed=0)
    idx2, _, aug2 = ex.augmentation_examples(mnist, seed=0)
    assert idx == idx2 == stats["augmentation"]["indices"] and (aug == aug2).all()
    assert [int(mnist.train_labels[i]) for i in idx] == [1, 3, 8]
    assert aug.shape == (3, 7, 28, 28) and float(aug.min()) >= 0 and float(aug.max()) <= 1
    assert stats["augmentation"]["augmented_mean_std"][0][0][0] == pytest.approx(float(aug[0, 0].mean()))


def test_cli_writes_figures_and_json(tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "ex"
    assert cli_main(["explore", "--data-dir", str(mnist_dir), "--out", str(out), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --json: no progress output
    result = json.loads(captured.out)
    expected = sorted([f"{n}.png" for n in ex.FIGURE_NAMES] + ["explore.json", "explore.html"])
    assert sorted(result["files"]) == expected == sorted(p.name for p in out.iterdir())
    for name in ex.FIGURE_NAMES:
        data = (out / f"{name}.png").read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    full = json.loads((out / "explore.json").read_text())
    assert full["pixels"]["constant_pixels"] == result["pixels"]["constant_pixels"] == 67
    assert full["class_distribution"]["test"]["counts"] == TEST_COUNTS
    assert len(full["f_test"]["top_pixel_indices"]) == 196 and np.array(full["mean_image"]).shape == (28, 28)
    assert "mean_image" not in result and result["out"] == str(out)
    assert full["timings"]["total_s"] < 60


def test_cli_refuses_existing_dir_and_no_plots(tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli_main(["explore", "--data-dir", str(mnist_dir), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("digitlab: error: ") and str(out) in err and "already exists" in err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    numbers = tmp_path / "numbers"
    assert cli_main(["explore", "--data-dir", str(mnist_dir), "--out", str(numbers), "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "67 constant / 717 active" in text and "5923" in text
    assert [p.name for p in numbers.iterdir()] == ["explore.json"]

    # a failure before anything is written leaves no empty folder behind
    missing = tmp_path / "never"
    monkeypatch.setenv("DIGITLAB_OFFLINE", "1")  # never reach for the internet mirrors in a test
    assert cli_main(["explore", "--data-dir", str(tmp_path / "no-data"), "--out", str(missing)]) == 2
    assert not missing.exists()
    assert "files not found" in capsys.readouterr().err


def test_cli_pixels_option_and_quiet(tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "p50"
    assert cli_main(["explore", "--data-dir", str(mnist_dir), "--out", str(out), "--no-plots", "--quiet",
                     "--pixels", "50"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet: no progress bars
    assert "top 50 kept" in captured.out
    ft = json.loads((out / "explore.json").read_text())["f_test"]
    assert ft["pixels"] == 50 and len(ft["top_pixel_indices"]) == 50
    assert cli_main(["explore", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "z"), "--pixels", "0"]) == 2
    assert "--pixels must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # the old name is gone: --top-k means likely classes elsewhere
        cli_main(["explore", "--top-k", "5"])
    assert exc.value.code == 2


# --- suspicious labels (issue 18) ----------------------------------------------------------------------------

def test_label_issue_section_is_what_label_issues_prints(stats: dict, mnist_dir: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    li = stats["label_issues"]
    assert li["model"] == "default" and li["split"] == "test" and li["n"] == 10000 and li["skipped"] is None
    issues = li["issues"]
    assert len(issues) == ex.LABEL_ISSUES_TOP == 24 and li["accuracy"] > 0.99
    flagged = [x for x in issues if x["flagged"]]
    rest = [x for x in issues if not x["flagged"]]
    assert issues == flagged + rest and len(flagged) == min(24, li["n_flagged"]) >= 1
    for part in (flagged, rest):  # each part most suspicious first
        assert [x["score"] for x in part] == sorted(x["score"] for x in part)
    assert all(x["label"] != x["suggested"] for x in issues)  # the model rejects every listed label
    assert len({x["index"] for x in issues}) == 24
    assert cli_main(["label-issues", "--top", "24", "--data-dir", str(mnist_dir), "--json", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [x["index"] for x in printed["issues"]] == [x["index"] for x in flagged]
    assert printed["n_flagged"] == li["n_flagged"]
    assert "label-issues --dataset mnist --model default --top 24" in li["command"]


def test_label_issues_of_another_dataset_are_skipped_with_a_reason(mnist) -> None:
    from digitlab.data import Dataset

    other = Dataset("fashion-mnist", mnist.spec, mnist.source, mnist.train_images[:10], mnist.train_labels[:10],
                    mnist.test_images[:50], mnist.test_labels[:50], mnist.checksums)
    li = ex.explore_label_issues(other)
    assert li["issues"] == [] and "trained on mnist, not fashion-mnist" in li["skipped"]
    assert ex.label_issues_png(other, li) is None


def test_html_report_has_the_suspects_grid_and_table(mnist, stats: dict) -> None:
    import base64
    import io
    import re

    from PIL import Image

    figures = {"label_issues": ex.label_issues_png(mnist, stats["label_issues"])}
    png = figures["label_issues"]
    assert png is not None and Image.open(io.BytesIO(png)).size[0] > 300
    html = ex.explore_html(stats, figures)
    section = html[html.index('id="label-issues"'):]
    assert "Suspicious test labels" in section and "confident learning" in section
    first = stats["label_issues"]["issues"][0]
    assert f"<td>{first['index']}</td>" in section
    srcs = re.findall(r'src="data:image/png;base64,([^"]+)"', section)
    assert len(srcs) == 1 and base64.b64decode(srcs[0]) == png
    assert "digitlab label-issues --dataset mnist --model default --top 24 --plots DIR" in section


def test_cli_text_names_the_suspects_and_can_leave_them_out(tmp_path: Path, mnist_dir: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    assert cli_main(["explore", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "a"), "--no-plots",
                     "--quiet"]) == 0
    assert "suspicious labels (confident learning, default model)" in capsys.readouterr().out
    assert cli_main(["explore", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "b"), "--no-plots",
                     "--quiet", "--no-label-issues"]) == 0
    assert "suspicious labels" not in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "explore.json").read_text())["label_issues"] is None
    assert cli_main(["explore", "--data-dir", str(mnist_dir), "--out", str(tmp_path / "c"), "--no-plots",
                     "--model", "nowhere/run"]) == 2
    assert "nowhere/run" in capsys.readouterr().err and not (tmp_path / "c").exists()
