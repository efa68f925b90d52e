"""The station runtime: bundle loading, preprocessing, fusion, heads, the item pipeline and
the ``sortline`` command. Runs on onnxruntime, numpy, OpenCV, scikit-learn and pyserial; no torch."""
