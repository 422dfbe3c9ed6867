"""Output files: checked before the work starts, written whole or not at all.

One definition for every writer (datasets, predictors, checkpoints, search results, tokens):
`check_writable` says, before minutes of work, whether a path can be written (its missing
parent folders are not created by the check, only by the write, so a failed run leaves no
empty folders); `write_atomically` writes a temporary file beside the target and renames it
into place, so a kill or a full disk never leaves a partial file under the target's name.
Files get the usual mode (0666 less the umask, as `open` gives), not `mkstemp`'s 0600, unless
the caller asks for a private one (tokens).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from profiler.errors import HatprofError


def check_writable(path: str | os.PathLike, error: type[HatprofError] = HatprofError) -> Path:
    """`path` as a Path, or `error` with one line saying why it cannot be written:
    it is a folder, a parent is a file, or the nearest existing folder above it is not writable."""
    path = Path(path)
    if path.is_dir():
        raise error(f"cannot write {path}: it is a directory")
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise error(f"cannot write {path}: {ancestor} is not a directory")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise error(f"cannot write {path}: directory {ancestor} is not writable")
    return path


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some systems cannot open directories; the data itself is synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_mode() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomically(path: str | os.PathLike, data: bytes | str | Callable[[Path], None],
                     error: type[HatprofError] = HatprofError, private: bool = False) -> Path:
    """Write `data` (bytes, text, or a function that writes the file at the path it is given)
    to `path` through a temporary file and a rename, creating missing parent folders.
    A failure is `error` with one line, and leaves neither `path` nor the temporary file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".tmp{path.suffix}")
    except OSError as exc:
        raise error(f"cannot write {path}: {exc.strerror or exc}") from None
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o600 if private else _default_mode())
        with os.fdopen(fd, "wb") as f:
            if callable(data):
                data(tmp)
            else:
                f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise error(f"cannot write {path}: {exc.strerror or exc}") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path
