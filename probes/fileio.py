"""Files at the edges: bounded reads of user files, atomic writes of ours.

Reading: a user file is read only if it is a regular file below a size bound, and decoded as
UTF-8; anything else (a FIFO that would block, ``/dev/zero`` that never ends, a binary file, a
directory) is one :class:`ProbesError` line naming the file, before any work starts.

Writing: every file of a run directory appears whole or not at all (a temporary file beside the
target, flushed and fsynced, then ``os.replace``), so a crash or a kill never leaves half a file
that a later ``--resume`` would have to guess about.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from probes.errors import ProbesError

MiB = 1 << 20
# Generous for hand-written files (the ImageNet-1k taxonomy as YAML is ~100 KiB), small enough
# that a wrong path (a weights file, a device) is refused at once instead of filling memory.
MAX_TEXT_BYTES = 16 * MiB
# Files the toolkit writes are readable like any other output (umask applies), not mkstemp's 0600.
FILE_MODE = 0o666


def check_regular_file(path: str | Path, what: str = "file") -> Path:
    """``path`` as a Path if it is an existing regular file (symlinks followed); else one line."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ProbesError(f"{path}: no such {what}") from None
    except OSError as exc:
        raise ProbesError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ProbesError(f"{path}: is a directory, expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise ProbesError(f"{path}: not a regular file (a pipe, socket or device); expected a {what}")
    return path


def read_text(path: str | Path, what: str = "file", max_bytes: int = MAX_TEXT_BYTES) -> str:
    """The UTF-8 text of a user file, refused in one line if it is not a small regular text file."""
    path = check_regular_file(path, what)
    try:
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise ProbesError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise ProbesError(f"{path}: {what} is larger than {max_bytes // MiB} MiB; is this the right file?")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ProbesError(f"{path}:{line}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x})") from None
    return text.removeprefix("\ufeff")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path``; on success it replaces ``path``, on failure it is removed.

    For writers that want a file name (matplotlib's ``savefig``, safetensors, torch.save)::

        with atomic_path(out / "curves.png") as tmp:
            fig.savefig(tmp, format="png")
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8, line ends as given) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def _umask() -> int:
    # os.umask can only be read by setting it; restore at once (single-threaded at write time).
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
