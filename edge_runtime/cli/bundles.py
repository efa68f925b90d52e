"""Commands of bundles and what a station learned: ``bundle verify|keygen|sign|policy``,
``enroll`` and ``heads list|rollback``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import flags


def _bundle_verify(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.model.bundle import load_bundle
    from sortline.edge_runtime.model.pipeline import check_runs

    bundle = load_bundle(args.bundle, public_key=args.key)
    ran = check_runs(bundle)
    m = bundle.manifest
    head = f"head {bundle.load_head().n_features} features" if m.head else "no head (embeddings only)"
    labels = ", ".join(m.labels[:5]) + (f", … ({len(m.labels)} in all)" if len(m.labels) > 5 else "")
    signed = f", signature OK ({args.key})" if args.key else ""
    print(f"{bundle.root}: OK — {m.name}, {len(m.files)} files verified{signed}, input {m.input.size} px × "
          f"{len(m.input.channels)} channels, model ran: {ran['embedding'][0]}×{ran['embedding'][1]} embeddings, "
          f"{head}; labels: {labels or 'none'}")
    return {"ok": True, "bundle": str(bundle.root), "name": m.name, "version": bundle.version,
            "files": sorted(m.files), "signed": bool(args.key), "ran": ran}


def _bundle_keygen(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.model.bundle import keygen

    private, public = keygen(args.key)
    print(f"{private}: private key (keep it on the desktop that signs bundles)\n"
          f"{public}: public key (name it in the station file: [station] public_key)")
    return {"private_key": str(private), "public_key": str(public)}


def _bundle_sign(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.model.bundle import sign_bundle

    bundle = sign_bundle(args.bundle, args.key)
    print(f"{args.bundle}: signed ({bundle.version})")
    return {"ok": True, "bundle": str(args.bundle), "version": bundle.version}


def _bundle_policy(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.model.bundle import load_bundle, signing_key, with_policy
    from sortline.edge_runtime.model.policy import load_policy

    bundle = load_bundle(args.bundle)
    policy = load_policy(args.policy, bundle.manifest.labels)
    key = signing_key(args.key)
    written = with_policy(bundle, policy, args.out, private_key=key)
    print(f"{args.out}: {written.version} with the policy of {args.policy}, signed with {key}")
    return {"ok": True, "bundle": str(args.out), "version": written.version, "decision": policy.to_dict()}


def _enroll(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.learning.enroll import Enroller, enroll_paths
    from sortline.edge_runtime.model.bundle import load_bundle

    started = time.perf_counter()
    bundle = load_bundle(args.bundle)
    with Enroller(bundle, args.store) as enroller:
        added = enroll_paths(enroller, args.label, args.images)
        for warning in added.warnings():
            print(f"warning: {warning}", file=sys.stderr)
        refit = None
        if not args.no_refit:
            refit = enroller.refit(exits={args.label: args.exit} if args.exit is not None else None,
                                   force=args.force)
        counts = enroller.store.counts()
        exits = enroller.classifier().policy.exits if refit else {}
    seconds = round(time.perf_counter() - started, 3)
    version = refit.version if refit else None
    where = f"head version {version} is current ({len(refit.labels)} classes)" if refit else "no refit (--no-refit)"
    print(f"{args.label}: {len(added.ids)} examples added ({counts[args.label]} in all, exit "
          f"{exits.get(args.label, '-')}); {where}; {seconds} s")
    return {"ok": True, "label": args.label, "examples": counts[args.label], "added": len(added.ids),
            "head_version": version, "seconds": seconds, "refit": refit.metrics if refit else None,
            "duplicates": added.duplicates, "lookalikes": added.lookalikes}


def _heads(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.learning.store import BUNDLE_VERSION, EmbeddingStore

    with EmbeddingStore.open_existing(args.store) as store:
        if args.heads_command == "rollback":
            version = store.rollback(args.version)
            print(f"{args.store}: head version {version} is current"
                  + (" (the bundle's own head)" if version == BUNDLE_VERSION else ""))
            return {"ok": True, "head_version": version}
        current = store.current
        rows = [{"version": BUNDLE_VERSION, "parent": None, "created": "", "labels": None, "examples": None,
                 "metrics": {}}] + [r.summary() for r in store.heads()]
    for row in rows:
        row["current"] = row["version"] == current
        mark = "*" if row["current"] else " "
        if row["version"] == BUNDLE_VERSION:
            print(f"{mark} v0  the bundle's own head")
            continue
        m = row["metrics"]
        check = (f"held-back {m['held_back_accuracy']:.1%} of {m['held_back']}" if "held_back_accuracy" in m
                 else "no held-back check")
        print(f"{mark} v{row['version']:<3d} {row['created']}  from v{row['parent']}, {row['labels']} classes, "
              f"{row['examples']} examples, {check}")
    return {"heads": rows, "current": current}


def add(commands: argparse._SubParsersAction) -> None:
    report = flags.report()
    bundle = commands.add_parser("bundle", help="bundle tools")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    verify = bundle_commands.add_parser(
        "verify", parents=[report],
        help="check a bundle's schema, every file's hash and its signature (--key), and run its model once")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--key", type=Path, help="public key: the bundle must be signed by its private key")
    verify.set_defaults(handler=_bundle_verify)
    keygen = bundle_commands.add_parser("keygen", parents=[report],
                                        help="make an ed25519 key pair for signing bundles (KEY, KEY.pub)")
    keygen.add_argument("key", type=Path)
    keygen.set_defaults(handler=_bundle_keygen)
    sign = bundle_commands.add_parser("sign", parents=[report], help="sign a bundle (folder or archive) in place")
    sign.add_argument("bundle", type=Path)
    sign.add_argument("--key", type=Path, required=True, help="private key from 'sortline bundle keygen'")
    sign.set_defaults(handler=_bundle_sign)
    policy = bundle_commands.add_parser("policy", parents=[report, flags.signing()],
                                        help="a new version of a bundle with another decision policy "
                                             "(class → exit, confidence, safe exit: docs/station.md)")
    policy.add_argument("bundle", type=Path)
    policy.add_argument("policy", type=Path, help="the policy file (TOML)")
    policy.add_argument("--out", type=Path, required=True, help="the new bundle (folder or archive)")
    policy.set_defaults(handler=_bundle_policy)

    enroll = commands.add_parser("enroll", parents=[report], help="learn a new item (or more of a known one) from "
                                                                  "a few images, and refit the head on the device")
    enroll.add_argument("--bundle", type=Path, required=True)
    enroll.add_argument("--store", type=Path, required=True,
                        help="the station's store (SQLite file: examples and head versions; made if missing)")
    enroll.add_argument("--label", required=True, help="the item's class name")
    enroll.add_argument("images", nargs="+", type=Path,
                        help="image files (one view each) or item folders (a recording's frames/<item>/)")
    enroll.add_argument("--exit", type=int, help="the exit for this class (default: the safe exit)")
    enroll.add_argument("--no-refit", action="store_true", help="only store the examples")
    enroll.add_argument("--force", action="store_true", help="refit even if known classes lose held-back accuracy")
    enroll.set_defaults(handler=_enroll)

    heads = commands.add_parser("heads", help="the head versions in a station's store")
    heads_commands = heads.add_subparsers(dest="heads_command", required=True)
    listing = heads_commands.add_parser("list", parents=[report], help="every head version; * marks the current one")
    listing.add_argument("--store", type=Path, required=True)
    listing.set_defaults(handler=_heads)
    rollback = heads_commands.add_parser("rollback", parents=[report],
                                         help="make an earlier head current (default: the parent)")
    rollback.add_argument("--store", type=Path, required=True)
    rollback.add_argument("version", nargs="?", type=int, help="0 is the bundle's own head")
    rollback.set_defaults(handler=_heads)
