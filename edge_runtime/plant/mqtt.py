"""The station's results and state on an MQTT broker (paho-mqtt 2, MQTT 3.1.1 or 5).

Topics under the prefix (``sortline/<station>`` unless set):

- ``status``: retained ``online`` / ``offline``, with a last will that says ``offline``;
- ``decision``: one JSON result per item (:class:`~.messages.PlantResult`), QoS 1;
- ``stats``: the station's counters every ``stats_every_s``; ``alarm``: faults and drift alarms;
- ``cmd/pause`` and ``cmd/resume`` (``{"lane": N}`` or ``{"lane": "all"}``) are obeyed; their
  answer goes to ``cmd/ack``; anything else under ``cmd/`` is refused, counted and answered.

Publishing never delays a decision: the loop hands each record to a bounded queue and returns;
a thread of its own publishes. At most ``window`` messages wait for the broker's acknowledgement
(paho keeps them and sends them again after a reconnect); the rest, and everything while the
broker is away, go to the on-disk spool and are sent in order when it is back. A message that
could not be kept anywhere is counted as lost.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from .messages import CommandError, LaneCommand, PlantResult, parse_command
from .spool import Entry, Spool

log = logging.getLogger(__name__)
SCHEMES = {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883}
ACK_TIMES = 20000  # the latest acknowledgement times kept for the percentiles
TICK_S = 0.01  # the publisher's beat: results wait at most this long before they are sent
RECONNECT_S = 1.0  # while the broker is away, try again this often


@dataclass(frozen=True)
class MqttSettings:
    url: str  # mqtt://host:1883 or mqtts://host:8883
    prefix: str
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    protocol: str = "3.1.1"  # or "5"
    ca_file: Path | None = None  # TLS: the broker's CA (mqtts:// without it: the system's)
    cert_file: Path | None = None  # TLS client certificate and key, when the broker asks for one
    key_file: Path | None = None
    qos: int = 1
    keepalive_s: int = 30
    stats_every_s: float = 10.0
    queue: int = 20000  # results waiting for the publisher's thread; past it they are counted lost
    window: int = 1000  # published, waiting for the broker's acknowledgement
    spool: Path | None = None  # where messages wait while the broker is away (None: in memory only)
    spool_max_mb: float = 64.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in SCHEMES or not parts.hostname:
            raise ValueError(f"MQTT broker URL {self.url!r}: mqtt://host[:port] or mqtts://host[:port]")
        if self.protocol not in ("3.1.1", "5"):
            raise ValueError(f"MQTT protocol {self.protocol!r}: 3.1.1 or 5")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname

    @property
    def port(self) -> int:
        parts = urlsplit(self.url)
        return parts.port or SCHEMES[parts.scheme]

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme in ("mqtts", "ssl")


@dataclass
class MqttCounts:
    results: int = 0  # handed over by the station
    published: int = 0  # given to the client (first time)
    acked: int = 0  # acknowledged by the broker
    spooled: int = 0  # went through the spool
    lost: int = 0  # could not be kept (queue full, spool over its cap or its disk failing)
    connects: int = 0
    disconnects: int = 0
    commands: int = 0  # obeyed
    refused: int = 0  # malformed, oversized or unknown commands


class MqttLink:
    """The MQTT side of the plant link (module docstring). ``line`` is what commands act on and
    the stats and alarms come from (a :class:`~.line.StationLine`, set by ``attach``)."""

    def __init__(self, settings: MqttSettings) -> None:
        self.settings = s = settings
        self.counts = MqttCounts()
        self.line = None
        self._queue: deque[PlantResult] = deque()  # at most s.queue; appended by the loop, taken here
        self._spool = Spool(s.spool, int(s.spool_max_mb * (1 << 20))) if s.spool is not None else _MemorySpool(s.queue)
        self._acks: deque[tuple[int, float]] = deque()  # (mid, when), appended by paho's callback
        self._pending: dict[int, Entry] = {}  # mid → message, published and not yet acknowledged
        self._ack_ms: deque[float] = deque(maxlen=ACK_TIMES)
        self._connected = threading.Event()  # the broker acknowledged the connection
        self._open = False  # a connection is open or being opened
        self._said_away = False  # the broker's absence is said once, until it is back
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = client = make_client(s, self.topic("status"))
        client.on_connect, client.on_disconnect, client.on_message = self._on_connect, self._on_disconnect, \
            self._on_message
        client.on_publish = lambda _c, _u, mid, _rc, _p: self._acks.append((mid, time.time()))

    def topic(self, name: str) -> str:
        return f"{self.settings.prefix}/{name}"

    # --- the station's side: never blocks ---------------------------------------------------

    def offer(self, result: PlantResult) -> None:
        self.counts.results += 1
        if len(self._queue) >= self.settings.queue:
            self.counts.lost += 1
        else:
            self._queue.append(result)  # no lock, no wake-up: the publisher looks every TICK_S

    # --- the publisher's thread ------------------------------------------------------------------

    def start(self) -> MqttLink:
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._thread.start()
        log.info("MQTT: publishing to %s under %s/", self.settings.url, self.settings.prefix)
        return self

    def _run(self) -> None:
        """One thread does it all (paho's network loop included): every TICK_S it takes what the
        loop left, sends it (or spools it), and reads the broker's acknowledgements and commands.
        Waking a few times per message cost the station's loop more than the publishing itself."""
        next_stats = next_alarms = retry_at = time.monotonic()
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if not self._open and now >= retry_at:
                    retry_at = now + RECONNECT_S
                    self._connect()
                self._pump([self._entry(self._queue.popleft()) for _ in range(min(len(self._queue), 4096))])
                if self._open:
                    if self._client.loop(timeout=TICK_S) != paho.MQTT_ERR_SUCCESS:
                        self._lost()
                else:
                    time.sleep(TICK_S)
                self._take_acks()
                if self.line is not None and now >= next_alarms:
                    next_alarms = now + 1.0
                    for alarm in self.line.new_alarms():
                        self._publish_now(self.topic("alarm"), json.dumps(alarm))
                if self.line is not None and now >= next_stats:
                    next_stats = now + self.settings.stats_every_s
                    self._publish_now(self.topic("stats"), json.dumps({**self.line.stats(), "mqtt": self.status()}))
            except Exception:  # the publisher must outlive any one fault; the line never waits on it
                log.exception("MQTT publisher")
                time.sleep(0.1)

    def _connect(self) -> None:
        """Open a connection (again): paho's connect is its reconnect with these settings, and
        sends again what it had not seen acknowledged."""
        s = self.settings
        try:
            self._client.connect(s.host, s.port, keepalive=s.keepalive_s,
                                 **({"clean_start": True} if s.protocol == "5" else {}))
            self._open = True
        except (OSError, ValueError) as exc:
            if not self._said_away:
                self._said_away = True
                log.warning("MQTT broker %s cannot be reached (%s); results go to the spool", s.url, exc)

    def _lost(self) -> None:
        self._open = False
        if self._connected.is_set() and not self._stop.is_set():
            self.counts.disconnects += 1
            log.warning("MQTT: lost the broker %s; results go to the spool", self.settings.url)
        self._connected.clear()

    def _pump(self, batch: list[Entry]) -> None:
        """Send in order: what the spool holds first, then the new results; what cannot go now
        (broker away, window full) joins the spool."""
        for entry in batch:
            if len(self._spool) or not self._can_send():
                self._keep(entry)
            else:
                self._send(entry)
        while len(self._spool) and self._can_send():
            entry = self._spool.peek()
            if entry is None:
                break
            self._send(entry)
            self._spool.pop()

    def _entry(self, result: PlantResult) -> Entry:
        return self.topic("decision"), result.to_json(), result.at

    def _can_send(self) -> bool:
        return self._connected.is_set() and len(self._pending) < self.settings.window

    def _keep(self, entry: Entry) -> None:
        lost = self._spool.lost
        if self._spool.append(entry):
            self.counts.spooled += 1
        self.counts.lost += self._spool.lost - lost

    def _send(self, entry: Entry) -> None:
        info = self._client.publish(entry[0], entry[1], qos=self.settings.qos)
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            self._keep(entry)
            return
        self.counts.published += 1
        self._pending[info.mid] = entry  # kept by paho (and resent after a reconnect) until acknowledged

    def _take_acks(self) -> None:
        while self._acks:
            mid, at = self._acks.popleft()
            entry = self._pending.pop(mid, None)
            if entry is not None:
                self.counts.acked += 1
                self._ack_ms.append(1000 * (at - entry[2]))

    def _publish_now(self, topic: str, payload: str, retain: bool = False) -> None:
        """State, stats and alarms: sent if the broker is there, otherwise not kept (the next one
        says it again)."""
        if self._connected.is_set():
            self._client.publish(topic, payload, qos=1, retain=retain)

    # --- paho's thread -----------------------------------------------------------------------

    def _on_connect(self, client, _userdata, _flags, reason_code, _properties) -> None:
        if reason_code.is_failure:  # said once until a connection succeeds; tried again every RECONNECT_S
            if not self._said_away:
                self._said_away = True
                log.error("MQTT broker %s refused the connection: %s; results go to the spool", self.settings.url,
                          reason_code)
            return
        self.counts.connects += 1
        self._said_away = False
        client.subscribe(self.topic("cmd/#"), qos=1)
        client.publish(self.topic("status"), "online", qos=1, retain=True)
        self._connected.set()
        log.info("MQTT: connected to %s", self.settings.url)

    def _on_disconnect(self, _client, _userdata, _flags, _reason_code, _properties) -> None:
        self._lost()

    def _on_message(self, client, _userdata, message) -> None:
        action = message.topic.removeprefix(self.topic("cmd/"))
        if action != "ack":  # not our own answers
            client.publish(self.topic("cmd/ack"), json.dumps(obey(self.line, action, message, self.counts)), qos=1)

    # --- the end -----------------------------------------------------------------------------

    def stop(self, timeout_s: float = 5.0) -> None:
        """Send what is waiting (up to ``timeout_s``), say ``offline``, and keep what could not be
        sent in the spool for the next run."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._thread is not None and self._thread.is_alive() and \
                (self._queue or len(self._spool) or self._pending) and self._connected.is_set():
            time.sleep(0.02)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._take_acks()
        for entry in [*self._pending.values(), *map(self._entry, self._queue)]:
            self._keep(entry)  # not acknowledged, or never sent: the next run sends them
        self._queue.clear()
        if self._connected.is_set():
            info = self._client.publish(self.topic("status"), "offline", qos=1, retain=True)
            until = time.monotonic() + 1.0
            while not info.is_published() and time.monotonic() < until and \
                    self._client.loop(timeout=0.05) == paho.MQTT_ERR_SUCCESS:
                pass
            self._client.disconnect()
        self._spool.close()

    def status(self) -> dict:
        ack = np.array(self._ack_ms) if self._ack_ms else None
        return {"connected": self._connected.is_set(), **self.counts.__dict__, "waiting": len(self._queue),
                "pending": len(self._pending), "spool": len(self._spool),
                "ack_ms_p50": round(float(np.percentile(ack, 50)), 2) if ack is not None else None,
                "ack_ms_p99": round(float(np.percentile(ack, 99)), 2) if ack is not None else None}


def obey(line, action: str, message, counts: MqttCounts) -> dict:
    """A command from the broker, checked and applied to ``line``; the answer for ``cmd/ack``."""
    try:
        if line is None:
            raise CommandError("the station is not running yet")
        command: LaneCommand = parse_command(action, message.payload)
        answer = {**command.to_dict(), "ok": True, **line.apply(command, "MQTT command")}
        counts.commands += 1
    except CommandError as exc:
        counts.refused += 1
        if counts.refused <= 10 or counts.refused % 1000 == 0:
            log.warning("MQTT command on %s refused (%d so far): %s", message.topic[:120], counts.refused, exc)
        answer = {"command": action[:40], "ok": False, "error": str(exc)}
    return answer


def make_client(s: MqttSettings, status_topic: str) -> paho.Client:
    """A paho client for ``s``: its protocol, credentials, TLS, the last will on ``status_topic``.
    Its network loop is driven by :class:`MqttLink`'s thread, which also reconnects it."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=s.client_id,
                         protocol=paho.MQTTv5 if s.protocol == "5" else paho.MQTTv311,
                         **({} if s.protocol == "5" else {"clean_session": True}))
    client.max_inflight_messages_set(100)
    if s.username is not None:
        client.username_pw_set(s.username, s.password)
    if s.tls:
        client.tls_set(ca_certs=str(s.ca_file) if s.ca_file else None,
                       certfile=str(s.cert_file) if s.cert_file else None,
                       keyfile=str(s.key_file) if s.key_file else None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.will_set(status_topic, "offline", qos=1, retain=True)
    return client


class _MemorySpool:
    """The spool without a folder: the same order and the same count of what is lost, in memory."""

    def __init__(self, max_items: int) -> None:
        self.max_items, self.lost, self.errors = max_items, 0, 0
        self._items: deque[Entry] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def append(self, entry: Entry) -> bool:
        if len(self._items) >= self.max_items:
            self._items.popleft()
            self.lost += 1
        self._items.append(entry)
        return True

    def peek(self) -> Entry | None:
        return self._items[0] if self._items else None

    def pop(self) -> None:
        self._items.popleft()

    def close(self) -> None:
        pass
