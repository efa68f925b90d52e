"""The station on the plant network: results, stats and commands over MQTT against Debian's
mosquitto broker (stopped and restarted in the middle of a run; ``mosquitto_sub`` as an outside
client), and the OPC UA server against an asyncua client (result events, GetResultById, the state
machine, users and Basic256Sha256). Hostile commands and sessions are refused and counted while
the station keeps sorting."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from sortline.edge_runtime.errors import ConfigError
from sortline.edge_runtime.model.pipeline import ItemPipeline
from sortline.edge_runtime.plant import (
    CommandError,
    MqttSettings,
    OpcUaSettings,
    Plant,
    PlantResult,
    Spool,
    hash_password,
    make_certificate,
    parse_command,
)
from sortline.edge_runtime.plant.messages import MAX_COMMAND_BYTES

# CI installs mosquitto (.ci/run); elsewhere the broker tests say why they skip.
needs_broker = pytest.mark.skipif(shutil.which("mosquitto") is None and not os.environ.get("CI"),
                                  reason="Debian's mosquitto is not installed (apt install mosquitto "
                                         "mosquitto-clients)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """Debian's mosquitto on a free port, persistent (a subscriber's queued messages survive a restart)."""

    def __init__(self, folder: Path) -> None:
        self.port, self.folder = _free_port(), folder
        (folder / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nmax_queued_messages 100000\n"
            f"user {getpass.getuser()}\n")  # as root it would become `mosquitto`, who cannot write the folder
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.folder / "mosquitto.conf")],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


def _record(item_id: int, lane: int = 0, reason: str = "confident") -> dict:
    return {"item_id": item_id, "lane": lane, "label": "A" if reason == "confident" else None, "confidence": 0.9,
            "exit": 1, "reason": reason, "head_version": 0, "bundle": "b", "latency_ms": 12.5}


# --- what comes in is checked ---------------------------------------------------------------------

@pytest.mark.parametrize("action, payload", [
    ("pause", b"not json"), ("pause", b'{"lane": 256}'), ("pause", b'{"lane": -1}'), ("pause", b'{"lane": true}'),
    ("pause", b'{"lane": 1, "extra": 2}'), ("pause", b"[1]"), ("pause", b'{"lane": "1"}'), ("pause", b"\xff\xfe"),
    ("resume", b" " * (MAX_COMMAND_BYTES + 1)), ("explode", b'{"lane": 1}'), ("pause/../resume", b'{"lane": 1}'),
])
def test_a_malformed_command_is_refused_with_a_reason(action, payload):
    with pytest.raises(CommandError):
        parse_command(action, payload)


def test_good_commands_name_a_lane_or_all():
    assert parse_command("pause", b'{"lane": 3}').to_dict() == {"command": "pause", "lane": 3}
    assert parse_command("resume", b'{"lane": "all"}').lane is None


def test_a_result_carries_what_the_plant_needs_and_survives_an_unannounced_item():
    r = PlantResult.of(_record(7, lane=2), seq=3, at=0.0)
    body = json.loads(r.to_json())
    assert body["item_id"] == 7 and body["lane"] == 2 and body["utc"].startswith("1970-01-01T00:00:00")
    assert r.result_id == "3-7"
    unannounced = PlantResult.of({"item_id": 9, "exit": 0, "reason": "unannounced", "label": None,
                                  "confidence": 0.0, "bundle": "b"}, seq=4, at=0.0)
    assert unannounced.lane is None and unannounced.latency_ms is None


def test_the_spool_keeps_order_counts_what_its_cap_gives_up_and_is_sent_first_after_a_restart(tmp_path):
    spool = Spool(tmp_path / "spool", max_bytes=20_000, segment_bytes=2_000)
    for k in range(1000):  # ~30 bytes each: more than the cap
        spool.append(("t", json.dumps({"k": k}), float(k)))
    assert spool.lost > 0 and spool.bytes <= 20_000
    first = json.loads(spool.peek()[1])["k"]
    assert first == spool.lost  # the oldest went, every one counted
    for _ in range(10):
        spool.pop()
    spool.close()  # half a segment sent: the rest is kept for the next run
    (tmp_path / "spool" / "spool-99999999.jsonl").write_text("garbage\n")  # a line that is not the station's
    again = Spool(tmp_path / "spool", max_bytes=20_000, segment_bytes=2_000)
    order = []
    while (entry := again.peek()) is not None:
        order.append(json.loads(entry[1])["k"])
        again.pop()
    assert order == list(range(first + 10, 1000))
    assert again.lost == 1 and len(again) == 0


def test_a_spool_on_a_full_disk_counts_what_it_cannot_keep(tmp_path, monkeypatch):
    spool = Spool(tmp_path / "spool")

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("builtins.open", full)
    assert spool.append(("t", "{}", 0.0)) is False
    assert spool.lost == 1 and spool.errors == 1


def test_alarms_say_new_faults_once_and_drift_alarms_when_raised_and_when_cleared():
    from types import SimpleNamespace

    from sortline.edge_runtime.plant.line import StationLine

    faults = {"views_corrupt": 0, "garbled": 2}
    alarms: list[dict] = []
    station = SimpleNamespace(observed_faults=lambda: dict(faults), halted=False, paused_lanes=set())
    line = StationLine(station, SimpleNamespace(summary=lambda: {"alarms": [dict(a) for a in alarms]}))
    assert line.new_alarms() == [{"kind": "fault", "fault": "garbled", "count": 2, "new": 2}]
    assert line.new_alarms() == []
    faults["views_corrupt"] = 3
    alarms.append({"kind": "camera", "statistic": "sharpness", "camera": 2, "at_item": 900, "cleared_at_item": None})
    said = line.new_alarms()
    assert said[0] == {"kind": "fault", "fault": "views_corrupt", "count": 3, "new": 3}
    assert said[1]["kind"] == "drift" and said[1]["state"] == "raised" and said[1]["drift"]["camera"] == 2
    assert line.new_alarms() == []
    alarms[0]["cleared_at_item"] = 1400
    assert [a["state"] for a in line.new_alarms()] == ["cleared"]


# --- MQTT against mosquitto -------------------------------------------------------------------------

def _run_line(tiny_bundle, items: int, rate: float, lanes: int, plant: Plant, beside=None, seed: int = 5):
    from sortline.edge_runtime.hil.runs import sort_on_simulated_line
    from sortline.hardware.sim.line import LineConfig

    return sort_on_simulated_line(ItemPipeline(tiny_bundle, threads=1),
                                  LineConfig(items=items, pitch_ms=1000 / rate, lanes=lanes, seed=seed),
                                  progress=False, plant=plant, beside=beside)


@needs_broker
@pytest.mark.slow
def test_every_decision_reaches_mosquitto_sub_in_order_though_the_broker_is_away_for_10_s(tiny_bundle, broker,
                                                                                      tmp_path):
    """A 6-lane run with the broker stopped for 10 s in its middle: mosquitto_sub (a persistent
    session, QoS 1) gets every decision, each lane's in order; the spool is empty within 10 s of
    the broker's return; the station's gate commands never waited."""
    sub = subprocess.Popen(["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-c",
                            "-i", "outside-client", "-t", "sortline/test/decision", "-t", "sortline/test/status",
                            "-v"], stdout=(tmp_path / "sub.txt").open("w"))  # a pipe would fill and block it
    time.sleep(0.5)  # subscribed before the first result
    plant = Plant(MqttSettings(url=broker.url, prefix="sortline/test", client_id="station-under-test",
                               spool=tmp_path / "spool", stats_every_s=1.0))
    seen: dict[str, float] = {}

    def outage(running):
        done = threading.Event()

        def act():
            while running.station.stats.items < 60 and not done.is_set():
                time.sleep(0.01)
            broker.stop()
            seen["down"] = time.monotonic()
            done.wait(10)
            broker.start()
            seen["up"] = time.monotonic()
            while not done.is_set():
                status = plant.summary().get("mqtt", {})
                if status.get("connected") and status.get("spool") == 0 and status.get("pending") == 0:
                    seen.setdefault("drained", time.monotonic())
                    return
                time.sleep(0.02)

        thread = threading.Thread(target=act, daemon=True)
        thread.start()
        return lambda: (thread.join(30), done.set())

    run = _run_line(tiny_bundle, items=480, rate=30, lanes=6, plant=plant, beside=outage)
    s = run.summary
    assert (s["items"], s["gate_commands"], s["lost"], s["deadline_misses"]) == (480, 480, 0, 0)
    mqtt = s["plant"]["mqtt"]
    assert mqtt["disconnects"] >= 1 and mqtt["spooled"] > 100 and mqtt["lost"] == 0, mqtt
    assert seen["drained"] - seen["up"] < 10.0
    time.sleep(1.0)
    sub.terminate()
    sub.wait(10)
    lines = (tmp_path / "sub.txt").read_text().splitlines()
    decisions = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("sortline/test/decision ")]
    first = list(dict.fromkeys(d["item_id"] for d in decisions))  # QoS 1: a resent message may repeat
    assert sorted(first) == list(range(1, 481))
    for lane in range(6):
        on_lane = [d["seq"] for d in {d["item_id"]: d for d in decisions}.values() if d["lane"] == lane]
        assert on_lane == sorted(on_lane), f"lane {lane} out of order"
    assert "sortline/test/status online" in lines


@needs_broker
@pytest.mark.slow
def test_commands_pause_and_resume_a_lane_and_garbage_is_refused_while_the_station_sorts(tiny_bundle, broker,
                                                                                       tmp_path):
    plant = Plant(MqttSettings(url=broker.url, prefix="sortline/cmd-test", client_id="station",
                               spool=tmp_path / "spool", stats_every_s=0.5))
    answers: list[dict] = []
    stats: list[dict] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="operator")

    def on_message(_c, _u, m):
        (answers if m.topic.endswith("cmd/ack") else stats).append(json.loads(m.payload))

    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe([("sortline/cmd-test/cmd/ack", 1), ("sortline/cmd-test/stats", 1)])
    client.loop_start()
    moments: dict[str, int] = {}

    def operator(running):
        station, done = running.station, threading.Event()

        def act():
            for at, topic, payload in ((30, "cmd/pause", b'{"lane": 1}'), (35, "cmd/pause", b"not json"),
                                       (40, "cmd/explode", b'{"lane": 1}'), (45, "cmd/pause", b"x" * 10_000_000),
                                       (50, "cmd/resume", b'{"lane": 999}'), (110, "cmd/resume", b'{"lane": 1}')):
                while station.stats.items < at and not done.is_set():
                    time.sleep(0.005)
                client.publish(f"sortline/cmd-test/{topic}", payload, qos=1).wait_for_publish(5)
                moments[f"{topic}@{at}"] = station.stats.items

        thread = threading.Thread(target=act, daemon=True)
        thread.start()
        return lambda: (thread.join(20), done.set())

    log = tmp_path / "events.jsonl"
    from sortline.edge_runtime.hil.runs import sort_on_simulated_line
    from sortline.hardware.sim.line import LineConfig

    run = sort_on_simulated_line(ItemPipeline(tiny_bundle, threads=1),
                                 LineConfig(items=200, pitch_ms=1000 / 40, lanes=4, seed=6),
                                 progress=False, plant=plant, beside=operator, event_log=log)
    client.loop_stop()
    s = run.summary
    assert (s["items"], s["gate_commands"], s["lost"]) == (200, 200, 0)
    assert s["plant"]["mqtt"]["commands"] == 2 and s["plant"]["mqtt"]["refused"] == 4
    oks = [a for a in answers if a["ok"]]
    assert [(a["command"], a["lane"]) for a in oks] == [("pause", 1), ("resume", 1)]
    assert oks[0]["paused_lanes"] == [1] and oks[1]["paused_lanes"] == []
    assert len([a for a in answers if not a["ok"]]) == 4
    items = [json.loads(line) for line in log.read_text().splitlines()]
    paused = [e for e in items if e.get("reason") == "paused"]
    assert paused and {e["lane"] for e in paused} == {1}
    assert all(moments["cmd/pause@30"] <= e["item_id"] <= moments["cmd/resume@110"] + 8 for e in paused)
    assert stats and stats[-1]["items"] > 0 and "mqtt" in stats[-1]


# --- OPC UA ---------------------------------------------------------------------------------------------

USERS = {"operator": hash_password("correct horse", iterations=2000)}


def test_opcua_settings_refuse_a_server_nobody_could_use_or_an_unencrypted_one_not_asked_for():
    with pytest.raises(ValueError, match="unencrypted"):
        OpcUaSettings(users=USERS)
    with pytest.raises(ValueError, match="nobody"):
        OpcUaSettings(allow_unencrypted=True)


@pytest.mark.slow
def test_an_opcua_client_gets_every_result_event_halts_the_station_and_garbage_is_refused(tiny_bundle):
    from asyncua import Client, ua

    endpoint = f"opc.tcp://127.0.0.1:{_free_port()}/sortline"
    plant = Plant(opcua=OpcUaSettings(endpoint=endpoint, users=USERS, allow_anonymous=True, allow_unencrypted=True,
                                      results=10000), simulated=True)
    events: list = []
    out: dict = {}

    class Handler:
        def event_notification(self, event):
            events.append(event)

    async def client_side(ready: threading.Event, running_ref: dict):
        async with Client(endpoint) as anonymous:  # reads and subscribes; may not call
            idx = await anonymous.get_namespace_index("urn:sortline:machine-vision")
            system = await anonymous.nodes.objects.get_child(f"{idx}:VisionSystem")
            etype = await anonymous.nodes.base_event_type.get_child(f"{idx}:ResultReadyEventType")
            subscription = await anonymous.create_subscription(20, Handler())
            await subscription.subscribe_events(system, etype)
            ready.set()
            machine = await system.get_child(f"{idx}:VisionStateMachine")
            with pytest.raises(ua.UaStatusCodeError):
                await machine.call_method(f"{idx}:Halt")
            while "station" not in running_ref or running_ref["station"].stats.items < 80:
                await asyncio.sleep(0.01)
            user = Client(endpoint)
            user.set_user("operator")
            user.set_password("correct horse")
            async with user:
                machine = await user.nodes.objects.get_child([f"{idx}:VisionSystem", f"{idx}:VisionStateMachine"])
                results = await user.nodes.objects.get_child([f"{idx}:VisionSystem", f"{idx}:ResultManagement"])
                with pytest.raises(ua.UaStatusCodeError):  # wrong arguments
                    await results.call_method(f"{idx}:GetResultById", ua.Variant(5, ua.VariantType.Int32))
                with pytest.raises(ua.UaStatusCodeError):  # a state that does not allow it
                    await machine.call_method(f"{idx}:SelectModeAutomatic")
                await machine.call_method(f"{idx}:Halt")
                out["halted_at"] = running_ref["station"].stats.items
                await asyncio.sleep(1.0)
                await machine.call_method(f"{idx}:Reset")
                await machine.call_method(f"{idx}:SelectModeAutomatic")
                out["resumed_at"] = running_ref["station"].stats.items
                out["state"] = (await (await machine.get_child(f"{idx}:CurrentState")).read_value()).Text
                for _ in range(600):  # every result's event, before the line ends
                    if len(events) >= 240:
                        break
                    await asyncio.sleep(0.05)
                last = events[-1]
                out["by_id"] = await results.call_method(f"{idx}:GetResultById",
                                                         ua.Variant(last.ResultId, ua.VariantType.String),
                                                         ua.Variant(0, ua.VariantType.Int32))
                out["missing"] = await results.call_method(f"{idx}:GetResultById",
                                                           ua.Variant("no-such", ua.VariantType.String),
                                                           ua.Variant(0, ua.VariantType.Int32))
            wrong = Client(endpoint)
            wrong.set_user("operator")
            wrong.set_password("wrong")
            with pytest.raises(ua.UaStatusCodeError):
                async with wrong:
                    pass
            await subscription.delete()

    ready, running_ref = threading.Event(), {}

    def client_thread():
        try:
            asyncio.run(client_side(ready, running_ref))
        except BaseException as exc:
            out["error"] = exc
            ready.set()

    def beside(running):
        running_ref["station"] = running.station
        thread = threading.Thread(target=client_thread, daemon=True)
        thread.start()
        ready.wait(20)
        return lambda: thread.join(30)

    run = _run_line(tiny_bundle, items=240, rate=40, lanes=3, plant=plant, beside=beside)
    assert "error" not in out, out.get("error")
    s = run.summary
    assert (s["items"], s["gate_commands"], s["lost"]) == (240, 240, 0)
    ids = [e.ResultId for e in events]
    assert len(ids) == len(set(ids)) == 240  # every result, once
    assert sorted(int(e.PartId) for e in events) == list(range(1, 241))
    assert all(e.IsSimulated for e in events)
    paused = [e for e in events if e.Reason == "paused"]
    assert paused and all(out["halted_at"] <= int(e.PartId) <= out["resumed_at"] + 8 for e in paused)
    assert all(e.ResultState == 2 for e in paused)
    assert {e.ResultState for e in events if e.Reason == "confident"} == {1}
    assert out["state"] == "Operational"
    error, part, product, state, exit_, confidence, _ = out["by_id"]
    assert error == 0 and part == events[-1].PartId and exit_ == events[-1].Exit
    assert out["missing"][0] != 0
    opcua = s["plant"]["opcua"]
    assert opcua["refused_calls"] == 2 and opcua["refused_sessions"] >= 1 and opcua["lost"] == 0


async def _read_state_securely(endpoint: str, client_cert: Path, client_key: Path) -> str:
    """CurrentState, read as the user ``operator`` over Basic256Sha256 SignAndEncrypt."""
    from asyncua import Client

    user = Client(endpoint)
    user.application_uri = "urn:sortline:client"
    await user.set_security_string(f"Basic256Sha256,SignAndEncrypt,{client_cert},{client_key}")
    user.set_user("operator")
    user.set_password("correct horse")
    async with user:
        idx = await user.get_namespace_index("urn:sortline:machine-vision")
        node = await user.nodes.objects.get_child([f"{idx}:VisionSystem", f"{idx}:VisionStateMachine",
                                                   f"{idx}:CurrentState"])
        return (await node.read_value()).Text


def test_basic256sha256_with_users_refuses_plain_and_anonymous_sessions(tmp_path):
    from asyncua import Client

    server_cert, server_key = make_certificate(tmp_path / "server", "urn:sortline:t", "sortline t")
    client_cert, client_key = make_certificate(tmp_path / "client", "urn:sortline:client", "client", client=True)
    endpoint = f"opc.tcp://127.0.0.1:{_free_port()}/sortline"
    plant = Plant(opcua=OpcUaSettings(endpoint=endpoint, application_uri="urn:sortline:t", certificate=server_cert,
                                      private_key=server_key, users=USERS))
    plant.start()

    async def sessions() -> dict:
        got = {}
        try:
            async with Client(endpoint) as plain:
                got["plain"] = await plain.nodes.objects.read_browse_name()
        except Exception as exc:
            got["plain_refused"] = type(exc).__name__
        for name, password in (("anonymous", None), ("wrong", "guess")):
            client = Client(endpoint)
            client.application_uri = "urn:sortline:client"
            await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{client_cert},{client_key}")
            if password is not None:
                client.set_user("operator")
                client.set_password(password)
            try:
                async with client:
                    got[name] = await client.nodes.objects.read_browse_name()
            except Exception as exc:
                got[f"{name}_refused"] = type(exc).__name__
        got["state"] = await _read_state_securely(endpoint, client_cert, client_key)
        return got

    try:
        got = asyncio.run(sessions())
    finally:
        plant.stop()
    assert "plain" not in got and "anonymous" not in got and "wrong" not in got, got
    assert got["state"] == "Operational"
    assert plant.summary()["opcua"]["refused_sessions"] >= 1


# --- the station file -----------------------------------------------------------------------------------

def test_a_station_file_names_the_broker_the_server_and_their_secrets(tmp_path, monkeypatch):
    from sortline.edge_runtime.daemon.config import load_station_file
    from sortline.edge_runtime.daemon.plant import build_plant

    (tmp_path / "mqtt.password").write_text("s3cret\n")
    (tmp_path / "opcua.users").write_text(f"# users\noperator:{USERS['operator']}\n")
    text = """
[station]
name = "line3"
[controller]
port = "loop://"
[mqtt]
url = "mqtt://127.0.0.1:1883"
username = "line3"
password_file = "mqtt.password"
[opcua]
endpoint = "opc.tcp://127.0.0.1:4840/sortline"
users_file = "opcua.users"
allow_unencrypted = true
[[views]]
rgb = 0
"""
    (tmp_path / "station.toml").write_text(text)
    plant = build_plant(load_station_file(tmp_path / "station.toml"))
    mqtt, opcua = plant.mqtt_settings, plant.opcua_settings
    assert mqtt.prefix == "sortline/line3" and mqtt.password == "s3cret" and mqtt.spool == tmp_path / "mqtt-spool"
    assert list(opcua.users) == ["operator"] and opcua.application_uri == "urn:sortline:line3"
    (tmp_path / "station.toml").write_text(text.replace('url = "mqtt://127.0.0.1:1883"',
                                                        'url = "mqtt://127.0.0.1:1883"\nprefix = "a/#"'))
    with pytest.raises(ConfigError, match="prefix"):
        load_station_file(tmp_path / "station.toml")
    monkeypatch.setenv("SORTLINE_MQTT_PASSWORD", "from-the-environment")
    (tmp_path / "station.toml").write_text(text.replace('password_file = "mqtt.password"\n', ""))
    assert build_plant(load_station_file(tmp_path / "station.toml")).mqtt_settings.password == "from-the-environment"
    (tmp_path / "opcua.users").write_text("operator:plaintext\n")
    (tmp_path / "station.toml").write_text(text)
    with pytest.raises(ConfigError, match="users_file"):
        build_plant(load_station_file(tmp_path / "station.toml"))


@needs_broker
@pytest.mark.slow
def test_serve_publishes_every_item_serves_opcua_with_a_certificate_and_metrics_pass_promtool(tmp_path, tiny_bundle,
                                                                                             broker):
    """``sortline serve`` with [mqtt] and [opcua] (Basic256Sha256, a users file, a certificate made
    by ``sortline plant cert``): a subscriber gets every item; a user reads the state machine;
    /metrics has the plant's counters and passes promtool."""
    from test_api import _call, _station_with_api
    from test_daemon import serve_simulated_line

    from sortline.edge_runtime.cli import main

    path, line, port = _station_with_api(tmp_path, tiny_bundle, 60, store=False)
    assert main(["plant", "cert", "--name", "line9", "--out", str(tmp_path / "opcua")]) == 0
    client_cert, client_key = make_certificate(tmp_path / "client", "urn:sortline:client", "client", client=True)
    (tmp_path / "opcua.users").write_text(f"operator:{USERS['operator']}\n")
    endpoint = f"opc.tcp://127.0.0.1:{_free_port()}/sortline"
    text = path.read_text().replace("[station]\n", '[station]\nname = "line9"\n')
    path.write_text(text + f'[mqtt]\nurl = "{broker.url}"\nstats_every_s = 1\n'
                    f'[opcua]\nendpoint = "{endpoint}"\ncertificate = "opcua/cert.der"\nprivate_key = "opcua/key.pem"\n'
                    'users_file = "opcua.users"\n')
    decisions: list[dict] = []
    sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="mes", clean_session=False)
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe("sortline/line9/decision", qos=1)
    sub.on_message = lambda c, u, m: decisions.append(json.loads(m.payload))
    sub.connect("127.0.0.1", broker.port)
    sub.loop_start()
    seen: dict = {}

    def operate() -> None:
        seen["state"] = asyncio.run(_read_state_securely(endpoint, client_cert, client_key))
        time.sleep(1.5)  # a stats message and some items
        seen["metrics"] = _call(port, "/metrics")[1]

    tally, result = serve_simulated_line(path, line, operate)
    time.sleep(1.0)
    sub.loop_stop()
    assert result["stats"].items == 60
    assert sorted({d["item_id"] for d in decisions}) == list(range(1, 61))
    assert seen["state"] == "Operational"
    assert "sortline_mqtt_connected 1.0" in seen["metrics"] and "sortline_opcua_events_total" in seen["metrics"]
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=seen["metrics"], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def _tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A certificate authority and a server certificate for 127.0.0.1 signed by it (PEM)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key, issuer: str, signer, ca: bool):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (x509.CertificateBuilder().subject_name(name)
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    files = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    files[0].write_bytes(cert("plant CA", ca_key, "plant CA", ca_key, True).public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(cert("broker", server_key, "plant CA", ca_key, False).public_bytes(serialization.Encoding.PEM))
    files[2].write_bytes(server_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return files


@needs_broker
def test_mqtt_5_over_tls_with_a_password_and_a_plant_ca(tmp_path):
    """mqtts:// to a broker whose certificate the plant's CA signed, MQTT 5, a user with a password
    from the environment: every result arrives; a wrong password is not a crash, only nothing sent."""
    ca, cert, key = _tls_files(tmp_path)
    port = _free_port()
    (tmp_path / "passwords").write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(tmp_path / "passwords"), "line3", "s3cret-pass"], check=True)
    (tmp_path / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\nallow_anonymous false\n"
        f"password_file {tmp_path / 'passwords'}\nuser {getpass.getuser()}\n")
    broker = subprocess.Popen(["mosquitto", "-c", str(tmp_path / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        got: list[dict] = []
        sub = paho.Client(CallbackAPIVersion.VERSION2, client_id="mes", protocol=paho.MQTTv5)
        sub.tls_set(ca_certs=str(ca))
        sub.username_pw_set("line3", "s3cret-pass")
        sub.on_connect = lambda c, u, f, rc, p: c.subscribe("sortline/tls/decision", qos=1)
        sub.on_message = lambda c, u, m: got.append(json.loads(m.payload))
        sub.connect("127.0.0.1", port)
        sub.loop_start()
        time.sleep(0.5)
        results = {}
        for password in ("s3cret-pass", "wrong"):
            plant = Plant(MqttSettings(url=f"mqtts://127.0.0.1:{port}", prefix="sortline/tls",
                                       client_id=f"st-{password}", username="line3", password=password, protocol="5",
                                       ca_file=ca, spool=None))
            plant.start()
            for k in range(1, 51):
                plant.result(_record(k, lane=k % 3))
            time.sleep(1.5)
            plant.stop(timeout_s=3)
            results[password] = plant.summary()["mqtt"]
        sub.loop_stop()
    finally:
        broker.terminate()
        broker.wait(10)
    assert sorted({d["item_id"] for d in got}) == list(range(1, 51))
    assert results["s3cret-pass"]["acked"] == 50 and results["s3cret-pass"]["lost"] == 0
    assert results["wrong"]["connects"] == 0 and results["wrong"]["acked"] == 0 and results["wrong"]["spooled"] == 50
