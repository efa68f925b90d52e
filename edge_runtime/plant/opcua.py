"""The station as an OPC UA server (asyncua): a subset of OPC 40100-1 (Machine Vision).

``Objects/VisionSystem`` (namespace ``urn:sortline:machine-vision``; browse names as in OPC 40100):

- ``VisionStateMachine``: ``CurrentState`` (Preoperational, Operational, Halted, Error) and the
  methods ``Halt`` (every lane's items to the safe exit), ``Reset`` (Halted or Error →
  Preoperational, still halted) and ``SelectModeAutomatic`` (Preoperational → Operational: the
  station sorts again). The station starts Operational, in automatic mode, continuously.
- ``ResultManagement``: ``GetResultById(ResultId, Timeout)`` over a ring of the latest results,
  and a ``ResultReadyEventType`` event for every item (``ResultId``, ``PartId`` = the item id,
  ``ProductId`` = the class, ``ResultState``, ``IsSimulated``; vendor fields ``Exit``,
  ``Confidence``, ``Lane``, ``Reason``), emitted by the VisionSystem object.

The server runs on its own thread with its own event loop; the station's loop only appends each
result to a bounded queue. Security: Basic256Sha256 SignAndEncrypt with the station's certificate,
and users by password (:mod:`.users`); the None policy and anonymous reading only where the
settings allow them. ``ResultState``: 1 when the head decided the item with confidence, 2 when
it went to the safe exit (unsure, unknown, paused, overload, …).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from asyncua import Server, ua

from sortline.edge_runtime.model.pipeline import CONFIDENT

from .messages import LaneCommand, PlantResult
from .users import StationRules, StationUsers

log = logging.getLogger(__name__)
NAMESPACE = "urn:sortline:machine-vision"
OK, NOT_OK = 1, 2
STATES = ("Preoperational", "Operational", "Halted", "Error")
EVENT_FIELDS = [("ResultId", ua.VariantType.String), ("PartId", ua.VariantType.String),
                ("ProductId", ua.VariantType.String), ("ResultState", ua.VariantType.Int32),
                ("IsSimulated", ua.VariantType.Boolean), ("Exit", ua.VariantType.Int32),
                ("Confidence", ua.VariantType.Double), ("Lane", ua.VariantType.Int32),
                ("Reason", ua.VariantType.String)]


@dataclass(frozen=True)
class OpcUaSettings:
    endpoint: str = "opc.tcp://127.0.0.1:4840/sortline"
    name: str = "sortline station"
    application_uri: str = "urn:sortline:station"  # must be in the certificate's subject alternative names
    certificate: Path | None = None  # the station's certificate (DER or PEM) and private key: both,
    private_key: Path | None = None  # or neither (then only the None policy, where allowed)
    users: dict[str, str] = field(default_factory=dict, repr=False)  # name → password hash (users.py)
    allow_anonymous: bool = False  # anonymous sessions may browse, read and subscribe
    allow_unencrypted: bool = False  # offer the None security policy too
    results: int = 10000  # GetResultById answers for this many latest results
    queue: int = 20000  # results waiting for the server's thread; past it they are counted lost

    def __post_init__(self) -> None:
        if not self.endpoint.startswith("opc.tcp://"):
            raise ValueError(f"OPC UA endpoint {self.endpoint!r}: opc.tcp://host:port/path")
        if (self.certificate is None) != (self.private_key is None):
            raise ValueError("OPC UA: a certificate needs its private key, and the other way round")
        if self.certificate is None and not self.allow_unencrypted:
            raise ValueError("OPC UA: without a certificate and private key the server can only be unencrypted "
                             "(allow_unencrypted = true), which the settings do not allow")
        if not self.users and not self.allow_anonymous:
            raise ValueError("OPC UA: no users and no anonymous access: nobody could connect")


@dataclass
class OpcUaCounts:
    results: int = 0
    events: int = 0
    lost: int = 0  # the queue was full
    calls: int = 0
    refused_calls: int = 0  # wrong arguments, or a method the current state does not allow


class OpcUaServer:
    """The OPC UA side of the plant link (module docstring)."""

    def __init__(self, settings: OpcUaSettings) -> None:
        self.settings = settings
        self.counts = OpcUaCounts()
        self.users = StationUsers(settings.users, settings.allow_anonymous)
        self.line = None  # a StationLine, set by attach
        self.state = "Operational"
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._inbox: deque[PlantResult] = deque()
        self._ring: OrderedDict[str, PlantResult] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._nodes: dict = {}

    def offer(self, result: PlantResult) -> None:
        """From the station's loop: never blocks."""
        self.counts.results += 1
        if len(self._inbox) >= self.settings.queue:
            self.counts.lost += 1
            return
        self._inbox.append(result)

    def start(self, timeout_s: float = 30.0) -> OpcUaServer:
        self._thread = threading.Thread(target=self._run, name="opcua", daemon=True)
        self._thread.start()
        if not self.ready.wait(timeout_s) or self.error is not None:
            raise RuntimeError(f"the OPC UA server did not start on {self.settings.endpoint}: {self.error!r}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def status(self) -> dict:
        return {"state": self.state, **self.counts.__dict__, "waiting": len(self._inbox), "kept": len(self._ring),
                "refused_sessions": self.users.refused}

    # --- the server's thread -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by start(); the station goes on without OPC UA
            self.error = exc
            log.exception("OPC UA server")
            self.ready.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = await self._build()
        async with server:
            log.info("OPC UA: serving on %s (%s)", self.settings.endpoint, self._security_note())
            self.ready.set()
            while not self._stop.is_set():
                await self._publish_waiting()
                try:
                    await asyncio.wait_for(self._stop.wait(), 0.01)
                except TimeoutError:
                    pass
            await self._publish_waiting()

    def _security_note(self) -> str:
        s = self.settings
        parts = (["Basic256Sha256 SignAndEncrypt"] if s.certificate else []) + \
            (["None (unencrypted)"] if s.allow_unencrypted else [])
        return ", ".join(parts) + f"; {len(s.users)} users" + ("; anonymous reading allowed" if s.allow_anonymous
                                                              else "")

    async def _build(self) -> Server:
        s = self.settings
        server = Server(user_manager=self.users)
        await server.init()
        server.set_endpoint(s.endpoint)
        server.set_server_name(s.name)
        await server.set_application_uri(s.application_uri)
        policies = ([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt] if s.certificate else []) + \
            ([ua.SecurityPolicyType.NoSecurity] if s.allow_unencrypted else [])
        server.set_security_policy(policies, permission_ruleset=StationRules())
        server.set_identity_tokens(([ua.UserNameIdentityToken] if s.users else []) +
                                   ([ua.AnonymousIdentityToken] if s.allow_anonymous else []))
        if s.certificate is not None:
            await server.load_certificate(str(s.certificate))
            await server.load_private_key(str(s.private_key))
        idx = await server.register_namespace(NAMESPACE)
        await self._model(server, idx)
        return server

    async def _model(self, server: Server, idx: int) -> None:
        system = await server.nodes.objects.add_object(idx, "VisionSystem")
        machine = await system.add_object(idx, "VisionStateMachine")
        self._nodes["state"] = await machine.add_variable(idx, "CurrentState", ua.LocalizedText(self.state))
        for name, handler in (("Halt", self._halt), ("Reset", self._reset),
                              ("SelectModeAutomatic", self._automatic)):
            await machine.add_method(idx, name, handler, [], [])
        results = await system.add_object(idx, "ResultManagement")
        await results.add_method(idx, "GetResultById", self._get_result,
                                 [_argument("ResultId", ua.ObjectIds.String), _argument("Timeout", ua.ObjectIds.Int32)],
                                 [_argument("Error", ua.ObjectIds.Int32), _argument("PartId", ua.ObjectIds.String),
                                  _argument("ProductId", ua.ObjectIds.String),
                                  _argument("ResultState", ua.ObjectIds.Int32),
                                  _argument("Exit", ua.ObjectIds.Int32), _argument("Confidence", ua.ObjectIds.Double),
                                  _argument("CreationTime", ua.ObjectIds.DateTime)])
        etype = await server.create_custom_event_type(idx, "ResultReadyEventType", ua.ObjectIds.BaseEventType,
                                                      EVENT_FIELDS)
        await system.write_attribute(ua.AttributeIds.EventNotifier, ua.DataValue(ua.Variant(1, ua.VariantType.Byte)))
        self._nodes["events"] = await server.get_event_generator(etype, system)
        self._nodes["system"] = system

    async def _publish_waiting(self) -> None:
        gen = self._nodes.get("events")
        while self._inbox and gen is not None:
            result = self._inbox.popleft()
            self._ring[result.result_id] = result
            while len(self._ring) > self.settings.results:
                self._ring.popitem(last=False)
            event = gen.event
            event.ResultId, event.PartId = result.result_id, str(result.item_id)
            event.ProductId = result.label or ""
            event.ResultState = _state(result)
            event.IsSimulated, event.Exit, event.Confidence = result.simulated, result.exit, result.confidence
            event.Lane, event.Reason = -1 if result.lane is None else result.lane, result.reason
            event.Severity = 100
            await gen.trigger(message=f"item {result.item_id}: {result.label or result.reason} → exit {result.exit}")
            self.counts.events += 1

    # --- methods ----------------------------------------------------------------------------------

    async def _set_state(self, state: str) -> None:
        self.state = state
        await self._nodes["state"].write_value(ua.LocalizedText(state))

    def _refuse(self, why: str, code: int) -> ua.StatusCode:
        """The call's answer: a bad status code (counted, logged), never an exception in the server."""
        self.counts.refused_calls += 1
        if self.counts.refused_calls <= 10 or self.counts.refused_calls % 100 == 0:
            log.warning("OPC UA call refused (%d so far): %s", self.counts.refused_calls, why)
        return ua.StatusCode(code)

    async def _halt(self, parent, *args) -> list | ua.StatusCode:
        if args:
            return self._refuse(f"Halt takes no arguments, got {len(args)}", ua.StatusCodes.BadTooManyArguments)
        self._command(LaneCommand("pause", None), "OPC UA Halt")
        await self._set_state("Halted")
        return []

    async def _reset(self, parent, *args) -> list | ua.StatusCode:
        if args:
            return self._refuse(f"Reset takes no arguments, got {len(args)}", ua.StatusCodes.BadTooManyArguments)
        if self.state not in ("Halted", "Error"):
            return self._refuse(f"Reset in state {self.state}", ua.StatusCodes.BadInvalidState)
        await self._set_state("Preoperational")
        self.counts.calls += 1
        return []

    async def _automatic(self, parent, *args) -> list | ua.StatusCode:
        if args:
            return self._refuse(f"SelectModeAutomatic takes no arguments, got {len(args)}",
                         ua.StatusCodes.BadTooManyArguments)
        if self.state != "Preoperational":
            return self._refuse(f"SelectModeAutomatic in state {self.state}", ua.StatusCodes.BadInvalidState)
        self._command(LaneCommand("resume", None), "OPC UA SelectModeAutomatic")
        await self._set_state("Operational")
        return []

    def _command(self, command: LaneCommand, source: str) -> None:
        self.counts.calls += 1
        if self.line is not None:
            self.line.apply(command, source)

    async def _get_result(self, parent, *args) -> list | ua.StatusCode:
        if len(args) != 2:
            return self._refuse(f"GetResultById takes 2 arguments, got {len(args)}", ua.StatusCodes.BadArgumentsMissing
                         if len(args) < 2 else ua.StatusCodes.BadTooManyArguments)
        result_id, timeout = (a.Value if isinstance(a, ua.Variant) else a for a in args)
        if not isinstance(result_id, str) or len(result_id) > 64 or isinstance(timeout, bool) \
                or not isinstance(timeout, int):
            return self._refuse("GetResultById(ResultId: String ≤ 64, Timeout: Int32)",
                                ua.StatusCodes.BadInvalidArgument)
        self.counts.calls += 1
        result = self._ring.get(result_id)
        if result is None:
            return [ua.Variant(1, ua.VariantType.Int32), ua.Variant("", ua.VariantType.String),
                    ua.Variant("", ua.VariantType.String), ua.Variant(0, ua.VariantType.Int32),
                    ua.Variant(-1, ua.VariantType.Int32), ua.Variant(0.0, ua.VariantType.Double),
                    ua.Variant(datetime.fromtimestamp(0, UTC), ua.VariantType.DateTime)]
        return [ua.Variant(0, ua.VariantType.Int32), ua.Variant(str(result.item_id), ua.VariantType.String),
                ua.Variant(result.label or "", ua.VariantType.String),
                ua.Variant(_state(result), ua.VariantType.Int32),
                ua.Variant(result.exit, ua.VariantType.Int32), ua.Variant(result.confidence, ua.VariantType.Double),
                ua.Variant(datetime.fromtimestamp(result.at, UTC), ua.VariantType.DateTime)]


def _state(result: PlantResult) -> int:
    """ResultState: 1 when the head decided the item with confidence, 2 otherwise (safe exit)."""
    return OK if result.reason == CONFIDENT else NOT_OK


def _argument(name: str, data_type: int) -> ua.Argument:
    argument = ua.Argument()
    argument.Name, argument.DataType, argument.ValueRank = name, ua.NodeId(data_type), -1
    return argument
