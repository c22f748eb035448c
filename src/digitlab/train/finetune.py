"""Fine-tuning: start a run from another run's weights (``digitlab train --init-from RUN [--freeze]``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from digitlab.errors import ConfigError
from digitlab.train.config import TrainConfig


@dataclass(frozen=True)
class InitReport:
    """What :func:`init_from_run` copied, recorded in the new run's metadata."""

    source: str
    source_dataset: str
    copied: int
    """Parameter and buffer tensors copied from the source."""
    new_head: bool
    """True when the classifier head starts afresh (another dataset or class count)."""
    frozen: int
    """Parameters kept fixed (``freeze``)."""

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "source_dataset": self.source_dataset, "copied": self.copied,
                "new_head": self.new_head, "frozen": self.frozen}


def head_module(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier head: the last ``nn.Linear`` of the model, with its qualified name."""
    heads = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not heads:
        raise ConfigError(f"{getattr(model, 'digitlab_name', 'this model')} has no linear classifier head "
                          "to fine-tune")
    return heads[-1]


def init_from_run(model: nn.Module, cfg: TrainConfig) -> InitReport:
    """Copy the weights of ``cfg.init_from`` into ``model`` (same architecture); a fresh head when the
    source's dataset or class count differs. Raises ConfigError when the architectures differ."""
    from digitlab.checkpoint import dataset_of, load_checkpoint

    assert cfg.init_from is not None
    source, meta = load_checkpoint(cfg.init_from)
    if meta.get("model") != cfg.model:
        raise ConfigError(f"--init-from {cfg.init_from}: it is a {meta.get('model')}, this run trains {cfg.model}; "
                          "fine-tuning needs the same architecture")
    head_name, _ = head_module(model)
    src_state, state = source.state_dict(), model.state_dict()
    src_dataset = dataset_of(meta)
    new_head = src_dataset != cfg.dataset
    copied = 0
    for key, value in state.items():
        in_head = key.startswith(head_name + ".")
        if key not in src_state:
            raise ConfigError(f"--init-from {cfg.init_from}: no weight {key!r} (different model arguments?)")
        if in_head and (new_head or src_state[key].shape != value.shape):
            new_head = True
            continue
        if src_state[key].shape != value.shape:
            raise ConfigError(f"--init-from {cfg.init_from}: weight {key!r} has shape "
                              f"{tuple(src_state[key].shape)}, this model's is {tuple(value.shape)} "
                              "(different model arguments?)")
        value.copy_(src_state[key])
        copied += 1
    return InitReport(str(cfg.init_from), src_dataset, copied, new_head, apply_freeze(model, cfg))


def apply_freeze(model: nn.Module, cfg: TrainConfig) -> int:
    """With ``cfg.freeze``, stop gradients everywhere but the head; returns how many parameters are fixed."""
    if not cfg.freeze:
        return 0
    head_name, _ = head_module(model)
    frozen = 0
    for name, param in model.named_parameters():
        if not name.startswith(head_name + "."):
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen
