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


def positive(kind: type, zero: bool = False) -> Callable[[str], float | int]:
    """An argparse type: a number of ``kind`` above zero (or ``zero`` too)."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value >= 0 if zero else value > 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} must be {'zero or more' if zero else 'above zero'}")
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


def shift(text: str):
    """An argparse type: a simulated line's shift, ``KIND@ITEM`` (hardware/sim/shifts.py)."""
    from sortline.edge_runtime.hil.runs import Shift, ShiftError

    try:
        return Shift.parse(text)
    except ShiftError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def line() -> argparse.ArgumentParser:
    """``--lanes``, ``--rate`` and ``--shift`` of a simulated line."""
    parser = _parent()
    parser.add_argument("--shift", type=shift, metavar="KIND@ITEM",
                        help="from item ITEM on, the line changes: blur:CAMERA, nir-gain, light, cultivar "
                             "(avocado), product (checkout); docs/drift.md")
    parser.add_argument("--lanes", type=positive(int), default=1,
                        help="lanes the controller announces items on (default 1)")
    parser.add_argument("--rate", type=positive(float), default=10.0,
                        help="items per second over all lanes (default 10)")
    return parser


def watch() -> argparse.ArgumentParser:
    """``--no-watch``, ``--queue`` and ``--false-alarm-items``: the drift watch and the queue of
    unsure items of a station run (docs/drift.md)."""
    parser = _parent()
    parser.add_argument("--no-watch", action="store_true", help="no drift watch and no queue of unsure items")
    parser.add_argument("--queue", type=Path, help="keep unsure items in this folder (default: none; demo: OUT/queue)")
    parser.add_argument("--false-alarm-items", type=positive(float), default=None,
                        help="expected items between two false drift alarms, all statistics together (default 1e7)")
    return parser


def plant() -> argparse.ArgumentParser:
    """``--mqtt URL`` and ``--opcua URL``: a run's results on the plant network (docs/integration.md)."""
    parser = _parent()
    parser.add_argument("--mqtt", metavar="URL", help="publish results, stats and alarms to this MQTT broker "
                        "(mqtt://host:1883) under sortline/demo, and take cmd/pause and cmd/resume")
    parser.add_argument("--opcua", metavar="URL", help="serve an OPC UA server on this loopback endpoint "
                        "(opc.tcp://127.0.0.1:4840/sortline): anonymous reading, unencrypted")
    return parser


def plant_line(summary: dict) -> str | None:
    """What a run published to the plant network, in one line (None: it published nothing)."""
    plant = summary.get("plant")
    if not plant:
        return None
    said = []
    if "mqtt" in plant:
        m = plant["mqtt"]
        said.append(f"MQTT {m['acked']}/{m['results']} results acknowledged, {m['spooled']} through the spool, "
                    f"{m['lost']} lost, ack p99 {m['ack_ms_p99']} ms, {m['commands']} commands obeyed, "
                    f"{m['refused']} refused")
    if "opcua" in plant:
        o = plant["opcua"]
        said.append(f"OPC UA {o['events']}/{o['results']} result events, {o['lost']} lost, {o['calls']} calls, "
                    f"{o['refused_calls']} refused, state {o['state']}")
    return "Plant network: " + "; ".join(said) + "."


def build_watch(args: argparse.Namespace, queue: Path | None = None, on_label=None):
    """The watch a run's flags ask for (None with --no-watch)."""
    from sortline.edge_runtime.watch import DriftConfig, QueueConfig, StationWatch

    if args.no_watch:
        return None
    drift = DriftConfig(**({"items_between_false_alarms": args.false_alarm_items} if args.false_alarm_items else {}))
    folder = args.queue or queue
    return StationWatch.build(drift, QueueConfig(folder) if folder is not None else None, on_label=on_label)


def drift_line(summary: dict) -> str:
    """The run's drift alarms and queue, in one line for the terminal."""
    alarms = summary["drift"]["alarms"]
    said = "; ".join(f"{a['kind']}{'' if a['camera'] is None else ' camera ' + str(a['camera'])} {a['statistic']} "
                     f"at item {a['at_item']}" + (f" (cleared at {a['cleared_at_item']})" if a["cleared_at_item"]
                                                   else "") for a in alarms[:8])
    more = f" and {len(alarms) - 8} more" if len(alarms) > 8 else ""
    queue = summary["queue"]
    return (f"Drift alarms: {said or 'none'}{more}. Queue of unsure items: {queue['kept']} kept, "
            f"{queue['dropped']} not kept.")


def adapt_line(adapt: dict) -> str:
    """``sortline demo --adapt``: from the alarm to the promotion, in one line for the terminal."""
    return (f"Adapting: shift at item {adapt['shift_at_item']}, alarm at {adapt['alarm_at_item']}, "
            f"{adapt['labelled']} labels, {len(adapt['refits'])} refits, promoted at {adapt['promoted_at_item']}, "
            f"{len(adapt['rollbacks'])} rollbacks; MCC {adapt['mcc_before_shift']} before the shift, "
            f"{adapt['mcc_after_shift']} after it, {adapt['mcc_after_promotion']} after the promotion.")


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
