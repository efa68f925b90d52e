"""Re-exported from ``sortline.hardware.errors``, the layer below: one base class for every
user-facing error, whichever layer raises it; and the edge runtime's errors that more than one
room raises."""

from sortline.hardware.errors import SortlineError


class ConfigError(SortlineError, ValueError):
    """A station file, policy file or setting that is missing, unreadable or wrong; the message
    names the file and the key."""


__all__ = ["ConfigError", "SortlineError"]
