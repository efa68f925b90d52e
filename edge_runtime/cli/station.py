"""Commands of a station's lines: ``simulate``, ``record``, ``serve``, ``replay`` and ``bench``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import flags


def _simulate(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.hil.runs import make_scenario, record_simulation, simulated_line

    config = simulated_line(args.items, args.seed, args.rate, args.lanes, args.faults)
    scenario = make_scenario(args.scenario, args.seed, args.products, args.product_count, shift=args.shift)
    result = record_simulation(config, args.record, scenario, progress=not args.quiet)
    injected = ", ".join(f"{k} {v}" for k, v in sorted(result["injected"].items())) or "none"
    print(f"{args.record}: {result['items']} items, {result['captures']} captures, {result['serial_bytes']} serial "
          f"bytes in {result['seconds']} s; faults injected: {injected}; controller silences: {result['silences']}")
    return result


def _replay(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.errors import ConfigError
    from sortline.edge_runtime.hil.report import markdown
    from sortline.edge_runtime.hil.runs import replay_recording
    from sortline.edge_runtime.model.pipeline import ItemPipeline
    from sortline.edge_runtime.plant import local_plant

    pipeline = ItemPipeline.for_station(args.bundle, threads=args.threads, runtime=args.runtime)
    try:
        plant = local_plant(args.mqtt, args.opcua, None, name="replay")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    run = replay_recording(pipeline, args.recording, speed=args.speed, event_log=args.events,
                           progress=not args.quiet, watch=flags.build_watch(args), plant=plant)
    print(markdown(run.summary))
    faults = run.summary["faults"]
    print(flags.drift_line(run.summary))
    if (said := flags.plant_line(run.summary)) is not None:
        print(said)
    injected = run.summary["faults_injected"]
    print("Faults (observed / injected): " + ", ".join(f"{k} {faults[k]}/{injected[k]}" for k in faults))
    summary = {**run.summary, "ok": run.summary["lost"] == 0 and run.summary["duplicates"] == 0}
    if not summary["ok"]:
        print(f"sortline: replay: {summary['lost']} items got no gate command and {summary['duplicates']} got "
              "two different ones", file=sys.stderr)
    return summary


def _record(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.daemon.config import load_station_file
    from sortline.edge_runtime.daemon.service import record_station

    if args.items is None and args.seconds is None:
        print("recording until Ctrl-C", file=sys.stderr)
    with flags.until_signalled() as stop:
        result = record_station(load_station_file(args.config), args.out, items=args.items, seconds=args.seconds,
                                stop=stop, progress=not args.quiet)
    print(f"{args.out}: {result['items']} items, {result['captures']} captures, {result['serial_bytes']} serial "
          f"bytes in {result['seconds']} s")
    return result


def _serve(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.daemon.config import load_station_file
    from sortline.edge_runtime.daemon.service import serve

    station_file = load_station_file(args.config)
    if args.runtime is not None or args.threads is not None:  # the command line overrides the file
        table = station_file.station.model_copy(update={"runtime": args.runtime or station_file.station.runtime,
                                                        "threads": args.threads or station_file.station.threads})
        station_file = station_file.model_copy(update={"station": table})
    with flags.until_signalled() as stop:
        stats, faults = serve(station_file, stop, bundle=args.bundle)
    summary = {"items": stats.items, "gate_commands": stats.gate_commands, "deadline_misses": stats.deadline_misses,
               "reasons": dict(stats.reasons), "faults": faults}
    print(f"served {stats.items} items, {stats.gate_commands} gate commands, {stats.deadline_misses} deadline misses")
    return summary


def _bench(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.model.bench import bench_bundle
    from sortline.edge_runtime.model.bundle import load_bundle

    result = bench_bundle(load_bundle(args.bundle), runtime=args.runtime, threads=args.threads,
                          budget_s=args.budget)
    for key, ms in result["runtimes"].items():
        mark = "  <- chosen" if key == result["chosen"] else ""
        print(f"{key:16s} {ms:8.3f} ms per item{mark}")
    for key, why in result["refused"].items():
        print(f"{key:16s} refused: {why}")
    print(f"auto compared them on {result['check_items']} check items and timed {result['rounds']} rounds in "
          f"{result['seconds']} s; whole item with {result['chosen']}: {result['items_per_s']:.1f} items/s "
          f"(preprocess, embed, fuse, head; median of {result['whole_item_runs']})")
    return result


def add(commands: argparse._SubParsersAction) -> None:
    report, quiet, line = flags.report(), flags.quiet(), flags.line()
    simulate = commands.add_parser("simulate", parents=[line, quiet, report],
                                   help="run a simulated line and record what a station would see")
    simulate.add_argument("--scenario", choices=["avocado", "checkout"], default="avocado")
    simulate.add_argument("--products", type=Path,
                          help="checkout: product photos, a labeled folder or split file (default: drawn products)")
    simulate.add_argument("--product-count", type=int, default=12, help="checkout: how many drawn products")
    simulate.add_argument("--items", type=int, default=500)
    simulate.add_argument("--faults", type=float, default=0.0, help="rate of every fault kind (e.g. 0.01)")
    simulate.add_argument("--seed", type=int, default=1000)
    simulate.add_argument("--record", type=Path, required=True, help="a new folder for the recording")
    simulate.set_defaults(handler=_simulate)

    record = commands.add_parser("record", parents=[quiet, report],
                                 help="record a real station's devices and cameras to a folder")
    record.add_argument("--config", type=Path, required=True, help="the station file (TOML)")
    record.add_argument("--out", type=Path, required=True, help="a new folder for the recording")
    record.add_argument("--items", type=int, help="stop after this many announced items")
    record.add_argument("--seconds", type=float, help="stop after this long (default: at Ctrl-C)")
    record.set_defaults(handler=_record)

    serve = commands.add_parser("serve", parents=[flags.runtime(default=None), report],
                                help="run the station daemon until SIGINT/SIGTERM")
    serve.add_argument("--config", type=Path, required=True, help="the station file (TOML)")
    serve.add_argument("--bundle", type=Path, help="override the station file's bundle")
    serve.set_defaults(handler=_serve)

    replay = commands.add_parser("replay", parents=[flags.runtime(), flags.watch(), flags.plant(), quiet, report],
                                 help="play a recording to the station runtime and judge it")
    replay.add_argument("recording", type=Path)
    replay.add_argument("--bundle", type=Path, required=True)
    replay.add_argument("--speed", choices=["realtime", "max"], default="realtime",
                        help="recorded timing, or each item as soon as the station is free")
    replay.add_argument("--events", type=Path, help="write the station's event log (JSON lines) here")
    replay.set_defaults(handler=_replay)

    bench = commands.add_parser("bench", parents=[flags.runtime(), report],
                                help="time every runtime and thread count on a bundle; show auto's pick")
    bench.add_argument("--bundle", type=Path, required=True)
    bench.add_argument("--budget", type=flags.positive(float), default=2.0, help="seconds of timing (default 2)")
    bench.set_defaults(handler=_bench)
