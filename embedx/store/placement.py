"""Where a local store lives: staging beside the target, the atomic move into place, leftovers, the writer lock.

A store is never built at its final path. It is staged in a sibling ``TARGET.tmp-XXXXXXXX`` and moved onto
``TARGET`` only once its metadata is written: with rename(2) for a new path, and with Linux's renameat2
``RENAME_EXCHANGE`` over an old store, which swaps the two folders in one step (then the old one, now under the
staging name, is removed). So at every instant ``TARGET`` holds nothing, the old store or the new one, each
whole. Where the exchange is unsupported, two renames are used (``TARGET -> TARGET.old-*``, staging ->
``TARGET``); a kill between them leaves no target, and :func:`recover` puts the old store back.

:func:`writer_lock` gives one process the right to write ``TARGET`` (an advisory ``flock`` on a hidden sibling
file, released by the kernel when the process dies, SIGKILL included); under it, :func:`recover` removes what
killed writers left beside the target. Stores behind fsspec URLs have no rename or lock: writes go in place.

``EMBEDX_CRASH_AT=<point>`` kills the process with SIGKILL at a named point (tests inject crashes with it).
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import logging
import os
import shutil
import signal
import uuid

from embedx.store.atomic import fsync_dir
from embedx.errors import StoreError
from embedx.fs.locations import FLOCK, RENAME, location
from embedx.store.layout import read_meta

log = logging.getLogger("embedx")
STAGING = ".tmp-"
RETIRED = ".old-"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def crash_point(name: str) -> None:
    """SIGKILL this process here when ``EMBEDX_CRASH_AT`` names this point (crash-injection tests)."""
    if os.environ.get("EMBEDX_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def staging_path(target: str) -> str:
    return f"{target.rstrip('/')}{STAGING}{uuid.uuid4().hex[:8]}"


def _exchange(a: str, b: str) -> bool:
    """Swap the folders ``a`` and ``b`` atomically (Linux renameat2); False where that is not supported."""
    if os.environ.get("EMBEDX_NO_RENAME_EXCHANGE"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def place(staged: str, target: str) -> None:
    """Move the whole store ``staged`` onto ``target`` (see the module docstring); the old store is removed."""
    target = target.rstrip("/")
    crash_point("place:start")
    if not os.path.exists(target) or (os.path.isdir(target) and not os.listdir(target)):
        os.replace(staged, target)  # a new path (an empty folder is replaced too)
    elif _exchange(staged, target):
        crash_point("place:exchanged")
        shutil.rmtree(staged)  # the old store, now under the staging name
    else:
        old = f"{target}{RETIRED}{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        crash_point("place:between")  # no target now: recover() puts the old store back
        os.replace(staged, target)
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(os.path.dirname(os.path.abspath(target)))


@contextlib.contextmanager
def staged(target: str, *, overwrite: bool = False):
    """Build a store for ``target``: yields the path to write it at. Locally a fresh staging sibling
    (:func:`staging_path`), moved onto ``target`` when the block ends (:func:`place`: an old store there is
    replaced whole) and removed when it raises or is interrupted, so ``target`` never holds half a store. Behind a
    URL (no rename) the store is written in place: ``target`` itself, its old store first removed when
    ``overwrite`` (the caller has checked that one is there, ``writer.check_target``)."""
    if not location(target).can(RENAME):  # behind a URL
        if overwrite:
            remove_store(target)
        yield target
        return
    stage = staging_path(target)
    try:
        yield stage
        place(stage, target)
    except BaseException:
        if os.path.isdir(stage):
            shutil.rmtree(stage, ignore_errors=True)
        raise


def remove_store(path: str) -> None:
    """Remove whatever is at ``path`` (a store folder, a file, an object prefix behind a URL)."""
    location(path).remove()


def _is_complete_store(path: str) -> bool:
    try:
        return bool(read_meta(path).get("complete"))
    except StoreError:
        return False


def recover(target: str) -> list[str]:
    """Repair what killed writers left beside ``target`` (call it holding :func:`writer_lock`): when a kill
    between the two renames left no target, the retired old store goes back; every other staging or retired
    sibling is removed. Returns what was done, one line each."""
    target = target.rstrip("/")
    leftovers = sorted(glob.glob(glob.escape(target) + STAGING + "*") + glob.glob(glob.escape(target) + RETIRED + "*"))
    done = []
    if not os.path.exists(target):
        olds = [p for p in leftovers if RETIRED in p[len(target):] and _is_complete_store(p)]
        if olds:
            os.replace(olds[0], target)
            leftovers.remove(olds[0])
            done.append(f"restored {target} from {os.path.basename(olds[0])} (a replace was interrupted)")
    for p in leftovers:
        if os.path.isdir(p):
            shutil.rmtree(p, ignore_errors=True)
        else:
            os.remove(p)
        done.append(f"removed {os.path.basename(p)} (left by an interrupted write)")
    return done


@contextlib.contextmanager
def writer_lock(target: str):
    """Hold the only right to write ``target`` for the duration (a second writer gets a one-line StoreError),
    and first repair what killed writers left beside it (:func:`recover`; each repair logged as a warning)."""
    if not location(target).can(FLOCK):  # behind a URL: no lock (writes go in place)
        yield
        return
    import fcntl

    target = os.path.abspath(target.rstrip("/"))
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise StoreError(f"cannot write {target}: the folder {folder} does not exist")
    lock = os.path.join(folder, f".{os.path.basename(target)}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise StoreError(f"{target} is being written by another embedx process (pid {holder}); wait for it "
                             f"to finish or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        for line in recover(target):
            log.warning(line)
        yield
    finally:
        os.close(fd)  # releases the lock
