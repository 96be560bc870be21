"""The model folder is replaced AS A WHOLE: written as a new sibling folder, then swapped in.

`replacing(target, known)` yields a fresh hidden sibling `.NAME.cxr-new-XXXXXXXX` to write into;
when the block ends cleanly the two folders are exchanged in one step (Linux renameat2
RENAME_EXCHANGE) and the old one deleted. So a SIGKILL at any moment leaves at `target` the old
complete folder or the new complete one, never a mix; a killed run's sibling folders are
removed by the next run (callers hold the data folder's lock, so no writer is at work in them).
Where renameat2 is missing (not Linux, or a filesystem without RENAME_EXCHANGE) two renames
are used instead; a kill between them leaves the old folder complete at `.NAME.cxr-old-*`,
which the next run restores when the target is missing.

A folder holding anything stage 5 did not write (your notes, another stage's data, a mistyped
path such as the data folder itself) is refused in one line, never deleted.
"""
import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile

from scraper.cli import UserError

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_NEW, _OLD = ".cxr-new-", ".cxr-old-"


def _siblings(target, marker):
    parent, name = os.path.split(os.path.abspath(target))
    pattern = re.compile(r"^\." + re.escape(name) + re.escape(marker) + r"[A-Za-z0-9_]{8}$")
    with contextlib.suppress(FileNotFoundError):
        return [os.path.join(parent, n) for n in os.listdir(parent) if pattern.match(n)]
    return []


def check_replaceable(target, known):
    """UserError unless `target` is missing or a folder holding only names in `known` (and
    hidden temp entries of ours)."""
    if not os.path.lexists(target):
        return
    if os.path.islink(target) or not os.path.isdir(target):
        raise UserError(f"the model folder {target} is not a plain folder; refusing to replace "
                        f"it (choose another path)")
    foreign = sorted(n for n in os.listdir(target)
                     if n not in known and not (n.startswith(".keras-") and n.endswith(".part")))
    if foreign:
        raise UserError(f"the model folder {target} holds {len(foreign):,} entries stage 5 did "
                        f"not write (e.g. {foreign[0]!r}); refusing to replace it: move them or "
                        f"choose another model folder")


def recover(target):
    """Before a run: restore a folder left at .NAME.cxr-old-* by an interrupted fallback swap,
    then delete every other sibling a killed run left behind."""
    old = _siblings(target, _OLD)
    if old and not os.path.lexists(target):
        os.rename(old.pop(), target)
    for path in old + _siblings(target, _NEW):
        shutil.rmtree(path, ignore_errors=True)


def _exchange(a, b):
    """Atomically swap the paths a and b (renameat2 RENAME_EXCHANGE); False when unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), b)


def _fsync_dir(path):
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def swap_in(new, target):
    """Put the complete folder `new` at `target`; the old folder (if any) is deleted."""
    parent = os.path.dirname(os.path.abspath(target))
    if not os.path.lexists(target):
        os.rename(new, target)
    elif _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)     # `new` now holds the old folder
    else:
        old = tempfile.mkdtemp(prefix="." + os.path.basename(os.path.abspath(target)) + _OLD,
                               dir=parent)
        os.rmdir(old)                              # a unique name; we hold the folder lock
        os.rename(target, old)                     # target is gone from here on ...
        os.rename(new, target)                     # ... until this rename
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(parent)


@contextlib.contextmanager
def replacing(target, known):
    """Yield a new empty sibling folder; on a clean exit it replaces `target` as a whole."""
    target = os.path.abspath(os.fspath(target))
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    recover(target)
    check_replaceable(target, known)
    new = tempfile.mkdtemp(prefix="." + name + _NEW, dir=parent)
    try:
        yield new
        os.chmod(new, 0o777 & ~_umask())
        swap_in(new, target)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
