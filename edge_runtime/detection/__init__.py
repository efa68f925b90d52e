"""Finding enrolled items in a wide frame (``sortline detect``).

- ``config.py``: :class:`DetectConfig`, the window scores of a frame, :class:`Detection`, limits;
- ``windows.py``: :class:`WindowGrid`, the pyramid levels, window shapes and boxes of a frame;
- ``prototypes.py``: :class:`WindowEmbedder`, frames and exemplar crops through the backbone,
  and each class's prototypes;
- ``pooling.py``: window pooling over a feature map (integral images, LCA) and NMS;
- ``keypoints.py``: :class:`KeypointMatcher`, SIFT placements of printed exemplars;
- ``detector.py``: :class:`Detector`, which scores every window against the prototypes, adds the
  keypoint placements, calibrates thresholds and keeps the best boxes;
- ``evaluation.py``: pasted-exemplar scenes and AP@0.5, for tests and benchmarks.
"""
