"""``sortline queue list|label|export``: the queue of unsure items a station kept (watch/unsure.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import flags


def _open(args: argparse.Namespace):
    from sortline.edge_runtime.errors import ConfigError
    from sortline.edge_runtime.watch import QueueConfig, UnsureQueue

    if not (args.dir / "").exists() or not args.dir.is_dir():
        raise ConfigError(f"{args.dir}: no such queue folder")
    return UnsureQueue(QueueConfig(args.dir, reserve_mb=0))


def _list(args: argparse.Namespace) -> dict:
    queue = _open(args)
    entries = queue.ranked()
    shown = entries if args.all else [e for e in entries if e.label is None][:args.limit]
    for rank, e in enumerate(shown, 1):
        print(f"{rank:4d}  {e.key:32s} item {e.item_id:<8d} uncertainty {e.uncertainty:.2f}  "
              f"{','.join(e.reasons):28s} head: {e.decision.get('label')}  label: {e.label or '—'}")
    summary = queue.summary()
    print(f"{summary['queued']} items in {args.dir} ({summary['labelled']} labelled, {summary['mb']} MB)"
          + (f"; {queue.rejected} folders could not be read back" if queue.rejected else ""))
    return {**summary, "items": [e.to_dict() for e in shown]}


def _label(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.errors import ConfigError
    from sortline.edge_runtime.learning.enroll import Enroller, enroll_label
    from sortline.edge_runtime.model.bundle import load_bundle

    queue = _open(args)
    if (args.store is None) != (args.bundle is None):
        raise ConfigError("--store and --bundle go together")
    enroller = Enroller(load_bundle(args.bundle), args.store) if args.store else None
    enrolled: list[bool] = []
    try:
        if enroller is not None:
            queue.on_label = lambda *given: enrolled.append(enroll_label(enroller, *given))
        entry = queue.label(args.key, args.label)
    finally:
        if enroller is not None:
            enroller.close()
    where = ""
    if enroller is not None:
        where = (f" and in {args.store} (refit to use it: the operator page, or POST /api/refit)" if all(enrolled)
                 else f"; not in {args.store}: another bundle's backbone made its features")
    print(f"{entry.key}: labelled {entry.label} in the queue{where}")
    return {"ok": True, **entry.to_dict(), "enrolled": enroller is not None and all(enrolled)}


def _export(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.watch.unsure import export

    count = export(_open(args), args.out)
    print(f"{count} labelled items written to {args.out}/<label>/<item>/ (sortline fit --data {args.out})")
    return {"ok": True, "exported": count, "out": str(args.out)}


def add(commands: argparse._SubParsersAction) -> None:
    report = flags.report()
    queue = commands.add_parser("queue", help="the queue of unsure items a station kept: list, label, export")
    actions = queue.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", parents=[report], help="unlabelled items, most worth a label first")
    listing.add_argument("--dir", type=Path, required=True, help="the queue's folder ([queue] folder)")
    listing.add_argument("--limit", type=flags.positive(int), default=50)
    listing.add_argument("--all", action="store_true", help="every item, labelled ones last")
    listing.set_defaults(handler=_list)
    label = actions.add_parser("label", parents=[report], help="give a queued item its class")
    label.add_argument("--dir", type=Path, required=True)
    label.add_argument("key", help="the item's key (sortline queue list)")
    label.add_argument("label")
    label.add_argument("--store", type=Path, help="also add it as an example to this enrollment store")
    label.add_argument("--bundle", type=Path, help="the bundle the store belongs to (with --store)")
    label.set_defaults(handler=_label)
    export = actions.add_parser("export", parents=[report], help="labelled items as an item folder tree")
    export.add_argument("--dir", type=Path, required=True)
    export.add_argument("--out", type=Path, required=True)
    export.set_defaults(handler=_export)
