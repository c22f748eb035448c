"""``digitlab label-issues``: images whose given label is most likely wrong (confident learning)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from digitlab.cli import HelpFormatter, add_data_args, add_device_arg, add_json_arg, add_model_arg, add_quiet_arg

DEFAULT_FOLDS = 3

EPILOG = """examples:
  digitlab label-issues                                   # MNIST test set, shipped model
  digitlab label-issues --top 24 --plots label-issues     # figure of the 24 top suspects
  digitlab label-issues --top 24 --fill --plots li-grid   # fewer flagged? fill the grid with runners-up
  digitlab label-issues --split train --folds 3 --json    # MNIST training set, 3-fold cross-fitting
  digitlab label-issues --dataset fashion-mnist --split train --limit 10000
  digitlab label-issues --model runs/fashion --split test --json

Probabilities are out-of-sample: on the test split, the given model's (it never saw those
images); on the train split, K-fold cross-fitting: the `fast` recipe (configs/fast-cnn.yaml,
170 steps of batch 256) is trained K times on K-1 folds and predicts the held-out fold —
about 10-40 s per fold on a 2-core CPU. Issues are flagged by confident learning
(Northcutt et al. 2021; prune-by-noise-rate, as cleanlab's default) and ranked by label
quality (lowest first); "score" is that quality (self-confidence by default), "suggested"
the model's top class.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label-issues", help="rank images whose given label is most likely wrong",
                       description="Confident learning on out-of-sample predicted probabilities: per-class "
                                   "thresholds, the confident joint, and the examples whose given label it "
                                   "rejects, most suspicious first.",
                       formatter_class=HelpFormatter, epilog=EPILOG)
    add_model_arg(p, positional=False, default=None)
    p.add_argument("--split", choices=("test", "train"), default="test",
                   help="test: the model's probabilities (--model, default 'default'); train: K-fold "
                        "cross-fitting of the fast recipe (no --model)")
    p.add_argument("--folds", type=int, default=None, metavar="K",
                   help=f"cross-fitting folds for --split train (default {DEFAULT_FOLDS}; each fold is one "
                        "short training)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use the first N images of the split")
    p.add_argument("--top", type=int, default=25, metavar="N",
                   help="list the N most suspicious images (0 = every flagged image)")
    p.add_argument("--method", choices=("prune_by_noise_rate", "confident_learning"),
                   default="prune_by_noise_rate",
                   help="flagging rule: prune_by_noise_rate (cleanlab's default) or confident_learning "
                        "(every off-diagonal example of the confident joint)")
    p.add_argument("--rank-by", choices=("self_confidence", "normalized_margin"), default="self_confidence",
                   help="label-quality score used for the ranking (lower = more suspicious)")
    p.add_argument("--temperature", default="auto", metavar="T",
                   help="divide the logits by T before confident learning: auto = fitted to the split "
                        "(minimum log-loss; undoes label smoothing's confidence cap), none = 1, or a number")
    p.add_argument("--fill", action="store_true",
                   help="when fewer than --top images are flagged (an accurate model flags few), list the next "
                        "lowest-quality images whose given label the model rejects too, marked \"flagged\": "
                        "false (the exploration report's list and grid)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and the fold trainings")
    p.add_argument("--plots", metavar="DIR", default=None,
                   help="a new folder for label_issues.png (a grid of the top suspects)")
    add_data_args(p, from_run=True)
    add_device_arg(p)
    add_json_arg(p, "the issues")
    add_quiet_arg(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from digitlab.analysis import label_issues as li
    from digitlab.checkpoint import DEFAULT_DATASET, dataset_of, load_checkpoint, resolve_dataset
    from digitlab.data import load_dataset
    from digitlab.errors import ConfigError
    from digitlab.utils import ensure_new_dir, resolve_device, to_jsonable

    if args.limit is not None and args.limit < 2:
        raise ConfigError(f"--limit must be >= 2, got {args.limit}")
    if args.top < 0:
        raise ConfigError(f"--top must be >= 0, got {args.top}")
    temperature_spec = _parse_temperature(args.temperature)
    plots_dir = Path(args.plots) if args.plots else None
    if plots_dir is not None and plots_dir.exists() and (not plots_dir.is_dir() or any(plots_dir.iterdir())):
        ensure_new_dir(plots_dir, "plots directory")  # fails now, before the slow part
    say = li.stderr_progress(args.quiet)
    device = resolve_device(args.device)
    t0 = time.perf_counter()

    if args.split == "train":
        if args.model is not None:
            raise ConfigError("--split train uses K-fold cross-fitting (a model that saw the training images "
                              "would not give out-of-sample probabilities); --model applies to --split test")
        folds = DEFAULT_FOLDS if args.folds is None else args.folds
        if folds < 2:
            raise ConfigError(f"--folds must be >= 2, got {folds}")
        dataset = args.dataset or DEFAULT_DATASET
        ds = load_dataset(dataset, args.data_dir, progress=False)
        images, labels = ds.split("train")
        n = min(len(labels), args.limit or len(labels))
        images, labels = images[:n], labels[:n]
        if say:
            say(f"cross-fitting {li.CROSS_FIT_RECIPE} on {n} {dataset} training images, {folds} folds")
        probs = li.cross_fit_probabilities(images, labels, folds, args.seed, device=str(device), progress=say)
        source = f"{folds}-fold cross-fitting of {li.CROSS_FIT_RECIPE}"
        model_name = None
    else:
        if args.folds is not None:
            raise ConfigError("--folds applies to --split train (the test split uses the model's probabilities)")
        model_name = args.model or "default"
        model, meta = load_checkpoint(model_name, device=device)
        dataset = resolve_dataset(meta, args.dataset)
        if dataset != dataset_of(meta):
            raise ConfigError(f"{model_name} was trained on {dataset_of(meta)}, not {dataset}: its probabilities "
                              f"say nothing about {dataset}'s labels (give a model trained on {dataset}, "
                              "or --split train)")
        ds = load_dataset(dataset, args.data_dir, progress=False)
        images, labels = ds.split("test")
        n = min(len(labels), args.limit or len(labels))
        images, labels = images[:n], labels[:n]
        probs = li.model_probabilities(model, images)
        source = f"model {model_name}"
    if probs.shape[1] != ds.num_classes:
        raise ConfigError(f"the probabilities have {probs.shape[1]} classes, {dataset} has {ds.num_classes}")

    y = labels.cpu().numpy()
    ranked = li.rank_issues(y, probs, ds.spec.class_names, method=args.method, rank_by=args.rank_by,
                            temperature=temperature_spec, top=args.top, fill=args.fill)
    found, rows = ranked.found, ranked.rows + ranked.runners_up
    result: dict[str, Any] = {
        "dataset": dataset, "split": args.split, "n": n, "probabilities": source, "model": model_name,
        "temperature": ranked.temperature, "method": args.method, "rank_by": args.rank_by,
        "n_flagged": int(len(found.indices)),
        "accuracy": ranked.accuracy,
        "thresholds": [float(t) for t in found.thresholds],
        "seconds": time.perf_counter() - t0,
        "issues": [{**r, "flagged": i < len(ranked.rows)} for i, r in enumerate(li.rows_as_dicts(rows))],
    }
    if plots_dir is not None:
        from digitlab.utils import write_bytes_atomic

        out = ensure_new_dir(plots_dir, "plots directory")
        shown = rows[:48]
        notes = [f"#{r.index}" + (" flagged" if args.fill and i < len(ranked.rows) else "")
                 for i, r in enumerate(shown)]
        png = li.suspects_png(images[[r.index for r in shown]], shown, ds.spec.class_names,
                              title=f"{dataset} {args.split}: most likely label errors (given→suggested, "
                                    f"{args.rank_by.replace('_', ' ')}"
                                    + ("; flagged = by confident learning" if args.fill else "") + ")",
                              notes=notes)
        write_bytes_atomic(out / "label_issues.png", png)
        result["plots"] = [str(out / "label_issues.png")]
    if say:
        say(f"done in {result['seconds']:.0f} s")
    if args.json:
        print(json.dumps(to_jsonable(result)))
    else:
        print(format_summary(result))
    return 0


def _parse_temperature(text: str) -> float | None:
    """``--temperature``: None for auto (fitted later), else the value."""
    import math

    from digitlab.errors import ConfigError

    if text == "auto":
        return None
    if text == "none":
        return 1.0
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"--temperature must be auto, none or a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"--temperature must be > 0, got {text}")
    return value


def format_summary(r: dict[str, Any]) -> str:
    lines = [f"{r['dataset']} {r['split']} ({r['n']} images), probabilities from {r['probabilities']} "
             f"(accuracy {100 * r['accuracy']:.2f}%, temperature {r['temperature']:.3g})",
             f"{r['n_flagged']} images flagged by confident learning ({r['method']}); "
             f"ranked by {r['rank_by']} (lower = more suspicious)", ""]
    lines.append(f"  {'index':>6}  {'given':>12}  {'suggested':>12}  {'score':>6}")
    for row in r["issues"]:
        mark = "" if row.get("flagged", True) else "  (not flagged)"
        lines.append(f"  {row['index']:>6}  {row['name']:>12}  {row['suggested_name']:>12}  {row['score']:6.3f}{mark}")
    if r.get("plots"):
        lines.append("")
        lines.append("plots: " + ", ".join(r["plots"]))
    return "\n".join(lines)
