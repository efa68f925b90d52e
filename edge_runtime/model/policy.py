"""The decision policy: which exit each class goes to, how sure the head must be, and the safe
exit. One class, :class:`DecisionPolicy`, validated in one place (:meth:`DecisionPolicy.from_dict`)
whether it comes from a bundle's manifest, a refit on the device or a policy file (TOML), given
to ``sortline fit`` and ``sortline export`` and applied to an existing bundle with ``sortline
bundle policy B FILE --out B2`` (a new bundle version; signed with ``--key``)::

    safe_exit = 0                  # unsure, unknown, late or failed items
    min_confidence = 0.6           # the head's probability an item needs to take its class's exit

    [exits]                        # every class of the bundle, and only those
    A = 1
    external = 2
    internal = 3
    both = 3

    [class_min_confidence]         # optional: stricter (or looser) for some classes
    internal = 0.8
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sortline.edge_runtime.errors import ConfigError, SortlineError
from sortline.edge_runtime.tomlfile import read_toml
from sortline.hardware.protocol import MAX_EXIT

from .labels import label_problem

FIELDS = ("exits", "safe_exit", "min_confidence", "class_min_confidence")


class PolicyError(SortlineError, ValueError):
    """A decision policy with a field of the wrong type or out of range; the message names it."""


@dataclass(frozen=True)
class DecisionPolicy:
    """Which exit each class goes to, and when an item goes to the safe exit instead."""

    exits: dict[str, int]
    safe_exit: int
    min_confidence: float = 0.5
    class_min_confidence: dict[str, float] = field(default_factory=dict)  # overrides, per class

    def threshold(self, label: str) -> float:
        return self.class_min_confidence.get(label, self.min_confidence)

    def to_dict(self) -> dict:
        data = {"exits": dict(self.exits), "safe_exit": self.safe_exit, "min_confidence": self.min_confidence}
        if self.class_min_confidence:
            data["class_min_confidence"] = dict(self.class_min_confidence)
        return data

    @classmethod
    def from_dict(cls, data: object, where: str = "decision") -> DecisionPolicy:
        """The policy in ``data`` (a manifest's ``decision``, a policy file's tables), every field
        checked: exits whole numbers the controller accepts, confidences in 0..1, no unknown
        field; :class:`PolicyError` naming ``where`` and the field otherwise."""
        if not isinstance(data, dict):
            raise PolicyError(f"{where} is not a table of {', '.join(FIELDS)}")
        if unknown := sorted(set(data) - set(FIELDS)):
            near = difflib.get_close_matches(str(unknown[0]), FIELDS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise PolicyError(f"{where} has unknown fields {unknown}{hint}")
        if missing := [name for name in ("exits", "safe_exit") if name not in data]:
            raise PolicyError(f"{where} lacks {', '.join(missing)}")
        return cls(exits={_text(k, f"{where}.exits"): _exit(v, f"{where}.exits.{k}")
                          for k, v in _table(data["exits"], f"{where}.exits").items()},
                   safe_exit=_exit(data["safe_exit"], f"{where}.safe_exit"),
                   min_confidence=_probability(data.get("min_confidence", 0.5), f"{where}.min_confidence"),
                   class_min_confidence=_overrides(data, where))


def _overrides(data: dict, where: str) -> dict[str, float]:
    table = _table(data.get("class_min_confidence", {}), f"{where}.class_min_confidence")
    overrides = {_text(k, f"{where}.class_min_confidence"): _probability(v, f"{where}.class_min_confidence.{k}")
                 for k, v in table.items()}
    exits = _table(data["exits"], f"{where}.exits")
    if unknown := sorted(set(overrides) - set(exits)):
        raise PolicyError(f"{where}.class_min_confidence names classes without an exit: {unknown}")
    return overrides


def _table(value: object, where: str) -> dict:
    if not isinstance(value, dict):
        raise PolicyError(f"{where}: {value!r:.40} is not a table")
    return value


def _text(value: object, where: str) -> str:
    if (problem := label_problem(value)) is not None:
        raise PolicyError(f"{where}: the class name {value!r:.40}: {problem}")
    return value


def _exit(value: object, where: str) -> int:
    """A whole number (not a bool, not 2.5, not a 250-digit string) the controller accepts."""
    if isinstance(value, bool) or not isinstance(value, int) or abs(value) > 2**31:
        raise PolicyError(f"{where}: {value!r:.40} is not a whole number in range")
    if not 0 <= value <= MAX_EXIT:
        raise PolicyError(f"{where} is {value}; the controller accepts exits 0..{MAX_EXIT}")
    return value


def _probability(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PolicyError(f"{where}: {value!r:.40} is not a number")
    if not 0.0 <= value <= 1.0:
        raise PolicyError(f"{where} is {value}; it must be in 0..1")
    return float(value)


def load_policy(path: str | Path, classes: Sequence[str]) -> DecisionPolicy:
    """The policy in ``path`` for a bundle of ``classes``; :class:`ConfigError` naming the file and
    the key on any fault (a class without an exit, a class the bundle does not have, a value out
    of range)."""
    path = Path(path)
    data = read_toml(path, "policy file")
    try:
        policy = DecisionPolicy.from_dict(data, str(path))
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    classes = list(classes)
    for table_name, names in (("exits", policy.exits), ("class_min_confidence", policy.class_min_confidence)):
        for name in names:
            if name not in classes:
                near = difflib.get_close_matches(name, classes, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ConfigError(f"{path}: [{table_name}] names {name!r}, which the bundle does not have{hint}; "
                                  f"its classes: {', '.join(classes)}")
    if missing := [c for c in classes if c not in policy.exits]:
        raise ConfigError(f"{path}: [exits] gives no exit to {', '.join(missing)}")
    return policy


def policy_toml(policy: DecisionPolicy) -> str:
    """A policy as the file that :func:`load_policy` reads (to start an edit from a bundle's)."""
    lines = [f"safe_exit = {policy.safe_exit}", f"min_confidence = {policy.min_confidence}", "", "[exits]"]
    lines += [f"{_key(k)} = {v}" for k, v in policy.exits.items()]
    if policy.class_min_confidence:
        lines += ["", "[class_min_confidence]"] + [f"{_key(k)} = {v}" for k, v in policy.class_min_confidence.items()]
    return "\n".join(lines) + "\n"


def _key(name: str) -> str:
    return name if name.replace("-", "").replace("_", "").isalnum() and name.isascii() else '"' + name.replace(
        "\\", "\\\\").replace('"', '\\"') + '"'
