"""Replacing a folder so that a kill at any moment leaves the old or the new one, never neither.

`atomic_dir(path)` yields a temporary sibling to write into; on success its files are fsynced and it is
exchanged with `path` in one `renameat2(RENAME_EXCHANGE)` (Linux), after which the old contents, now in the
temporary, are removed. Where the exchange is not available the old folder is renamed aside first, which
leaves a short window with no `path`. Every saved model (`save_pretrained`, the training export) and every
checkpoint commits through here.

`fault_point(name, path)` is called at each step of a commit. It does nothing; tests replace it to kill the
process exactly there (`written`: the new folder is complete and synced, not yet in place; `swapped`: the new
folder is in place, the old one not yet removed).
"""
from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def fault_point(name: str, path: Path) -> None:
    """No-op hook at each step of a commit; tests patch it (see the module docstring)."""


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """Flush every file under `folder`, then the folders themselves, so a rename can't outlive the data."""
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            fsync(Path(root) / name)
        fsync(Path(root))


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two existing paths; False where the platform has no such call."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: the file system or kernel can't exchange
        return False
    raise OSError(err, os.strerror(err), str(b))


def commit_dir(tmp: Path, path: Path) -> None:
    """Put the fully written folder `tmp` in place of `path` (which may not exist yet); `tmp` is gone after."""
    fsync_tree(tmp)
    fault_point("written", path)
    if not path.exists():
        os.replace(tmp, path)
    elif not _exchange(tmp, path):
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        tmp = old
    fsync(path.parent)
    fault_point("swapped", path)
    shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_dir(path) -> Iterator[Path]:
    """`with atomic_dir(folder) as tmp: write files into tmp` replaces `folder` with them, all or nothing;
    an exception inside the block leaves `folder` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a writer killed mid-write
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the folder it becomes should not be
    try:
        yield tmp
        commit_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
