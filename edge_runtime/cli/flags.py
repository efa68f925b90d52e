"""Flags that several commands share, as argparse parents (``parents=[...]``), and the argument
types they parse with. Choices come from the registries that own them, never a copy."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from sortline.edge_runtime.model.runtimes import AUTO, RUNTIMES


def positive(kind: type) -> Callable[[str], float | int]:
    """An argparse type: a number of ``kind`` above zero."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} must be above zero")
        return value

    return parse


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def report() -> argparse.ArgumentParser:
    """``--json``: the command's summary as one JSON object on the last line of its output."""
    parser = _parent()
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    return parser


def signing() -> argparse.ArgumentParser:
    """``--key``: the private key a command signs the bundle it writes with."""
    parser = _parent()
    parser.add_argument("--key", type=Path, help="sign the bundle with this private key (default: "
                        "$SORTLINE_SIGNING_KEY, else ~/.config/sortline/signing.key, made on first use)")
    return parser


def quiet() -> argparse.ArgumentParser:
    """``--quiet``: no progress bars."""
    parser = _parent()
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


def runtime(default: str | None = AUTO) -> argparse.ArgumentParser:
    """``--runtime`` and ``--threads``, for every command that runs a bundle."""
    parser = _parent()
    parser.add_argument("--runtime", choices=[AUTO, *RUNTIMES], default=default,
                        help=f"inference runtime (default {default or 'the station file’s'}); auto measures the "
                             "installed ones on the bundle and picks the fastest")
    parser.add_argument("--threads", type=positive(int), default=None,
                        help="intra-op threads (default: measured, see edge_runtime/model/runtimes.py)")
    return parser


def line() -> argparse.ArgumentParser:
    """``--lanes`` and ``--rate`` of a simulated line."""
    parser = _parent()
    parser.add_argument("--lanes", type=positive(int), default=1,
                        help="lanes the controller announces items on (default 1)")
    parser.add_argument("--rate", type=positive(float), default=10.0,
                        help="items per second over all lanes (default 10)")
    return parser


@contextlib.contextmanager
def until_signalled() -> Iterator[threading.Event]:
    """An event that SIGINT (Ctrl-C) or SIGTERM (a service manager's stop) sets, for a clean
    shutdown; the previous handlers come back afterwards."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():  # only the main thread takes signals
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
