"""``digitlab data info|verify|download``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from digitlab.cli import HelpFormatter, add_data_args, add_json_arg, add_quiet_arg


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect, verify and download datasets",
                       formatter_class=HelpFormatter,
                       epilog="examples:\n  digitlab data info --dataset mnist --json\n"
                              "  digitlab data verify --data-dir ../shared/data/mnist\n"
                              "  digitlab data download --dataset fashion-mnist\n"
                              "  digitlab data download --data-dir data/mnist --mirror http://host/mnist/")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    actions = (
        ("info", _info, "counts per split and class", "the counts",
         "  digitlab data info --dataset fashion-mnist\n  digitlab data info --data-dir DIR --json"),
        ("verify", _verify, "check every file's checksum and structure", "the verified files",
         "  digitlab data verify\n  digitlab data verify --data-dir ../shared/data/mnist --json"),
        ("download", _download, "fetch missing files from the mirrors", "where the files are",
         "  digitlab data download --dataset fashion-mnist\n"
         "  digitlab data download --data-dir data/mnist --mirror http://host/mnist/"),
    )
    for name, fn, text, what, examples in actions:
        q = dsub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                            formatter_class=HelpFormatter, epilog=f"examples:\n{examples}")
        add_data_args(q)
        add_json_arg(q, what)
        if name != "verify":
            add_quiet_arg(q)
        if name == "download":
            q.add_argument("--mirror", action="append", default=None, metavar="URL",
                           help="base URL to fetch the files from instead of the built-in mirrors "
                                "(repeat to try several in order)")
        q.set_defaults(handler=fn)


def _info(args: argparse.Namespace) -> int:
    from digitlab.data import class_counts, load_dataset

    ds = load_dataset(args.dataset, args.data_dir, progress=not (args.json or args.quiet))
    info: dict[str, Any] = {
        "dataset": ds.name,
        "splits": {
            split: {"count": int(ds.split(split)[1].numel()),
                    "class_counts": class_counts(ds.split(split)[1], ds.num_classes)}
            for split in ("train", "test")
        },
        "classes": list(ds.spec.class_names),
        "image_shape": list(ds.train_images.shape[1:]),
        "source": str(ds.source),
    }
    if args.json:
        print(json.dumps(info))
    else:
        print(f"dataset {ds.name} from {ds.source}")
        for split, s in info["splits"].items():
            print(f"  {split}: {s['count']} images; per class {s['class_counts']}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from digitlab.data.dataset import parse_files
    from digitlab.data.resolve import resolve_files

    resolved = resolve_files(args.dataset, args.data_dir, download=False)
    _, checksums = parse_files(resolved.spec, resolved.paths, verify=True)
    result = {"dataset": args.dataset, "source": str(resolved.directory), "ok": True,
              "files": {k: {"path": str(resolved.paths[k]), "content_sha256": v}
                        for k, v in checksums.items()}}
    if args.json:
        print(json.dumps(result))
    else:
        for v in result["files"].values():
            print(f"ok  {v['path']}  sha256:{v['content_sha256'][:16]}…")
    return 0


def _download(args: argparse.Namespace) -> int:
    from digitlab.data.resolve import resolve_files

    mirrors = tuple(args.mirror) if args.mirror else None
    resolved = resolve_files(args.dataset, args.data_dir, download=True, progress=not (args.json or args.quiet),
                             mirrors=mirrors)
    result = {"dataset": args.dataset, "source": str(resolved.directory), "origin": resolved.origin,
              "files": {k: str(v) for k, v in resolved.paths.items()}}
    print(json.dumps(result) if args.json else f"{args.dataset}: files in {resolved.directory}")
    return 0
