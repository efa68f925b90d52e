"""The ``sortline`` command.

Edge commands run on an install without torch. Desktop commands are named here by module
path and imported only when invoked, so the edge package never imports the desktop one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path


def _demo(args: argparse.Namespace) -> dict:
    demo = importlib.import_module("sortline.train.demo")  # desktop side: needs torch
    config = demo.DemoConfig(
        items=args.items,
        out=args.out,
        pool_fruit=args.pool_fruit,
        labeled_fruit=args.labeled_fruit,
        epochs=args.epochs,
        seed=args.seed,
        progress=not args.quiet,
    )
    summary = demo.run_demo(config)
    print((Path(args.out) / "summary.md").read_text())
    print(f"bundle, event log, plots and summary.json are in {args.out}/")
    return summary


def _bundle_verify(args: argparse.Namespace) -> dict:
    from .bundle import load_bundle

    bundle = load_bundle(args.bundle)
    head = bundle.load_head()
    m = bundle.manifest
    print(f"{bundle.root}: OK — {m.name}, {len(m.files)} files verified, labels {list(m.labels)}, "
          f"input {m.input.size}px × {len(m.input.channels)} channels, head {head.n_features} features")
    return {"ok": True, "bundle": str(bundle.root), "name": m.name, "files": sorted(m.files)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sortline", description="Self-supervised recognition at the edge.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the whole loop on a simulated avocado line")
    demo.add_argument("--items", type=int, default=500, help="fruit to sort (default 500)")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default demo-out)")
    demo.add_argument("--pool-fruit", type=int, default=2000, help="unlabeled fruit for pretraining")
    demo.add_argument("--labeled-fruit", type=int, default=600, help="labeled fruit for the fusion head")
    demo.add_argument("--epochs", type=float, default=6.0, help="pretraining epochs over the pool (0: random init)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    demo.set_defaults(handler=_demo)

    bundle = commands.add_parser("bundle", help="bundle tools")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    verify = bundle_commands.add_parser("verify", help="check a bundle's schema and every file's hash")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=_bundle_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .bundle import BundleError

    try:
        result = args.handler(args)
    except (BundleError, FileNotFoundError) as exc:
        print(f"sortline: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(exc)}))
        return 2
    if getattr(args, "json", False):
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
