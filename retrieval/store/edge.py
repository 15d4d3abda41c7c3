"""Embedded backend: a Qdrant Edge shard (the Qdrant engine in-process) under a data directory.

Layout under the data directory ``root``: one directory per physical collection, ``<name>__v<N>/`` (its
``schema.json`` and the engine's ``shard/``), and ``<name>.current.json``, the pointer to the version readers
use, replaced atomically by a rebuild. A directory ``<name>/`` without a pointer is a collection made before
versioning (version 0).

Several processes: the engine locks a shard's WAL while a process has it open (even only to read), so a
process never writes a version another one may hold. Each write goes into a new version (a copy of the
published one, or built from scratch), then the pointer switches; readers follow it at their next operation
and delete the version they left once no process holds it. ``<name>.write.lock`` serialises writers.
"""

from __future__ import annotations

import atexit
import datetime as dt
import errno
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import qdrant_edge as qe

from retrieval.encoders.sparse import SparseVec
from retrieval.errors import ClosedError, not_one_string
from retrieval.settings import WRITE_LOCK_TIMEOUT_S, FusionMethod, absolute_path
from retrieval.store.base import (
    DENSE,
    HASH_FIELDS,
    LOCK_WAIT_SETTING,
    SCROLL_PAGE,
    SPARSE,
    VERSION_SEP,
    CollectionSchema,
    QdrantStore,
    QueryPlan,
    StoredChunk,
    StoredHit,
    StoredPoint,
    StoreError,
    doc_id_batches,
    filter_conditions,
    parse_version,
    scrolled_pages,
    stored_chunks_from,
    stored_owners_from,
    version_name,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no cross-process check before deleting old versions
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
SCHEMA_FILE = "schema.json"
SHARD_DIR = "shard"
STAGE_FILE = "staged.json"
ERASED_FILE = "erased"  # in a version: points were deleted from it; sealing rewrites it from its live points
REWRITE_MARK = ".rewrite-"  # shard.rewrite-<hex>: a version's shard being rewritten from its live points
OLD_MARK = "old-"  # shard.rewrite-old-<hex>: the shard it replaces, moved aside while the new one moves in
COPY_MARK = ".copy-"  # <name>__v<N>.copy-<hex>: a version being copied (renamed to <name>__v<N> when complete)
DISK_ERRORS = (  # how the OS (and the engine, quoting it) names a full disk, a file size limit, a quota
    ("No space left on device", "no space left on the device (ENOSPC)"),
    ("os error 28", "no space left on the device (ENOSPC)"),
    ("File too large", "a file exceeds the file size limit (EFBIG; see ulimit -f)"),
    ("os error 27", "a file exceeds the file size limit (EFBIG; see ulimit -f)"),
    ("Disk quota exceeded", "the disk quota is exceeded (EDQUOT)"),
    ("os error 122", "the disk quota is exceeded (EDQUOT)"),
)
ACCESS_ERRORS = ("Permission denied", "os error 13", "Operation not permitted", "os error 1)", "Read-only file system")
MEMORY_ERRORS = ("Cannot allocate memory", "os error 12", "memory allocation of")
STAGE_FREE_MARGIN = 64 << 20  # free space a write needs beyond the version it copies (the engine's 32 MiB files)
POINTER_SUFFIX = ".current.json"
_COPY = re.compile(r"__v[1-9][0-9]*\.copy-[0-9a-f]+$")  # a version being copied (stage(copy_current=True))
WRITE_LOCK_SUFFIX = ".write.lock"

_open_shards: dict[str, tuple[qe.EdgeShard, int, Path | None]] = {}  # shard dir -> (shard, references, view)
_folders: dict[str, tuple[int, int] | None] = {}  # shard dir -> its (device, inode) when opened (see _replaced)
_detached: dict[int, tuple[qe.EdgeShard, int, Path | None]] = {}  # id(shard) -> entry: its folder was replaced
_doomed: set[str] = set()  # shard directories to delete once their last handle in this process is released
_registry_lock = threading.Lock()
# shard dirs and shards of stores garbage-collected unclosed, released at the next registry call
_collected: list[tuple[Path, qe.EdgeShard | None]] = []
_stores: weakref.WeakSet[EdgeStore] = weakref.WeakSet()  # this process' stores (a forked child forgets their handles)
_inherited: list[qe.EdgeShard] = []  # in a forked child: the parent's shards, kept (never flushed, closed nor freed)
_write_locks: dict[str, tuple[int, int]] = {}  # lock file -> (fd, depth) of the thread holding it in this process
_thread_locks: dict[str, threading.RLock] = {}  # lock file -> the lock that serialises this process' threads
_write_locks_guard = threading.Lock()
VIEWS_DIR = "views"
# what a version folder holds, one of which is left while another process deletes it
OWN_ENTRIES = {SCHEMA_FILE, SCHEMA_FILE + ".tmp", SHARD_DIR, STAGE_FILE, STAGE_FILE + ".tmp", VIEWS_DIR, ERASED_FILE}
LINK_MIN_BYTES = 1 << 20  # in a view, files this large are hard links: the engine only reads them after writing
TEMP_PREFIX = ".atomicwrite"  # the engine's temporaries, renamed into place by the process holding a shard
VIEW_ATTEMPTS = 3  # a view copied while the holder renamed files under it may not load: copy it again


def _acquire(path: Path, create_config: qe.EdgeConfig | None = None, *, opening: bool = True) -> qe.EdgeShard:
    """One open shard per directory and process (the engine locks its WAL), shared by reference count.

    A shard another process has open is read through a private view of it (see :func:`_make_view`).
    ``opening``: a store binds to this directory (a dropped one that is opened again is kept after all);
    False for the short reference one operation holds.
    """
    key = str(path.resolve())
    with _registry_lock:
        _release_collected()
        if opening:
            _doomed.discard(key)
        if key in _open_shards and (create_config is not None or _replaced(key)):
            _detach(key)  # its folder was deleted (and made again): the new one is another shard
        if key in _open_shards:
            shard, refs, view = _open_shards[key]
            _open_shards[key] = (shard, refs + 1, view)
            return shard
        view = None
        _remove_dead_views(path.parent / VIEWS_DIR)
        try:
            shard = qe.EdgeShard.create(key, create_config) if create_config else qe.EdgeShard.load(key)
        except BaseException as exc:  # the engine raises a bare Exception (or a Rust panic) with its own text
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            if create_config is not None or "WouldBlock" not in str(exc):
                raise StoreError(_explain_open_error(path, exc)) from exc
            shard, view = _load_view(path)
            log.info("%s is open in another process: reading it through %s", path, view)
        _open_shards[key] = (shard, 1, view)
        _folders[key] = _identity(key)
        return shard


def _identity(folder: str) -> tuple[int, int] | None:
    """The (device, inode) of ``folder``; None when it is gone."""
    try:
        found = os.stat(folder)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _replaced(key: str) -> bool:
    """Under ``_registry_lock``: whether the shard folder ``key`` is another folder than the one its registered
    shard was opened from (deleted, e.g. the whole index folder, and made again: the first version's number is
    reused). A folder that is gone is not replaced: its shard keeps serving what it has open."""
    now = _identity(key)
    return now is not None and now != _folders.get(key)


def _detach(key: str) -> None:
    """Under ``_registry_lock``: set the shard registered at ``key`` aside (its folder was replaced): its holders
    let go of it by the shard (:func:`_release`), and the last one closes it without flushing into the new folder."""
    shard, refs, view = _open_shards.pop(key)
    _folders.pop(key, None)
    _detached[id(shard)] = (shard, refs, view)
    log.warning("%s was deleted and made again: this process opens the new one", key)


def _hold(key: str, shard: qe.EdgeShard) -> None:
    """Under ``_registry_lock``: one more reference on ``shard``, registered at ``key`` or set aside."""
    if id(shard) in _detached:
        held, refs, view = _detached[id(shard)]
        _detached[id(shard)] = (held, refs + 1, view)
    else:
        held, refs, view = _open_shards[key]
        _open_shards[key] = (held, refs + 1, view)


def _load_view(shard_dir: Path) -> tuple[qe.EdgeShard, Path]:
    """Under ``_registry_lock``: a view of a shard another process holds, opened (copied again when it fails)."""
    for attempt in range(1, VIEW_ATTEMPTS + 1):
        view = None
        try:
            view = _make_view(shard_dir)
            return qe.EdgeShard.load(str(view)), view
        except BaseException as exc:  # an OSError while copying, or the engine's bare Exception / Rust panic
            if view is not None:
                shutil.rmtree(view, ignore_errors=True)
            if not shard_dir.exists():  # the version was deleted meanwhile: what is left of it around the view goes
                for folder in (shard_dir.parent / VIEWS_DIR, shard_dir.parent):
                    with suppress(OSError):  # empty folders only
                        folder.rmdir()
            if isinstance(exc, KeyboardInterrupt | SystemExit):
                raise
            if attempt == VIEW_ATTEMPTS:
                if isinstance(exc, OSError):
                    raise StoreError(
                        f"cannot read {shard_dir}, which another process has open: copying it failed "
                        f"{VIEW_ATTEMPTS} times ({type(exc).__name__}: {exc})"
                    ) from exc
                raise StoreError(_explain_open_error(shard_dir, exc)) from exc
            log.info("view of %s failed (%s: %s): copying it again", shard_dir, type(exc).__name__, exc)
    raise AssertionError("unreachable")


def _make_view(shard_dir: Path) -> Path:
    """A private copy of a shard another process holds, for reading: the engine locks a shard's WAL even to read it.

    Published versions are never written again, so the large files (vectors, payloads, WAL segments) are hard
    links; the small files the engine rewrites when it opens or closes a shard are copied, and the WAL folder
    (what the engine locks) is new. The engine of the holding process still writes temporaries
    (``.atomicwrite*``) and renames them into place: those are skipped, and so is a file or folder that goes
    while it is copied. The view lives in the version's ``views/`` folder, named ``<pid>-<random>``, and goes
    when this process lets go of it or exits, with the version, or (killed process) at the next open of it.
    """
    views = shard_dir.parent / VIEWS_DIR
    view = views / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        # Never a parent made again: a writer that published a later version may delete this one while it is
        # listed here (no WAL lock of this view holds it yet); its folder must not come back holding views/.
        views.mkdir(exist_ok=True)
        for top, dirs, files in os.walk(shard_dir):  # a folder that vanished before it was listed is skipped
            dirs[:] = sorted(d for d in dirs if not d.startswith(TEMP_PREFIX))
            target = view / Path(top).relative_to(shard_dir)
            target.mkdir(exist_ok=True)  # top-down: its parent was made before it
            for name in sorted(f for f in files if not f.startswith(TEMP_PREFIX)):
                src = os.path.join(top, name)
                try:
                    if os.stat(src).st_size >= LINK_MIN_BYTES:
                        os.link(src, target / name)
                    else:
                        _copy_sparse(src, str(target / name))
                except FileNotFoundError:  # renamed or removed by the holder meanwhile
                    continue
    except BaseException:
        shutil.rmtree(view, ignore_errors=True)
        raise
    return view


def _remove_dead_views(views: Path) -> None:
    """Delete the views left by processes of this host that ended without letting go of them (killed, or no
    ``close()``): the pid in the view's name is gone and no process holds its WAL lock."""
    if not views.is_dir():
        return
    for view in views.iterdir():
        pid = view.name.split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or psutil.pid_exists(int(pid)) or _locked(view / "wal"):
            continue
        log.info("removing %s, left by process %s, which has ended", view, pid)
        shutil.rmtree(view, ignore_errors=True)


def _locked(wal: Path) -> bool:
    """Whether a process holds an ``flock`` on this folder (the engine's on a WAL folder, a snapshot's on its
    staging folder)."""
    if fcntl is None or not wal.is_dir():
        return False
    try:
        fd = os.open(wal, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


@atexit.register
def _release_at_exit() -> None:
    """At interpreter exit: the views of stores that were never closed go (their shards are closed first), and so do
    the dropped versions they held (see :func:`_dropped`); the engine lets go of the other files itself."""
    if not _registry_lock.acquire(timeout=5):
        return
    try:
        for key, (shard, _, view) in list(_open_shards.items()):
            dropped = key in _doomed or _dropped(Path(key).parent)
            if view is None and not dropped:
                continue
            del _open_shards[key]
            with suppress(Exception):  # exiting anyway: the folders go below
                shard.close()
            if view is not None:
                shutil.rmtree(view, ignore_errors=True)
            if dropped:
                _remove_unheld(Path(key).parent)
        for shard, _, view in _detached.values():
            if view is not None:
                with suppress(Exception):
                    shard.close()
                shutil.rmtree(view, ignore_errors=True)
    finally:
        _registry_lock.release()


def _release(path: Path, shard: qe.EdgeShard | None = None) -> None:
    """Let go of one reference on the shard at ``path`` (``shard``: that one, also when set aside); the last one
    flushes and closes it, deletes its view, and the version when it was dropped meanwhile, by this process or
    another one (see :func:`_dropped`), unless another process still holds it. The engine failing to close it is a
    :class:`StoreError`, unless its folder was deleted, moved or replaced meanwhile (nothing to flush into)."""
    key = str(path.resolve())
    with _registry_lock:
        _release_collected()
        _release_locked(key, shard)


def _release_locked(key: str, shard: qe.EdgeShard | None = None) -> None:
    """Under ``_registry_lock``: :func:`_release`."""
    if shard is not None and id(shard) in _detached:
        _, refs, view = _detached.pop(id(shard))
        if refs > 1:
            _detached[id(shard)] = (shard, refs - 1, view)
        else:
            _close_gone(shard, key, view)
        return
    if key not in _open_shards:
        return
    shard, refs, view = _open_shards[key]
    if refs > 1:
        _open_shards[key] = (shard, refs - 1, view)
        return
    del _open_shards[key]
    if _folders.pop(key, None) != _identity(key):
        _close_gone(shard, key, view)
        return
    try:
        shard.flush()
        shard.close()
    except Exception as exc:  # the engine's bare Exception: e.g. its files were deleted under it
        raise StoreError(f"embedded Qdrant at {Path(key).parent}: closing {key} failed: {exc}") from exc
    finally:
        if view is not None:
            shutil.rmtree(view, ignore_errors=True)
        if key in _doomed or _dropped(Path(key).parent):
            _doomed.discard(key)
            _remove_unheld(Path(key).parent)


def _close_gone(shard: qe.EdgeShard, key: str, view: Path | None) -> None:
    """Close a shard whose folder was deleted, moved or replaced since it was opened: nothing of it to flush."""
    try:
        shard.close()
    except Exception as exc:  # noqa: BLE001 - the engine's bare Exception: its files are gone
        log.info("closing %s, whose folder was deleted or moved: %s", key, exc)
    if view is not None:
        shutil.rmtree(view, ignore_errors=True)


def _release_collected() -> None:
    """Under ``_registry_lock``: let go of the shards of stores garbage-collected meanwhile (see
    :func:`_store_collected`)."""
    while _collected:
        path, shard = _collected.pop()
        try:
            _release_locked(str(path.resolve()), shard)
        except StoreError as exc:  # nobody to tell but the log: the store is gone
            log.warning("%s", exc)


def _store_collected(binding: _Binding, collection: str) -> None:
    """A store garbage-collected without ``close()``: its reference on its version is let go of (at once, or at
    the next registry call when the registry is busy, e.g. this thread collected it inside one), with a
    ResourceWarning, as for an unclosed file. Refers to the store's binding only, never to the store."""
    if binding.name is None:
        return
    path, shard, binding.name, binding.shard = binding.root / binding.name / SHARD_DIR, binding.shard, None, None
    warnings.warn(
        f"unclosed store of collection {collection!r} at {binding.root}: released when garbage-collected; "
        "close its RetrievalStack (stack.close() or a with block) when done",
        ResourceWarning,
        stacklevel=1,  # called by the garbage collector: no caller to point at
    )
    _collected.append((path, shard))
    if _registry_lock.acquire(blocking=False):
        try:
            _release_collected()
        finally:
            _registry_lock.release()


def _forget_inherited() -> None:
    """In a forked child (``os.fork``, gunicorn ``--preload``, a ``fork`` multiprocessing pool): the shards the
    parent opened are its own, and the engine's threads did not survive the fork (a query on them never returns).
    The child's stores open their own (through a view: the parent holds the WAL lock); the parent's shards are
    kept referenced, never flushed, closed nor deleted here, and its views and write locks are left alone."""
    global _registry_lock, _write_locks_guard
    _inherited.extend(shard for shard, _, _ in [*_open_shards.values(), *_detached.values()])
    _open_shards.clear()
    _folders.clear()
    _detached.clear()
    _doomed.clear()
    _collected.clear()
    _registry_lock = threading.Lock()  # another thread of the parent may have held these at the fork
    _write_locks.clear()
    _thread_locks.clear()
    _write_locks_guard = threading.Lock()
    for store in list(_stores):
        store._forget()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_forget_inherited)


def _reopen(shard_dir: Path) -> None:
    """Load the shard at ``shard_dir`` again from its files (replaying its WAL), as the next process to open it
    will, before readers are pointed at it: a version the engine wrote but cannot read back must not replace the
    published one. Opened here by its writer alone: closed and loaded again in place; opened by other handles of
    this process too, or by another process: loaded through a view of its files (see :func:`_make_view`)."""
    key = str(shard_dir.resolve())
    with _registry_lock:
        shard, refs, view = _open_shards.get(key, (None, 0, None))
        if view is not None:  # this process loaded it from a copy of its files already
            return
        if shard is not None and refs == 1:
            shard.flush()
            shard.close()
            del _open_shards[key]  # its handle finds nothing to release should loading fail
            _open_shards[key] = (qe.EdgeShard.load(key), 1, None)
            return
        if shard is not None:
            shard.flush()
        else:
            try:
                qe.EdgeShard.load(key).close()
                return
            except BaseException as exc:
                if "WouldBlock" not in str(exc):
                    raise
        loaded, view = _load_view(shard_dir)  # another handle or process holds it
        loaded.close()
        shutil.rmtree(view, ignore_errors=True)


def _discard(collection_dir: Path) -> None:
    """Delete a physical collection now, or when the last handle on it in this process is released.

    A directory another process has open (the engine holds a lock on the WAL of the shard, or of a view of it)
    is left for the next cleanup, or for the last process that lets go of it.
    """
    shard_dir = collection_dir / SHARD_DIR
    key = str(shard_dir.resolve())
    with _registry_lock:
        if key in _open_shards:
            _doomed.add(key)
            return
        _remove_unheld(collection_dir)


def _dropped(collection_dir: Path) -> bool:
    """Whether a physical collection was dropped (``"dropped"`` in its staging record: by ``drop``, or as a version a
    publish superseded or a write abandoned, see :meth:`EdgeStore._drop`) and readers' pointer does not name it.
    Another process reads the mark when it lets go of the version, or when it lists the collection."""
    try:
        if not json.loads((collection_dir / STAGE_FILE).read_text()).get("dropped"):
            return False
    except (OSError, ValueError, AttributeError):  # none (a published version made before staging records), or torn
        return False
    collection, sep, number = collection_dir.name.rpartition(VERSION_SEP)
    if not sep or not number.isdigit():  # the unversioned collection: no pointer names it
        return True
    try:
        return json.loads((collection_dir.parent / (collection + POINTER_SUFFIX)).read_text())["version"] != int(number)
    except FileNotFoundError:
        return True
    except (OSError, ValueError, KeyError, TypeError):  # a damaged pointer may have named it: keep it
        return False


def _holds_schema(folder: Path) -> bool:
    """Whether ``folder`` holds a collection's schema file; one this user cannot read is left out with a warning."""
    try:
        return (folder / SCHEMA_FILE).is_file()
    except OSError as exc:
        log.warning("not listed: %s cannot be read (%s): the user needs read and write access", folder, exc.strerror)
        return False


def discard_dropped(collection_dir: Path) -> bool:
    """Whether ``collection_dir`` is a dropped physical collection (see :func:`_dropped`); such a one is deleted
    now unless a process holds it (one that was killed holding it left it for this)."""
    if not _dropped(collection_dir):
        return False
    try:
        _discard(collection_dir)
    except OSError as exc:  # e.g. another user's index: it stays dropped all the same
        log.warning("cannot delete %s, a dropped version: %s", collection_dir, exc)
    return True


def _remove_unheld(collection_dir: Path) -> None:
    """Delete a collection directory unless a process holds the WAL lock of its shard or of a view of it."""
    shard_dir = collection_dir / SHARD_DIR
    wals = [shard_dir / "wal", *(collection_dir / VIEWS_DIR).glob("*/wal")]
    fds = [os.open(w, os.O_RDONLY) for w in wals if w.is_dir()] if fcntl is not None else []
    try:
        for fd in fds:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("not deleting %s yet: another process has it open", collection_dir)
                return
        shutil.rmtree(collection_dir, ignore_errors=True)
    finally:
        for fd in fds:
            os.close(fd)


@contextmanager
def _write_lock(path: Path, collection: str, timeout_s: float) -> Iterator[None]:
    """An exclusive lock on ``path``: a per-path ``RLock`` (re-entrant per thread, so two threads of one process
    are serialised too), then ``flock`` (across processes); waits up to ``timeout_s`` in all."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{path.parent}: cannot create the index folder ({exc.strerror}){_os_hint(exc)}") from exc
    key = str(path.parent.resolve() / path.name)  # the same key before and after the file exists
    deadline = time.monotonic() + timeout_s
    with _write_locks_guard:
        thread_lock = _thread_locks.setdefault(key, threading.RLock())
    if not thread_lock.acquire(blocking=False):
        holder = f"another thread of this process (pid {os.getpid()} on {socket.gethostname()})"
        log.warning(
            "collection %r is being written by %s: waiting for it to finish (up to %gs, %s)",
            collection,
            holder,
            timeout_s,
            LOCK_WAIT_SETTING,
        )
        if not thread_lock.acquire(timeout=timeout_s):
            raise StoreError(_busy_message(path, collection, holder, timeout_s)) from None
    try:
        with _write_locks_guard:
            fd, depth = _write_locks.get(key, (-1, 0))
        if depth == 0:  # this thread is the first holder in this process: take the lock file
            fd = _lock_file(path, collection, max(deadline - time.monotonic(), 0.0), timeout_s)
        with _write_locks_guard:
            _write_locks[key] = (fd, depth + 1)
        try:
            yield
        finally:
            with _write_locks_guard:
                if depth:
                    _write_locks[key] = (fd, depth)
                else:
                    del _write_locks[key]
                    os.close(fd)  # releases the flock
    finally:
        thread_lock.release()


def _busy_message(path: Path, collection: str, holder: str, timeout_s: float) -> str:
    return (
        f"collection {collection!r} at {path.parent} is being written by {holder}; "
        f"gave up after waiting {timeout_s:g}s ({LOCK_WAIT_SETTING}). Let that run finish (or stop it), then run "
        "this again"
    )


PROBE_GRACE_S = 0.05  # a writer finding the lock taken tries again this soon before it waits and says so


def _lock_file(path: Path, collection: str, timeout_s: float, waited_s: float | None = None) -> int:
    """``flock`` on ``path``, waiting up to ``timeout_s`` (``waited_s``: the whole wait, for the message)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:  # no access, a read-only filesystem, a full disk (no inode left)
        raise StoreError(f"{path}: cannot open the write lock ({exc.strerror}){_os_hint(exc)}") from exc
    if fcntl is None:  # pragma: no cover - Windows: no cross-process serialisation
        return fd
    deadline, warned, probed = time.monotonic() + timeout_s, False, False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not probed:  # perhaps lock_held's shared lock of an instant (`hybrid-rag collections`): no writer
                probed = True
                time.sleep(PROBE_GRACE_S)
                continue
            holder = _lock_holder(path)
            if time.monotonic() >= deadline:
                os.close(fd)
                raise StoreError(
                    _busy_message(
                        path, collection, f"another process ({holder})", timeout_s if waited_s is None else waited_s
                    )
                ) from None
            if not warned:
                log.warning(
                    "collection %r is being written by %s: waiting for it to finish (up to %gs, %s)",
                    collection,
                    holder,
                    waited_s if waited_s is not None else timeout_s,
                    LOCK_WAIT_SETTING,
                )
                warned = True
            time.sleep(0.2)
    os.ftruncate(fd, 0)
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.write(fd, json.dumps(info).encode())
    return fd


def lock_held(path: Path) -> dict[str, Any] | bool | None:
    """Whether a process holds the write lock ``path`` now (a non-blocking shared ``flock``, let go at once): its
    holder as the lock file records it (``pid``, ``host``, ``since``; empty when unreadable), or False. A lock file
    left by a finished or killed writer is not held (the OS lets go of a dead process's ``flock``), whatever pid it
    names. None: not known (no ``flock`` here, or the file cannot be opened)."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            info = json.loads(os.read(fd, 4096))
        except (OSError, ValueError):
            info = None
        return info if isinstance(info, dict) else {}
    finally:
        os.close(fd)  # lets go of the shared lock, when taken
    return False


def _lock_holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown process"


class _DiskFull(Exception):
    """A copy stopped by a full disk or a file size / quota limit (not an OSError, so copytree does not go on)."""


def _disk_full(exc: OSError, path: str | Path) -> _DiskFull | None:
    """``exc`` as a :class:`_DiskFull` naming the error and ``path`` when it is one (no space, size limit, quota)."""
    if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return None
    return _DiskFull(f"{os.strerror(exc.errno)} ({errno.errorcode[exc.errno]}) writing {path}")


def _disk_problem(text: str) -> str | None:
    """The disk problem an error's text names (no space, a file size limit, a quota), or None."""
    for marker, problem in DISK_ERRORS:
        if marker in text:
            return problem
    return None


def copy_tree(source: Path, target: Path) -> None:
    """Copy a collection directory; files full of zeros (the engine's preallocated WAL) are copied sparse. A failed
    copy is removed; a full disk (or a file size limit, a quota) fails in one line naming it and the path."""
    tmp = target.with_name(target.name + f"{COPY_MARK}{uuid.uuid4().hex[:8]}")
    readers = shutil.ignore_patterns(VIEWS_DIR)  # readers' private views stay with the version they read

    def copy(src: str, dst: str) -> None:
        try:
            _copy_sparse(src, dst)
        except OSError as exc:
            raise _disk_full(exc, dst) or exc from exc  # a full disk stops copytree (which goes on after an OSError)

    try:
        shutil.copytree(
            source, tmp, copy_function=copy, ignore=lambda d, names: readers(d, names) if d == str(source) else []
        )
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            exc = _disk_full(exc, exc.filename or tmp) or exc
        if isinstance(exc, _DiskFull):
            raise StoreError(
                f"cannot copy {source} to stage a write: {exc}. Free disk space (or raise the file size limit or "
                "quota), then run it again; nothing was changed"
            ) from exc
        raise


def _allocated(directory: Path) -> int:
    """The bytes ``directory``'s files take on their filesystem (holes excluded; readers' views, hard links to the
    version's files, left out). On tmpfs a version opened by the engine is fully allocated (it pre-reads its
    memory maps, and reading a hole there allocates it): the sample's 520 KiB on ext4 take 41 MiB there."""
    total = 0
    for top, dirs, files in os.walk(directory):
        if Path(top) == directory:
            dirs[:] = [d for d in dirs if d != VIEWS_DIR]
        for name in files:
            with suppress(FileNotFoundError):
                total += os.lstat(os.path.join(top, name)).st_blocks * 512
    return total


def check_free_space(root: Path, collection: str, source: Path | None) -> None:
    """Refuse a write that would run the filesystem of ``root`` out of space: the engine writes (and pre-reads)
    its files through memory maps, and a memory-mapped page the filesystem has no block for kills the process
    with SIGBUS, without a message. Needed: what ``source`` (the version copied; None: a new one) takes on
    this filesystem, plus :data:`STAGE_FREE_MARGIN`."""
    existing = next(p for p in (root, *root.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    copied = _allocated(source) if source is not None else 0
    needed = copied + STAGE_FREE_MARGIN
    if free < needed:
        what = f"a copy of {source.name} ({_mib(copied)}) plus {_mib(STAGE_FREE_MARGIN)}" if source else "a new version"
        raise StoreError(
            f"not enough free space on the filesystem of {root} to write collection {collection!r}: {_mib(free)} "
            f"free, {_mib(needed)} needed ({what}; the engine writes through memory maps, and running out there "
            "kills the process with SIGBUS). Free disk space, then run it again; nothing was changed"
        )


def _mib(size: int) -> str:
    return f"{size / (1 << 20):.1f} MiB"


def _undo_interrupted_swap(directory: Path) -> None:
    """A version whose shard a killed rewrite had moved aside (``shard.rewrite-old-*``) before moving the new one
    in gets it back (the version is still marked erased: sealing it rewrites it again)."""
    if not (directory / SHARD_DIR).exists():
        for old in directory.glob(f"{SHARD_DIR}{REWRITE_MARK}{OLD_MARK}*"):
            log.info("%s: moving back %s, left by an interrupted rewrite", directory, old.name)
            os.rename(old, directory / SHARD_DIR)
            return


def _remove_copy_leftovers(root: Path, collection: str) -> None:
    """Delete the temporary copies a killed write left (``<name>__v<N>.copy-<hex>``); under the write lock."""
    for path in root.glob(f"{collection}{VERSION_SEP}*{COPY_MARK}*"):
        if path.is_dir() and parse_version(collection, path.name.split(COPY_MARK)[0]) is not None:
            log.info("removing %s, the leftover of an interrupted copy", path)
            shutil.rmtree(path, ignore_errors=True)


def _copy_sparse(src: str, dst: str) -> None:
    """``shutil.copy2``, but pages (4 KiB) of zeros become holes (a WAL segment is 32 MiB, almost all of it
    unwritten, and a small segment file is a few bytes in its first page): the copy takes the source's disk space."""
    block, page = 1 << 20, 4096
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        while chunk := fin.read(block):
            if chunk.count(0) < page:  # no page of zeros in it: one write
                fout.write(chunk)
                continue
            pages = np.frombuffer(chunk.ljust(-(-len(chunk) // page) * page, b"\0"), np.uint8).reshape(-1, page)
            used = pages.any(axis=1)
            cuts = [0, *(np.flatnonzero(used[1:] != used[:-1]) + 1), len(used)]  # runs of data, runs of holes
            for first, last in pairwise(cuts):
                run = memoryview(chunk)[first * page : last * page]
                if used[first]:
                    fout.write(run)
                else:
                    fout.seek(len(run), os.SEEK_CUR)
        fout.truncate(size)
    shutil.copystat(src, dst)


_ACCESS_HINT = (
    "The user running this needs read and write access to the index folder and every file in it, even to search "
    "(the engine opens its files writable); nothing is damaged."
)


def _os_hint(exc: OSError) -> str:
    """What to do about an OSError writing the index folder (no access, a read-only filesystem), as a sentence."""
    return f". {_ACCESS_HINT}" if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else ""


def _unreadable(path: Path, exc: OSError) -> StoreError:
    """An OSError reading one of the collection's small files, as a one-line error naming the path."""
    hint = f". {_ACCESS_HINT}" if isinstance(exc, PermissionError) else ""
    return StoreError(f"{path}: cannot read it ({exc.strerror or exc}){hint}")


def _explain_open_error(path: Path, exc: BaseException) -> str:
    text = str(exc)
    disk = _disk_problem(text)
    if disk:
        return (
            f"embedded Qdrant data directory {path}: {disk}. Free disk space (or raise the file size limit or "
            f"quota), then run it again. Engine said: {text}"
        )
    if any(marker in text for marker in ACCESS_ERRORS):
        return f"embedded Qdrant data directory {path}: permission denied. {_ACCESS_HINT} Engine said: {text}"
    if any(marker in text for marker in MEMORY_ERRORS):
        return (
            f"embedded Qdrant data directory {path}: out of memory while opening it (the engine maps its files into "
            f"memory): raise the memory limit (ulimit -v, the container's) or free memory; nothing is damaged. "
            f"Engine said: {text}"
        )
    if "WouldBlock" in text or "lock" in text.lower():
        return (
            f"embedded Qdrant data directory {path} is locked by another process (a Dagster run, "
            f"`dagster dev` or another hybrid-rag command has it open). Stop that process, or use a Qdrant "
            f"server (HYBRID_RAG_QDRANT_URL) for several processes at once. Engine said: {text}"
        )
    return (
        f"cannot open embedded Qdrant data directory {path}: it looks damaged or incomplete ({text}). "
        f"Rebuild the collection from its source documents"
    )


class _Binding:
    """The version a store holds a reference on: what its finalizer lets go of (it must not refer to the store)."""

    __slots__ = ("name", "root", "shard")

    def __init__(self, root: Path):
        self.root = root
        self.name: str | None = None  # the physical collection (``<name>__v<N>``) whose shard the store holds
        self.shard: qe.EdgeShard | None = None  # that shard


class EdgeStore(QdrantStore):
    """A collection stored as Qdrant Edge shards under ``root`` (see the module docstring for the layout).

    Thread-safe: every operation holds a reference on the shard it uses, so a reader that switches to a new
    version (on its next operation after a rebuild) never closes a shard under a running query. Inside
    ``reading()`` every read of the thread uses the version current when the block began (one search reads one
    version), which stays open until the block ends.

    ``close()`` is final: later operations raise :class:`~retrieval.errors.ClosedError`. A store garbage-collected
    unclosed lets go of its version (with a ResourceWarning). In a forked child it opens its own handle.
    """

    writes_in_place = False

    def __init__(
        self,
        root: str | Path,
        collection: str,
        *,
        version: int | None = None,
        lock_timeout_s: float = WRITE_LOCK_TIMEOUT_S,
    ):
        self.root = absolute_path(root)  # once: a later os.chdir does not move the collection
        self.collection = collection
        self.version = version
        self.lock_timeout_s = lock_timeout_s
        self.pointer = self.root / (collection + POINTER_SUFFIX)
        self._binding = _Binding(self.root)  # ._bound: the physical collection ._shard belongs to
        self._closed = False
        self._lock = threading.Lock()
        self._local = threading.local()  # .reading: the shard directory this thread's reads are pinned to
        self._pointer_warned: str | None = None  # the pointer problem last warned about (once, not every search)
        finalizer = weakref.finalize(self, _store_collected, self._binding, collection)
        finalizer.atexit = False  # at exit the engine lets go of its files (and _release_at_exit of views, drops)
        _stores.add(self)

    @property
    def _bound(self) -> str | None:
        return self._binding.name

    @_bound.setter
    def _bound(self, name: str | None) -> None:
        self._binding.name = name

    @property
    def _shard(self) -> qe.EdgeShard | None:
        return self._binding.shard

    @_shard.setter
    def _shard(self, shard: qe.EdgeShard | None) -> None:
        self._binding.shard = shard

    def _forget(self) -> None:
        """In a forked child: drop the parent's handle without letting go of it (see :func:`_forget_inherited`)."""
        self._lock = threading.Lock()
        self._local = threading.local()
        self._shard, self._bound = None, None

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(
                f"collection {self.collection!r} at {self.root}: its store is closed (RetrievalStack.close()); "
                "closing is final: build a new RetrievalStack to search or write again"
            )

    @property
    def dir(self) -> Path:
        """The directory of the physical collection in use (or that would be used)."""
        return self.root / (self._bound or self._target())

    @property
    def location(self) -> str:  # type: ignore[override]
        return str(self.dir)  # absolute (root is): messages say where, whatever the working directory

    # -- versions ------------------------------------------------------------------------------------------
    def _read_pointer(self) -> int | None:
        try:
            return int(json.loads(self.pointer.read_text())["version"])
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _unreadable(self.pointer, exc) from exc
        except (ValueError, KeyError, TypeError) as exc:
            intact = self.intact_versions()
            hint = (
                f"intact versions: {', '.join(map(str, intact))}; to restore the newest, "
                + self._restore_hint(intact[-1])
                if intact
                else f"no intact version is left: delete {self.pointer.name} and index the documents again"
            )
            raise StoreError(f"{self.pointer}: unreadable version pointer ({exc}); nothing changed; {hint}") from exc

    def _restore_hint(self, version: int) -> str:
        return f"write {json.dumps({'version': version})} into {self.pointer}"

    def _pointer_where(self) -> str:
        return str(self.pointer)

    def _target(self) -> str:
        """The physical collection this store should use now."""
        version = self.version if self.version is not None else self._read_pointer()
        return version_name(self.collection, version or 0)

    def current_version(self) -> int | None:
        if self.version is not None:
            return self.version
        pointed = self._read_pointer()
        if pointed is None and (self.root / self.collection).is_dir():
            self._refuse_foreign(self.root / self.collection)
            return 0
        if pointed is None or not (self.root / version_name(self.collection, pointed) / SCHEMA_FILE).exists():
            if self._read_pointer() != pointed:  # a writer moved it meanwhile
                return self.current_version()
            self.check_pointer(pointed)  # lost, or naming an absent version, while intact versions exist
        return pointed

    def catalogue(self) -> tuple[list[str], list[str]]:
        """The collections with a pointer under ``root``, and the folders holding a schema (a copy being made, or
        left by a killed write, is no collection; a dropped version another process holds is left out, and deleted
        here once none does)."""
        entries = list(self.root.iterdir()) if self.root.is_dir() else []
        published = [p.name.removesuffix(POINTER_SUFFIX) for p in entries if p.name.endswith(POINTER_SUFFIX)]
        physical = [
            p.name
            for p in entries
            if p.is_dir() and _holds_schema(p) and not _COPY.search(p.name) and not discard_dropped(p)
        ]
        return published, physical

    def _version_dirs(self) -> dict[int, Path]:
        """The folders named like a version of this collection (not checked: see :meth:`_refuse_foreign`)."""
        if not self.root.is_dir():
            return {}
        found = {parse_version(self.collection, p.name): p for p in self.root.iterdir() if p.is_dir()}
        return {v: p for v, p in found.items() if v is not None}

    def _taken_versions(self) -> list[int]:
        """Every version folder, dropped ones a process still holds too (their numbers are not given again)."""
        dirs = self._version_dirs()
        for path in dirs.values():  # every write drops versions: never one hybrid-rag did not make
            self._refuse_foreign(path)
        return sorted(dirs)

    def _versions(self) -> list[int]:
        """Every version but the dropped ones, which are deleted here unless a process still holds them (see
        :func:`discard_dropped`): a dropped collection is gone for every command, even while a reader holds it."""
        taken = self._taken_versions()
        return [v for v in taken if not discard_dropped(self.root / version_name(self.collection, v))]

    def _refuse_foreign(self, path: Path) -> None:
        """Refuse to go on when ``path``, named like a version of this collection, is a folder hybrid-rag did not
        make (e.g. the source folder, or the evaluation history, when the index folder is a project folder): not
        empty, and no schema, shard or staging record in it. Such a folder is never read, written nor deleted."""
        try:
            names = {p.name for p in path.iterdir()}
        except FileNotFoundError:  # a version another process deleted meanwhile
            return
        except OSError as exc:
            raise StoreError(f"{path}: cannot list this folder of collection {self.collection!r}: {exc}") from exc
        if names and not names & OWN_ENTRIES:
            raise StoreError(
                f"{path} is not a hybrid-rag collection (no {SCHEMA_FILE}, {SHARD_DIR}/ or {STAGE_FILE} in it), but "
                f"the index folder {self.root} keeps collection {self.collection!r} under that name: nothing was "
                f"changed; use another collection name, or move that folder out of {self.root}"
            )

    def exists(self) -> bool:
        return self.pointer.exists() or super().exists()

    def _pinned(self, version: int) -> EdgeStore:
        return EdgeStore(self.root, self.collection, version=version, lock_timeout_s=self.lock_timeout_s)

    def documents(self) -> int:
        """A facet of the ``doc_id`` index (see :meth:`_documents_by_facet`); a version without the index (an
        earlier release's) is scrolled."""
        with self._using("count documents") as shard:
            if "doc_id" in shard.info().payload_schema:
                return self._documents_by_facet(
                    lambda limit, exact: shard.facet(qe.FacetRequest("doc_id", limit=limit, exact=exact)).hits,
                    shard.count(qe.CountRequest(exact=True)),
                )
        return super().documents()

    def last_write(self) -> dt.datetime | None:
        """The time the version pointer was last replaced: every write publishes a version (a restore too)."""
        try:
            return dt.datetime.fromtimestamp(self.pointer.stat().st_mtime, dt.UTC)
        except FileNotFoundError:  # a collection made before versioning (version 0) records no write time
            return None

    def write_in_progress(self) -> dict[str, Any] | bool | None:
        return lock_held(self.root / (self.collection + WRITE_LOCK_SUFFIX))

    def write_lock(self, timeout_s: float | None = None):  # type: ignore[override]
        """``<name>.write.lock``: one writer per collection across processes; others wait, then fail clearly. A
        folder named like the collection that hybrid-rag did not make is refused first (and again under the lock,
        by every write), so that a refused write leaves no lock file beside it."""
        try:
            if not self.pointer.exists() and (self.root / self.collection).is_dir():
                self._refuse_foreign(self.root / self.collection)
            self._versions()
        except PermissionError:  # an index folder this user cannot read: the lock file says so in one line
            pass
        lock = self.root / (self.collection + WRITE_LOCK_SUFFIX)
        return _write_lock(lock, self.collection, self.lock_timeout_s if timeout_s is None else timeout_s)

    def _stage_info(self, version: int) -> dict[str, Any] | None:
        try:
            return json.loads((self.root / version_name(self.collection, version) / STAGE_FILE).read_text())
        except (OSError, ValueError):
            return None

    def _set_stage_info(self, version: int, info: dict[str, Any]) -> None:
        path = self.root / version_name(self.collection, version) / STAGE_FILE
        tmp = path.with_name(STAGE_FILE + ".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)

    def _copy_physical(self, source: int, target: int) -> None:
        src = self.root / version_name(self.collection, source)
        key = str((src / SHARD_DIR).resolve())
        with _registry_lock:
            if key in _open_shards and _open_shards[key][2] is None:  # written in this process: make it durable
                _open_shards[key][0].flush()
        _remove_copy_leftovers(self.root, self.collection)
        check_free_space(self.root, self.collection, src)
        copy_tree(src, self.root / version_name(self.collection, target))

    def seal(self, staged: QdrantStore) -> None:
        """Mark ``staged`` complete; one that points were deleted from is first rewritten from its live points
        (see :meth:`_rewrite_live`), so that no file of it holds a deleted point's text."""
        if isinstance(staged, EdgeStore) and (staged.dir / ERASED_FILE).exists():
            staged._rewrite_live()
        super().seal(staged)

    def _rewrite_live(self) -> None:
        """Replace this version's shard by a new one holding only its live points (vectors and payloads copied).

        The engine only marks a deleted point deleted: its payload stays in the segment's pages and its upsert in
        the WAL, and a copied version (every write copies one) carries them on. A shard written from the live
        points alone holds no trace of the deleted ones. Under the write lock, on a staged version only this
        store has open; an interrupted rewrite leaves the version as it was (and its ``shard.rewrite-*`` folder,
        removed by the next one).
        """
        if self.version is None:
            raise ValueError(f"_rewrite_live() needs a version of {self.collection!r}, not the collection")
        directory = self.root / version_name(self.collection, self.version)
        shard_dir = directory / SHARD_DIR
        schema = self.schema()
        if schema is None:
            raise StoreError(f"{directory}: no collection schema: cannot rewrite it")
        _undo_interrupted_swap(directory)
        for leftover in directory.glob(f"{SHARD_DIR}{REWRITE_MARK}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        self.flush()
        check_free_space(self.root, self.collection, shard_dir)
        fresh = directory / f"{SHARD_DIR}{REWRITE_MARK}{uuid.uuid4().hex[:8]}"
        try:
            target = qe.EdgeShard.create(str(fresh), _edge_config(schema))
            try:
                target.update(DOC_ID_INDEX)
                with self._using("rewrite") as shard:
                    for operation in _index_operations(shard):  # the version's PAYLOAD_INDEXES too
                        target.update(operation)
                    for page in _pages(shard):
                        target.update(
                            qe.UpdateOperation.upsert_points([qe.Point(str(r.id), r.vector, r.payload) for r in page])
                        )
                target.flush()
            finally:
                target.close()
            with self._lock:
                self._close_unlocked()
            with _registry_lock:
                if str(shard_dir.resolve()) in _open_shards:
                    raise StoreError(f"{directory}: cannot rewrite it: another store of this process has it open")
            old = directory / f"{SHARD_DIR}{REWRITE_MARK}{OLD_MARK}{uuid.uuid4().hex[:8]}"
            os.rename(shard_dir, old)
            os.rename(fresh, shard_dir)
            shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        (directory / ERASED_FILE).unlink()
        log.info("rewrote version %d of %r from its live points (points were deleted)", self.version, self.collection)

    def _switch(self, staged: QdrantStore) -> None:
        """Check that ``staged`` opens again (see :func:`_reopen`), then point readers at it."""
        version = staged.version or 0
        try:
            _reopen(self.root / version_name(self.collection, version) / SHARD_DIR)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # the engine's bare Exception, a Rust panic, or StoreError
            current = self.current_version()
            raise StoreError(
                f"not publishing version {version} of {self.collection!r} at {self.root}: the engine cannot open "
                f"it again ({exc}); readers keep version {current}, nothing was deleted. Remove the documents it "
                "cannot store (or free disk space), then write again"
            ) from exc
        tmp = self.pointer.with_name(self.pointer.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump({"version": staged.version, "collection": version_name(self.collection, staged.version)}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.pointer)
        dir_fd = os.open(self.root, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self.refresh()

    def refresh(self) -> bool:
        with self._lock:
            return self._follow()

    @contextmanager
    def reading(self) -> Iterator[bool]:
        """Follow the pointer once, then read that version only in this thread until the block ends (the version
        is kept open meanwhile, even when a writer publishes the next one); re-entrant (an inner block changes
        nothing). Yields whether this store switched to another version."""
        if getattr(self._local, "reading", None) is not None:
            yield False
            return
        with self._lock:
            switched = self._follow()
            path, shard = self._hold_current()
        self._local.reading = path, shard
        try:
            yield switched
        finally:
            self._local.reading = None
            _release(path, shard)

    def _replaced(self) -> bool:
        """Under ``self._lock``: whether this store's version folder was deleted and made again since it opened it
        (the index folder deleted and the collection indexed again: its first version's number is reused)."""
        key = str((self.root / self._bound / SHARD_DIR).resolve())
        with _registry_lock:
            return id(self._shard) in _detached or (key in _open_shards and _replaced(key))

    def _hold_current(self) -> tuple[Path, qe.EdgeShard]:
        """Under ``self._lock``: this store's shard (opened if need be) and its folder, with one more reference."""
        if self._shard is None:
            self._open_current()
        path, shard = self.root / self._bound / SHARD_DIR, self._shard
        with _registry_lock:
            _hold(str(path.resolve()), shard)
        return path, shard

    def _follow(self) -> bool:
        """Under ``self._lock``: move this store's handle to the pointer's version when it changed."""
        if self.version is not None or self._shard is None:
            return False
        try:
            pointed = self._read_pointer()
            lost = None if pointed is not None or self._bound == self.collection else f"{self.pointer} is missing"
        except StoreError as exc:  # an unreadable pointer
            pointed, lost = None, str(exc)
        if lost is not None:  # keep serving the version this store holds; say once why (and how to repair a pointer)
            if self._pointer_warned != lost:
                self._pointer_warned = lost
                held = parse_version(self.collection, self._bound or "")
                if not (self.root / self._bound).is_dir():  # the index folder deleted or moved: nothing to repair
                    log.warning(
                        "collection %r: %s was deleted or moved; still serving what this process has open of it, "
                        "until the collection is indexed there again or the folder is back (then served at the next "
                        "search)",
                        self.collection,
                        self.root / self._bound,
                    )
                elif held and (self._stage_info(held) or {}).get("dropped"):
                    log.warning(
                        "collection %r was dropped: still serving %s, which is deleted when this process lets go of "
                        "it (closing its stack); a collection indexed again under this name is served next",
                        self.collection,
                        self._bound,
                    )
                else:
                    repair = self._restore_hint(held) if held else "index the collection again"
                    log.warning("collection %r: %s; still serving %s: %s", self.collection, lost, self._bound, repair)
            return False
        self._pointer_warned = None
        target = version_name(self.collection, pointed or 0)
        if target == self._bound and not self._replaced():
            return False
        try:
            shard = _acquire(self.root / target / SHARD_DIR)
        except StoreError as exc:  # e.g. the rebuilding process still holds it: keep serving the old version
            log.warning("collection %r moved to %s but it cannot be opened yet: %s", self.collection, target, exc)
            return False
        old, old_shard, self._shard, self._bound = self._bound, self._shard, shard, target
        _release(self.root / old / SHARD_DIR, old_shard)
        log.info("collection %r: switched from %s to %s", self.collection, old, target)
        old_version, new_version = parse_version(self.collection, old), parse_version(self.collection, target)
        if old_version is not None and new_version is not None and old_version < new_version:
            _discard(self.root / old)  # the last process to leave an old version deletes it
        return True

    # -- lifecycle ----------------------------------------------------------------------------------
    def _schema_path(self) -> Path:
        pinned = getattr(self._local, "reading", None)
        return (pinned[0].parent if pinned is not None else self.root / self._target()) / SCHEMA_FILE

    def _schema_record(self) -> dict[str, Any] | None:
        path = self._schema_path()
        if not path.exists():
            if self.version is None:
                self.current_version()  # a lost or damaged pointer: say so, not "does not exist"
            return None
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:  # removed meanwhile (a writer deleted the version)
            return None
        except OSError as exc:
            raise _unreadable(path, exc) from exc
        except ValueError as exc:
            raise StoreError(f"{path}: unreadable collection schema ({exc})") from exc

    def schema(self) -> CollectionSchema | None:
        record = self._schema_record()
        try:
            return None if record is None else CollectionSchema.from_dict(record)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"{self._schema_path()}: unreadable collection schema ({exc})") from exc

    def _record_schema(self, schema: CollectionSchema) -> None:
        path = self.root / self._target() / SCHEMA_FILE
        tmp = path.with_name(SCHEMA_FILE + ".tmp")
        tmp.write_text(schema.to_json())
        tmp.replace(path)

    def _create_physical(self, schema: CollectionSchema) -> None:
        target = self._target()
        directory = self.root / target
        shard_dir = directory / SHARD_DIR
        if shard_dir.exists():  # leftovers of a creation that never wrote its schema
            shutil.rmtree(shard_dir)
        check_free_space(self.root, self.collection, None)
        directory.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._check_open()
            self._close_unlocked()
            self._shard, self._bound = _acquire(shard_dir, _edge_config(schema)), target
        self._shard.update(DOC_ID_INDEX)
        self._record_schema(schema)

    def payload_indexes(self) -> dict[str, str]:
        with self._using("read payload indexes") as shard:
            return _payload_indexes(shard)

    def _create_payload_index(self, key: str, kind: str) -> None:
        with self._using("create payload index", write=True) as shard:
            shard.update(qe.UpdateOperation.create_field_index(f"metadata.{key}", _INDEX_SCHEMAS[kind]))

    @contextmanager
    def _using(self, operation: str, write: bool = False) -> Iterator[qe.EdgeShard]:
        """The current shard, referenced for the duration of one operation; engine errors become StoreError.

        ``write``: refused on a version another process holds (this one has a read-only view of it, whose large
        files are shared with that version): write into a staged version instead (``stage``, as the indexer does).
        """
        with self._lock:
            pinned = None if write else getattr(self._local, "reading", None)  # a read inside reading()
            if pinned is None:
                self._follow()
            path, shard = self._hold_current() if pinned is None else pinned
            if pinned is not None:
                with _registry_lock:
                    _hold(str(path.resolve()), shard)
        if write:
            with _registry_lock:
                entry = _detached.get(id(shard)) or _open_shards[str(path.resolve())]
                viewed = entry[2] is not None
            if viewed:
                _release(path, shard)
                raise StoreError(
                    f"embedded Qdrant at {path.parent}: {operation} refused: another process has this version open; "
                    "write through Indexer (index, delete_documents), which writes a staged copy and publishes it"
                )
        try:
            yield shard
        except (StoreError, ValueError, TypeError, KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # the engine raises a bare Exception (or a Rust panic) with its own text
            if not isinstance(exc, Exception):  # a panic: the engine found its files inconsistent
                raise StoreError(f"{operation} failed: " + _explain_open_error(path, exc)) from exc
            disk = _disk_problem(str(exc))
            hint = f" ({disk}: free disk space, then run it again)" if disk else ""
            raise StoreError(f"embedded Qdrant at {path.parent}: {operation} failed{hint}: {exc}") from exc
        finally:
            _release(path, shard)

    def _open_current(self) -> None:
        """Under ``self._lock``: open the version the pointer names (again, if a writer moved it meanwhile); first
        delete the dropped versions of the collection no process holds (their last holder was killed)."""
        self._check_open()
        if self.version is None:
            with suppress(OSError):  # a folder this user cannot list: opening it below says so
                for path in self._version_dirs().values():
                    discard_dropped(path)
        for attempt in range(3):
            target = self._target()
            try:
                exists = (self.root / target / SCHEMA_FILE).exists()
            except OSError as exc:  # a folder this user cannot read: not "does not exist"
                raise _unreadable(self.root / target / SCHEMA_FILE, exc) from None
            if not exists:
                if attempt < 2 and self.version is None and self._target() != target:
                    continue
                if self.version is None:
                    self.current_version()  # a lost or damaged pointer: say so, not "does not exist"
                raise StoreError(self.missing_message((self.root / target).absolute()))
            if self.version is not None:  # a staged version (the pointer's is never rewritten)
                _undo_interrupted_swap(self.root / target)
            try:
                self._shard, self._bound = _acquire(self.root / target / SHARD_DIR), target
                log.info("collection %r: opened %s", self.collection, target)
                return
            except StoreError:
                if attempt == 2 or self.version is not None or self._target() == target:
                    raise

    def _close_unlocked(self) -> None:
        if self._shard is not None:
            bound, shard, self._shard, self._bound = self._bound, self._shard, None, None
            _release(self.root / bound / SHARD_DIR, shard)

    def close(self) -> None:
        """Let go of this store's version (final: see the class docstring); closing twice is harmless."""
        with self._lock:
            self._closed = True
            self._close_unlocked()

    def drop(self) -> list[str]:
        """Delete the collection for good (see :meth:`QdrantStore.drop`; returns the versions dropped), under the
        write lock; a version another process still has open is deleted when it lets go of it (:func:`_discard`)."""
        if self.version is None:
            if not self.exists():  # nothing to drop: no lock file made for it either
                return []
            with self.write_lock():
                return self._drop()
        return self._drop()

    def _drop(self) -> list[str]:
        with self._lock:
            self._close_unlocked()
        versions = [self.version] if self.version is not None else self._versions()  # refuses foreign folders
        dropped = [version_name(self.collection, v) for v in versions]
        for v in versions:  # one a reader still holds is kept a while: not an intact version that lost its pointer
            if (self.root / version_name(self.collection, v)).is_dir():
                with suppress(FileNotFoundError):  # deleted meanwhile by a reader of this process that left it
                    self._set_stage_info(v, {**(self._stage_info(v) or {}), "dropped": True})
        if self.version is None:
            self.pointer.unlink(missing_ok=True)
            self.pointer.with_name(self.pointer.name + ".tmp").unlink(missing_ok=True)
            _remove_copy_leftovers(self.root, self.collection)
        for v in versions:
            _discard(self.root / version_name(self.collection, v))
        return dropped

    # -- writes -------------------------------------------------------------------------------------
    def upsert_points(self, points: Sequence[StoredPoint]) -> None:
        """:meth:`QdrantStore.upsert_points` into this process's shard; a :class:`StoreError` when another process
        has this version open (write a staged version) or the engine fails (a full disk says so)."""
        records = [
            qe.Point(
                p.id, {DENSE: p.dense.tolist(), SPARSE: qe.SparseVector(p.sparse.indices, p.sparse.values)}, p.payload
            )
            for p in points
        ]
        with self._using("upsert", write=True) as shard:
            shard.update(qe.UpdateOperation.upsert_points(records))

    def all_points(self) -> Iterator[list[StoredPoint]]:
        with self._using("scroll") as shard:  # one version for every page
            for page in _pages(shard):
                yield [StoredPoint(_hit(r).id, *_vectors(r.vector), r.payload or {}) for r in page]

    def delete_ids(self, ids: Sequence[str]) -> None:
        """:meth:`QdrantStore.delete_ids`; the version is marked as having erased points, so that sealing it
        rewrites its files without the deleted text (Operations, "Erasure")."""
        not_one_string(ids, "delete_ids", "point ids")
        if ids:
            with self._using("delete", write=True) as shard:
                self._mark_erased()
                shard.update(qe.UpdateOperation.delete_points(list(ids)))

    def delete_documents(self, doc_ids: Sequence[str]) -> None:
        not_one_string(doc_ids, "delete_documents", "document ids")
        if doc_ids:
            flt = qe.Filter(must=[_doc_ids_condition(doc_ids)])
            with self._using("delete", write=True) as shard:
                self._mark_erased()
                shard.update(qe.UpdateOperation.delete_points_by_filter(flt))

    def will_overwrite_text(self) -> None:
        with self._using("overwrite", write=True):
            self._mark_erased()

    def _mark_erased(self) -> None:
        """Record that points are deleted from this version (before deleting them, so that a write that fails
        after the delete and is resumed still rewrites it): sealing it rewrites it from its live points."""
        (self.root / (self._bound or self._target()) / ERASED_FILE).touch()

    def flush(self) -> None:
        with self._lock:
            if self._shard is None:  # not open in this process: nothing of ours to flush
                return
        with self._using("flush") as shard:
            shard.flush()

    # -- reads --------------------------------------------------------------------------------------
    def stored_chunks(self, doc_ids: Collection[str] | None = None) -> dict[str, StoredChunk]:
        out: dict[str, StoredChunk] = {}
        with self._using("scroll") as shard:  # one version for every page
            for batch in doc_id_batches(doc_ids):
                flt = None if batch is None else qe.Filter(must=[_doc_ids_condition(batch)])
                out.update(
                    stored_chunks_from(
                        lambda offset, flt=flt: shard.scroll(
                            qe.ScrollRequest(
                                offset=offset,
                                limit=SCROLL_PAGE,
                                filter=flt,
                                with_payload=HASH_FIELDS,
                                with_vector=False,
                            )
                        ),
                        f"collection {self.collection!r} at {self.root}",
                    )
                )
        return out

    def stored_owners(self) -> Iterator[tuple[str, str]]:
        with self._using("scroll") as shard:  # one version for every page
            yield from stored_owners_from(
                lambda offset: shard.scroll(
                    qe.ScrollRequest(offset=offset, limit=SCROLL_PAGE, with_payload=["doc_id"], with_vector=False)
                ),
                f"collection {self.collection!r} at {self.root}",
            )

    # A filter is built inside the operation: it checks the payload indexes of the version it reads (the engine's
    # schema, read in-process per request, in microseconds: no cache to go stale when a write adds an index).
    def count(self, filter: dict[str, Any] | None = None) -> int:
        """:meth:`QdrantStore.count`, exact, in this process's shard."""
        with self._using("count") as shard:
            flt = _edge_filter(filter, _payload_indexes(shard) if filter else {})
            return shard.count(qe.CountRequest(exact=True, filter=flt))

    def _query_batch(self, plans: Sequence[QueryPlan]) -> list[list[StoredHit]]:
        with self._using("query_batch") as shard:
            indexes = _payload_indexes(shard) if any(p.filter for p in plans) else {}
            results = shard.query_batch(qe.QueryBatchRequest([_edge_request(p, indexes) for p in plans]))
        return [[_hit(p) for p in points] for points in results]

    def points(self, ids: Sequence[str], with_dense_vectors: bool = False) -> dict[str, StoredHit]:
        not_one_string(ids, "points", "point ids")
        if not ids:
            return {}
        with self._using("retrieve") as shard:
            records = shard.retrieve(list(ids), with_payload=True, with_vector=[DENSE] if with_dense_vectors else False)
        return {h.id: h for h in map(_hit, records)}

    def dense_vectors(self, ids: Sequence[str]) -> dict[str, np.ndarray]:
        """:meth:`QdrantStore.dense_vectors`, one retrieve from this process's shard."""
        not_one_string(ids, "dense_vectors", "point ids")
        with self._using("retrieve") as shard:
            records = shard.retrieve(list(ids), with_payload=False, with_vector=[DENSE])
        return {str(r.id): np.asarray(r.vector[DENSE], dtype=np.float32) for r in records}

    def stored_vectors(self, ids: Sequence[str]) -> dict[str, tuple[np.ndarray, SparseVec]]:
        not_one_string(ids, "stored_vectors", "point ids")
        if not ids:
            return {}
        with self._using("retrieve") as shard:
            records = shard.retrieve(list(ids), with_payload=False, with_vector=[DENSE, SPARSE])
        return {_hit(r).id: _vectors(r.vector) for r in records}


def _vectors(vector: dict[str, Any]) -> tuple[np.ndarray, SparseVec]:
    sparse = vector[SPARSE]
    return np.asarray(vector[DENSE], dtype=np.float32), SparseVec(list(sparse.indices), list(sparse.values))


DOC_ID_INDEX = qe.UpdateOperation.create_field_index("doc_id", qe.PayloadSchemaType.Keyword)
_INDEX_SCHEMAS: dict[str, Any] = {  # PAYLOAD_INDEXES types as the engine takes them
    "keyword": qe.PayloadSchemaType.Keyword,
    "tenant": qe.KeywordIndexParams(is_tenant=True),
    "integer": qe.PayloadSchemaType.Integer,
    "float": qe.PayloadSchemaType.Float,
    "datetime": qe.PayloadSchemaType.Datetime,
    "bool": qe.PayloadSchemaType.Bool,
}
_INDEX_TYPES = {
    qe.PayloadSchemaType.Keyword: "keyword",
    qe.PayloadSchemaType.Integer: "integer",
    qe.PayloadSchemaType.Float: "float",
    qe.PayloadSchemaType.Datetime: "datetime",
    qe.PayloadSchemaType.Bool: "bool",
}


def _index_kind(info: Any) -> str:
    """A payload index of the engine as ``PAYLOAD_INDEXES`` names its type (another type by its own name)."""
    if getattr(info.params, "is_tenant", None):
        return "tenant"
    return _INDEX_TYPES.get(info.data_type, str(info.data_type).rpartition(".")[2].lower())


def _payload_indexes(shard: qe.EdgeShard) -> dict[str, str]:
    """The metadata keys ``shard`` indexes, key -> type (see :meth:`QdrantStore.payload_indexes`)."""
    return {
        path.removeprefix("metadata."): _index_kind(info)
        for path, info in shard.info().payload_schema.items()
        if path.startswith("metadata.")
    }


def _index_operations(shard: qe.EdgeShard) -> list[qe.UpdateOperation]:
    """The operations that give a new shard the payload indexes of ``shard`` (``doc_id``'s included)."""
    return [
        qe.UpdateOperation.create_field_index(path, info.params or info.data_type)
        for path, info in shard.info().payload_schema.items()
    ]


def _edge_config(schema: CollectionSchema) -> qe.EdgeConfig:
    """The engine's configuration of a shard holding a collection of ``schema``."""
    return qe.EdgeConfig(
        vectors={DENSE: qe.EdgeVectorParams(size=schema.dense_dim, distance=qe.Distance.Cosine)},
        sparse_vectors={SPARSE: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf if schema.sparse_idf else None)},
    )


def _pages(shard: qe.EdgeShard) -> Iterator[Sequence[Any]]:
    """Every point of ``shard`` with its vectors and payload, a page (:data:`SCROLL_PAGE` points) at a time."""
    return scrolled_pages(
        lambda offset: shard.scroll(
            qe.ScrollRequest(offset=offset, limit=SCROLL_PAGE, with_payload=True, with_vector=True)
        )
    )


def _edge_filter(spec: dict[str, Any] | None, indexes: dict[str, str]) -> qe.Filter | None:
    """The engine's filter of ``spec`` on a version with payload ``indexes`` (see :func:`filter_conditions`)."""
    groups = [[_edge_condition(*test) for test in group] for group in filter_conditions(spec, indexes)]
    conditions = [group[0] if len(group) == 1 else qe.Filter(should=group) for group in groups]
    return qe.Filter(must=conditions) if conditions else None


def _edge_condition(key: str, kind: str, value: Any) -> Any:
    if kind == "range":
        return qe.FieldCondition(key=key, range=qe.RangeFloat(**value))
    if kind == "datetime":
        return qe.FieldCondition(key=key, range=qe.RangeDateTime(**value))
    if kind == "any":
        return qe.FieldCondition(key=key, match=qe.MatchAny(value))
    if kind == "empty":
        return qe.IsEmptyCondition(key)
    if kind == "bool":  # the binding reads a Python bool as an integer; numpy's bool_ reaches it as a bool
        return qe.FieldCondition(key=key, match=qe.MatchValue(np.bool_(value)))
    return qe.FieldCondition(key=key, match=qe.MatchValue(value))


def _edge_request(plan: QueryPlan, indexes: dict[str, str]) -> qe.QueryRequest:
    flt = _edge_filter(plan.filter, indexes)
    with_vector = plan.vector_selector()
    channels = [
        qe.Query.Nearest(v.tolist() if name == DENSE else qe.SparseVector(v.indices, v.values), using=name)
        for name, v in plan.channels()
    ]
    if len(channels) == 1:
        return qe.QueryRequest(
            limit=plan.limit,
            query=channels[0],
            filter=flt,
            with_payload=plan.payload_selector(),
            with_vector=with_vector,
        )
    fusion = (
        qe.Fusion.Rrf(k=plan.rrf_k, weights=list(plan.weights) if plan.weights else None)
        if plan.fusion is FusionMethod.RRF
        else qe.Fusion.Dbsf()
    )
    return qe.QueryRequest(
        limit=plan.limit,
        prefetches=[qe.Prefetch(limit=plan.prefetch_k, query=q, filter=flt) for q in channels],
        query=fusion,
        filter=flt,
        with_payload=plan.payload_selector(),
        with_vector=with_vector,
    )


def _hit(point) -> StoredHit:
    vector = point.vector[DENSE] if point.vector and DENSE in point.vector else None
    pid = point.id
    return StoredHit.from_point(point, str(pid) if isinstance(pid, uuid.UUID) else str(uuid.UUID(str(pid))), vector)


def _doc_ids_condition(doc_ids: Sequence[str]) -> qe.FieldCondition:
    return qe.FieldCondition(key="doc_id", match=qe.MatchAny(list(doc_ids)))
