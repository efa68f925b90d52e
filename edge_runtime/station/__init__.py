"""The station runtime as small parts, tied together by :class:`Station` (``loop.py``):

- ``ids.py``: item ids (announcements, gaps, repeats, counter resets);
- ``readings.py``: sensor readings matched to items on device clocks;
- ``flow.py``: capture → preprocess → embed on worker threads, bounded, shedding overload;
- ``gate.py``: each item's one command, resent until acknowledged;
- ``items.py``: an open item's deadlines, and the decision and event record made of it;
- ``outcomes.py``: each decided item's one gate command, event-log line and counters, and the
  latest items kept for the operator;
- ``links.py``: what the serial links can carry, checked against the line's rate;
- ``observers.py``: each decided item as shown to those who watch the line (the drift watch, the
  queue of unsure items), after its gate command, never waited for;
- ``stats.py``, ``events.py``: counters, streaming histograms, the event log;
- ``loop.py``: :class:`Station`, the loop that ties them together;
- ``wiring.py``: :class:`RunningStation`, the serial links and threads around a station, the one
  place that demo, replay and serve start a station from.
"""

from .events import EventLog
from .flow import FlowResult, ItemFlow
from .gate import GateChannel
from .ids import ItemIds
from .loop import Station, StationConfig, StationError
from .readings import DeviceClock, ReadingMatcher
from .stats import StationStats, StreamingHistogram

__all__ = ["DeviceClock", "EventLog", "FlowResult", "GateChannel", "ItemFlow", "ItemIds", "ReadingMatcher",
           "Station", "StationConfig", "StationError", "StationStats", "StreamingHistogram"]
