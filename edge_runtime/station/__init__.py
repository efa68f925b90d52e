"""The station runtime as small parts, tied together by :class:`Station` (``loop.py``):

- ``ids.py``: item ids (announcements, gaps, repeats, counter resets);
- ``readings.py``: sensor readings matched to items on device clocks;
- ``flow.py``: capture → preprocess → embed on worker threads, bounded, shedding overload;
- ``gate.py``: each item's one command, resent until acknowledged;
- ``stats.py``, ``events.py``: counters, streaming histograms, the event log.
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
