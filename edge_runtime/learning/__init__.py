"""Learning on the device: new items from a few shots, without torch.

- ``store.py``: :class:`EmbeddingStore`, the examples and head versions on disk (SQLite), and
  what a class label may contain (:func:`check_label`);
- ``enroll.py``: :class:`Enroller`, examples in, a checked head version out (refit, rollback), the
  enrollment of live items and the watcher that swaps a new head in between two items.
"""
