"""Finding enrolled items in a wide frame (``sortline detect``).

- ``config.py``: :class:`DetectConfig`, the window scores of a frame, :class:`Detection`, limits;
- ``windows.py``: :class:`WindowGrid`, the pyramid levels, window shapes and boxes of a frame;
- ``prototypes.py``: :class:`WindowEmbedder`, frames and exemplar crops through the backbone,
  and each class's prototypes;
- ``pooling.py``: window pooling over a feature map (integral images, LCA), windows' cosines;
- ``colour.py``: :class:`ColourWindows`, every window's colour histogram (per-cell counts and an
  integral image) against each item's, mixed into the windows' scores;
- ``boxes.py``: boxes inside boxes, and NMS;
- ``keypoints.py``: :class:`KeypointMatcher`, SIFT placements of printed exemplars;
- ``correlation.py``: :class:`CorrelationMatcher`, exemplars found by their pixels (normalised
  cross-correlation over a pyramid): small, soft, plain items seen again as they were seen;
- ``calibration.py``: each stage's background peaks, thresholds from their fitted tail, and the
  margins that rank rows of different stages against each other;
- ``detector.py``: :class:`Detector`, which scores every window against the prototypes, adds the
  correlation finds and keypoint placements, calibrates each stage's thresholds (a fitted tail of
  the background peaks) and keeps the best boxes;
- ``evaluation.py``: pasted-exemplar scenes and AP@0.5, for tests and benchmarks.
"""
