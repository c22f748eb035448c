"""``digitlab explore``: the reference notebooks' data exploration, as figures plus explore.json."""

from __future__ import annotations

import argparse
import json

from digitlab.cli import HelpFormatter, add_data_args, add_json_arg, add_quiet_arg

EPILOG = """examples:
  digitlab explore                              # MNIST, writes the new folder explore/
  digitlab explore --dataset fashion-mnist --out explore-fashion
  digitlab explore --pixels 100 --out ex-100    # keep the 100 best F-test pixels
  digitlab explore --no-plots --json --out /tmp/ex   # numbers only, summary on stdout
  digitlab explore --dataset fashion-mnist --model runs/fashion --out ex-fashion  # its labels judged by a run

writes into --out (a new or empty folder): one PNG per figure (class_distribution,
intensity_histogram, mean_image, class_mean_images, class_std_images, pixel_variance,
f_test_importance, class_mean_intensity, sample_grid, augmentation_examples, label_issues),
explore.html (every figure and table in one self-contained page) and explore.json with every
number (counts, percentages, constant/active pixels, intensity histogram, per-class intensities,
ANOVA, F-test scores and top pixels, maps, the suspicious test labels).

suspicious labels: the test images whose given label is most likely wrong, by confident
learning on the test probabilities of --model (the shipped model by default, trained on MNIST;
a model of another dataset is skipped with a note): the flagged ones (what `digitlab
label-issues --top 24` prints), then up to 24 the next images whose label the model rejects,
marked unflagged; a few seconds.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explore", help="explore a dataset: distributions, pixel statistics, F-test, figures",
                       description="Class distribution, pixel-intensity statistics, mean/std images, "
                                   "constant pixels, per-pixel F-test, ANOVA, samples and augmentation "
                                   "examples of a dataset.",
                       formatter_class=HelpFormatter, epilog=EPILOG)
    add_data_args(p)
    p.add_argument("--out", default="explore", metavar="DIR",
                   help="a new folder to write the PNGs and explore.json into (refused if it exists and "
                        "is not empty)")
    p.add_argument("--pixels", type=int, default=196, metavar="N",
                   help="how many pixels with the highest F-test score to list and mark (notebook 000 "
                        "keeps 196)")
    p.add_argument("--seed", type=int, default=0, help="seed of the augmentation examples")
    p.add_argument("--no-plots", action="store_true", help="write explore.json only, no figures")
    p.add_argument("--model", default="default",
                   help="model whose test-set probabilities rank the suspicious labels: 'default' (the shipped "
                        "model), a run directory or a .safetensors checkpoint trained on the same dataset")
    p.add_argument("--no-label-issues", action="store_true", help="leave out the suspicious-labels section")
    add_json_arg(p, "the summary (every number except the image-sized maps)")
    add_quiet_arg(p)
    p.set_defaults(handler=_explore)


def _explore(args: argparse.Namespace) -> int:
    from digitlab.analysis.explore import run_explore
    from digitlab.errors import ConfigError

    if args.pixels < 1:
        raise ConfigError(f"--pixels must be >= 1, got {args.pixels}")
    result = run_explore(args.out, dataset=args.dataset, data_dir=args.data_dir, plots=not args.no_plots,
                         progress=not (args.json or args.quiet), pixels=args.pixels, seed=args.seed,
                         label_model=None if args.no_label_issues else args.model)
    if args.json:
        print(json.dumps(result))
        return 0
    _print_text(result)
    return 0


def _print_text(r: dict) -> None:
    names = r["data"]["class_names"]
    tr, te = r["class_distribution"]["train"], r["class_distribution"]["test"]
    print(f"{r['dataset']} from {r['source']}: train {tr['count']}, test {te['count']} images "
          f"of {r['data']['train_shape'][1]}×{r['data']['train_shape'][2]}")
    print(f"{'class':>12}  {'train':>7} {'%':>6}  {'test':>6} {'%':>6}  {'mean int.':>9}")
    for c, name in enumerate(names):
        pc = r["per_class"][c]
        print(f"{name:>12}  {tr['counts'][c]:>7} {tr['percent'][c]:>6.2f}  {te['counts'][c]:>6} "
              f"{te['percent'][c]:>6.2f}  {pc['mean_intensity']:>9.2f}")
    px = r["pixels"]
    print(f"pixels (train): mean {px['mean']:.2f}, std {px['std']:.2f}, {px['zero_percent']:.2f}% zeros; "
          f"{px['constant_pixels']} constant / {px['active_pixels']} active of {px['total_pixels']}")
    an = r["anova_mean_intensity"]
    print(f"ANOVA of per-image mean intensity across classes: F = {an['F']:.4f}, p = {an['p_value']:.2e} "
          f"(log10 p = {an['log10_p_value']:.1f})")
    ft = r["f_test"]
    print(f"F-test: {ft['pixels_scored']} pixels scored, max F {ft['max_f']:.1f}; "
          f"top {ft['pixels']} kept (F >= {ft['pixels_min_f']:.1f})")
    li = r.get("label_issues")
    if li and li.get("skipped"):
        print(f"suspicious labels: skipped ({li['skipped']})")
    elif li:
        top = ", ".join(f"#{x['index']} {x['name']}→{x['suggested_name']}" for x in li["issues"][:5])
        print(f"suspicious labels (confident learning, {li['model']} model): {li['n_flagged']} test images "
              f"flagged; {len(li['issues'])} listed, most suspicious first: {top}")
    print(f"wrote {len(r['files'])} files to {r['out']} in {r['timings']['total_s']:.1f} s")
