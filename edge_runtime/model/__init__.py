"""The model and its bundle: what turns an item's views and readings into a decision, and the
files that carry it from the desktop to the station. Depends on nothing else in the edge runtime.

- ``bundle.py``: the bundle format (manifest, hashes, signatures, archives), read and written;
  the decision policy as the manifest holds it;
- ``policy.py``: :class:`DecisionPolicy`, checked in one place for a manifest, a refit and a
  policy file (TOML, for ``fit``, ``export`` and ``bundle policy``);
- ``labels.py``: what a class label may contain, one rule for every source;
- ``preprocess.py``: the one inference-time preprocessing, shared with training evaluation;
- ``embedder.py``: ONNX Runtime on a bundle's backbone, and embedding parity;
- ``runtimes.py``: the runtimes behind one :class:`Embedder` interface (ONNX Runtime, OpenVINO);
  numpy's BLAS on one thread, set once for the process;
- ``choice.py``: the runtime and thread count chosen by measurement, on the bundle's check inputs;
- ``head.py``: the logistic-regression head as plain arrays, and the open-set test;
- ``arrays.py``: ``.npz`` files read with every array's header checked before allocating;
- ``fusion.py``: views and sensor readings fused into one feature row;
- ``descriptors.py``: the colour histogram, a descriptor without a model;
- ``pipeline.py``: :class:`ItemPipeline`, one item from capture to decision;
- ``bench.py``: ``sortline bench``.
"""
