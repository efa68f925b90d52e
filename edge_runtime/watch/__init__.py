"""The station's watch, beside the line and off its decision path:

- ``runner.py``: :class:`ItemWatch`, the thread the decided items are offered to (bounded; under
  load it samples, never queues);
- ``camera.py``: cheap statistics of each camera's view of the belt beside the items;
- ``monitors.py``: block statistics against a reference, thresholds from a false-alarm budget;
- ``drift.py``: :class:`DriftWatch`, alarms when cameras or items drift from the reference;
- ``unsure.py``: :class:`UnsureQueue`, the bounded folder of items worth a label, ranked;
- ``shadow.py``: the shadow log (live and candidate decisions of each item, the operator's labels),
  what it shows (agreement, confusion, paired accuracies) and the promotion policy;
- ``candidates.py``: a head or bundle candidate, the host that puts a version live, the age check;
- ``shadowing.py``: :class:`Shadow`, the candidate on a thread of its own, promotion, and the
  rollback watch after it;
- ``watching.py``: :class:`StationWatch`, the watch's and the shadow's threads, as demo, replay and
  serve run them.

docs/drift.md explains the statistics, the thresholds and what to do on each alarm;
docs/adaptation.md the loop from an alarm to a promoted head.
"""

from .candidates import BundleCandidate, HeadCandidate, ShadowError, StationHost, check_newer, put_head_live
from .drift import Alarm, DriftConfig, DriftWatch
from .runner import ItemWatch
from .shadow import ShadowLog, ShadowPolicy
from .shadowing import Shadow
from .unsure import QueueConfig, QueueError, UnsureQueue
from .watching import StationWatch

__all__ = ["Alarm", "BundleCandidate", "DriftConfig", "DriftWatch", "HeadCandidate", "ItemWatch", "QueueConfig",
           "QueueError", "Shadow", "ShadowError", "ShadowLog", "ShadowPolicy", "StationHost", "StationWatch",
           "UnsureQueue", "check_newer", "put_head_live"]
