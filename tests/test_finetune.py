"""Fine-tuning from a run: `digitlab train --init-from RUN [--freeze]`."""

from __future__ import annotations

import json

import pytest
import torch

from digitlab.checkpoint import build_meta, load_checkpoint, save_run_checkpoint
from digitlab.cli import main
from digitlab.errors import ConfigError
from digitlab.models import create_model
from digitlab.train.config import TrainConfig
from digitlab.train.finetune import head_module, init_from_run


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """A cnn-simple 'trained' on MNIST: random weights are enough to check what is copied."""
    torch.manual_seed(3)
    model = create_model("cnn-simple")
    run = tmp_path_factory.mktemp("ft-source")
    save_run_checkpoint(run, model, build_meta(model, config=TrainConfig(model="cnn-simple").to_dict()))
    return run


def _same(a: torch.nn.Module, b: torch.nn.Module, skip: str = "\0") -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if not k.startswith(skip))


def test_same_dataset_copies_every_weight(source_run):
    src, _ = load_checkpoint(source_run)
    torch.manual_seed(99)
    model = create_model("cnn-simple")
    report = init_from_run(model, TrainConfig(model="cnn-simple", init_from=str(source_run)))
    assert _same(model, src) and not report.new_head and report.frozen == 0
    assert report.copied == len(model.state_dict())


def test_another_dataset_gets_a_fresh_head(source_run):
    src, _ = load_checkpoint(source_run)
    torch.manual_seed(99)
    model = create_model("cnn-simple")
    head_name, head = head_module(model)
    fresh = head.weight.detach().clone()
    report = init_from_run(model, TrainConfig(model="cnn-simple", dataset="fashion-mnist", init_from=str(source_run)))
    assert report.new_head and report.source_dataset == "mnist"
    assert _same(model, src, skip=head_name + ".")  # the features come from the source
    assert torch.equal(head.weight, fresh) and not torch.equal(head.weight, src.state_dict()[f"{head_name}.weight"])


def test_another_architecture_is_refused(source_run):
    with pytest.raises(ConfigError, match="same architecture"):
        init_from_run(create_model("mlp-bn"), TrainConfig(model="mlp-bn", init_from=str(source_run)))


def test_freeze_needs_init_from():
    with pytest.raises(ConfigError, match="freeze needs init_from"):
        TrainConfig(freeze=True)


def test_cli_freeze_trains_only_the_head_and_records_the_source(source_run, tmp_path, mnist_dir):
    out = tmp_path / "ft"
    rc = main(["train", "--init-from", str(source_run), "--freeze", "--max-steps", "5", "--out", str(out),
               "--quiet", "--json", "--data-dir", str(mnist_dir)])
    assert rc == 0
    src, _ = load_checkpoint(source_run)
    tuned, meta = load_checkpoint(out)
    head_name, _ = head_module(tuned)
    assert _same(tuned, src, skip=head_name + ".")  # frozen feature layers unchanged (no BatchNorm in cnn-simple)
    assert not torch.equal(tuned.state_dict()[f"{head_name}.weight"], src.state_dict()[f"{head_name}.weight"])
    assert meta["model"] == "cnn-simple" and meta["config"]["init_from"] == str(source_run)
    assert meta["init_from"]["frozen"] > 0 and meta["init_from"]["new_head"] is False
    assert json.loads((out / "meta.json").read_text())["config"]["freeze"] is True


def test_cli_wrong_architecture_is_one_line_and_leaves_no_run(source_run, tmp_path, capsys):
    out = tmp_path / "bad"
    assert main(["train", "--init-from", str(source_run), "--model", "mlp-bn", "--max-steps", "2",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "same architecture" in err[0] and not out.exists()
