"""``digitlab sweep``: search spaces, the Optuna study, pruning, shared storage, outputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from digitlab.cli import main
from digitlab.errors import ConfigError, RunExistsError
from digitlab.sweep.space import list_spaces, load_space

optuna = pytest.importorskip("optuna")


def write_space(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


QUICK_SPACE = """
    description: quick test space
    model: mlp-basic-128
    config:
      lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
      batch_size: 64
      max_steps: 10
      schedule: constant
    reports: 5
    pruner: none
"""


# --------------------------------------------------------------------------- spaces

def test_shipped_spaces_load_and_validate() -> None:
    assert {"mlp-width", "cnn-simple-tune"} <= set(list_spaces())
    width = load_space("mlp-width")
    width.check()
    assert width.model_names() == ["mlp-basic-128", "mlp-basic-256", "mlp-basic-512"]
    assert {p.name for p in width.params} == {"model", "lr"}
    cnn = load_space("cnn-simple-tune")
    cnn.check({"max_steps": 30})
    names = {p.name: p for p in cnn.params}
    assert set(names) == {"model_kwargs.dropout", "model_kwargs.width", "lr", "batch_size"}
    assert names["lr"].log and names["lr"].type == "float"
    cfg = cnn.config_for({"model_kwargs.dropout": 0.3, "model_kwargs.width": 16, "lr": 0.002, "batch_size": 64},
                         {"max_steps": 30})
    assert (cfg.model, cfg.model_kwargs, cfg.lr, cfg.batch_size, cfg.max_steps) == (
        "cnn-simple", {"dropout": 0.3, "width": 16}, 0.002, 64, 30)


@pytest.mark.parametrize(("body", "fragment"), [
    ("model: mlp-basic-128\nconfig: {lr: {type: float, low: 0.1, high: 0.01}}", "config.lr: low must be < high"),
    ("model: mlp-basic-128\nconfig: {lr: {type: float, low: 0, high: 0.1, log: true}}", "config.lr: a log scale"),
    ("model: mlp-basic-128\nconfig: {lerning_rate: {type: float, low: 0.1, high: 1}}",
     "config.lerning_rate: not a TrainConfig field"),
    ("model: mlp-basic-128\nconfig: {lr: {type: uniform, low: 0.1, high: 1}}", "config.lr: type must be one of"),
    ("model: mlp-basic-128\nconfig: {batch_size: {type: categorical, choices: []}}", "config.batch_size: categorical"),
    ("model: mlp-basic-128\nconfig: {epochs: 1}", "nothing to search"),
    ("config: {lr: {type: float, low: 0.001, high: 0.01}}", "model: required"),
    ("model: mlp-basic-128\nconfig: {lr: {type: float, low: 0.001, high: 0.01}}\nprunner: none",
     "unknown key 'prunner'"),
    ("model: mlp-basic-128\nconfig: {lr: {type: float, low: 0.001, high: 0.01}}\npruner: {type: median}",
     "pruner.type"),
])
def test_bad_space_is_a_config_error_naming_the_key(tmp_path: Path, body: str, fragment: str) -> None:
    path = write_space(tmp_path / "bad.yaml", body)
    with pytest.raises(ConfigError, match="^" + str(path).replace(".", r"\.") + ": ") as info:
        load_space(path)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("body", "overrides", "fragment"), [
    ("model: no-such-model\nconfig: {lr: {type: float, low: 0.001, high: 0.01}}", {}, "unknown model"),
    ("model: cnn-simple\nmodel_kwargs: {depth: {type: int, low: 8, high: 64}}", {},
     "model_kwargs.depth: model 'cnn-simple' takes no argument 'depth'"),
    ("model: mlp-basic-128\nconfig: {lr: {type: float, low: -1, high: 0.01}}", {}, "space parameter lr"),
    ("model: mlp-basic-128\nconfig: {lr: {type: float, low: 0.001, high: 0.01}}", {"val_fraction": 0},
     "val_fraction must be > 0"),
    ("model: mlp-basic-128\nconfig: {lr: {type: float, low: 0.001, high: 0.01}}\nfirst_trials: [{lr: 0.5}]", {},
     "first_trials[0].lr"),
    ("model: mlp-basic-128\nconfig: {lr: {type: float, low: 0.001, high: 0.01}}", {"lr": 0.1},
     "--set lr: lr is searched by the space"),
])
def test_space_check_rejects_what_cannot_train(tmp_path: Path, body: str, overrides: dict, fragment: str) -> None:
    space = load_space(write_space(tmp_path / "s.yaml", body))
    with pytest.raises(ConfigError) as info:
        space.check(overrides)
    assert fragment in str(info.value)


def test_cli_bad_space_file_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_space(tmp_path / "bad.yaml", "model: mlp-basic-128\nconfig: {lr: {type: float, low: 1, high: 0.5}}")
    code = main(["sweep", str(path), "--n-trials", "2", "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("digitlab: error: ") and "config.lr" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert main(["sweep", "no-such-space", "--n-trials", "2", "--quiet"]) == 2
    assert "shipped spaces: " in capsys.readouterr().err


# --------------------------------------------------------------------------- the done-when sweep

def test_done_when_sweep_writes_a_recipe_that_trains(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    # the Done-when command of issue 17, as a user types it (output folder: sweeps/mlp-width)
    assert main(["sweep", "mlp-width", "--n-trials", "4", "--set", "max_steps=30", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "4 of 4 trials finished" in text and "best trial" in text and "test accuracy" in text
    out = tmp_path / "sweeps" / "mlp-width"
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["status"] == "done" and summary["n_trials"] == 4
    assert summary["counts"]["complete"] + summary["counts"]["pruned"] == 4
    assert summary["ran_here"] == 4
    assert summary["storage"] == f"sqlite:///{out.resolve() / 'sweep.db'}"
    rows = (out / "trials.csv").read_text().splitlines()
    assert rows[0] == "number,state,value,seconds,steps,model,lr,note" and len(rows) == 5
    # the first trial is the space's enqueued notebook setting
    assert rows[1].split(",")[5:7] == ["mlp-basic-512", "0.001"]
    for name in ("history.png", "sweep.json", "best.yaml"):
        assert (out / name).stat().st_size > 0
    assert (out / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # importance: drawn, or the degenerate case explained
    assert (out / "importance.png").exists() or any("importance" in n for n in summary["notes"])

    best = summary["best"]
    values = [float(r.split(",")[2]) for r in rows[1:] if r.split(",")[1] == "COMPLETE"]
    assert best["val_accuracy"] == pytest.approx(max(values), abs=1e-6)
    # the test set: scored once, for the best trial, by retraining its recipe (deterministic: same val accuracy)
    test = summary["test"]
    assert test["trial"] == best["number"] and 0.1 < test["test_accuracy"] <= 1
    assert test["val_accuracy"] == pytest.approx(best["val_accuracy"], abs=1e-9)
    assert Path(test["run_dir"]).name == f"best-trial-{best['number']:04d}"

    from digitlab.train.config import TrainConfig

    cfg = TrainConfig.from_yaml(out / "best.yaml")
    assert (cfg.model, cfg.lr, cfg.max_steps) == (best["params"]["model"], best["params"]["lr"], 30)
    assert main(["train", "--config", str(out / "best.yaml"), "--set", "max_steps=5", "--out",
                 str(tmp_path / "runs" / "best"), "--quiet", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["steps"] == 5

    # resumable: the same command again runs nothing, a larger --n-trials runs only the missing trial
    assert main(["sweep", "mlp-width", "--n-trials", "4", "--set", "max_steps=30", "--quiet", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["ran_here"] == 0 and again["test"]["reused"] is True
    assert main(["sweep", "mlp-width", "--n-trials", "5", "--set", "max_steps=30", "--quiet", "--json"]) == 0
    more = json.loads(capsys.readouterr().out)
    assert more["ran_here"] == 1 and len(more["trials"]) == 5
    # other fixed settings cannot join the study
    assert main(["sweep", "mlp-width", "--n-trials", "6", "--set", "max_steps=31", "--quiet"]) == 2
    assert "max_steps" in capsys.readouterr().err


def test_unrelated_non_empty_out_folder_is_refused(tmp_path: Path, mnist_dir: Path) -> None:
    from digitlab.sweep.run import SweepOptions, run_sweep

    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    space = load_space(write_space(tmp_path / "quick.yaml", QUICK_SPACE))
    with pytest.raises(RunExistsError, match="holds no sweep"):
        run_sweep(space, out, SweepOptions(n_trials=1, data_dir=str(mnist_dir), progress=False))
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# --------------------------------------------------------------------------- pruning

def test_a_pruned_trial_stops_early(tmp_path: Path, mnist_dir: Path) -> None:
    from digitlab.sweep.run import SweepOptions, run_sweep

    # trial 0 learns (lr 1e-2); trial 1 (lr 1e-7) stays at chance and must lose its first rung
    space = load_space(write_space(tmp_path / "prune.yaml", """
        model: mlp-basic-128
        config:
          lr: {type: float, low: 1.0e-7, high: 1.0e-2, log: true}
          schedule: constant
          batch_size: 64
          max_steps: 30
        reports: 10
        pruner: {type: successive-halving, min_resource: 2, reduction_factor: 2, startup_trials: 1}
        first_trials: [{lr: 0.01}, {lr: 1.0e-7}]
    """))
    result = run_sweep(space, tmp_path / "out", SweepOptions(n_trials=2, data_dir=str(mnist_dir), progress=False))
    by_number = {r.number: r for r in result.trials}
    assert by_number[0].state == "COMPLETE" and by_number[0].steps == 30
    pruned = by_number[1]
    assert pruned.state == "PRUNED"
    assert pruned.steps is not None and pruned.steps < 30  # it stopped training, not just got labelled
    assert pruned.note == f"pruned at step {pruned.steps}"
    study = optuna.load_study(study_name="prune", storage=f"sqlite:///{tmp_path / 'out' / 'sweep.db'}")
    trial = study.trials[1]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert max(trial.intermediate_values) == pruned.steps < 30
    assert len(trial.intermediate_values) < 10
    assert (result.counts.complete, result.counts.pruned, result.counts.fail, result.counts.running) == (1, 1, 0, 0)
    assert result.best is not None and result.best.number == 0


# --------------------------------------------------------------------------- shared storage

def test_two_workers_share_one_sqlite_study(tmp_path: Path, mnist_dir: Path) -> None:
    space = write_space(tmp_path / "quick.yaml", QUICK_SPACE)
    out = tmp_path / "shared"
    n = 6
    cmd = [sys.executable, "-m", "digitlab", "sweep", str(space), "--n-trials", str(n), "--out", str(out),
           "--data-dir", str(mnist_dir), "--quiet", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (_, stderr) in zip(workers, outputs, strict=True):
        assert w.returncode == 0, stderr
    summaries = [json.loads(stdout) for stdout, _ in outputs]
    # every trial ran exactly once, by one of the two workers
    assert sum(s["ran_here"] for s in summaries) == n

    study = optuna.load_study(study_name="quick", storage=f"sqlite:///{out / 'sweep.db'}")
    trials = [t for t in study.trials if not t.user_attrs.get("surplus")]
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == n
    assert sorted(t.number for t in finished) == list(range(n))
    assert not [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    lrs = [t.params["lr"] for t in finished]
    assert len(set(lrs)) == n  # no two trials drew the same parameters
    assert all(t.user_attrs["steps"] == 10 for t in finished)
    # the test set was scored once, for the best trial, by one worker; the other reports that score
    best = max(finished, key=lambda t: t.value)
    tests = [s["test"] for s in summaries]
    assert all(t is not None and t["trial"] == best.number for t in tests)
    assert sorted(t["reused"] for t in tests) == [False, True]
    assert tests[0]["test_accuracy"] == tests[1]["test_accuracy"]


@pytest.mark.parametrize(("pruner", "kind", "min_resource"), [
    ("pruner: none", "NopPruner", None),
    ("pruner: {type: successive-halving}", "SuccessiveHalvingPruner", 300 // 9),
    ("pruner: {type: successive-halving, min_resource: 7, reduction_factor: 2}", "SuccessiveHalvingPruner", 7),
    ("pruner: {type: hyperband, reduction_factor: 3}", "HyperbandPruner", 300 // 9),
])
def test_pruner_from_space(tmp_path: Path, pruner: str, kind: str, min_resource: int | None) -> None:
    from digitlab.sweep.run import _make_pruner, expected_steps

    space = load_space(write_space(tmp_path / "p.yaml", QUICK_SPACE.replace("pruner: none", pruner)))
    base = space.config_for({}, {"max_steps": 300})
    steps = expected_steps(base, 60000)
    assert steps == 300
    from digitlab.train.config import TrainConfig

    assert expected_steps(TrainConfig(model="mlp-basic-128", batch_size=64, epochs=2), 60000) == 2 * 844
    made = _make_pruner(space, steps)
    assert type(made).__name__ == kind
    if min_resource is not None:
        assert made._min_resource == min_resource


def test_a_killed_workers_trial_is_failed_and_redone(tmp_path: Path, mnist_dir: Path) -> None:
    """Resumable after a crash: a RUNNING trial whose worker died (no heartbeat) is failed, then redone."""
    import time

    from digitlab.sweep.run import SweepOptions, run_sweep

    space_file = write_space(tmp_path / "crash.yaml", """
        model: mlp-basic-128
        config:
          max_steps: {type: categorical, choices: [5000, 10]}
          batch_size: 64
          schedule: constant
        reports: 5
        pruner: none
        first_trials: [{max_steps: 5000}, {max_steps: 10}]
    """)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "digitlab", "sweep", str(space_file), "--n-trials", "1", "--out", str(out),
           "--data-dir", str(mnist_dir), "--quiet"]
    worker = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    storage = f"sqlite:///{out.resolve() / 'sweep.db'}"
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # wait until the worker is inside its long trial 0
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            try:
                trials = optuna.load_study(study_name="crash", storage=storage).trials
            except Exception:  # noqa: BLE001 - database or study not created yet
                trials = []
            if any(t.state == optuna.trial.TrialState.RUNNING for t in trials):
                break
            time.sleep(0.5)
        time.sleep(1.0)  # its first heartbeat is recorded as the trial starts
    finally:
        worker.kill()  # SIGKILL: no chance to mark its trial failed
        worker.communicate()

    result = run_sweep(load_space(space_file), out, SweepOptions(n_trials=1, data_dir=str(mnist_dir),
                                                                 progress=False, stale_seconds=3))
    states = {r.number: r.state for r in result.trials}
    assert states == {0: "FAIL", 1: "COMPLETE"}
    assert result.ran_here == 1 and result.counts.finished == 1 and result.counts.fail == 1
    assert result.best is not None and result.best.number == 1 and result.best.params == {"max_steps": 10}
