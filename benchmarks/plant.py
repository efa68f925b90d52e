"""The plant network against issue 32's targets, on the simulated avocado line with a real broker
(Debian's mosquitto, started here) and a real OPC UA client (asyncua).

    python benchmarks/plant.py mqtt --bundle AVOCADO       # 300 decisions/s, 6 lanes, with and without MQTT
    python benchmarks/plant.py outage --bundle AVOCADO     # the broker stopped 10 s in a 2,000-item run
    python benchmarks/plant.py opcua --bundle AVOCADO      # 100 results/s for 10 minutes to a subscribed client

- ``mqtt``: runs of ``--items`` at each of ``--rates`` items/s over 6 lanes, alternated without
  and with MQTT in one process; ``mosquitto_sub`` (a persistent session, QoS 1) counts every
  decision; the decision → broker acknowledgement times are the publisher's own.
- ``outage``: 2,000 items at 100 items/s, 6 lanes; the broker is stopped at item 500 for 10 s and
  started again: decisions lost at the subscriber, each lane's order, how long the spool took to empty.
- ``opcua``: ``--seconds`` at 100 items/s, 4 lanes; a client (Basic256Sha256 SignAndEncrypt, a user)
  subscribed to the ResultReady events counts ResultIds; then GetResultById for each of the last
  10,000 results, and for one older.

The broker and the subscriber run here at ``nice 19``, standing for machines elsewhere on the plant
network. The bundle is the avocado one from ``sortline demo``. ``--results`` writes
benchmarks/results/plant_<part>.md and .json.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from machine import cpu_name, write_results  # benchmarks/machine.py

# The broker and the subscriber stand for machines elsewhere on the plant network: on this one they
# run at the lowest priority, so that they take only what the station leaves (a station does not
# host the plant's broker).
ELSEWHERE = ["nice", "-n", "19"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """mosquitto on a free port, persistent, as tests/test_plant.py runs it."""

    def __init__(self) -> None:
        self.folder, self.port = Path(tempfile.mkdtemp(prefix="sortline-broker-")), _free_port()
        (self.folder / "m.conf").write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                                            f"persistence true\npersistence_location {self.folder}/\n"
                                            f"max_queued_messages 1000000\nuser {getpass.getuser()}\n")
        self.process = None

    def start(self) -> Broker:
        self.process = subprocess.Popen([*ELSEWHERE, "mosquitto", "-c", str(self.folder / "m.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


class Subscriber:
    """A plant client in its own process (``mosquitto_sub``, persistent session, QoS 1) writing
    every decision to a file: on a 2-core machine a subscriber in the station's process would
    take the station's CPU, which a real MES does not."""

    def __init__(self, port: int, topic: str) -> None:
        self.out = Path(tempfile.mkstemp(prefix="sortline-sub-", suffix=".jsonl")[1])
        self.process = subprocess.Popen([*ELSEWHERE, "mosquitto_sub", "-h", "127.0.0.1", "-p", str(port), "-q", "1",
                                         "-c", "-i", f"bench-sub-{os.getpid()}-{time.monotonic_ns()}", "-t", topic],
                                        stdout=self.out.open("w"))
        time.sleep(0.5)

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(10)

    def check(self, items: int) -> dict:
        decisions = [json.loads(line) for line in self.out.read_text().splitlines() if line.startswith("{")]
        first = {}
        for d in decisions:
            first.setdefault(d["item_id"], d)
        lanes: dict[int, list[int]] = {}
        for d in first.values():
            lanes.setdefault(d["lane"], []).append(d["seq"])
        return {"at_subscriber": len(first), "missing": items - len(first), "repeated": len(decisions) - len(first),
                "lanes_in_order": all(seqs == sorted(seqs) for seqs in lanes.values())}


def _sort(bundle: Path, items: int, rate: float, lanes: int, seed: int, plant=None, beside=None) -> dict:
    from sortline.edge_runtime.hil.runs import make_scenario, sort_on_simulated_line
    from sortline.edge_runtime.model.pipeline import ItemPipeline
    from sortline.hardware.sim.line import LineConfig

    run = sort_on_simulated_line(ItemPipeline.for_station(bundle), LineConfig(items=items, seed=seed,
                                                                             pitch_ms=1000 / rate, lanes=lanes),
                                 make_scenario("avocado", seed), progress=False, plant=plant, beside=beside)
    s = run.summary
    return {"items": s["items"], "p50": s["latency_ms_p50"], "p99": s["latency_ms_p99"], "late": s["deadline_misses"],
            "overload": s["overload"], "lost": s["lost"], "items_per_s": s["items_per_s"],
            "plant": s.get("plant", {})}


def _mqtt_plant(broker: Broker, prefix: str):
    from sortline.edge_runtime.plant import MqttSettings, Plant

    return Plant(MqttSettings(url=f"mqtt://127.0.0.1:{broker.port}", prefix=prefix, client_id=f"bench-{prefix}",
                              spool=broker.folder / f"spool-{prefix.replace('/', '-')}", stats_every_s=5.0))


def mqtt(args: argparse.Namespace) -> dict:
    broker = Broker().start()
    runs: dict[str, list[dict]] = {}
    warm = _sort(args.bundle, 1500, args.rates[0], 6, 62)  # the first run in a process sheds: not counted
    print("warm-up (not counted)", json.dumps(warm), flush=True)
    try:
        for rate in args.rates:
            for rep in range(args.repeats):
                for mode in (("off", "mqtt") if rep % 2 == 0 else ("mqtt", "off")):
                    prefix = f"bench/{mode}{rep}-{int(rate)}"
                    sub = Subscriber(broker.port, f"{prefix}/decision") if mode == "mqtt" else None
                    row = _sort(args.bundle, args.items, rate, 6, 63 + rep,
                                plant=_mqtt_plant(broker, prefix) if mode == "mqtt" else None)
                    if sub is not None:
                        time.sleep(1.0)
                        sub.close()
                        row.update(sub.check(row["items"]))
                    runs.setdefault(f"{mode}@{rate:g}", []).append(row)
                    print(mode, rate, json.dumps(row), flush=True)
    finally:
        broker.stop()
    p99 = {key: statistics.median(r["p99"] for r in rs) for key, rs in runs.items()}
    table = ["| offered items/s | MQTT | items | items/s | decision p50 / p99 ms | late | shed | "
             "at subscriber (missing) | ack p50 / p99 ms |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, rs in runs.items():
        mode, rate = key.split("@")
        for r in rs:
            m = r["plant"].get("mqtt", {})
            table.append(f"| {rate} | {mode} | {r['items']} | {r['items_per_s']} | {r['p50']} / {r['p99']} | "
                         f"{r['late']} | {r['overload']} | {r.get('at_subscriber', '—')} ({r.get('missing', '—')}) | "
                         f"{m.get('ack_ms_p50', '—')} / {m.get('ack_ms_p99', '—')} |")
    ratios = {f"{rate:g}": round(p99[f"mqtt@{rate:g}"] / p99[f"off@{rate:g}"], 3) for rate in args.rates}
    table.append("\nDecision p99, median of runs, MQTT against off: " +
                 ", ".join(f"{rate} items/s ×{ratio}" for rate, ratio in ratios.items()) + ".")
    return {"runs": runs, "p99_median": p99, "ratios": ratios, "table": "\n".join(table)}


def outage(args: argparse.Namespace) -> dict:
    broker = Broker().start()
    prefix = "bench/outage"
    sub = Subscriber(broker.port, f"{prefix}/decision")
    plant = _mqtt_plant(broker, prefix)
    seen: dict[str, float] = {}

    def stop_broker(running):
        done = threading.Event()

        def act():
            while running.station.stats.items < 500 and not done.is_set():
                time.sleep(0.01)
            broker.stop()
            seen["down_at_item"] = running.station.stats.items
            done.wait(10)
            broker.start()
            seen["up"], seen["up_at_item"] = time.monotonic(), running.station.stats.items
            while not done.is_set():
                st = plant.summary().get("mqtt", {})
                if st.get("connected") and st.get("spool") == 0 and st.get("pending") == 0:
                    seen["drained_s"] = round(time.monotonic() - seen["up"], 2)
                    return
                time.sleep(0.02)

        thread = threading.Thread(target=act, daemon=True)
        thread.start()
        return lambda: (thread.join(60), done.set())

    try:
        row = _sort(args.bundle, 2000, 100.0, 6, 71, plant=plant, beside=stop_broker)
        time.sleep(2.0)
        sub.close()
        row.update(sub.check(row["items"]))
    finally:
        broker.stop()
    row.update({k: v for k, v in seen.items() if k != "up"})
    m = row["plant"]["mqtt"]
    table = ["| items | broker down at item | up at item | spooled | lost (publisher) | at subscriber (missing) | "
             "lanes in order | spool empty after return | decision p99 ms |",
             "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
             f"| {row['items']} | {row['down_at_item']} | {row['up_at_item']} | {m['spooled']} | {m['lost']} | "
             f"{row['at_subscriber']} ({row['missing']}) | {row['lanes_in_order']} | {row.get('drained_s')} s | "
             f"{row['p99']} |"]
    return {"run": row, "table": "\n".join(table)}


def opcua(args: argparse.Namespace) -> dict:
    from asyncua import Client, ua

    from sortline.edge_runtime.plant import OpcUaSettings, Plant, hash_password, make_certificate

    work = Path(tempfile.mkdtemp(prefix="sortline-opcua-"))
    cert, key = make_certificate(work / "server", "urn:sortline:bench", "sortline bench")
    client_cert, client_key = make_certificate(work / "client", "urn:sortline:bench-client", "client", client=True)
    endpoint = f"opc.tcp://127.0.0.1:{_free_port()}/sortline"
    plant = Plant(opcua=OpcUaSettings(endpoint=endpoint, application_uri="urn:sortline:bench", certificate=cert,
                                      private_key=key, users={"plc": hash_password("bench-password")}))
    items = int(args.seconds * 100)
    got: list[str] = []
    out: dict = {}

    class Handler:
        def event_notification(self, event):
            got.append(event.ResultId)

    async def client(station_ref: dict, ready: threading.Event):
        c = Client(endpoint, timeout=30)
        c.application_uri = "urn:sortline:bench-client"
        await c.set_security_string(f"Basic256Sha256,SignAndEncrypt,{client_cert},{client_key}")
        c.set_user("plc")
        c.set_password("bench-password")
        async with c:
            idx = await c.get_namespace_index("urn:sortline:machine-vision")
            system = await c.nodes.objects.get_child(f"{idx}:VisionSystem")
            etype = await c.nodes.base_event_type.get_child(f"{idx}:ResultReadyEventType")
            subscription = await c.create_subscription(100, Handler())
            await subscription.subscribe_events(system, etype, queuesize=10000)
            ready.set()
            while len(got) < items and not station_ref.get("ended"):
                await asyncio.sleep(0.2)
            for _ in range(100):
                if len(got) >= items:
                    break
                await asyncio.sleep(0.1)
            results = await system.get_child(f"{idx}:ResultManagement")
            started, answered = time.perf_counter(), 0
            for result_id in got[-10000:]:
                error = (await results.call_method(f"{idx}:GetResultById",
                                                   ua.Variant(result_id, ua.VariantType.String),
                                                   ua.Variant(0, ua.VariantType.Int32)))[0]
                answered += error == 0
            out["by_id_answered"], out["by_id_s"] = answered, round(time.perf_counter() - started, 1)
            if len(got) > 10000:
                out["older_error"] = (await results.call_method(
                    f"{idx}:GetResultById", ua.Variant(got[-10001], ua.VariantType.String),
                    ua.Variant(0, ua.VariantType.Int32)))[0]

    station_ref: dict = {}
    ready = threading.Event()

    def beside(running):
        thread = threading.Thread(target=lambda: out.setdefault("error", _run_async(client(station_ref, ready))),
                                  daemon=True)
        thread.start()
        ready.wait(30)
        return lambda: (station_ref.update(ended=True), thread.join(300))

    row = _sort(args.bundle, items, 100.0, 4, 81, plant=plant, beside=beside)
    row.update(out, events=len(got), unique=len(set(got)), missing=items - len(set(got)))
    o = row["plant"]["opcua"]
    table = ["| seconds | items | events at the client | missing ResultIds | GetResultById of the last 10,000 | "
             "older one | decision p99 ms | server lost |", "|---:|---:|---:|---:|---:|---:|---:|---:|",
             f"| {args.seconds} | {row['items']} | {row['events']} | {row['missing']} | {row.get('by_id_answered')} "
             f"answered in {row.get('by_id_s')} s | error {row.get('older_error')} | {row['p99']} | {o['lost']} |"]
    return {"run": {k: (repr(v) if k == "error" else v) for k, v in row.items()}, "table": "\n".join(table)}


def _run_async(coroutine):
    try:
        asyncio.run(coroutine)
        return None
    except BaseException as exc:
        return exc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["mqtt", "outage", "opcua"])
    parser.add_argument("--bundle", type=Path, required=True, help="the avocado demo bundle")
    parser.add_argument("--items", type=int, default=6000, help="mqtt: items per run")
    parser.add_argument("--rates", type=float, nargs="+", default=[300.0, 200.0],
                        help="mqtt: items per second over 6 lanes (default 300 and 200)")
    parser.add_argument("--repeats", type=int, default=3, help="mqtt: runs of each mode")
    parser.add_argument("--seconds", type=float, default=600.0, help="opcua: how long the line runs at 100 items/s")
    parser.add_argument("--results", action="store_true")
    args = parser.parse_args()
    started = time.time()
    result = {"mqtt": mqtt, "outage": outage, "opcua": opcua}[args.part](args)
    result.update(cpu=cpu_name(), seconds=round(time.time() - started), cores=os.cpu_count(),
                  args={k: str(v) for k, v in vars(args).items()})
    print(result["table"])
    if args.results:
        write_results("plant", args.part, "Plant network", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
