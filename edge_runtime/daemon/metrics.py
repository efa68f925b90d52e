"""``/healthz``, ``/readyz`` and ``/metrics``: Prometheus text under ``sortline_`` names, read from
the station's own counters at each scrape (:class:`StationCollector`): nothing is counted twice."""

from __future__ import annotations

import time
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily

from sortline.edge_runtime.station.stats import REPORTED_ONLY

from .control import StationControl
from .deps import Control
from .models import Health, Readiness

LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)
router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> Health:
    """The process answers."""
    return Health()


@router.get("/readyz", responses={503: {"model": Readiness}})
def readyz(c: Control) -> JSONResponse:
    """The station takes items (503 before its model is checked and its links are open, and
    after its loop has stopped)."""
    ready = c.is_ready
    return JSONResponse(Readiness(ready=ready).model_dump(), status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text exposition."""
    return PlainTextResponse(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


def registry(c: StationControl) -> CollectorRegistry:
    """The registry that ``/metrics`` reads: the station's collector alone."""
    found = CollectorRegistry(auto_describe=True)
    found.register(StationCollector(c))
    return found


class StationCollector:
    """Prometheus metrics from the station's counters, read when scraped."""

    def __init__(self, control: StationControl) -> None:
        self.control = control

    def collect(self) -> Iterator:
        c = self.control
        station = c.running.station
        if station is None:
            return
        stats = station.stats
        yield _counter("sortline_items", "Items announced to the station.", stats.items)
        yield _counter("sortline_gate_commands", "Gate commands sent (one per item).", stats.gate_commands)
        yield _counter("sortline_deadline_misses", "Decisions that missed their gate.", stats.deadline_misses)
        yield _counter("sortline_gate_retransmissions", "Gate commands sent again.", stats.retransmissions)
        reasons = CounterMetricFamily("sortline_decisions", "Decisions, by why the item got its exit.",
                                      labels=["reason"])
        for reason, n in sorted(copy_counter(stats.reasons).items()):
            reasons.add_metric([reason], n)
        yield reasons
        exits = CounterMetricFamily("sortline_exits", "Items sent to each exit.", labels=["exit"])
        for exit_, n in sorted(copy_counter(stats.exits).items()):
            exits.add_metric([str(exit_)], n)
        yield exits
        faults = CounterMetricFamily("sortline_faults", "Faults the station saw, by kind (rejected inputs "
                                     f"included: {', '.join(REPORTED_ONLY)}).", labels=["kind"])
        for kind, n in sorted(station.observed_faults().items()):
            faults.add_metric([kind], n)
        yield faults
        latency = stats.latency_ms
        counts = latency.cumulative([b * 1000 for b in LATENCY_BUCKETS_S])
        buckets = [(str(b), n) for b, n in zip(LATENCY_BUCKETS_S, counts)] + [("+Inf", latency.count)]
        histogram = HistogramMetricFamily("sortline_decision_latency_seconds",
                                          "From an item's announcement to its gate command.")
        histogram.add_metric([], buckets, sum_value=latency.sum / 1000)
        yield histogram
        queue = GaugeMetricFamily("sortline_queue_depth", "Items waiting in the station.", labels=["queue"])
        queue.add_metric(["flow"], station.flow.depth)
        queue.add_metric(["open"], station.open_items)
        queue.add_metric(["inbox"], station.inbox_depth)
        yield queue
        yield GaugeMetricFamily("sortline_head_version", "The head version deciding items (0: the bundle's).",
                                value=c.pipeline.classifier.version)
        info = InfoMetricFamily("sortline_bundle", "The bundle the station runs.")
        info.add_metric([], {"version": c.pipeline.version, "runtime": c.pipeline.embedder.name})
        yield info
        yield GaugeMetricFamily("sortline_ready", "1 while the station takes items.", value=float(c.is_ready))
        yield GaugeMetricFamily("sortline_unsigned_bundles_allowed", "1 when the station file lets bundles run "
                                "without a signature (allow_unsigned = true and no public_key).",
                                value=float(c.unsigned_allowed))
        yield GaugeMetricFamily("sortline_uptime_seconds", "Seconds since the daemon started.",
                                value=time.monotonic() - c.started)
        if c.watch is not None:
            yield from watch_metrics(c.watch)
        if c.plant is not None:
            yield from plant_metrics(c.plant.summary())


def plant_metrics(summary: dict) -> Iterator:
    """The plant link: MQTT messages and the OPC UA server's results (plant/)."""
    yield _counter("sortline_plant_lost", "Results that never reached the plant link's process (its queue full, "
                   "or the process gone).", summary.get("lost_before_the_link", 0))
    mqtt = summary.get("mqtt")
    if mqtt is not None:
        yield GaugeMetricFamily("sortline_mqtt_connected", "1 while the MQTT broker is connected.",
                                value=float(mqtt["connected"]))
        for key, doc in (("results", "Results handed to the MQTT publisher."),
                         ("acked", "Results the broker acknowledged."),
                         ("spooled", "Results that waited in the spool."),
                         ("lost", "Results that could not be kept (queue full, spool over its cap or disk failing)."),
                         ("disconnects", "Times the broker went away."),
                         ("commands", "Commands obeyed."), ("refused", "Commands refused (malformed, unknown).")):
            yield _counter(f"sortline_mqtt_{key}", doc, mqtt[key])
        yield GaugeMetricFamily("sortline_mqtt_spool_messages", "Results waiting in the spool.", value=mqtt["spool"])
    opcua = summary.get("opcua")
    if opcua is not None:
        yield _counter("sortline_opcua_events", "ResultReady events sent.", opcua["events"])
        yield _counter("sortline_opcua_lost", "Results the OPC UA server could not keep.", opcua["lost"])
        yield _counter("sortline_opcua_refused_calls", "Method calls refused (wrong arguments or state).",
                       opcua["refused_calls"])
        yield _counter("sortline_opcua_refused_sessions", "Sessions refused (no or wrong credentials).",
                       opcua["refused_sessions"])


def watch_metrics(watch) -> Iterator:
    """The drift watch's statistics and alarms, and the queue of unsure items."""
    yield _counter("sortline_watch_sampled_out", "Items the watch let pass unwatched under load.",
                   watch.items.sampled_out)
    drift = watch.drift
    if drift is not None:
        labels = ["kind", "statistic", "camera"]
        up = GaugeMetricFamily("sortline_drift_alarm", "1 while a drift alarm is up.", labels=labels)
        value = GaugeMetricFamily("sortline_drift_statistic", "The latest block's statistic (chi-square; a rate "
                                  "for the rates).", labels=labels)
        limit = GaugeMetricFamily("sortline_drift_threshold", "What the statistic must pass to raise an alarm.",
                                  labels=labels)
        for m in drift.statistics():
            key = [m["kind"], m["statistic"], "" if m["camera"] is None else str(m["camera"])]
            up.add_metric(key, float(m["alarm"]))
            value.add_metric(key, m["value"])
            limit.add_metric(key, m["threshold"])
        yield from (up, value, limit)
        yield _counter("sortline_drift_alarms", "Drift alarms raised.", len(drift.summary()["alarms"]))
        yield GaugeMetricFamily("sortline_drift_watching", "1 once the drift reference is learnt.",
                                value=float(drift.watching))
    queue = watch.queue
    if queue is not None:
        summary = queue.summary()
        yield GaugeMetricFamily("sortline_queue_items", "Items in the queue of unsure items.", value=summary["queued"])
        yield GaugeMetricFamily("sortline_queue_labelled", "Queued items that have a label.",
                                value=summary["labelled"])
        yield _counter("sortline_queue_kept", "Unsure items kept in the queue.", summary["kept"])
        dropped = CounterMetricFamily("sortline_queue_dropped", "Candidates or queued items not kept, by why.",
                                      labels=["reason"])
        for reason, n in sorted(summary["dropped_by"].items()):
            dropped.add_metric([reason], n)
        yield dropped
    if watch.shadow is not None:
        yield from shadow_metrics(watch.shadow, watch.shadow_items)


def shadow_metrics(shadow, items) -> Iterator:
    """The candidate against the live version on the same items (watch/shadow.py)."""
    status = shadow.status()
    stats = status["stats"]
    yield GaugeMetricFamily("sortline_shadow_running", "1 while a candidate runs in the shadow.",
                            value=float(status["candidate"] is not None))
    yield _counter("sortline_shadow_items", "Items the current candidate decided beside the live version.",
                   status["shadowed"])
    yield _counter("sortline_shadow_sampled_out", "Items the shadow let pass under load.", items.sampled_out)
    yield _counter("sortline_shadow_errors", "Items the candidate could not decide.", status["errors"])
    yield GaugeMetricFamily("sortline_shadow_agreement", "Share of items on which candidate and live version "
                            "agree (class, or unsure/unknown).", value=_number(stats["agreement"]))
    per_class = GaugeMetricFamily("sortline_shadow_class_agreement", "Agreement per live outcome.",
                                  labels=["outcome"])
    for outcome, seen in stats["agreement_per_class"].items():
        per_class.add_metric([outcome], seen["agreement"])
    yield per_class
    yield GaugeMetricFamily("sortline_shadow_labelled", "Items the candidate saw that an operator labelled.",
                            value=stats["labelled"])
    by_version = [("sortline_shadow_accuracy", "Accuracy on the labelled items.", "accuracy"),
                  ("sortline_shadow_unsure_rate", "Share of items unsure.", "unsure_rate"),
                  ("sortline_shadow_unknown_rate", "Share of items unknown (open set).", "unknown_rate")]
    for name, doc, key in by_version:
        family = GaugeMetricFamily(name, doc, labels=["version"])
        for version in ("live", "shadow"):
            family.add_metric([version], _number(stats[f"{version}_{key}"]))
        yield family
    events = CounterMetricFamily("sortline_shadow_changes", "Promotions and rollbacks, by whom.",
                                 labels=["change", "by"])
    for key, n in sorted(shadow.changes.items()):
        events.add_metric(list(key), n)
    yield events


def _number(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def copy_counter(counter: dict) -> dict:
    """A snapshot of a counter the station's loop may be adding to."""
    for _ in range(5):
        try:
            return dict(counter)
        except RuntimeError:  # changed size during the copy
            continue
    return {}


def histogram(latency) -> list[list[float]]:
    """[upper bound ms, items in the bucket] over LATENCY_BUCKETS_S, and the overflow."""
    bounds = [b * 1000 for b in LATENCY_BUCKETS_S]
    cumulative = latency.cumulative(bounds) + [latency.count]
    counts = [cumulative[0]] + [b - a for a, b in zip(cumulative, cumulative[1:])]
    return [[bound, n] for bound, n in zip([*bounds, None], counts)]
