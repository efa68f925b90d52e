"""Publishing folders and files so that a reader never sees half of one, and cleaning up after
processes that were killed while they wrote. The one way sortline writes a file or folder that
someone may read or load while it is written (bundles, signatures, checkpoints, training states,
recordings, stores' exports): :func:`staging_dir` + :func:`publish_dir` for a folder,
:func:`atomic_file` (or :func:`publish_file`) for a file.

Every writer (a bundle export, a head refit, a recording) assembles its output in a *staging*
folder beside the destination, named ``.<name>.<kind>-<pid>-<random>``, and publishes it with
one rename. Replacing an existing folder uses Linux's ``renameat2(RENAME_EXCHANGE)``, which
swaps the two paths atomically: at every instant the destination is either the old folder or
the new one, never missing. A writer killed at any point leaves at most a staging folder, which
the next writer (or loader) of the same kind removes once its pid is no longer alive.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_LEFTOVER = re.compile(r"-(\d+)-[^-/]+$")  # ...-<pid>-<random>


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def sweep_leftovers(folder: Path, prefix: str, marker: str = "") -> int:
    """Remove ``folder/<prefix>…<marker>…-<pid>-<random>`` entries whose process is gone;
    returns how many."""
    removed = 0
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return 0
    for entry in entries:
        match = _LEFTOVER.search(entry.name)
        if not entry.name.startswith(prefix) or marker not in entry.name or match is None:
            continue
        pid = int(match.group(1))
        if pid == os.getpid() or pid_alive(pid):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed += 1
        log.info("removed %s, left by process %d that was killed", entry, pid)
    return removed


def staging_dir(out: Path, kind: str) -> Path:
    """A new private folder beside ``out`` to assemble it in; leftovers of killed writers of the
    same ``kind`` in that folder (whatever they were writing) are removed first."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(out.parent, ".", marker=f".{kind}-")
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-{os.getpid()}-", dir=out.parent))


def sweep_temp() -> int:
    """Remove every ``sortline-…`` folder in the system's temporary directory whose process was
    killed (unpacked bundles, simulated lines' serial links, replays); every command starts so."""
    return sweep_leftovers(Path(tempfile.gettempdir()), "sortline-")


def private_tempdir(kind: str) -> Path:
    """A new folder in the system's temporary directory (``sortline-<kind>-<pid>-<random>``),
    after removing those left by killed processes."""
    prefix = f"sortline-{kind}-"
    sweep_leftovers(Path(tempfile.gettempdir()), prefix)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the kernel or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def publish_dir(staging: Path, out: Path) -> None:
    """Make the assembled ``staging`` folder appear at ``out`` in one step, replacing what was
    there (a folder, or a file). ``staging`` is gone afterwards."""
    staging, out = Path(staging), Path(out)
    if not out.exists() and not out.is_symlink():
        staging.rename(out)
        return
    if out.is_dir() and _exchange(staging, out):
        shutil.rmtree(staging, ignore_errors=True)  # now the old folder
        return
    # No atomic exchange here (not Linux, or a file system without it): a short gap remains.
    log.warning("%s: replaced in two renames (no atomic exchange on this system)", out)
    retired = staging.with_name(staging.name + ".old")
    out.rename(retired)
    staging.rename(out)
    if retired.is_dir():
        shutil.rmtree(retired, ignore_errors=True)
    else:
        retired.unlink(missing_ok=True)


def publish_file(data_path: Path, out: Path) -> None:
    """Replace ``out`` with the finished file ``data_path`` (same folder) in one rename, after
    flushing it to disk; the rename itself is flushed too (the folder's entry)."""
    with open(data_path, "rb") as f:
        os.fsync(f.fileno())
    os.replace(data_path, out)
    _fsync_dir(Path(out).parent)


@contextlib.contextmanager
def atomic_file(out: Path, kind: str = "write") -> Iterator[Path]:
    """A new path beside ``out`` to write the file to; when the block ends without an error it
    replaces ``out`` in one rename (:func:`publish_file`), and otherwise it is removed. A writer
    killed inside the block leaves ``.<name>.<kind>-<pid>-<random>``, which the next writer of the
    same kind beside it removes::

        with atomic_file(path, "checkpoint") as tmp:
            torch.save(state, tmp)
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(out.parent, ".", marker=f".{kind}-")
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.{kind}-{os.getpid()}-", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        publish_file(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # a system without directory handles: the rename is still atomic, only its flush is not ours
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
