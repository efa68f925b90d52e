"""The camera-station daemon (``sortline serve`` and ``sortline record``) and its HTTP side.

- ``config.py``: :class:`StationFile`, the station file (TOML) as the one typed model it runs with;
- ``service.py``: serve a station file (bundle loaded and checked, hot reload, the shadow's host,
  systemd), record one;
- ``systemd.py``: readiness and watchdog notifications;
- ``control.py``: :class:`StationControl`, what the API acts on;
- ``api.py``: the FastAPI app, built from the routers below, and how it is served;
- ``deps.py``: the routes' dependencies (the control, the token check, the enrollment engine);
- ``metrics.py``: ``/healthz``, ``/readyz``, ``/metrics`` (Prometheus);
- ``status.py``: ``/api/status``, lanes, thumbnails;
- ``learning.py``: head versions, enrollment, refit, rollback, bundle reload;
- ``watching.py``: the drift watch's alarms and the queue of unsure items;
- ``shadowing.py``: a candidate head or bundle beside the live one, promotion and rollback;
- ``plant.py``: the plant link (``[mqtt]``, ``[opcua]``) a station file asks for, credentials read;
- ``models.py``: the API's request and response models.

The operator page's files are in ``web/``.
"""
