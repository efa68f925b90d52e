"""Re-exported from ``sortline.hardware.errors``, the layer below: one base class for every
user-facing error, whichever layer raises it."""

from sortline.hardware.errors import SortlineError

__all__ = ["SortlineError"]
