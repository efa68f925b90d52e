"""TOML files a user writes (the station file, a decision policy): read with a size bound, and
validation errors from their pydantic models turned into one line that names the file and the
key, with a did-you-mean for a misspelt key."""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path

from pydantic import BaseModel, ValidationError

from sortline.edge_runtime.errors import ConfigError

_UNION_TAGS = frozenset({"int", "str", "float", "bool", "none"})


def read_toml(path: Path, what: str, max_bytes: int = 1 << 20) -> dict:
    """A TOML file as a dict; :class:`ConfigError` (naming ``what``) when it is missing, too
    large or not TOML."""
    try:
        if path.stat().st_size > max_bytes:
            raise ConfigError(f"{path}: over {max_bytes} bytes; not a {what}")
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such {what}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable TOML file ({exc})") from None


def explain(exc: ValidationError, path: Path, root: type[BaseModel]) -> ConfigError:
    """The first error, as '<file>: <key>: <what is wrong>' (with a did-you-mean for typos)."""
    error = exc.errors()[0]
    loc = list(error["loc"])
    if error["type"] != "extra_forbidden":  # a union reports one error per member, tagged: name the key
        loc = [part for part in loc if isinstance(part, int) or not (part in _UNION_TAGS or "-" in part or "[" in part)]
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")
    if error["type"] == "extra_forbidden":
        model: type[BaseModel] = root
        for part in loc[:-1]:
            if isinstance(part, str):
                annotation = model.model_fields[part].annotation
                model = getattr(annotation, "__args__", [annotation])[0] if part == "views" else annotation
        known = sorted(model.model_fields)
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known)}"
        return ConfigError(f"{path}: unknown key {where!r}; {hint}")
    value = error.get("input")
    shown = "" if error["type"] == "missing" else f" (got {value!r:.60})"
    return ConfigError(f"{path}: {where or 'file'}: {error['msg']}{shown}")
