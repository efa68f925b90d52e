"""``.npz`` files read with their headers checked first: a bundle's head, check items and
examples, and the heads a station's store keeps.

``np.load`` allocates what an ``.npy`` header declares before it reads a byte of data, so a
20-byte header that claims 10^10 elements is a 37 GiB allocation. Here every member's header is
read on its own (magic, version, dtype, shape), and a member whose element count is over its
limit, whose dtype holds Python objects, or whose size in the archive does not match what its
header declares, is refused before anything is allocated.
"""

from __future__ import annotations

import io
import math
import typing
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

MAX_ELEMENTS = 50_000_000  # any one array, unless the reader names a tighter limit (200 MB of float32)
MAX_MEMBERS = 32


class ArrayFileError(ValueError):
    """An ``.npz`` file that is unreadable, or whose arrays are not what the reader allows."""


def read_npz(source: str | Path | bytes | typing.BinaryIO, limits: Mapping[str, int] | None = None,
             what: str = "arrays") -> dict[str, np.ndarray]:
    """Every array in ``source`` (a path, bytes or a binary file), after checking each header
    against ``limits`` (name → most elements; others :data:`MAX_ELEMENTS`)."""
    limits = limits or {}
    try:  # read once: the bytes checked are the bytes loaded, whoever writes the file meanwhile
        data = io.BytesIO(Path(source).read_bytes() if isinstance(source, (str, Path)) else
                          source if isinstance(source, bytes) else source.read())
        with zipfile.ZipFile(data) as archive:
            infos = archive.infolist()
            if len(infos) > MAX_MEMBERS:
                raise ArrayFileError(f"{what}: {len(infos)} arrays, at most {MAX_MEMBERS}")
            for info in infos:
                name = info.filename.removesuffix(".npy")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
                    raise ArrayFileError(f"{what}: {name} is encrypted or compressed in a way numpy does not write")
                with archive.open(info) as member:
                    _check_header(member, info.file_size, limits.get(name, MAX_ELEMENTS), f"{what}: {name}")
        data.seek(0)
        with np.load(data, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except ArrayFileError:
        raise
    except Exception as exc:  # zipfile, zlib and numpy's header parser (tokenize) raise a dozen kinds on garbage
        raise ArrayFileError(f"{what}: not a readable .npz file ({type(exc).__name__}: {exc})") from exc


def _check_header(member: typing.BinaryIO, stored_bytes: int, limit: int, what: str) -> None:
    version = np.lib.format.read_magic(member)
    reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if reader is None:
        raise ArrayFileError(f"{what}: .npy format version {version}, not 1.0 or 2.0")
    shape, _, dtype = reader(member)
    if dtype.hasobject:
        raise ArrayFileError(f"{what}: an array of Python objects")
    elements = math.prod(shape)
    if elements > limit:
        raise ArrayFileError(f"{what}: its header declares shape {shape} ({elements:,} elements), over the "
                             f"{limit:,} this file may hold")
    if member.tell() + elements * dtype.itemsize != stored_bytes:
        raise ArrayFileError(f"{what}: its header declares {elements * dtype.itemsize:,} bytes of data, the file "
                             f"holds {stored_bytes - member.tell():,}")
