"""What a class label may contain: one rule for every place a label comes from (a bundle's
manifest, a policy file, a labels CSV, a recording, an item folder, the enrollment store, the
API and the pages).

A label is 1 to 200 characters of printable Unicode text (``str.isprintable``: no control
characters, tabs, line or paragraph separators) with no space at either end. Everything else is
allowed: letters of any script, digits, inner spaces, and punctuation including ``< > & " ' /``,
because product names carry them ("Tom & Jerry's", "<5 kg"). A label is data, never markup and
never a path: the pages show it as text (``web/assets/dom.js``), files quote it (JSON, CSV, TOML),
Prometheus escapes it, and no label becomes a file or folder name.
"""

from __future__ import annotations

from sortline.edge_runtime.errors import SortlineError

MAX_LABEL_CHARS = 200


class LabelRuleError(SortlineError, ValueError):
    """A label that breaks the rule above; the message says which part."""


def label_problem(label: object) -> str | None:
    """What is wrong with ``label``, or None for a good one."""
    rule = f"a label is 1..{MAX_LABEL_CHARS} printable characters with no space at either end"
    if not isinstance(label, str):
        return f"{rule} (this is a {type(label).__name__}, not text)"
    if not 0 < len(label) <= MAX_LABEL_CHARS:
        return f"{rule} (this one has {len(label)} characters)"
    if not label.isprintable():
        return f"{rule} (this one holds a control character, tab or line break)"
    if label != label.strip():
        return f"{rule} (this one has a space at an end)"
    return None


def check_label(label: object) -> str:
    """``label`` if it keeps the rule; :class:`LabelRuleError` naming the label otherwise."""
    if (problem := label_problem(label)) is not None:
        raise LabelRuleError(f"{problem}; got {label!r:.60}")
    return label
