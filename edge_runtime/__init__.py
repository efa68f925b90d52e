"""The edge runtime: what runs on a camera station, without torch (onnxruntime, numpy, OpenCV,
scikit-learn, pyserial, FastAPI). One room per concern, each with a map in its docstring:

- ``model/``: the bundle, preprocessing, runtimes, fusion, heads, the item pipeline;
- ``learning/``: enrollment and the head versions on the device;
- ``detection/``: finding enrolled items in a wide frame;
- ``station/``: the item flow, gates and deadlines of a running station;
- ``labelling/``: labels for a recording's items, and their page;
- ``daemon/``: ``serve`` and ``record``, the station file, the HTTP API;
- ``hil/``: the station against the simulated line or a recording;
- ``web/``: the pages' HTML, CSS and JS, shared by the daemon and the labelling page.

Imports go one way: ``model`` ← ``learning`` ← ``detection``; ``model`` ← ``station`` ←
``daemon``; ``labelling`` and ``hil`` on top; ``cli.py`` above all (tests/test_layout.py checks
it). Beside the rooms: ``cli.py`` (the ``sortline`` command), ``errors.py``, ``tomlfile.py`` (a
user's TOML files) and ``datasets.py`` (image folders and split files).
"""
