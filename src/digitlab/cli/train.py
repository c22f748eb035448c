"""``digitlab train``: train a registered model into a run directory."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from digitlab.cli import HelpFormatter, add_data_args, add_device_arg, add_json_arg, add_quiet_arg

if TYPE_CHECKING:
    from digitlab.train.config import TrainConfig

EPILOG = """examples:
  digitlab train --model cnn-simple --epochs 1 --seed 0 --out runs/a
  digitlab train --config cnn-deep --out runs/deep          # a published recipe
  digitlab train --model resnet-mini --augment --schedule cosine --set warmup_epochs=1
  digitlab train --model logreg --set cv_folds=5 --out runs/logreg
  digitlab train --resume runs/deep                         # after Ctrl-C or a crash
  digitlab train --model cnn-simple --dry-run               # two steps, smoke test
  digitlab train --init-from runs/a --dataset fashion-mnist --out runs/ft          # fine-tune a run
  digitlab train --init-from runs/a --freeze --dataset fashion-mnist --max-steps 200  # train only the head
  digitlab train --model cnn-simple --adversarial pgd --set adv_eps=0.3 --out runs/robust  # PGD training
  digitlab train --model lenet5 --adversarial pgd --set adv_steps=10 --set adv_ramp=1 --out runs/r2

adversarial training: --adversarial pgd replaces every training batch by its L∞ PGD attack
(Madry et al. 2018) within --set adv_eps=E (default 0.3 on [0, 1] pixels): adv_steps steps
(default 7) of adv_step_size (default 2.5·E/adv_steps) from a random start; adv_ramp=N grows E
linearly over the first N epochs. --adversarial fgsm: one random-start step of 1.25·E (cheaper,
weaker). A step costs about (1 + adv_steps) times a standard one. Check the result with
`digitlab robustness RUN --suite adversarial`.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model into a run directory", epilog=EPILOG,
                       formatter_class=HelpFormatter)
    p.add_argument("--model", help="registered model name (see `digitlab models`); default cnn-simple when "
                                   "no --config is given")
    p.add_argument("--config", help="YAML config file or shipped recipe name (see src/digitlab/configs)")
    p.add_argument("--epochs", type=int, help="passes over the training split (default: the config's, 10)")
    p.add_argument("--batch-size", type=int, help="images per optimizer step (default: the config's, 128)")
    p.add_argument("--lr", type=float, help="base / peak learning rate (default: the config's, 0.003)")
    p.add_argument("--optimizer", choices=["adam", "adamw", "sgd", "adadelta"],
                   help="optimizer (default: the config's, adam)")
    p.add_argument("--schedule", choices=["constant", "step", "exponential", "plateau", "cosine", "onecycle"],
                   help="learning-rate schedule (default: the config's, onecycle)")
    p.add_argument("--augment", action="store_true", default=None,
                   help="turn on batch augmentation (rotation/zoom/shift; tune with --set augment.X=...)")
    p.add_argument("--seed", type=int, help="seed of initialisation, split, shuffling and dropout (default 0)")
    p.add_argument("--init-from", metavar="RUN",
                   help="start from this run's weights ('default', a run directory or a checkpoint): same "
                        "architecture (taken from RUN unless --model/--config say it); the classifier head "
                        "starts afresh when RUN was trained on another dataset")
    p.add_argument("--freeze", action="store_true", default=None,
                   help="with --init-from: train only the classifier head, keep the feature layers fixed")
    p.add_argument("--adversarial", choices=["pgd", "fgsm"], default=None,
                   help="adversarial training: train on L∞ attacks of every batch (PGD as Madry et al., or "
                        "random-start FGSM); tune with --set adv_eps=0.3, --set adv_steps=7, --set adv_step_size=S, "
                        "--set adv_ramp=EPOCHS (default: off)")
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps; the LR schedule ends there")
    p.add_argument("--dry-run", action="store_true", help="two steps, to check everything runs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set label_smoothing=0.1 (repeatable)")
    p.add_argument("--out", help="run folder to create (a new folder; default: runs/<model>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run in RUN_DIR")
    p.add_argument("--nproc", type=int, default=1,
                   help="data-parallel processes, >= 1 (DDP; gloo on CPU; default 1)")
    add_device_arg(p)
    add_quiet_arg(p)
    add_json_arg(p, "the final metrics")
    add_data_args(p)
    p.set_defaults(handler=run)


def build_config(args: argparse.Namespace) -> TrainConfig:
    from digitlab.errors import ConfigError
    from digitlab.train.config import TrainConfig, parse_set_option
    from digitlab.train.recipes import load_config

    model = args.model
    model_kwargs = None
    if args.init_from and not args.config and not model:  # fine-tuning: the source's architecture
        from digitlab.checkpoint import read_meta

        meta = read_meta(args.init_from)
        model, model_kwargs = meta.get("model"), meta.get("model_kwargs") or {}
    base = load_config(args.config) if args.config else TrainConfig(model=model or "cnn-simple")
    if not args.config and not model:
        raise ConfigError("give --model NAME or --config FILE (or --resume RUN_DIR, or --init-from RUN)")
    from digitlab.data.augment import AugmentConfig

    changes = dict(model=model, model_kwargs=model_kwargs, init_from=args.init_from, freeze=args.freeze,
                   epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                   optimizer=args.optimizer, schedule=args.schedule, seed=args.seed,
                   device=args.device if args.device != "auto" else None,
                   max_steps=args.max_steps, dataset=args.dataset if args.dataset != "mnist" else None,
                   adversarial=args.adversarial)
    if args.augment and base.augment is None:
        changes["augment"] = AugmentConfig().to_dict()
    if args.dry_run:
        changes.update(max_steps=2, epochs=1)
    changes.update(parse_set_option(args.set))
    return base.override(**changes)


def run(args: argparse.Namespace) -> int:
    from digitlab.errors import ConfigError
    from digitlab.models import model_info
    from digitlab.train.run import train_run

    if args.nproc < 1:
        raise ConfigError(f"--nproc must be >= 1, got {args.nproc}")
    if args.resume:
        cfg, out = None, args.resume
    else:
        cfg = build_config(args)
        model_info(cfg.model)  # fail fast on an unknown name
        out = args.out
        if out is None:
            from digitlab.train.run import default_run_dir

            out = str(default_run_dir(cfg))
    progress = not args.quiet and not args.json
    try:
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun
            from digitlab.train.distributed import init_from_env

            rank, world = init_from_env()
            result = train_run(cfg, out, resume=bool(args.resume), data_dir=args.data_dir,
                               progress=progress and rank == 0, rank=rank, world_size=world)
            metrics, run_dir = result.metrics, result.run_dir
            if rank != 0:
                return 0
        elif args.nproc > 1:
            from digitlab.train.distributed import train_distributed

            metrics, run_dir = train_distributed(cfg, out, nproc=args.nproc, resume=bool(args.resume),
                                                 data_dir=args.data_dir, progress=progress)
        else:
            result = train_run(cfg, out, resume=bool(args.resume), data_dir=args.data_dir,
                               progress=progress)
            metrics, run_dir = result.metrics, result.run_dir
    except KeyboardInterrupt:
        print(f"digitlab: interrupted; state saved — continue with: digitlab train --resume {out}",
              file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps({"run_dir": str(run_dir), **metrics}))
    else:
        print(f"run {run_dir}: test accuracy {metrics['test_accuracy']:.4f}, "
              f"test loss {metrics['test_loss']:.4f}, {metrics['train_seconds']:.1f}s training")
    return 0
