"""Hyperparameter sweeps on Optuna: ``run_sweep(space, out, options)``.

Every trial trains with :func:`digitlab.train.run.train_run` (in memory, no test scoring) on the
validation split of one dataset loaded once per process. A Trainer callback reports the validation
accuracy ``reports`` times per trial to Optuna and stops the trial through the trainer's stop
mechanism when the pruner (successive halving or Hyperband) says so. The objective is the final
validation accuracy; the test set is scored once, for the best trial, by retraining its recipe
(``best.yaml``: training is deterministic, so the retrained run repeats the trial) into a run
directory.

The study lives in ``sqlite:///OUT/sweep.db`` or any database URL Optuna accepts; several processes
or machines pointed at one URL share the study. ``n_trials`` is the study's total: every worker
stops starting trials once finished plus running trials reach it, so workers finish N trials
between them and a re-run of an interrupted sweep runs only what is missing. Trial parameters are
sampled by TPE re-seeded per trial number, so a sweep is reproducible from ``--seed`` and two
workers never draw the same random start.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from digitlab.errors import ConfigError, RunExistsError
from digitlab.sweep.space import Param, SearchSpace
from digitlab.train.callbacks import Callback
from digitlab.utils import to_jsonable, write_bytes_atomic, write_json_atomic, write_text_atomic

if TYPE_CHECKING:
    import optuna

    from digitlab.data.dataset import Dataset
    from digitlab.train.config import TrainConfig
    from digitlab.train.loop import Trainer

__all__ = ["BEST_FILE", "DB_FILE", "HISTORY_PNG", "IMPORTANCE_PNG", "SUMMARY_FILE", "TRIALS_FILE",
           "BestTrial", "PruningCallback", "SweepOptions", "SweepResult", "TestScore", "TrialCounts", "TrialRow",
           "default_storage", "expected_steps", "recipe", "redact_url", "run_sweep", "trial_config"]

DB_FILE = "sweep.db"
SUMMARY_FILE = "sweep.json"
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.yaml"
HISTORY_PNG = "history.png"
IMPORTANCE_PNG = "importance.png"
OBJECTIVE = "val_accuracy"
STALE_SECONDS = 120
"""A RUNNING trial whose worker sent no heartbeat for this long (killed) is marked FAIL and redone."""
WAIT_SECONDS = 2.0
"""Poll interval of a worker waiting for the last trials running in other workers."""
REPORT_IMAGES = 1000
"""Validation images scored for each intermediate (pruning) report; the objective uses them all."""


@dataclass
class SweepOptions:
    """How to run a sweep (everything except the space and the output folder)."""

    n_trials: int
    """Total finished (complete + pruned) trials the study should reach, over all workers."""
    timeout: float | None = None
    """Start no new trial after this many seconds."""
    storage: str | None = None
    """Optuna database URL (None: ``sqlite:///OUT/sweep.db``)."""
    study_name: str | None = None
    """Study name in the storage (None: the space's name)."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """``--set`` values applied to every trial (they win over the space)."""
    data_dir: str | None = None
    device: str = "auto"
    seed: int = 0
    """Seeds the TPE sampler and every trial's training."""
    progress: bool = True
    """One line per trial (and the final run's progress) on stderr."""
    stale_seconds: int = STALE_SECONDS
    """A RUNNING trial without a heartbeat for this long (its worker was killed) is failed and redone."""


@dataclass
class TrialRow:
    """One trial of the study, as written to ``trials.csv``."""

    number: int
    state: str
    """COMPLETE, PRUNED, FAIL, RUNNING or WAITING."""
    value: float | None
    """Final validation accuracy (COMPLETE), or the last intermediate one (PRUNED)."""
    params: dict[str, Any]
    seconds: float | None
    steps: int | None
    """Optimizer steps the trial trained."""
    note: str = ""


@dataclass
class BestTrial:
    number: int
    val_accuracy: float
    params: dict[str, Any]
    recipe: str
    """Path of ``best.yaml``: ``digitlab train --config`` trains it."""


@dataclass
class TestScore:
    """The test set, scored once, for the best trial's recipe retrained into ``run_dir``."""

    trial: int
    run_dir: str
    test_accuracy: float | None
    test_loss: float | None
    val_accuracy: float | None
    """Validation accuracy of the retrained run (equals the trial's value: training is deterministic)."""
    reused: bool = False
    """True when ``run_dir`` had been scored by an earlier invocation (not scored again)."""


@dataclass
class TrialCounts:
    """Trials of the study by state (trials a worker created past ``n_trials`` in a race not counted)."""

    complete: int = 0
    pruned: int = 0
    fail: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


@dataclass
class SweepResult:
    out: str
    space: str
    study_name: str
    storage: str
    """Storage URL with any password hidden."""
    objective: str
    n_trials: int
    counts: TrialCounts
    ran_here: int
    """Trials this process ran."""
    seconds: float
    trials: list[TrialRow]
    best: BestTrial | None
    test: TestScore | None
    importances: dict[str, float] | None
    figures: list[str]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(asdict(self))


# --------------------------------------------------------------------------- storage and study

def default_storage(out: Path) -> str:
    return f"sqlite:///{out.resolve() / DB_FILE}"


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL sqlalchemy parses: show it as given
        return url


def _check_out(out: Path, storage: str, study_name: str) -> None:
    """``out`` must be new, empty, or hold this same sweep (a re-run continues it)."""
    if out.exists() and not out.is_dir():
        raise RunExistsError(f"sweep folder {out} is a file; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        summary = out / SUMMARY_FILE
        ours = any(p.name.startswith(DB_FILE) or p.name == SUMMARY_FILE for p in out.iterdir())
        if not ours:
            raise RunExistsError(f"sweep folder {out} already exists and holds no sweep; "
                                 "choose another --out or delete it first")
        if summary.is_file():
            try:
                prev = json.loads(summary.read_text())
            except (OSError, ValueError):
                prev = {}
            want = (prev.get("study_name"), prev.get("storage"))
            if want[0] is not None and want != (study_name, redact_url(storage)):
                raise ConfigError(f"{out} holds sweep study {want[0]!r} in {want[1]}; re-run with the same "
                                  "--study-name/--storage to continue it, or choose another --out")


def _open_storage(url: str, stale_seconds: int = STALE_SECONDS) -> Any:
    import optuna
    from optuna.exceptions import ExperimentalWarning

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}  # several workers on one file wait, not fail
    last: Exception | None = None
    for attempt in range(5):  # two workers creating the tables of a new database at once can collide
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=max(1, min(30, stale_seconds // 4)),
                                                  grace_period=max(2, stale_seconds))
        except ImportError as exc:
            raise ConfigError(f"--storage {redact_url(url)}: the database driver is not installed, e.g. "
                              f"pip install psycopg2-binary for postgresql:// ({str(exc).splitlines()[0]})") from None
        except Exception as exc:  # noqa: BLE001 - sqlalchemy's errors: bad URL, unreachable server
            last = exc
            if not any(word in str(exc) for word in ("locked", "already exists", "UNIQUE constraint",
                                                      "IntegrityError", "duplicate key")):
                break
            time.sleep(0.5 * (attempt + 1))
    message = str(last).splitlines()[0] if last else "unknown error"
    raise ConfigError(f"--storage {redact_url(url)}: cannot open the study database ({message})")


def _make_sampler(seed: int) -> Any:
    """TPE whose random state is re-seeded from ``(seed, trial number)`` before each trial: reproducible
    for one worker, and different for every trial when several workers share the study."""
    import optuna

    from digitlab.data.batches import derive_seed

    class TrialSeededTPESampler(optuna.samplers.TPESampler):
        def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            trial_seed = derive_seed(seed, trial.number) % (2**32)
            try:  # Optuna's private random states (TPE and its random start-up sampler), 3.x to 5.x
                self._rng.rng.seed(trial_seed)
                self._random_sampler._rng.rng.seed(trial_seed)
            except AttributeError:  # a future Optuna: fall back to one seeded stream per process
                pass
            super().before_trial(study, trial)

    return TrialSeededTPESampler(seed=seed, constant_liar=True)


def expected_steps(cfg: TrainConfig, train_count: int) -> int:
    """Optimizer steps a trial of ``cfg`` takes on a training set of ``train_count`` images
    (validation held out), as the Trainer counts them."""
    n = train_count - round(train_count * cfg.val_fraction)
    per_epoch = max(1, math.ceil(n / cfg.batch_size))
    return min(per_epoch * cfg.epochs, cfg.max_steps or 1 << 62)


def _make_pruner(space: SearchSpace, steps: int) -> Any:
    """The space's pruner; ``min_resource`` defaults to a ninth of ``steps`` (the base config's trial
    length), so successive halving has rungs at 1/9, 1/3 and all of a trial with reduction factor 3."""
    import optuna

    spec = space.pruner
    min_resource = spec.min_resource or max(1, steps // spec.reduction_factor ** 2)
    if spec.type == "none":
        return optuna.pruners.NopPruner()
    if spec.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=min_resource, max_resource=max(steps, min_resource),
                                              reduction_factor=spec.reduction_factor)
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=min_resource, reduction_factor=spec.reduction_factor,
        min_early_stopping_rate=spec.min_early_stopping_rate)


def _identity(space: SearchSpace, options: SweepOptions) -> dict[str, Any]:
    """What makes trials of one study comparable: recorded in the study, checked on every re-run."""
    shape = {k: v for k, v in space.to_dict().items() if k not in ("name", "source", "description")}
    return to_jsonable({"space": shape, "overrides": options.overrides,
                        "seed": options.seed, "objective": OBJECTIVE})


def _open_study(space: SearchSpace, options: SweepOptions, storage: Any, study_name: str, steps: int) -> Any:
    import optuna

    identity = _identity(space, options)
    kwargs = dict(study_name=study_name, storage=storage, sampler=_make_sampler(options.seed),
                  pruner=_make_pruner(space, steps), direction="maximize")
    try:
        study = optuna.create_study(**kwargs, load_if_exists=False)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=kwargs["sampler"],
                                  pruner=kwargs["pruner"])
        created = False
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise ConfigError(f"study {study_name!r} exists and minimises; give another --study-name")
    recorded = study.user_attrs.get("digitlab")
    if recorded is None:
        study.set_user_attr("digitlab", identity)
    elif json.dumps(recorded, sort_keys=True) != json.dumps(identity, sort_keys=True):
        diff = _first_difference(recorded, identity)
        raise ConfigError(f"study {study_name!r} was started with other settings ({diff}); continue it with "
                          "the same space, --set and --seed, or give another --study-name / --out")
    if created:
        for params in space.first_trials:
            study.enqueue_trial(params, skip_if_exists=True)
    return study


def _first_difference(old: Any, new: Any, path: str = "") -> str:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                return _first_difference(old.get(key), new.get(key), f"{path}.{key}" if path else key)
    return f"{path}: was {json.dumps(old)}, now {json.dumps(new)}"


# --------------------------------------------------------------------------- the trial

class PruningCallback(Callback):
    """Reports validation accuracy ``reports`` times per trial and stops a trial Optuna prunes.

    Every ``total_steps // reports`` steps (and at epoch ends) it scores the first
    ``report_images`` images of the validation split — cheap, and the same images for every trial —
    reports that as the intermediate value, and asks the pruner. A pruned trial is stopped through
    the trainer's stop mechanism right after that step. ``active=False`` records the values (the
    pruner compares later trials with them) but never stops this trial.
    """

    name = "optuna_pruning"

    def __init__(self, trial: optuna.Trial, reports: int, active: bool = True,
                 report_images: int = REPORT_IMAGES) -> None:
        self.trial, self.reports, self.active = trial, reports, active
        self.report_images = report_images
        self.every = 1
        self.total_steps = 0
        self.pruned_at: int | None = None
        self.reported: list[tuple[int, float]] = []

    def on_fit_start(self, trainer: Trainer) -> None:
        self.total_steps = trainer.total_steps
        self.every = max(1, self.total_steps // self.reports)

    def on_step_end(self, trainer: Trainer, **_: Any) -> None:
        step = trainer.state.step
        if step % self.every == 0 and trainer.stop_reason is None:
            self._report(trainer, step)

    def on_epoch_end(self, trainer: Trainer, metrics: dict[str, Any]) -> None:
        if self.pruned_at is None:
            self._report(trainer, trainer.state.step)

    def _report(self, trainer: Trainer, step: int) -> None:
        val = trainer.val_split
        if val is None or not len(val) or (self.reported and self.reported[-1][0] == step):
            return
        from digitlab.data.splits import Split
        from digitlab.train.loop import evaluate_split

        subset = Split(val.images[:self.report_images], val.labels[:self.report_images])
        value = evaluate_split(trainer.raw_model, subset, trainer.config.eval_batch_size)["accuracy"]
        trainer.model.train()
        self.trial.report(value, step)
        self.reported.append((step, value))
        # asked even when inactive: successive halving records the rung values later trials compete with
        if step < self.total_steps and self.trial.should_prune() and self.active:
            self.pruned_at = step
            trainer.request_stop(f"pruned by optuna at step {step} (validation accuracy {value:.4f})")


class _SurplusTrial(Exception):
    """A worker created a trial after the study had reached n_trials (a race between workers)."""


@dataclass
class _Context:
    space: SearchSpace
    options: SweepOptions
    dataset: Dataset
    ran: list[int] = field(default_factory=list)


def _suggest(trial: optuna.Trial, param: Param) -> Any:
    if param.type == "categorical":
        return trial.suggest_categorical(param.name, list(param.choices))
    assert param.low is not None and param.high is not None
    if param.type == "int":
        return trial.suggest_int(param.name, int(param.low), int(param.high),
                                 step=int(param.step or 1), log=param.log)
    return trial.suggest_float(param.name, param.low, param.high, step=param.step, log=param.log)


def recipe(space: SearchSpace, params: dict[str, Any], options: SweepOptions) -> TrainConfig:
    """The TrainConfig of the trial with ``params`` as best.yaml records it: the space, the trial's
    values, ``--set``, and the training seed (``--set seed=`` if given, else ``--seed``)."""
    cfg = space.config_for(params, options.overrides)
    return cfg if "seed" in options.overrides else cfg.override(seed=options.seed)


def trial_config(space: SearchSpace, params: dict[str, Any], options: SweepOptions) -> TrainConfig:
    """The TrainConfig one trial trains: its :func:`recipe` on the run-time ``--device``."""
    return recipe(space, params, options).override(device=options.device)


def _objective(ctx: _Context) -> Callable[[optuna.Trial], float]:
    import optuna
    from optuna.trial import TrialState

    def objective(trial: optuna.Trial) -> float:
        ctx.ran.append(trial.number)
        trials = trial.study.get_trials(deepcopy=False)
        alive = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        ahead = sum(1 for t in trials if t.number < trial.number and t.state in alive)
        if ahead >= ctx.options.n_trials:
            trial.set_user_attr("surplus", True)
            raise _SurplusTrial(f"trial {trial.number}: the study already has {ahead} trials")
        params = {p.name: _suggest(trial, p) for p in ctx.space.params}
        for t in trials:  # same parameters as a finished trial: deterministic training, same value
            if t.state == TrialState.COMPLETE and t.params == params and t.value is not None:
                trial.set_user_attr("duplicate_of", t.number)
                trial.set_user_attr("seconds", 0.0)
                return float(t.value)
        completed = sum(1 for t in trials if t.state == TrialState.COMPLETE)
        callback = PruningCallback(trial, ctx.space.reports, active=completed >= ctx.space.pruner.startup_trials)
        cfg = trial_config(ctx.space, params, ctx.options)
        from digitlab.train.run import train_run

        t0 = time.perf_counter()
        result = train_run(cfg, None, progress=False, callbacks=[callback], dataset=ctx.dataset,
                           evaluate_test=False)
        trial.set_user_attr("seconds", round(time.perf_counter() - t0, 3))
        trial.set_user_attr("steps", int(result.metrics["steps"]))
        if result.metrics.get("val_loss") is not None:
            trial.set_user_attr("val_loss", float(result.metrics["val_loss"]))
        if callback.pruned_at is not None:
            trial.set_user_attr("pruned_at_step", callback.pruned_at)
            raise optuna.TrialPruned(f"stopped at step {callback.pruned_at} of {callback.total_steps}")
        value = result.metrics.get("val_accuracy")
        if value is None or math.isnan(float(value)):
            raise ConfigError("a trial finished without a validation accuracy (is val_fraction > 0?)")
        return float(value)

    return objective


# --------------------------------------------------------------------------- outputs

def _rows(study: Any) -> list[TrialRow]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("surplus"):
            continue
        value = t.value
        if value is None and t.intermediate_values:
            value = t.intermediate_values[max(t.intermediate_values)]
        note = ""
        if "pruned_at_step" in t.user_attrs:
            note = f"pruned at step {t.user_attrs['pruned_at_step']}"
        elif "duplicate_of" in t.user_attrs:
            note = f"same parameters as trial {t.user_attrs['duplicate_of']}: its value, not retrained"
        seconds = t.user_attrs.get("seconds")
        if seconds is None and t.datetime_start and t.datetime_complete:
            seconds = round((t.datetime_complete - t.datetime_start).total_seconds(), 3)
        rows.append(TrialRow(t.number, t.state.name, value, dict(t.params), seconds,
                             t.user_attrs.get("steps"), note))
    return rows


def _trials_csv(rows: list[TrialRow], params: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["number", "state", "value", "seconds", "steps", *params, "note"])
    for r in rows:
        writer.writerow([r.number, r.state, "" if r.value is None else f"{r.value:.6f}",
                         "" if r.seconds is None else f"{r.seconds:.2f}", "" if r.steps is None else r.steps,
                         *["" if r.params.get(p) is None else r.params[p] for p in params], r.note])
    return buf.getvalue()


def _best_yaml(space: SearchSpace, best: Any, options: SweepOptions, study_name: str, path: Path) -> str:
    cfg = recipe(space, dict(best.params), options)
    params = ", ".join(f"{k}={v!r}" for k, v in best.params.items())
    header = (f"# Best trial {best.number} of sweep study {study_name!r} (space {space.name}):\n"
              f"#   validation accuracy {best.value:.4f} with {params}\n"
              f"# Train it: digitlab train --config {path} --out runs/best\n")
    return header + cfg.to_yaml()


def _history_png(rows: list[TrialRow]) -> bytes:
    from digitlab.analysis.plots import fig_to_png, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    done = [r for r in rows if r.state == "COMPLETE" and r.value is not None]
    pruned = [r for r in rows if r.state == "PRUNED" and r.value is not None]
    ax.scatter([r.number for r in done], [r.value for r in done], color="tab:blue", label="complete", zorder=3)
    if pruned:
        ax.scatter([r.number for r in pruned], [r.value for r in pruned], color="tab:gray", marker="x",
                   label="pruned (last intermediate value)", zorder=3)
    best, xs, ys = -math.inf, [], []
    for r in sorted(done, key=lambda r: r.number):
        best = max(best, float(r.value or 0.0))
        xs.append(r.number)
        ys.append(best)
    if xs:
        last = max(r.number for r in rows)
        ax.step([*xs, last], [*ys, ys[-1]], where="post", color="tab:red", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return fig_to_png(fig)


def _importance_png(importances: dict[str, float]) -> bytes:
    from digitlab.analysis.plots import fig_to_png, pyplot

    plt = pyplot()
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel("importance (PED-ANOVA, sums to 1)")
    ax.set_title("hyperparameter importance for validation accuracy")
    ax.grid(axis="x", alpha=0.3)
    return fig_to_png(fig)


def _importances(study: Any, notes: list[str]) -> dict[str, float] | None:
    import optuna
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    varied = [name for name in {k for t in done for k in t.params}
              if len({repr(t.params.get(name)) for t in done}) > 1]
    if len(done) < 2 or not varied:
        notes.append(f"parameter importance needs >= 2 completed trials with different parameters "
                     f"({len(done)} completed); {IMPORTANCE_PNG} not drawn")
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError, ZeroDivisionError) as exc:
        notes.append(f"parameter importance could not be computed ({str(exc).splitlines()[0]}); "
                     f"{IMPORTANCE_PNG} not drawn")
        return None
    values = {k: float(v) for k, v in raw.items()}
    if not values or not all(math.isfinite(v) for v in values.values()) or sum(values.values()) <= 0:
        notes.append(f"parameter importance is undefined for these trials (no parameter explains the "
                     f"differences yet); {IMPORTANCE_PNG} not drawn")
        return None
    return values


def _score_best(space: SearchSpace, best: Any, ctx: _Context, out: Path, notes: list[str]) -> TestScore | None:
    """Score the test set once, for the best trial: retrain its recipe into OUT/best-trial-NNNN."""
    from digitlab.checkpoint import META_FILE
    from digitlab.train.run import train_run

    number = int(best.user_attrs.get("duplicate_of", best.number))
    run_dir = out / f"best-trial-{number:04d}"
    if (run_dir / META_FILE).is_file():
        meta = json.loads((run_dir / META_FILE).read_text())
        metrics = meta.get("metrics", {})
        return TestScore(number, str(run_dir), metrics.get("test_accuracy"), metrics.get("test_loss"),
                         metrics.get("val_accuracy"), reused=True)
    if run_dir.exists():
        # another worker is retraining it (or was interrupted): wait about as long as the trial took
        deadline = time.monotonic() + 2 * float(best.user_attrs.get("seconds") or 0) + 60
        while not (run_dir / META_FILE).is_file() and time.monotonic() < deadline:
            time.sleep(WAIT_SECONDS)
        if (run_dir / META_FILE).is_file():
            return _score_best(space, best, ctx, out, notes)
        notes.append(f"{run_dir} exists without a finished run (another worker is scoring it, or it was "
                     "interrupted: delete it and re-run to score the test set)")
        return None
    try:  # claim the folder atomically: train_run accepts an empty one, so two workers could both train
        run_dir.mkdir(parents=True)
    except FileExistsError:  # another worker claimed it first: wait for its score
        return _score_best(space, best, ctx, out, notes)
    if ctx.options.progress:
        print(f"sweep: retraining best trial {number} into {run_dir} to score the test set once",
              file=sys.stderr, flush=True)
    cfg = trial_config(space, dict(best.params), ctx.options)
    try:
        result = train_run(cfg, run_dir, progress=ctx.options.progress, dataset=ctx.dataset)
    except RunExistsError:  # created by another worker meanwhile
        return _score_best(space, best, ctx, out, notes)
    m = result.metrics
    val = m.get("val_accuracy")
    if val is not None and best.value is not None and abs(float(val) - float(best.value)) > 1e-9:
        notes.append(f"the retrained best trial reached val_accuracy {val:.4f}, the trial {best.value:.4f} "
                     "(training was not bit-for-bit repeatable on this device)")
    return TestScore(number, str(run_dir), m.get("test_accuracy"), m.get("test_loss"), val)


# --------------------------------------------------------------------------- the sweep

def _counts(study: Any) -> TrialCounts:
    counts = TrialCounts()
    for t in study.get_trials(deepcopy=False):
        if not t.user_attrs.get("surplus"):
            name = t.state.name.lower()
            setattr(counts, name, getattr(counts, name) + 1)
    return counts


def _say(options: SweepOptions, message: str) -> None:
    if options.progress:
        print(message, file=sys.stderr, flush=True)


def _trial_line(study: Any, number: int) -> str:
    t = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    params = ", ".join(f"{k}={_fmt(v)}" for k, v in t.params.items())
    seconds = t.user_attrs.get("seconds")
    tail = f"  {seconds:.1f}s" if seconds is not None else ""
    if t.state.name == "COMPLETE":
        extra = f" (same as trial {t.user_attrs['duplicate_of']})" if "duplicate_of" in t.user_attrs else ""
        return f"trial {number}: val_accuracy {t.value:.4f}  {params}{extra}{tail}"
    if t.state.name == "PRUNED":
        return f"trial {number}: pruned at step {t.user_attrs.get('pruned_at_step')}  {params}{tail}"
    return f"trial {number}: {t.state.name.lower()}  {params}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_sweep(space: SearchSpace, out: str | os.PathLike[str], options: SweepOptions) -> SweepResult:
    """Run (or continue) the sweep of ``space`` until the study has ``options.n_trials`` finished trials;
    write trials.csv, best.yaml, the figures and sweep.json into ``out``."""
    import optuna

    from digitlab.data import load_dataset

    if options.n_trials < 1:
        raise ConfigError(f"--n-trials must be >= 1, got {options.n_trials}")
    if options.timeout is not None and options.timeout <= 0:
        raise ConfigError(f"--timeout must be > 0 seconds, got {options.timeout}")
    space.check(options.overrides)
    base = trial_config(space, {}, options)  # also checks --device
    out = Path(out)
    storage_url = options.storage or default_storage(out)
    study_name = options.study_name or space.name
    _check_out(out, storage_url, study_name)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    dataset = load_dataset(base.dataset, options.data_dir, progress=options.progress)
    # a database elsewhere is opened before the folder is made: a bad --storage leaves nothing behind
    storage = _open_storage(storage_url, options.stale_seconds) if options.storage else None
    out.mkdir(parents=True, exist_ok=True)
    if storage is None:
        storage = _open_storage(storage_url, options.stale_seconds)
    summary_path = out / SUMMARY_FILE
    if not summary_path.exists():  # marks the folder as this sweep's (a re-run may continue in it)
        write_json_atomic(summary_path, {"status": "running", "study_name": study_name,
                                         "storage": redact_url(storage_url), "space": space.name})
    study = _open_study(space, options, storage, study_name, expected_steps(base, len(dataset.train_labels)))
    ctx = _Context(space, options, dataset)
    objective = _objective(ctx)
    notes: list[str] = []
    t0 = time.perf_counter()
    _say(options, f"sweep {study_name}: {space.description or space.name}; "
                  f"{', '.join(p.describe() for p in space.params)}; storage {redact_url(storage_url)}")
    waiting_said = False
    while True:
        counts = _counts(study)
        finished = counts.finished
        if finished >= options.n_trials:
            break
        if options.timeout is not None and time.perf_counter() - t0 >= options.timeout:
            notes.append(f"--timeout {options.timeout:g}s reached: {finished} of {options.n_trials} trials finished; "
                         "re-run the same command to continue")
            break
        if finished + counts.running >= options.n_trials:
            # the rest is running in other workers: wait for them, so this summary covers the whole study;
            # a trial of a killed worker is failed after stale_seconds without heartbeat, then redone here
            if not waiting_said:
                _say(options, f"waiting for {counts.running} trial(s) running in other workers")
                waiting_said = True
            time.sleep(WAIT_SECONDS)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            continue
        before = len(ctx.ran)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(objective, n_trials=1, catch=(_SurplusTrial,), gc_after_trial=False)
        for number in ctx.ran[before:]:
            t = study.get_trials(deepcopy=False)
            if any(x.number == number and not x.user_attrs.get("surplus") for x in t):
                _say(options, _trial_line(study, number))
    return _finish(study, space, options, ctx, out, storage_url, study_name, notes, time.perf_counter() - t0)


def _finish(study: Any, space: SearchSpace, options: SweepOptions, ctx: _Context, out: Path, storage_url: str,
            study_name: str, notes: list[str], seconds: float) -> SweepResult:
    from optuna.trial import TrialState

    best_trial: BestTrial | None = None
    test: TestScore | None = None
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        best = study.best_trial
        write_text_atomic(out / BEST_FILE, _best_yaml(space, best, options, study_name, out / BEST_FILE))
        best_trial = BestTrial(best.number, float(best.value), dict(best.params), str(out / BEST_FILE))
        test = _score_best(space, best, ctx, out, notes)
    else:
        notes.append("no trial completed: no best configuration yet")
    # read after the test scoring: with several workers, the freshest view of the study wins the files
    rows = _rows(study)
    write_text_atomic(out / TRIALS_FILE, _trials_csv(rows, [p.name for p in space.params]))
    figures: list[str] = []
    if any(r.value is not None for r in rows):
        write_bytes_atomic(out / HISTORY_PNG, _history_png(rows))
        figures.append(str(out / HISTORY_PNG))
    importances = _importances(study, notes)
    if importances is not None:
        write_bytes_atomic(out / IMPORTANCE_PNG, _importance_png(importances))
        figures.append(str(out / IMPORTANCE_PNG))
    counts = _counts(study)
    result = SweepResult(
        out=str(out), space=space.name, study_name=study_name, storage=redact_url(storage_url),
        objective=OBJECTIVE, n_trials=options.n_trials, counts=counts, ran_here=len(
            [n for n in ctx.ran if any(r.number == n for r in rows)]),
        seconds=round(seconds, 2), trials=rows, best=best_trial, test=test, importances=importances,
        figures=figures, notes=notes)
    write_json_atomic(out / SUMMARY_FILE, {"status": "done", **result.to_dict()})
    return result
