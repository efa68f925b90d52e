"""Hardware in the loop: the unchanged station against the simulated line or a recording. The
only room of the edge runtime that uses the simulators (``sortline.hardware.sim``).

- ``runs.py``: a station run on a simulated line or a replayed recording, and ``simulate``'s
  recordings;
- ``report.py``: a run's summary (accuracy, MCC, latency, faults) as JSON and Markdown;
- ``adapt.py``: the loop from a drift alarm to a promoted head with a simulated operator
  (``sortline demo --adapt``), and its summary.
"""
