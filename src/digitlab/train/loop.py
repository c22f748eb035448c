"""The one training loop: ``fit(model, splits, config, callbacks)``.

Every source of randomness is a pure function of ``(seed, step)`` — batch order
per epoch, augmentation per batch, dropout per step, the random start of an
adversarial-training attack — so a run resumed from any saved step ends with
exactly the weights of an uninterrupted run.

Adversarial training (``config.adversarial``, Madry et al. 2018): each training batch
is replaced by its L∞ PGD (or random-start FGSM) attack, computed by
:func:`digitlab.analysis.adversarial.pgd_attack` with the model in **eval mode**:
BatchNorm layers normalise with, and do not update, their running statistics and
dropout is off, so the attack neither pollutes the statistics with the attack's
intermediate forward passes nor chases random dropout masks (the choice of TRADES
and most public implementations). The optimizer step then runs in train mode on
the attacked batch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from digitlab.checkpoint import RESUME_FILE
from digitlab.data.augment import BatchAugmenter
from digitlab.data.batches import BatchIterator, derive_seed
from digitlab.data.splits import DataSplits, Split
from digitlab.models import train_settings
from digitlab.models.forward import predict_logits
from digitlab.train.callbacks import Callback
from digitlab.train.config import TrainConfig
from digitlab.train.schedules import StepPlan, lr_at
from digitlab.train.state_io import load_state, save_state
from digitlab.utils import native_bf16, resolve_device

__all__ = ["FitResult", "RESUME_FILE", "TrainState", "Trainer", "build_optimizer", "default_callbacks",
           "evaluate_split", "fit", "preserved_torch_state"]


@dataclass
class TrainState:
    """Progress of a run; saved with the weights for resuming."""

    epoch: int = 0
    """Current epoch (0-based)."""
    batch: int = 0
    """Next batch index within the current epoch."""
    step: int = 0
    """Optimizer steps taken so far."""
    lr: float = 0.0
    lr_scale: float = 1.0
    """Factor applied by ReduceLROnPlateau."""
    train_seconds: float = 0.0
    """Wall time spent in the loop (training + validation)."""
    val_seconds: float = 0.0
    """The part of ``train_seconds`` spent validating (``train_seconds - val_seconds`` is step time)."""
    epoch_loss_sum: float = 0.0
    epoch_correct: float = 0.0
    epoch_count: float = 0.0
    epoch_seconds: float = 0.0
    """Time spent in the current epoch up to the last intermediate save (``checkpoint_every``), so the
    epoch's ``epoch_seconds`` in the history covers the whole epoch, across saves and resumes."""
    history: list[dict[str, Any]] = field(default_factory=list)
    finished: bool = False
    step_plan: list[list[int]] | None = None
    """The ``[step, total_steps]`` points of a run that holds a time budget (``hold_budget``)."""


@dataclass
class FitResult:
    history: list[dict[str, Any]]
    train_seconds: float
    steps: int
    epochs_completed: int
    stop_reason: str | None
    notes: dict[str, Any]
    val_seconds: float = 0.0
    """Part of ``train_seconds`` spent validating."""


_FUSED_DEVICES = ("cpu", "cuda")
#: Times over its first plan that a run holding a time budget re-plans its length.
HOLD_CHECKS = 20


def _fused_ok(params: list[nn.Parameter]) -> bool:
    """Whether torch's fused optimizer kernels take ``params`` (float tensors on one CPU/CUDA device type)."""
    return bool(params) and all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in params) \
        and len({p.device.type for p in params}) == 1


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """The config's optimiser over the model's trainable parameters.

    Adam, AdamW and SGD use torch's fused kernels (``fused=True``: the same update rule in one multi-tensor
    kernel per step instead of ~8 small operations and a host sync per parameter on CPU, where torch's default
    is the per-parameter loop), Adadelta the multi-tensor ``foreach`` form. Same updates up to floating-point
    rounding; on a busy 2-core CPU the per-parameter loop measured 2-8% of se-cnn's training step (1 and 2
    threads; it is ~230 of the step's ~600 dispatched operations).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fused = {"fused": True} if _fused_ok(params) else {}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **fused)
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=cfg.lr, rho=cfg.rho, weight_decay=cfg.weight_decay,
                                    foreach=bool(fused))
    raise ValueError(cfg.optimizer)


def _lay_out_like_params(optimizer: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor (Adam's moments, momentum buffers) its parameter's strides.

    Saved state is stored contiguous; a channels-last model's parameters are not. The per-parameter
    optimizers index elementwise, but the fused kernels walk memory in order and would pair each
    moment with the wrong weight."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            for key, value in optimizer.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    optimizer.state[p][key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def default_callbacks(cfg: TrainConfig) -> list[Callback]:
    """Callbacks implied by the config (early stopping, plateau schedule)."""
    from digitlab.train.callbacks import EarlyStopping, ReduceLROnPlateau

    out: list[Callback] = []
    if cfg.schedule == "plateau":
        out.append(ReduceLROnPlateau(cfg.plateau_monitor, cfg.plateau_patience, cfg.plateau_factor))
    if cfg.early_stopping:
        out.append(EarlyStopping(cfg.monitor, cfg.patience, cfg.min_delta, cfg.restore_best))
    return out


def evaluate_split(model: nn.Module, split: Split, batch_size: int = 1000,
                   channels_last: bool = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``split`` (eval mode).

    One batched forward pass through :func:`digitlab.models.forward.predict_logits`, the same
    one every evaluation uses. ``channels_last`` is accepted for compatibility: a channels-last
    model takes NCHW input as it is.
    """
    if len(split) == 0:
        return {"loss": 0.0, "accuracy": 0.0}
    logits = predict_logits(model, split.images, batch_size=batch_size)
    labels = split.labels.cpu()
    loss = float(F.cross_entropy(logits, labels, reduction="sum"))
    correct = int((logits.argmax(1) == labels).sum())
    n = len(split)
    return {"loss": loss / n, "accuracy": correct / n}


@contextlib.contextmanager
def preserved_torch_state() -> Iterator[None]:
    """Restore the process-wide torch state training changes: RNG states (CPU and CUDA),
    ``torch.use_deterministic_algorithms`` (and its warn-only flag), the cuDNN flags and the
    number of intra-op threads."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    cudnn = torch.backends.cudnn
    cudnn_flags = (cudnn.deterministic, cudnn.benchmark, cudnn.enabled)
    fill_uninitialized = torch.utils.deterministic.fill_uninitialized_memory  # type: ignore[attr-defined]
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        cudnn.deterministic, cudnn.benchmark, cudnn.enabled = cudnn_flags
        torch.utils.deterministic.fill_uninitialized_memory = fill_uninitialized  # type: ignore[attr-defined]
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


class Trainer:
    """Runs the loop; holds model, optimizer, state and callbacks."""

    def __init__(self, model: nn.Module, splits: DataSplits, config: TrainConfig,
                 callbacks: list[Callback] | None = None, run_dir: str | Path | None = None,
                 device: torch.device | str | None = None, rank: int = 0, world_size: int = 1) -> None:
        self.config = cfg = config
        self.device = torch.device(device) if device is not None else resolve_device(cfg.device)
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0
        self.raw_model = model.to(self.device)
        # the model's fastest measured settings apply unless the config says otherwise
        name = getattr(model, "digitlab_name", None)  # set by create_model; absent for a hand-made module
        fastest = train_settings(name) if name is not None else None
        amp = bool(cfg.amp if cfg.amp is not None else fastest is not None and fastest.amp)
        # bf16 autocast only where the hardware computes bf16 natively; elsewhere it is far slower
        # than float32, and fp16 would need loss scaling: train in float32 there, and say so
        self.amp = amp and native_bf16(self.device)
        self.notes: dict[str, Any] = {}
        if amp and not self.amp:
            self.notes["amp"] = (f"bfloat16 autocast off: {self.device.type} has no native bfloat16 "
                                 f"(float32 instead)")
        self.channels_last = bool(cfg.channels_last if cfg.channels_last is not None
                                  else fastest is not None and fastest.channels_last)
        if self.channels_last:
            self.raw_model = self.raw_model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if cfg.bn_momentum is not None:
            for module in self.raw_model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.momentum = cfg.bn_momentum
        self.model = self.raw_model
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(self.raw_model)
        self.train_split = splits.train.to(self.device)
        val = splits.val
        if val is not None and cfg.val_max_images is not None and len(val) > cfg.val_max_images:
            val = Split(val.images[:cfg.val_max_images], val.labels[:cfg.val_max_images])
        self.val_split = val.to(self.device) if val is not None else None
        self.run_dir = Path(run_dir) if run_dir else None
        all_callbacks = default_callbacks(cfg) + list(callbacks or [])
        self.callbacks = [cb for cb in all_callbacks if self.is_main or not cb.main_only]
        self.uses_gradient = getattr(model, "uses_gradient", True)
        self._l2 = getattr(self.raw_model, "l2_penalty", None)
        self.optimizer = build_optimizer(self.raw_model, cfg) if self.uses_gradient else None
        augment = BatchAugmenter(cfg.augment) if cfg.augment is not None else None
        self.batches = BatchIterator(self.train_split, cfg.batch_size, shuffle=True, augment=augment,
                                     seed=cfg.seed, rank=rank, world_size=world_size)
        self.steps_per_epoch = len(self.batches)
        # a max_steps run is a complete short run: its schedule ends at max_steps
        self.total_steps = min(self.steps_per_epoch * cfg.epochs, cfg.max_steps or 1 << 62)
        self.state = TrainState()
        # holding a time budget: re-plan the run's length from its own step times (one process only:
        # ranks re-planning apart would wait for each other forever)
        self.hold_seconds: float | None = None
        if cfg.hold_budget and world_size == 1:
            from digitlab.train.budget import parse_budget

            self.hold_seconds = parse_budget(cfg.budget or "").value
            self.state.step_plan = [[0, self.total_steps]]
        elif cfg.step_plan is not None:
            self.state.step_plan = [list(p) for p in cfg.step_plan]
        self._plan: StepPlan | None = None
        self._last_check = (0, 0.0)  # (step, step seconds) at the previous re-plan check
        self.stop_reason: str | None = None
        self._fresh = True

    # --- callbacks ------------------------------------------------------
    def emit(self, event: str, **payload: Any) -> None:
        for cb in self.callbacks:
            hook = getattr(cb, f"on_{event}", None)
            if hook is not None:
                hook(self, **payload)

    def request_stop(self, reason: str) -> None:
        self.stop_reason = reason

    def running_metrics(self) -> tuple[float, float]:
        n = max(1.0, float(self._count))
        return float(self._loss_sum) / n, float(self._correct) / n

    # --- resumable state ------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        self._sync_accumulators()
        return {
            "train_state": asdict(self.state),
            "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict() if self.optimizer else None,
            "callbacks": {cb.name: cb.state_dict() for cb in self.callbacks if cb.state_dict()},
            "stop_reason": self.stop_reason,
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from digitlab.checkpoint import _resize_buffers

        model_state = state["model"]
        _resize_buffers(self.raw_model, model_state)
        self.raw_model.load_state_dict(model_state)
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            _lay_out_like_params(self.optimizer)
        self.state = TrainState(**state["train_state"])
        self._plan = None  # the resumed run's re-plan points, if it holds a time budget
        for cb in self.callbacks:
            if cb.name in state.get("callbacks", {}):
                cb.load_state_dict(state["callbacks"][cb.name])
        self.stop_reason = state.get("stop_reason")
        self._fresh = False

    def save_resume(self) -> None:
        if self.run_dir is not None and self.is_main:
            save_state(self.run_dir / RESUME_FILE, self.state_dict())

    def resume_from(self, run_dir: str | Path) -> None:
        self.load_state_dict(load_state(Path(run_dir) / RESUME_FILE))

    # --- the loop -------------------------------------------------------
    def _sync_accumulators(self) -> None:
        if hasattr(self, "_loss_sum"):
            self.state.epoch_loss_sum = float(self._loss_sum)
            self.state.epoch_correct = float(self._correct)
            self.state.epoch_count = float(self._count)

    def _reset_accumulators(self) -> None:
        dev = self.device
        self._loss_sum = torch.tensor(self.state.epoch_loss_sum, dtype=torch.float64, device=dev)
        self._correct = torch.tensor(self.state.epoch_correct, dtype=torch.float64, device=dev)
        self._count = torch.tensor(self.state.epoch_count, dtype=torch.float64, device=dev)

    def fit(self) -> FitResult:
        """Train to the end of the config's epochs / ``max_steps``; the process-wide torch state
        (RNG, deterministic-algorithms and cuDNN flags, threads) is restored when it returns."""
        with preserved_torch_state():
            return self._fit()

    def _fit(self) -> FitResult:
        cfg = self.config
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
            # deterministic mode also fills every new tensor with NaN (a debugging aid that changes
            # no result): about 290 fills per se-cnn step, ~17% of its step on 2 threads
            torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]
        if self._fresh and hasattr(self.raw_model, "prepare"):
            self.raw_model.prepare(self.train_split.images.cpu(),  # type: ignore[operator]
                                   self.train_split.labels.cpu())
            self.raw_model.to(self.device)
        if not self.uses_gradient:
            return self._fit_estimator()
        if self.channels_last:  # again: a previous fit() handed the model back in the usual layout
            self.raw_model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        assert self.optimizer is not None, "gradient models have an optimizer"
        _lay_out_like_params(self.optimizer)
        if self.hold_seconds is not None and self.state.step_plan is None:  # resumed from an older save
            self.state.step_plan = [[0, self.total_steps]]
        self.emit("fit_start")
        try:
            while (self.state.epoch < cfg.epochs and not self.state.finished
                   and self.stop_reason is None):
                self._run_epoch()
        except KeyboardInterrupt:
            self.emit("interrupt")
            self.save_resume()
            raise
        self.state.finished = True
        if self.channels_last:  # hand the model back in the usual layout, as checkpoints and inference expect
            self.raw_model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        self.emit("fit_end")
        self.save_resume()
        return FitResult(self.state.history, self.state.train_seconds, self.state.step,
                         self.state.epoch, self.stop_reason, self.notes, self.state.val_seconds)

    # --- holding a time budget ----------------------------------------------
    def _lr(self, step: int) -> float:
        plan = self.state.step_plan
        if plan is None:
            return lr_at(self.config, step, self.steps_per_epoch, self.total_steps)
        if self._plan is None or len(self._plan.points) != len(plan):
            self._plan = StepPlan(plan)
            self.total_steps = self._plan.total
        return lr_at(self.config, self._plan.position(step), self.steps_per_epoch, self._plan.planned)

    @property
    def _hold_every(self) -> int:
        assert self.state.step_plan is not None
        return max(1, self.state.step_plan[0][1] // HOLD_CHECKS)

    def _replan(self, step_seconds: float) -> None:
        """Re-plan the run's end so its optimizer steps take ``hold_seconds`` in all: the steps left are
        the seconds left at the step time since the previous check (the machine's speed now: a slower
        stretch the warm-up could not foresee, or its end). Changes under 1% are not recorded."""
        assert self.hold_seconds is not None and self.state.step_plan is not None
        step = self.state.step
        last_step, last_seconds = self._last_check
        self._last_check = (step, step_seconds)
        if step >= self.total_steps or step_seconds <= last_seconds or step <= last_step:
            return
        left = (self.hold_seconds - step_seconds) * (step - last_step) / (step_seconds - last_seconds)
        total = min(step + max(1, round(left)), self.steps_per_epoch * self.config.epochs)
        if abs(total - self.total_steps) <= 0.01 * self.total_steps:
            return
        self.state.step_plan.append([step, total])
        self.total_steps = total

    def followed_config(self) -> TrainConfig:
        """The config that repeats this run step for step: for a run that held a time budget, its
        re-plan points and final step count instead of ``hold_budget``."""
        cfg, plan = self.config, self.state.step_plan
        if not cfg.hold_budget or plan is None or self.hold_seconds is None:
            return cfg
        total = plan[-1][1]
        return cfg.override(hold_budget=False, max_steps=total, step_plan=[list(p) for p in plan],
                            epochs=max(1, -(-total // self.steps_per_epoch)))

    def _run_epoch(self) -> None:
        cfg, state, model = self.config, self.state, self.model
        optimizer = self.optimizer
        assert optimizer is not None, "gradient models have an optimizer"
        self.batches.set_epoch(state.epoch)
        self._reset_accumulators()
        self.emit("epoch_start")
        model.train()
        t0 = time.perf_counter()
        for x, y in self.batches.iter_from(state.batch):
            # dropout & co. draw from the global RNG: make it a function of the step. Only the training
            # device's generator: torch.manual_seed also queues lazy seeding of every other device
            # type, formatting stack traces each call (70-200 us a step)
            step_seed = derive_seed(cfg.seed, state.step, 2)
            torch.default_generator.manual_seed(step_seed)
            if self.device.type == "cuda":
                torch.cuda.manual_seed(step_seed)
            state.lr = self._lr(state.step) * state.lr_scale
            for group in optimizer.param_groups:
                group["lr"] = state.lr
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if cfg.adversarial is not None:
                x = self.adversarial_batch(x, y)
            with self._autocast():
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            if self._l2 is not None:  # Keras-style L2 on the kernels a model chooses (notebook 001)
                loss = loss + self._l2()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.raw_model.parameters(), cfg.grad_clip)
            optimizer.step()
            with torch.no_grad():
                n = y.numel()
                self._loss_sum += loss.detach().double() * n
                self._correct += (logits.detach().argmax(1) == y).sum()
                self._count += n
            state.step += 1
            state.batch += 1
            self.emit("step_end", loss=loss.detach(), batch_size=n)
            if self.hold_seconds is not None and state.step % self._hold_every == 0:
                self._replan(state.train_seconds + (time.perf_counter() - t0) - state.val_seconds)
            limit = cfg.max_steps if state.step_plan is None else self.total_steps
            if limit is not None and state.step >= limit:
                self.request_stop(f"max_steps={limit} reached")
                break
            if self.stop_reason is not None:  # a callback asked to stop mid-epoch
                break
            if (cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0
                    and state.batch < self.steps_per_epoch):  # the epoch end validates anyway
                self._validate_mid_epoch()
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                now = time.perf_counter()
                state.train_seconds += now - t0
                state.epoch_seconds += now - t0  # the epoch goes on: its clock must not restart here
                t0 = now
                self.save_resume()
        train_loss, train_acc = self._reduced_train_metrics()
        metrics: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.step, "lr": state.lr,
                                   "train_loss": train_loss, "train_accuracy": train_acc,
                                   "val_loss": None, "val_accuracy": None}
        if self.val_split is not None and len(self.val_split):
            v0 = time.perf_counter()
            val = evaluate_split(self.raw_model, self.val_split, cfg.eval_batch_size, self.channels_last)
            state.val_seconds += time.perf_counter() - v0
            metrics["val_loss"], metrics["val_accuracy"] = val["loss"], val["accuracy"]
        elapsed = time.perf_counter() - t0
        state.train_seconds += elapsed
        metrics["epoch_seconds"] = state.epoch_seconds + elapsed
        state.epoch += 1
        state.batch = 0
        state.epoch_loss_sum = state.epoch_correct = state.epoch_count = state.epoch_seconds = 0.0
        # the running sums too: the epoch-end save below copies them into the state, and the next epoch
        # would start from this one's (its train_loss/accuracy a mean over the run so far)
        self._reset_accumulators()
        state.history.append(metrics)
        self.emit("epoch_end", metrics=metrics)
        if state.epoch < cfg.epochs and self.stop_reason is None:
            self.save_resume()

    # --- adversarial training -------------------------------------------------
    def adversarial_eps(self, step: int) -> float:
        """ε of the training attack at optimizer step ``step``: ``adv_eps``, reached linearly over the
        first ``adv_ramp`` epochs when a ramp is set."""
        cfg = self.config
        ramp_steps = cfg.adv_ramp * self.steps_per_epoch
        if ramp_steps <= 0:
            return cfg.adv_eps
        return cfg.adv_eps * min(1.0, (step + 1) / ramp_steps)

    def adversarial_attack_settings(self, step: int) -> tuple[float, int, float]:
        """(ε, steps, step size) of the training attack at ``step``. PGD: ``adv_steps`` steps of
        ``adv_step_size`` (default 2.5·ε/steps); FGSM: one step of 1.25·ε from a random start (Wong
        et al. 2020). Under a ramp the step size shrinks with ε."""
        cfg = self.config
        eps = self.adversarial_eps(step)
        if cfg.adversarial == "fgsm":
            return eps, 1, 1.25 * eps
        full = cfg.adv_step_size if cfg.adv_step_size is not None else 2.5 * cfg.adv_eps / cfg.adv_steps
        return eps, cfg.adv_steps, full * eps / cfg.adv_eps

    def adversarial_batch(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training batch ``x`` under the configured L∞ attack at the current step.

        The attack runs in eval mode (see the module docstring) with the parameters' gradients off
        (only input gradients are needed; ``.grad`` stays untouched) and its random start drawn from a
        generator seeded by ``(seed, step, rank)``; the model's mode and flags are restored after.
        """
        from digitlab.analysis.adversarial import pgd_attack

        cfg, model = self.config, self.raw_model
        eps, steps, step_size = self.adversarial_attack_settings(self.state.step)
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, self.state.step, 3, self.rank))
        params = list(model.parameters())
        flags = [p.requires_grad for p in params]
        was_training = model.training
        model.eval()
        try:
            for p in params:
                p.requires_grad_(False)
            with self._autocast():
                x_adv = pgd_attack(model, x, y, eps, steps, step_size, gen, random_start=True)
        finally:
            for p, flag in zip(params, flags, strict=True):
                p.requires_grad_(flag)
            model.train(was_training)
        return x_adv.to(x.dtype)

    def _validate_mid_epoch(self) -> None:
        """A history row between epoch ends (``eval_every_steps``): running train metrics of the
        epoch so far and the validation metrics now. Early stopping and plateau see epoch ends only."""
        cfg, state = self.config, self.state
        train_loss, train_acc = self._reduced_train_metrics()
        row: dict[str, Any] = {"epoch": round(state.step / max(1, self.steps_per_epoch), 4), "step": state.step,
                               "lr": state.lr, "train_loss": train_loss, "train_accuracy": train_acc,
                               "val_loss": None, "val_accuracy": None, "epoch_seconds": None}
        if self.val_split is not None and len(self.val_split):
            v0 = time.perf_counter()
            val = evaluate_split(self.raw_model, self.val_split, cfg.eval_batch_size, self.channels_last)
            state.val_seconds += time.perf_counter() - v0
            row["val_loss"], row["val_accuracy"] = val["loss"], val["accuracy"]
        state.history.append(row)
        self.emit("validation_end", metrics=row)

    def _autocast(self) -> Any:
        import contextlib

        if not self.amp:  # off, or no native bfloat16 on this device (see __init__)
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _reduced_train_metrics(self) -> tuple[float, float]:
        sums = torch.stack([self._loss_sum, self._correct, self._count])
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(sums)
        n = max(1.0, float(sums[2]))
        return float(sums[0]) / n, float(sums[1]) / n

    def _fit_estimator(self) -> FitResult:
        t0 = time.perf_counter()
        self.raw_model.fit_estimator(self.train_split.images.cpu(),  # type: ignore[operator]
                                     self.train_split.labels.cpu())
        self.raw_model.to(self.device)
        seconds = time.perf_counter() - t0
        tr = evaluate_split(self.raw_model, self.train_split, self.config.eval_batch_size)
        metrics: dict[str, Any] = {"epoch": 1, "step": 0, "lr": 0.0, "train_loss": tr["loss"],
                                   "train_accuracy": tr["accuracy"], "val_loss": None, "val_accuracy": None,
                                   "epoch_seconds": seconds}
        if self.val_split is not None and len(self.val_split):
            val = evaluate_split(self.raw_model, self.val_split, self.config.eval_batch_size)
            metrics["val_loss"], metrics["val_accuracy"] = val["loss"], val["accuracy"]
        self.state.history.append(metrics)
        self.state.epoch, self.state.train_seconds, self.state.finished = 1, seconds, True
        self.emit("epoch_end", metrics=metrics)
        self.emit("fit_end")
        return FitResult(self.state.history, seconds, 0, 1, None, self.notes)


def fit(model: nn.Module, splits: DataSplits, config: TrainConfig,
        callbacks: list[Callback] | None = None, run_dir: str | Path | None = None,
        resume: bool = False, device: torch.device | str | None = None) -> FitResult:
    """Train ``model`` on ``splits`` as ``config`` says; see :class:`Trainer`."""
    trainer = Trainer(model, splits, config, callbacks, run_dir=run_dir, device=device)
    if resume:
        if run_dir is None:
            raise ValueError("resume needs run_dir")
        trainer.resume_from(run_dir)
    return trainer.fit()
