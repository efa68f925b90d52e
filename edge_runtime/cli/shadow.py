"""``sortline shadow status|head|bundle|promote|rollback|stop``: a running station's shadow, through
its HTTP API (``sortline serve``, or ``demo --serve``). Changes need the API's token, read from
``$SORTLINE_API_TOKEN`` or ``--token-file``; the station answers 401 without it."""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from sortline.edge_runtime.daemon.config import API_PORT
from sortline.edge_runtime.errors import SortlineError

from . import flags

MAX_REPLY = 4 << 20


class StationRefused(SortlineError, RuntimeError):
    """The station answered with an error, or did not answer."""


def _token(args: argparse.Namespace) -> str | None:
    if args.token_file is not None:
        return args.token_file.read_text(encoding="utf-8").strip()
    return os.environ.get("SORTLINE_API_TOKEN") or None


def call(api: str, path: str, body: dict | None = None, token: str | None = None, timeout_s: float = 30.0) -> dict:
    """One request to the station's API; its JSON reply, or :class:`StationRefused` with its detail."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(api.rstrip("/") + path, method="GET" if body is None else "POST",
                                     data=None if body is None else json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as reply:
            return json.loads(reply.read(MAX_REPLY))
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read(MAX_REPLY)).get("detail", exc.reason)
        except (ValueError, AttributeError):
            detail = exc.reason
        raise StationRefused(f"{api}{path}: {exc.code} {detail}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise StationRefused(f"{api}{path}: no answer ({exc}); is the station serving its API there?") from None


def show(status: dict) -> None:
    """The shadow's status, for a person."""
    if not status.get("enabled"):
        print("this station runs no shadow ([shadow] enabled = true in its station file)")
        return
    live = status.get("live") or {}
    print(f"live: {live.get('bundle')} head {live.get('head')}; candidate: {status['candidate'] or 'none'}"
          + (f" ({status['shadowed']} items shadowed, {status['sampled_out']} let pass under load)"
             if status["candidate"] else ""))
    s = status["stats"]
    if s.get("items"):
        print(f"agreement {s['agreement']:.1%} on {s['items']} items; unsure: live {s['live_unsure_rate']:.1%}, "
              f"shadow {s['shadow_unsure_rate']:.1%}; unknown: live {s['live_unknown_rate']:.1%}, "
              f"shadow {s['shadow_unknown_rate']:.1%}")
        for outcome, seen in s["agreement_per_class"].items():
            print(f"  {outcome:>20s}: {seen['agreement']:.1%} of {seen['items']}")
        if s["labelled"]:
            print(f"labelled {s['labelled']}: live {s['live_accuracy']:.1%}, shadow {s['shadow_accuracy']:.1%} "
                  f"(only live right {s['live_only_right']}, only shadow right {s['shadow_only_right']})")
    print(f"promotion policy{' (automatic)' if status['auto'] else ''}: "
          f"{'ready' if status['ready'] else 'not yet'}: {status['why']}")
    if status.get("rollout"):
        r = status["rollout"]
        print(f"latest promotion: {r['version']} at item {r['at_item']} by {r['by']}, {r['items']} of "
              f"{r['window_items']} items watched; {r['ended'] or 'watching'}")


def _handle(args: argparse.Namespace) -> dict:
    token = _token(args)
    action = args.action
    if action == "status":
        status = call(args.api, "/api/shadow")
    elif action == "head":
        status = call(args.api, "/api/shadow/head", {"version": args.version}, token)
    elif action == "bundle":
        status = call(args.api, "/api/shadow/bundle", {"path": str(args.path), "force": args.force}, token)
    elif action == "stop":
        status = call(args.api, "/api/shadow/stop", {}, token)
    else:  # promote, rollback
        status = call(args.api, f"/api/shadow/{action}", {"why": args.why}, token)
    if not args.json:
        show(status)
    return status


def add(commands: argparse._SubParsersAction) -> None:
    report = flags.report()
    shadow = commands.add_parser("shadow", help="a running station's candidate beside its live head or bundle: "
                                 "status, shadow a head or bundle, promote, roll back, stop")
    actions = shadow.add_subparsers(dest="action", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", default=f"http://127.0.0.1:{API_PORT}", help="the station's API (default %(default)s)")
    common.add_argument("--token-file", type=Path, help="the API token (default: $SORTLINE_API_TOKEN)")
    actions.add_parser("status", parents=[report, common], help="the candidate against the live version")
    head = actions.add_parser("head", parents=[report, common], help="shadow a head version of the station's store")
    head.add_argument("version", type=int)
    bundle = actions.add_parser("bundle", parents=[report, common], help="shadow a bundle (verified as serve does)")
    bundle.add_argument("path", type=Path)
    bundle.add_argument("--force", action="store_true", help="even one older than the live bundle")
    for name, what in (("promote", "put the candidate live now"), ("rollback", "put back the version before the "
                                                                             "latest promotion")):
        change = actions.add_parser(name, parents=[report, common], help=what)
        change.add_argument("--why", default="", help="for the event log")
    actions.add_parser("stop", parents=[report, common], help="stop shadowing the candidate")
    shadow.set_defaults(handler=_handle)
