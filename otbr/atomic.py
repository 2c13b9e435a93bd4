"""Atomic file writes: write a temporary file beside the target, then rename it into place.

A run that fails, is interrupted with Ctrl-C, or is stopped with SIGTERM (the
command line turns it into a normal exit) never leaves a half-written file at
the target path, and the temporary file is removed. A ``kill -9`` can leave a
hidden ``.NAME.*.tmp`` file beside the target, never a partial target.

Example:
    >>> import json, tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "r.json"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text(json.dumps({"ok": True}))
    >>> json.loads(target.read_text())
    {'ok': True}
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; rename it to ``path`` when the block succeeds.

    Args:
        path: the final file (its folder must exist).
        suffix: suffix of the temporary name (e.g. ``".npz"`` for writers that append one).

    Yields:
        The temporary path to write to. On any exception (``KeyboardInterrupt`` included) it is
        deleted and the exception propagates; ``path`` is then untouched.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
