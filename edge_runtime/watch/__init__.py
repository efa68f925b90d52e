"""The station's watch, beside the line and off its decision path:

- ``runner.py``: :class:`ItemWatch`, the thread the decided items are offered to (bounded; under
  load it samples, never queues);
- ``camera.py``: cheap statistics of each camera's view of the belt beside the items;
- ``monitors.py``: block statistics against a reference, thresholds from a false-alarm budget;
- ``drift.py``: :class:`DriftWatch`, alarms when cameras or items drift from the reference;
- ``unsure.py``: :class:`UnsureQueue`, the bounded folder of items worth a label, ranked;
- ``watching.py``: :class:`StationWatch`, the two on one thread, as demo, replay and serve run them.

docs/drift.md explains the statistics, the thresholds and what to do on each alarm.
"""

from .drift import Alarm, DriftConfig, DriftWatch
from .runner import ItemWatch
from .unsure import QueueConfig, QueueError, UnsureQueue
from .watching import StationWatch

__all__ = ["Alarm", "DriftConfig", "DriftWatch", "ItemWatch", "QueueConfig", "QueueError", "StationWatch",
           "UnsureQueue"]
