"""A decision policy file (TOML): which exit each class goes to, how sure the head must be, and
the safe exit. Given to ``sortline fit`` and ``sortline export``, and applied to an existing
bundle with ``sortline bundle policy B FILE --out B2`` (a new bundle version; signed with
``--key``)::

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
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from sortline.hardware.protocol import MAX_EXIT

from .bundle import DecisionPolicy
from .config import ConfigError, explain, read_toml

Exit = Annotated[StrictInt, Field(ge=0, le=MAX_EXIT)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class _PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    safe_exit: Exit
    min_confidence: Probability = 0.5
    exits: dict[str, Exit]
    class_min_confidence: dict[str, Probability] = Field(default_factory=dict)


def load_policy(path: str | Path, classes: Sequence[str]) -> DecisionPolicy:
    """The policy in ``path`` for a bundle of ``classes``; :class:`ConfigError` naming the key
    on any fault (a class without an exit, a class the bundle does not have, a value out of range)."""
    path = Path(path)
    data = read_toml(path, "policy file")
    try:
        model = _PolicyFile.model_validate(data)
    except ValidationError as exc:
        raise explain(exc, path, _PolicyFile) from None
    classes = list(classes)
    for table_name, names in (("exits", model.exits), ("class_min_confidence", model.class_min_confidence)):
        for name in names:
            if name not in classes:
                near = difflib.get_close_matches(name, classes, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise ConfigError(f"{path}: [{table_name}] names {name!r}, which the bundle does not have{hint}; "
                                  f"its classes: {', '.join(classes)}")
    if missing := [c for c in classes if c not in model.exits]:
        raise ConfigError(f"{path}: [exits] gives no exit to {', '.join(missing)}")
    return DecisionPolicy(dict(model.exits), model.safe_exit, model.min_confidence,
                          dict(model.class_min_confidence))


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
