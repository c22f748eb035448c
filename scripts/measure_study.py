"""Is the quick study's verdict right? Run a study preset and the same study at N× its budget, and
measure how well the two rankings agree.

    python scripts/measure_study.py                       # quick, and quick at 4× the budget
    python scripts/measure_study.py --preset smoke        # seconds: checks that the script works
    python scripts/readme_figures.py measure study_rank_agreement   # the same, for the README

Writes results/study_rank_agreement.json (beside this script's repository root unless --results says
otherwise) with the Spearman rank correlation of the models' mean test accuracies, whether the most
accurate model is the same, and whether the top three are the same set; the study report quotes it in
its caveat. Run it on a quiet machine: the budgets are wall-clock time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def scaled(budget: str, factor: float) -> str:
    from digitlab.train.budget import Budget, parse_budget

    b = parse_budget(budget)
    value = b.value * factor
    return Budget(b.kind, float(int(value)) if b.kind == "images" else value).label


def ranking(data: dict[str, Any]) -> dict[str, float]:
    """Model → mean test accuracy of the models the study trained (reference rows left out)."""
    return {m["model"]: m["accuracy_mean"] for m in data["comparison"]["models"] if not m["reference"]}


def agreement(base: dict[str, float], large: dict[str, float]) -> dict[str, Any]:
    from scipy.stats import spearmanr

    models = sorted(set(base) & set(large))
    if len(models) < 2:
        raise SystemExit("need at least two models in both studies")
    rho = spearmanr([base[m] for m in models], [large[m] for m in models]).statistic
    order_b = sorted(models, key=lambda m: -base[m])
    order_l = sorted(models, key=lambda m: -large[m])
    return {"models": len(models), "spearman_rho": float(rho), "top1_agree": order_b[0] == order_l[0],
            "top3_agree": set(order_b[:3]) == set(order_l[:3]), "order_base": order_b, "order_large": order_l,
            "accuracy_base": {m: base[m] for m in order_b}, "accuracy_large": {m: large[m] for m in order_b}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick", help="study preset to check (default quick)")
    ap.add_argument("--factor", type=float, default=4.0, help="budget multiplier of the second study (default 4)")
    ap.add_argument("--out", default=None,
                    help="folder for the two studies (a new folder; default: studies/rank-agreement-<time>)")
    ap.add_argument("--results", default=str(ROOT / "results" / "study_rank_agreement.json"),
                    help="JSON file to write (default: results/study_rank_agreement.json)")
    ap.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files")
    ap.add_argument("--json", action="store_true", help="also print the result as JSON on stdout")
    args = ap.parse_args()

    from digitlab.report.study import PRESETS, run_study
    from digitlab.utils import ensure_new_dir, write_json_atomic

    preset = PRESETS[args.preset]
    if not preset.budgets:
        raise SystemExit(f"preset {args.preset} has no budget to scale")
    out = ensure_new_dir(args.out or f"studies/rank-agreement-{time.strftime('%Y%m%d-%H%M%S')}", "output folder")
    budgets = list(preset.budgets)
    larger = [scaled(b, args.factor) for b in budgets]
    runs = {}
    load_start = os.getloadavg()[0]
    for label, bud in (("base", budgets), ("large", larger)):
        print(f"[measure] {args.preset} study at {','.join(bud)}", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        data = run_study(args.preset, out / label, data_dir=args.data_dir, budgets=bud, quiet=True)
        runs[label] = {"budgets": bud, "wall_seconds": time.perf_counter() - t0, "data": data}
    result = {
        "command": f"python scripts/measure_study.py --preset {args.preset} --factor {args.factor:g}",
        "preset": args.preset, "factor": args.factor, "budget_base": budgets, "budget_large": larger,
        "wall_seconds_base": runs["base"]["wall_seconds"], "wall_seconds_large": runs["large"]["wall_seconds"],
        "machine": runs["base"]["data"]["machine"],
        # the budgets are wall-clock seconds: other load on the machine changes how far each model gets
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **agreement(ranking(runs["base"]["data"]), ranking(runs["large"]["data"])),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results, result)
    if args.json:
        print(json.dumps(result))
    print(f"Spearman rho {result['spearman_rho']:.3f} over {result['models']} models; top-1 "
          f"{'agrees' if result['top1_agree'] else 'differs'}; top-3 {'agrees' if result['top3_agree'] else 'differs'}"
          f" -> {args.results}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
