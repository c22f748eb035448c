"""Training configuration: a dataclass with a docstring per field, validated on creation.

Load from YAML with :meth:`TrainConfig.from_yaml`, override single fields with
:meth:`TrainConfig.override` (the CLI's flags and ``--set key=value``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from digitlab.data.augment import AugmentConfig
from digitlab.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd", "adadelta")
SCHEDULES = ("constant", "step", "exponential", "plateau", "cosine", "onecycle")
MONITORS = ("val_loss", "val_accuracy", "train_loss", "train_accuracy")
ADVERSARIAL = ("pgd", "fgsm")


@dataclass
class TrainConfig:
    """Everything that determines a training run (together with the data)."""

    model: str = "cnn-simple"
    """Registered model name (see ``digitlab models``)."""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the model constructor."""
    dataset: str = "mnist"
    """Dataset name (``mnist``, ``fashion-mnist``)."""
    epochs: int = 10
    """Number of passes over the training split."""
    max_steps: int | None = None
    """Stop after this many optimizer steps; the LR schedule is compressed to end there."""
    batch_size: int = 128
    """Samples per optimizer step (global, across all processes)."""
    eval_batch_size: int = 1000
    """Samples per forward pass when evaluating."""
    optimizer: str = "adam"
    """One of adam, adamw, sgd (with momentum), adadelta."""
    lr: float = 3e-3
    """Base learning rate (peak rate for one-cycle unless ``max_lr`` is set)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam/AdamW coefficients."""
    momentum: float = 0.9
    """SGD momentum."""
    nesterov: bool = False
    """SGD Nesterov momentum."""
    rho: float = 0.9
    """Adadelta decay rate."""
    weight_decay: float = 0.0
    """L2 penalty (Adam/SGD/Adadelta) or decoupled decay (AdamW)."""
    schedule: str = "onecycle"
    """LR schedule: constant, step, exponential, plateau, cosine (with warmup), onecycle."""
    warmup_epochs: float = 0.0
    """Linear warm-up length for the cosine schedule, in epochs."""
    step_epochs: int = 1
    """Step schedule: multiply the LR by ``gamma`` every this many epochs."""
    gamma: float = 0.7
    """Decay factor for the step (per ``step_epochs``) and exponential (per epoch) schedules."""
    min_lr: float = 0.0
    """Floor of the cosine schedule."""
    max_lr: float | None = None
    """One-cycle peak LR (default: ``lr``)."""
    pct_start: float = 0.25
    """One-cycle fraction of steps spent increasing the LR."""
    div_factor: float = 25.0
    """One-cycle: initial LR = peak / div_factor."""
    final_div_factor: float = 1e4
    """One-cycle: final LR = initial / final_div_factor."""
    plateau_monitor: str = "val_loss"
    """Metric watched by the plateau schedule."""
    plateau_patience: int = 3
    """Epochs without improvement before the plateau schedule lowers the LR."""
    plateau_factor: float = 0.5
    """Multiplier applied to the LR on a plateau."""
    label_smoothing: float = 0.0
    """Cross-entropy label smoothing."""
    grad_clip: float | None = None
    """Clip the global gradient norm to this value."""
    augment: AugmentConfig | None = None
    """Batch augmentation applied to training batches (None: off)."""
    val_fraction: float = 0.1
    """Stratified share of the training set held out for validation."""
    val_max_images: int | None = None
    """Validate on at most this many images of the validation split (None: all of it). Frequent
    validation of a big net on a CPU is costly; the first N images of the (stratified) split are a
    fair sample."""
    early_stopping: bool = False
    """Stop when ``monitor`` stops improving."""
    monitor: str = "val_loss"
    """Metric for early stopping and best-checkpoint selection."""
    patience: int = 5
    """Early stopping: epochs without improvement before stopping."""
    min_delta: float = 0.0
    """Early stopping: minimum change that counts as an improvement."""
    restore_best: bool = True
    """Early stopping: end with the weights of the best epoch."""
    seed: int = 0
    """Seed for initialisation, split, shuffling, augmentation and dropout."""
    device: str = "auto"
    """auto, cpu, cuda or cuda:N."""
    threads: int | None = None
    """Intra-op CPU threads while training (None: torch's default, one per core). Restored when
    training ends. On a machine shared with other jobs one thread keeps the step rate steady:
    multi-threaded steps slow down many-fold when another process takes a core."""
    deterministic: bool = True
    """Use deterministic algorithms (exact resume; slightly slower on GPU)."""
    channels_last: bool | None = None
    """Use the channels-last memory format for conv nets (None: the model's registered fastest setting,
    see ``digitlab.models.train_settings``)."""
    bn_momentum: float | None = None
    """Override the momentum of every BatchNorm layer while training (None: the model's own).
    The notebook models use Keras' 0.99 (PyTorch momentum 0.01), whose running statistics need
    thousands of steps to settle: short runs want PyTorch's 0.1."""
    amp: bool | None = None
    """Mixed precision: bfloat16 autocast (CPUs with AVX-512 BF16/AMX, CUDA GPUs that support it;
    elsewhere the run trains in float32, where bf16 would be many times slower, and its metrics say so).
    None: the model's registered fastest setting (``digitlab.models.train_settings``), measured by
    ``digitlab bench zoo``; ``false`` forces float32."""
    checkpoint_every: int = 0
    """Also save resumable state every N steps (0: only at epoch ends)."""
    eval_every_steps: int = 0
    """Also validate every N optimizer steps, adding a history row each time (0: only at epoch ends).
    Learning curves of short runs need this; early stopping and plateau still look at epoch ends only."""
    budget: str | None = None
    """The training budget this run was given (``30s``, ``2epochs``, ``60000images``), for the record.
    The loop obeys ``max_steps``; a time budget was turned into ``max_steps`` by measuring the step
    rate (and is held during the run with ``hold_budget``, whose saved config records the re-plans),
    so re-running a finished run's config repeats the run exactly."""
    hold_budget: bool = False
    """Hold the time ``budget`` during the run: twenty times over the planned steps the loop re-plans
    the step count from the seconds left and its recent step time, so the run ends near the
    budget even when the machine's speed drifts after the warm-up. The learning-rate schedule follows
    the new end continuously (:class:`digitlab.train.schedules.StepPlan`). The run's saved config then
    records what it did (``step_plan``, ``max_steps``, ``hold_budget: false``), so re-running it repeats
    the run step for step. Needs a time ``budget`` and ``max_steps`` (the first plan); one process only."""
    step_plan: list[list[int]] | None = None
    """The ``[step, total_steps]`` re-plan points of a run that held a time budget, starting with
    ``[0, first max_steps]``; ``max_steps`` is the last total. Written by the loop; give it to repeat
    such a run exactly (not together with ``hold_budget``)."""
    tensorboard: bool = True
    """Write TensorBoard event files in the run directory (needs the ``digitlab[tensorboard]`` extra;
    without it training goes on and says once that TensorBoard logging is off)."""
    cv_folds: int = 0
    """scikit-learn baselines: run k-fold stratified cross-validation (0: off)."""
    init_from: str | None = None
    """Start from this run's weights (a run directory, a checkpoint or ``default``) instead of a random
    initialisation. Same architecture; the classifier head (the last linear layer) starts afresh when
    the source was trained on another dataset or for another number of classes."""
    freeze: bool = False
    """With ``init_from``: train only the classifier head and keep the feature layers' weights fixed
    (BatchNorm statistics still adapt to the new data)."""
    adversarial: Literal["pgd", "fgsm"] | None = None
    """Adversarial training (Madry et al. 2018): every training batch is replaced by its L∞ attack
    within ``adv_eps`` before the optimizer step. ``pgd``: ``adv_steps`` signed-gradient steps of
    ``adv_step_size`` from a random start in the ε-ball; ``fgsm``: one step of 1.25·ε from a random
    start (Wong et al. 2020, "fast adversarial training"). The attack runs with the model in eval mode
    (BatchNorm uses and keeps its running statistics, no dropout), then the step trains on the attacked
    batch in train mode; its noise is a function of (seed, step), so a resumed run is exact.
    train_loss / train_accuracy are then measured on the attacked batches. None: standard training."""
    adv_eps: float = 0.3
    """Adversarial training: L∞ budget ε on [0, 1] pixels (MNIST's usual 0.3)."""
    adv_steps: int = 7
    """Adversarial training with ``pgd``: attack steps per training batch (the cost of a training step
    grows about (1 + adv_steps)-fold)."""
    adv_step_size: float | None = None
    """Adversarial training with ``pgd``: step size on [0, 1] pixels (None: 2.5·ε / adv_steps, Madry et
    al.'s rule, so the attack can cross the ball)."""
    adv_ramp: float = 0.0
    """Adversarial training: epochs over which ε (and the step size) grow linearly from 0 to
    ``adv_eps`` (0: the full ε from the first step). A ramp helps small models that collapse to chance
    when attacked at full strength from the start."""

    def __post_init__(self) -> None:
        self._check_types()
        if isinstance(self.augment, dict):
            try:
                self.augment = AugmentConfig(**self.augment)
            except TypeError as exc:
                raise ConfigError(f"augment: {exc}".replace("AugmentConfig.__init__() ", "")) from None
        elif self.augment is not None and not isinstance(self.augment, AugmentConfig):
            raise ConfigError(f"augment must be a mapping of transform ranges or null, "
                              f"got {type(self.augment).__name__} {self.augment!r}")
        if not isinstance(self.model_kwargs, dict):
            raise ConfigError(f"model_kwargs must be a mapping, got {type(self.model_kwargs).__name__}")
        try:
            self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        except (TypeError, ValueError):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas!r}") from None
        checks = [
            (self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be >= 1, got {self.eval_batch_size}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             f"betas must be two numbers in [0, 1), got {self.betas}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 < self.gamma <= 1, f"gamma must be in (0, 1], got {self.gamma}"),
            (self.step_epochs >= 1, f"step_epochs must be >= 1, got {self.step_epochs}"),
            (0 < self.pct_start < 1, f"pct_start must be in (0, 1), got {self.pct_start}"),
            (self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}"),
            (0 <= self.label_smoothing < 1, f"label_smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0, got {self.grad_clip}"),
            (0 <= self.val_fraction < 1, f"val_fraction must be in [0, 1), got {self.val_fraction}"),
            (self.monitor in MONITORS, f"monitor must be one of {', '.join(MONITORS)}, got {self.monitor!r}"),
            (self.plateau_monitor in MONITORS, f"plateau_monitor must be one of {', '.join(MONITORS)}"),
            (0 < self.plateau_factor < 1, f"plateau_factor must be in (0, 1), got {self.plateau_factor}"),
            (self.patience >= 0 and self.plateau_patience >= 0, "patience values must be >= 0"),
            (self.checkpoint_every >= 0, f"checkpoint_every must be >= 0, got {self.checkpoint_every}"),
            (self.val_max_images is None or self.val_max_images >= 1,
             f"val_max_images must be None or >= 1, got {self.val_max_images}"),
            (self.threads is None or self.threads >= 1, f"threads must be None or >= 1, got {self.threads}"),
            (self.eval_every_steps >= 0, f"eval_every_steps must be >= 0, got {self.eval_every_steps}"),
            (self.cv_folds == 0 or self.cv_folds >= 2, f"cv_folds must be 0 or >= 2, got {self.cv_folds}"),
            (self.bn_momentum is None or 0 < self.bn_momentum <= 1,
             f"bn_momentum must be in (0, 1], got {self.bn_momentum}"),
            (not self.freeze or self.init_from is not None, "freeze needs init_from (a run to start from)"),
            (self.adversarial is None or self.adversarial in ADVERSARIAL,
             f"adversarial must be one of {', '.join(ADVERSARIAL)} or null, got {self.adversarial!r}"),
            (0 < self.adv_eps <= 1, f"adv_eps must be in (0, 1] (pixels are in [0, 1]), got {self.adv_eps}"),
            (self.adv_steps >= 1, f"adv_steps must be >= 1, got {self.adv_steps}"),
            (self.adv_step_size is None or 0 < self.adv_step_size <= 1,
             f"adv_step_size must be in (0, 1] or null, got {self.adv_step_size}"),
            (self.adv_ramp >= 0, f"adv_ramp must be >= 0 (epochs), got {self.adv_ramp}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        self._check_step_plan()
        needs_val = self.early_stopping or self.schedule == "plateau"
        uses_val = self.monitor.startswith("val") or self.plateau_monitor.startswith("val")
        if needs_val and uses_val and self.val_fraction == 0:
            raise ConfigError("early stopping / plateau on a val_* metric needs val_fraction > 0")

    def _check_step_plan(self) -> None:
        if self.hold_budget:
            from digitlab.train.budget import parse_budget

            if self.budget is None or parse_budget(self.budget).kind != "seconds":
                raise ConfigError(f"hold_budget needs a time budget (budget: 30s), got {self.budget!r}")
            if self.max_steps is None:
                raise ConfigError("hold_budget needs max_steps (the step count planned for the budget)")
            if self.step_plan is not None:
                raise ConfigError("give hold_budget (re-plan during the run) or step_plan (repeat a run "
                                  "that did), not both")
        if self.step_plan is None:
            return
        try:
            plan = [[int(s), int(t)] for s, t in self.step_plan]
        except (TypeError, ValueError):
            raise ConfigError(f"step_plan must be a list of [step, total_steps] pairs, got {self.step_plan!r}") \
                from None
        starts = [s for s, _ in plan]
        if (not plan or starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:], strict=False))
                or any(t <= s for s, t in plan)):
            raise ConfigError(f"step_plan must start at [0, total], with increasing steps each before its "
                              f"total, got {self.step_plan!r}")
        if self.max_steps != plan[-1][1]:
            raise ConfigError(f"step_plan ends at {plan[-1][1]} steps but max_steps is {self.max_steps}")
        self.step_plan = plan

    def _check_types(self) -> None:
        """Every scalar field has its declared type (ints are integers, floats finite numbers, bools
        booleans), else a ConfigError naming the field. Integers are accepted for floats and numeric
        strings such as ``1e-3`` (which YAML 1.1 reads as text) are read as numbers."""
        for f in fields(self):
            kind = _SCALAR_TYPES.get(str(f.type))
            if kind is None:
                continue
            base, optional = kind
            value = getattr(self, f.name)
            if value is None:
                if not optional:
                    raise ConfigError(f"{f.name} must be {_TYPE_WORDS[base]}, got null")
                continue
            setattr(self, f.name, _coerce(f.name, value, base))

    # --- (de)serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"bad config: {exc}") from None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> TrainConfig:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def override(self, **changes: Any) -> TrainConfig:
        """A copy with fields replaced (``None`` values are ignored); validated again."""
        changes = {k: v for k, v in changes.items() if v is not None}
        data = self.to_dict()
        for key, value in changes.items():
            if "." in key:  # nested, e.g. augment.rotation=15
                head, tail = key.split(".", 1)
                if head != "augment":
                    raise ConfigError(f"unknown config key {key!r}")
                data["augment"] = {**(data.get("augment") or AugmentConfig().to_dict()), tail: value}
            else:
                data[key] = value
        return TrainConfig.from_dict(data)


_SCALAR_TYPES: dict[str, tuple[type, bool]] = {
    "int": (int, False), "int | None": (int, True),
    "float": (float, False), "float | None": (float, True),
    "bool": (bool, False), "bool | None": (bool, True),
    "str": (str, False), "str | None": (str, True),
    "Literal['pgd', 'fgsm'] | None": (str, True),
}
_TYPE_WORDS = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}


def _coerce(name: str, value: Any, base: type) -> Any:
    """``value`` as type ``base`` for field ``name``, or a ConfigError naming the field."""
    bad = ConfigError(f"{name} must be {_TYPE_WORDS[base]}, got {value!r}")
    if base is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if base is str:
        if not isinstance(value, str):
            raise bad
        return value
    if isinstance(value, bool):  # True is an int to Python, not to a config
        raise bad
    given = value
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise bad from None
    if not isinstance(value, (int, float)):
        raise bad
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {given!r}")
    if base is int:
        if isinstance(value, float):
            if not value.is_integer():
                raise bad
            value = int(value)
        return value
    return float(value)


def parse_set_option(items: list[str]) -> dict[str, Any]:
    """``["lr=0.01", "augment.rotation=15"]`` → dict with YAML-typed values (a ConfigError naming the
    key for a value that is not valid YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or type(exc).__name__
            mark = getattr(exc, "problem_mark", None)
            where = f" at character {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"--set {key.strip()}: {value!r} is not valid YAML ({problem}{where})") from None
    return out


def config_fields_help() -> dict[str, str]:
    """Field name → first line of its docstring (for ``--help`` and docs)."""
    import ast
    import inspect

    src = inspect.getsource(TrainConfig)
    tree = ast.parse(src)
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for node, nxt in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)):
            docs[node.target.id] = str(nxt.value.value).strip()
    return docs


__all__ = ["TrainConfig", "parse_set_option", "config_fields_help", "dataclasses"]
