"""The ``sortline`` command.

Edge commands run on an install without torch. The desktop registers its own commands
(demo, pretrain, evaluate, export, fit) through the ``sortline.commands`` entry point, with
handlers that import torch only when they run; this package names none of them, so the edge
package never imports the desktop one.

- ``flags.py``: the flags several commands share (argparse parents: ``--json``, ``--quiet``,
  ``--runtime/--threads``, ``--lanes/--rate``) and the shutdown on SIGINT or SIGTERM;
- ``station.py``: ``simulate``, ``record``, ``serve``, ``replay``, ``bench``;
- ``bundles.py``: ``bundle verify|keygen|sign|policy``, ``enroll``, ``heads``;
- ``tools.py``: ``label``, ``detect``;
- ``queue.py``: ``queue list|label|export``;
- ``plant.py``: ``plant passwd|cert``, the OPC UA server's users and certificate;
- ``shadow.py``: ``shadow status|head|bundle|promote|rollback|stop``, a running station's shadow
  through its HTTP API.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from sortline.edge_runtime.errors import SortlineError
from sortline.hardware.files import sweep_temp

from . import bundles, flags, plant, queue, shadow, station, tools

COMMANDS_GROUP = "sortline.commands"  # entry points: callables that add subcommands
__all__ = ["COMMANDS_GROUP", "build_parser", "flags", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sortline", description="Self-supervised recognition at the edge.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--log-json", action="store_true",
                        help="log one JSON object per line (time, level, logger, message), for journald or a collector")
    commands = parser.add_subparsers(dest="command", required=True)
    station.add(commands)
    tools.add(commands)
    queue.add(commands)
    shadow.add(commands)
    plant.add(commands)
    for entry in entry_points(group=COMMANDS_GROUP):  # the desktop's commands, when installed
        entry.load()(commands)
    bundles.add(commands)
    return parser


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``t`` (UTC, ISO 8601), ``level``, ``logger``, ``msg`` (and
    ``exc`` with a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"t": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_json:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    sweep_temp()  # what killed runs left in the temporary folder
    try:
        result = args.handler(args)
    except (SortlineError, FileNotFoundError) as exc:
        print(f"sortline: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(exc)}))
        return 2
    if getattr(args, "json", False):
        print(json.dumps(result))
    return 1 if isinstance(result, dict) and result.get("ok") is False else 0
