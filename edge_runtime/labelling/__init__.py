"""Labels for a recording's items, given by a person (``sortline label``).

- ``book.py``: :class:`LabelBook` (labels on disk, one line per change), labels from a CSV, and a
  recording's items with their views and matched readings;
- ``page.py``: the labelling page, served by FastAPI with the files of ``web/``.
"""
