"""``digitlab robustness MODEL``: the MNIST-C style corruption suite and FGSM/PGD attacks."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from digitlab.cli import (
    HelpFormatter,
    add_data_args,
    add_device_arg,
    add_json_arg,
    add_model_arg,
    add_quiet_arg,
)

ADVERSARIAL_LIMIT = 1000
"""Default number of test images attacked (PGD costs ``steps`` forward+backward passes per image)."""

EPILOG = """examples:
  digitlab robustness default                                  # 15 corruptions, whole test set
  digitlab robustness runs/a --suite corruptions --limit 2000 --plots runs/a/robustness
  digitlab robustness default --suite adversarial --eps 0.1,0.2,0.3 --steps 40 --step-size 0.01
  digitlab robustness default --suite all --limit 1000 --json
  digitlab robustness runs/fashion --corruptions fog,spatter --severity 0.5

corruptions: shot_noise impulse_noise glass_blur motion_blur shear scale rotate brightness
translate stripe fog spatter dotted_line zigzag canny_edges (Mu & Gilmer 2019, MNIST-C), each
at MNIST-C's published strength at --severity 1 (the output lists the parameter of each).
Accuracy is on the test split of the model's own dataset. Time on a 2-core CPU with the shipped
model: about 1-2 s per 1000 images per corruption; PGD-40 about 1-3 min per 1000 images for
three ε values (images already broken are not attacked further).
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("robustness", help="accuracy under 15 MNIST-C corruptions and FGSM/PGD attacks",
                       description="Robustness of a saved model on the test split: accuracy under the 15 "
                                   "MNIST-C corruptions (per corruption and mean) and under L∞ FGSM and "
                                   "PGD attacks at each ε, with sanity checks of the attack.",
                       formatter_class=HelpFormatter, epilog=EPILOG)
    add_model_arg(p, positional=True)
    p.add_argument("--suite", choices=("corruptions", "adversarial", "all"), default="corruptions",
                   help="which tests to run")
    p.add_argument("--corruptions", default="all", metavar="NAMES",
                   help="comma-separated subset of the corruptions (the mean is over those run)")
    p.add_argument("--severity", type=float, default=1.0,
                   help="multiplier of every corruption's strength, in (0, 3]; 1 = MNIST-C's setting")
    p.add_argument("--eps", default="0.1,0.2,0.3", help="comma-separated L∞ budgets on [0, 1] pixels")
    p.add_argument("--steps", type=int, default=40, help="PGD steps")
    p.add_argument("--step-size", type=float, default=0.01, help="PGD step size (pixels in [0, 1])")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="use the first N test images (default: all of them for corruptions, "
                        f"{ADVERSARIAL_LIMIT} for the adversarial suite)")
    p.add_argument("--seed", type=int, default=0, help="seed of the corruptions and PGD random starts")
    p.add_argument("--batch-size", type=int, default=1000, help="images per batch")
    p.add_argument("--plots", metavar="DIR", default=None,
                   help="a new folder for the figures: corruption_examples.png, corruption_accuracy.png, "
                        "adversarial_accuracy.png")
    add_data_args(p, from_run=True)
    add_device_arg(p)
    add_json_arg(p, "the results")
    add_quiet_arg(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from digitlab.analysis import adversarial, corruptions
    from digitlab.checkpoint import load_checkpoint, resolve_dataset
    from digitlab.cli import model_from_args
    from digitlab.data import load_dataset
    from digitlab.errors import ConfigError
    from digitlab.utils import ensure_new_dir, resolve_device, to_jsonable

    source = model_from_args(args)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    run_corr = args.suite in ("corruptions", "all")
    run_adv = args.suite in ("adversarial", "all")
    names = corruptions.parse_corruptions(args.corruptions)
    severity = corruptions.check_severity(args.severity)
    eps = adversarial.parse_eps(args.eps)
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if not args.step_size > 0:
        raise ConfigError(f"--step-size must be > 0, got {args.step_size}")
    plots_dir = Path(args.plots) if args.plots else None
    if plots_dir is not None and plots_dir.exists() and (not plots_dir.is_dir() or any(plots_dir.iterdir())):
        ensure_new_dir(plots_dir, "plots directory")  # fails now, before the slow part

    device = resolve_device(args.device)
    model, meta = load_checkpoint(source, device=device)
    dataset = resolve_dataset(meta, args.dataset)
    ds = load_dataset(dataset, args.data_dir, progress=False)
    if ds.num_classes != _num_outputs(model, ds.test_images[:1]):
        raise ConfigError(f"{source} predicts a different number of classes than {dataset} has")
    images, labels = ds.test_images, ds.test_labels
    say = _progress(args.quiet)

    result: dict[str, Any] = {"model": source, "architecture": meta.get("model"), "dataset": dataset,
                              "split": "test", "n": 0, "training": training_description(meta),
                              "corruptions": None, "adversarial": None}
    corr = adv = None
    if run_corr:
        n = min(len(labels), args.limit or len(labels))
        t0 = time.perf_counter()
        corr = corruptions.evaluate_corruptions(
            model, images[:n], labels[:n], names, severity, args.seed, args.batch_size,
            progress=(lambda name: say(f"corruption {name}")) if say else None)
        result["corruptions"] = corr.to_dict()
        result["n"] = n
        if say:
            say(f"corruptions done in {time.perf_counter() - t0:.0f} s")
    if run_adv:
        n = min(len(labels), args.limit or ADVERSARIAL_LIMIT)
        adv = adversarial.evaluate_adversarial(
            model, images[:n], labels[:n], eps, args.steps, args.step_size, args.seed,
            batch_size=min(args.batch_size, 500), progress=(lambda m: say(f"attack {m}")) if say else None)
        result["adversarial"] = adv.to_dict()
        result["n"] = max(result["n"], n)
        for w in adv.warnings if args.json else ():  # (the text summary lists them)
            print(f"digitlab robustness: warning: {w}", file=sys.stderr)
    if plots_dir is not None:
        result["plots"] = write_plots(plots_dir, corr, adv, images[:3], names, severity, args.seed,
                                      title=f"{source} on {dataset}")
    if args.json:
        print(json.dumps(to_jsonable(result)))
    else:
        print(format_summary(result))
    return 0


def training_description(meta: dict[str, Any]) -> dict[str, Any]:
    """How the model was trained, as far as robustness goes: standard or adversarial (attack, ε, steps,
    step size, ramp), from the run's recorded config (``adversarial`` and ``adv_*`` fields)."""
    raw = meta.get("config")
    cfg: dict[str, Any] = raw if isinstance(raw, dict) else {}
    kind = cfg.get("adversarial")
    if kind not in ("pgd", "fgsm"):
        return {"adversarial": None, "description": "standard training (clean batches)"}
    eps = float(cfg.get("adv_eps", 0.3))
    steps = int(cfg.get("adv_steps", 7)) if kind == "pgd" else 1
    size = cfg.get("adv_step_size")
    step_size = (1.25 * eps if kind == "fgsm" else float(size) if size is not None else 2.5 * eps / steps)
    ramp = float(cfg.get("adv_ramp", 0.0) or 0.0)
    text = (f"adversarial training: L∞ {kind.upper()}"
            + (f"-{steps}" if kind == "pgd" else "") + f" at ε={eps:g}, step {step_size:.4g}, random start"
            + (f", ε ramped over {ramp:g} epoch(s)" if ramp else ""))
    return {"adversarial": kind, "eps": eps, "steps": steps, "step_size": step_size, "ramp_epochs": ramp,
            "description": text}


def _num_outputs(model: Any, sample: Any) -> int:
    from digitlab.models.forward import predict_logits

    return int(predict_logits(model, sample).shape[1])


def _progress(quiet: bool) -> Any:
    if quiet:
        return None
    return lambda msg: print(f"robustness: {msg}", file=sys.stderr, flush=True)


def write_plots(out_dir: Path, corr: Any, adv: Any, example_images: Any, names: list[str], severity: float,
                seed: int, title: str) -> list[str]:
    """The figures of the suites that ran, as PNGs in the new folder ``out_dir``."""
    from digitlab.analysis import adversarial, corruptions
    from digitlab.utils import ensure_new_dir, write_files_atomic

    out = ensure_new_dir(out_dir, "plots directory")
    figures: dict[str, bytes] = {}
    if corr is not None:
        figures["corruption_examples.png"] = corruptions.examples_png(example_images, names, severity, seed)
        figures["corruption_accuracy.png"] = corruptions.accuracy_bars_png(corr, title=f"{title}: corruptions")
    if adv is not None:
        figures["adversarial_accuracy.png"] = adversarial.accuracy_curve_png(adv, title=f"{title}: L∞ attacks")
    return write_files_atomic(out, figures)


def format_summary(r: dict[str, Any]) -> str:
    """Readable summary of a robustness result."""
    lines = [f"{r['model']} ({r.get('architecture')}) on {r['dataset']} {r['split']}"]
    if r.get("training"):
        lines.append(f"trained with {r['training']['description']}")
    c = r.get("corruptions")
    if c:
        lines.append(f"corruptions: {c['n']} images, severity {c['severity']:g}, seed {c['seed']} "
                     f"({c['seconds']:.0f} s)")
        lines.append(f"  {'clean':<14} {100 * c['clean_accuracy']:6.2f}%")
        for name, acc in c["per_corruption"].items():
            lines.append(f"  {name:<14} {100 * acc:6.2f}%   {c['parameters'][name]}")
        lines.append(f"  {'mean':<14} {100 * c['mean']:6.2f}%   over {len(c['per_corruption'])} corruptions")
    a = r.get("adversarial")
    if a:
        lines.append(f"adversarial: {a['n']} images, {a['attack']} ({a['seconds']:.0f} s)")
        lines.append(f"  {'ε':<6} {'FGSM':>8} {'PGD':>8}   (clean {100 * a['clean_accuracy']:.2f}%)")
        for e in a["eps"]:
            lines.append(f"  {e:<6g} {100 * a['fgsm'][f'{e:g}']:7.2f}% {100 * a['pgd'][f'{e:g}']:7.2f}%")
        lines.append(f"  sanity: accuracy falls with ε: {'yes' if a['monotone'] else 'NO'}; "
                     f"PGD at most FGSM: {'yes' if a['pgd_at_most_fgsm'] else 'NO'}")
        for w in a["warnings"]:
            lines.append(f"  warning: {w}")
    if r.get("plots"):
        lines.append("plots: " + ", ".join(r["plots"]))
    return "\n".join(lines)
