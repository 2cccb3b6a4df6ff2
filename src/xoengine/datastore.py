"""LMDB environments: the only module that imports ``lmdb``.

Room: floor. May import ``errors`` only.

py-lmdb refuses to open one path twice in a process, so every opener goes
through :func:`open_store`, a process-wide registry that hands out counted
references to one :class:`Store` per real path. The store hides the rest of
LMDB's traps (FACTS.md):

- the map grows on demand: ``MapFullError`` can come from ``put`` *or* from
  commit, so a write is a re-runnable function; the store aborts, grows the map
  with no transaction open in this process, and runs the function again;
- a reader that meets ``MapResizedError`` (another process grew the map)
  adopts the new size and retries;
- one writer *process* per path, enforced with ``flock`` on ``writer.lock``,
  so that a second writer gets :class:`~xoengine.errors.JournalLockedError`
  instead of two processes resizing one map;
- never ``writemap`` (a full disk would kill the process with SIGBUS);
- stale reader slots of dead processes are cleared on open (``reader_check``).
"""

from __future__ import annotations

import contextlib
import enum
import errno
import fcntl
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lmdb

from xoengine.errors import (
    ConfigurationError,
    DiskFullError,
    JournalLockedError,
    JournalMissingError,
    JournalReadOnlyError,
    StorageError,
    XoError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "DEFAULT_MAP_SIZE",
    "Durability",
    "ReadTxn",
    "Store",
    "StoreInfo",
    "WriteTxn",
    "open_store",
]

T = TypeVar("T")

DEFAULT_MAP_SIZE = 64 * 1024 * 1024
"""Initial map size for a new journal (bytes); it doubles whenever it fills."""

_MAX_DBS = 512
_LOCK_FILE = "writer.lock"


class Durability(enum.Enum):
    """What an acknowledged write survives.

    ========== ============ ============= ===========================================
    mode       kill -9      OS crash      LMDB flags
    ========== ============ ============= ===========================================
    sync       survives     survives      sync=True, metasync=True (two fdatasyncs)
    metasync-off survives   may lose the  sync=True, metasync=False
                            last commit
    nosync     survives     may corrupt   sync=False (tests and benchmarks only)
    ========== ============ ============= ===========================================

    kill -9 cannot tell the modes apart: the OS page cache outlives the process.
    """

    SYNC = "sync"
    METASYNC_OFF = "metasync-off"
    NOSYNC = "nosync"

    @classmethod
    def parse(cls, value: str | Durability | None) -> Durability:
        """Return the mode named by ``value`` (default ``sync``)."""
        if value is None or value == "":
            return cls.SYNC
        if isinstance(value, Durability):
            return value
        try:
            return cls(value.strip().lower())
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise ConfigurationError(detail=f"durability {value!r} is not one of {names}") from None


@dataclass(frozen=True)
class StoreInfo:
    """Figures about one store, for ``statistics()`` and the CLI."""

    path: str
    map_size: int
    used_bytes: int
    last_txnid: int
    readers: int
    durability: str
    readonly: bool


def _translate(exc: lmdb.Error, path: str) -> StorageError:
    """Map a py-lmdb error onto the coded tree (the one choke point)."""
    text = str(exc)
    if isinstance(exc, lmdb.ReadonlyError):
        return JournalReadOnlyError(path=path, detail=text)
    if "No space left" in text or getattr(exc, "errno", None) == errno.ENOSPC:
        return DiskFullError(path=path)
    if isinstance(exc, (lmdb.NotFoundError,)) and "No such file" in text:
        return JournalMissingError(path=path)
    return StorageError(detail=f"{type(exc).__name__}: {text} ({path})")


class _RWLock:
    """Many readers or one resizer: ``set_mapsize`` needs no transaction open."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._readers:
                self._cond.wait()
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class _WriteRequest:
    """One caller's write function waiting for (or done in) a group commit."""

    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[WriteTxn], Any]) -> None:
        self.work = work
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False


class ReadTxn:
    """A read view of the store at one committed transaction.

    Values are copied out as ``bytes``; nothing here outlives the transaction.
    """

    def __init__(self, store: Store, txn: Any, seq: int) -> None:
        self._store = store
        self._txn = txn
        # Handles opened at or after this sequence number are invalid in this txn.
        self._seq = seq

    def _dbi(self, db: str) -> Any:
        entry = self._store._handle(db)
        if entry is None:
            return None
        handle, seq = entry
        if seq >= self._seq:
            # The table was opened after this read began (another process created
            # it): renew the snapshot so that LMDB knows the handle.
            self._txn.reset()
            self._txn.renew()
            self._seq = self._store._dbi_seq
        return handle

    def get(self, db: str, key: bytes) -> bytes | None:
        """Return the value under ``key`` in sub-database ``db``, or None."""
        handle = self._dbi(db)
        if handle is None:
            return None
        value: bytes | None = self._txn.get(key, db=handle)
        return value

    def last(self, db: str) -> tuple[bytes, bytes] | None:
        """Return the last (highest-key) item of ``db``, or None if it is empty."""
        handle = self._dbi(db)
        if handle is None:
            return None
        cursor = self._txn.cursor(db=handle)
        if not cursor.last():
            return None
        return cursor.key(), cursor.value()

    def items(
        self,
        db: str,
        start: bytes | None = None,
        *,
        reverse: bool = False,
        prefix: bytes | None = None,
    ) -> Iterator[tuple[bytes, bytes]]:
        """Iterate ``(key, value)`` from ``start`` (inclusive) in key order.

        With ``reverse`` the walk goes down from the last key <= ``start``.
        With ``prefix`` it stops at the first key without that prefix.
        """
        handle = self._dbi(db)
        if handle is None:
            return
        cursor = self._txn.cursor(db=handle)
        if reverse:
            if start is None:
                positioned = cursor.last()
            else:
                positioned = cursor.set_range(start)
                if positioned and cursor.key() != start:
                    positioned = cursor.prev()
                elif not positioned:
                    positioned = cursor.last()
            it = cursor.iterprev(keys=True, values=True) if positioned else iter(())
        else:
            positioned = cursor.first() if start is None else cursor.set_range(start)
            it = cursor.iternext(keys=True, values=True) if positioned else iter(())
        for key, value in it:
            if prefix is not None and not key.startswith(prefix):
                return
            yield key, value

    def tables(self) -> list[str]:
        """Names of every sub-database in the store."""
        cursor = self._txn.cursor()
        return [
            bytes(k).decode("utf-8", "replace") for k in cursor.iternext(keys=True, values=False)
        ]

    def count(self, db: str) -> int:
        """Number of entries in ``db``."""
        handle = self._dbi(db)
        if handle is None:
            return 0
        return int(self._txn.stat(handle)["entries"])


class WriteTxn(ReadTxn):
    """The write transaction handed to a function given to :meth:`Store.write`."""

    def _dbi(self, db: str) -> Any:
        entry = self._store._handle(db)
        if entry is None or entry[1] >= self._seq:
            raise StorageError(detail=f"table {db!r} used in a write before Store.ensure()")
        return entry[0]

    def put(self, db: str, key: bytes, value: bytes, *, overwrite: bool = True) -> bool:
        """Store ``value``; with ``overwrite=False`` return False if ``key`` exists."""
        handle = self._dbi(db)
        return bool(self._txn.put(key, value, db=handle, overwrite=overwrite))

    def append(self, db: str, key: bytes, value: bytes) -> None:
        """Store at a key above every existing key (fast path); raise if it is not."""
        handle = self._dbi(db)
        if not self._txn.put(key, value, db=handle, append=True):
            # py-lmdb returns False instead of raising on an out-of-order key.
            raise StorageError(detail=f"append out of order in {db!r} at key {key.hex()}")

    def delete(self, db: str, key: bytes) -> bool:
        """Delete ``key``; return whether it existed."""
        handle = self._dbi(db)
        return bool(self._txn.delete(key, db=handle))

    def drop(self, db: str) -> None:
        """Empty sub-database ``db`` (it stays defined)."""
        handle = self._dbi(db)
        self._txn.drop(handle, delete=False)


class Store:
    """One LMDB environment on disk, shared by every opener in this process.

    Get one from :func:`open_store`; call :meth:`close` once per open. Reads run
    in :meth:`read`; writes are functions passed to :meth:`write`, which may run
    them more than once (after growing the map), so they must not have effects
    outside the transaction until it returns.
    """

    def __init__(
        self,
        path: str,
        *,
        map_size: int,
        durability: Durability,
        readonly: bool,
    ) -> None:
        self.path = path
        self.durability = durability
        self.readonly = readonly
        self._refs = 0
        self._resize = _RWLock()
        self._write_lock = threading.Lock()
        self._pending_lock = threading.Lock()
        self._pending: list[_WriteRequest] = []
        self._handles: dict[str, tuple[Any, int]] = {}
        self._dbi_seq = 0
        self._handles_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._listeners: dict[threading.Event, Callable[[], None] | None] = {}
        self._listen_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._watcher_stop = threading.Event()
        self.poll_interval = 0.05
        self._closed = False
        self._env = self._open_env(map_size)
        self._open_existing()

    # -- lifecycle ---------------------------------------------------------------

    def _open_env(self, map_size: int) -> Any:
        kwargs: dict[str, Any] = {
            "subdir": True,
            "max_dbs": _MAX_DBS,
            "max_readers": 1024,
            "writemap": False,  # a full disk would be SIGBUS (FACTS.md)
            "map_async": False,
        }
        if self.readonly:
            if not (Path(self.path) / "data.mdb").exists():
                raise JournalMissingError(path=self.path)
            writable_dir = os.access(self.path, os.W_OK)
            try:
                return lmdb.open(
                    self.path, readonly=True, lock=writable_dir, create=False, **kwargs
                )
            except lmdb.Error as e:
                raise _translate(e, self.path) from e
        try:
            Path(self.path).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(detail=f"cannot create {self.path}: {e.strerror}") from e
        existing = (Path(self.path) / "data.mdb").exists()
        if existing:
            # Keep the size the file already has when it is larger than asked.
            map_size = max(map_size, (Path(self.path) / "data.mdb").stat().st_size)
        try:
            env = lmdb.open(
                self.path,
                map_size=map_size,
                sync=self.durability is not Durability.NOSYNC,
                metasync=self.durability is Durability.SYNC,
                **kwargs,
            )
        except lmdb.Error as e:
            raise _translate(e, self.path) from e
        with contextlib.suppress(lmdb.Error):
            env.reader_check()
        return env

    def close(self) -> None:
        """Drop one reference; the environment closes with the last one."""
        _release(self)

    def _really_close(self) -> None:
        if self._closed:
            return
        # Listeners' threads (subscriptions) stop and join before the env closes.
        with self._listen_lock:
            closers = [c for c in self._listeners.values() if c is not None]
        for closer in closers:
            closer()
        with self._listen_lock:
            watcher, self._watcher = self._watcher, None
            self._watcher_stop.set()
            self._listeners.clear()
        if watcher is not None:
            watcher.join()
        self._closed = True
        with self._resize.exclusive():
            self._env.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def closed(self) -> bool:
        """Whether the environment has been closed."""
        return self._closed

    # -- sub-databases -----------------------------------------------------------

    def _handle(self, name: str) -> tuple[Any, int] | None:
        """The handle of table ``name`` and its open sequence number, or None if absent.

        LMDB allows one transaction at a time to open handles, and a handle is
        valid only in transactions begun after it was opened; so handles are
        opened here, under a lock, each in its own short transaction.
        """
        entry = self._handles.get(name)
        if entry is not None:
            return entry
        with self._handles_lock:
            entry = self._handles.get(name)
            if entry is not None:
                return entry
            try:
                # Without a txn py-lmdb opens it in a transaction of its own that it
                # commits (a read-only commit that keeps the handle, unlike reset).
                handle = self._env.open_db(name.encode(), create=False)
            except lmdb.NotFoundError:
                return None
            return self._remember(name, handle)

    def _remember(self, name: str, handle: Any) -> tuple[Any, int]:
        entry = (handle, self._dbi_seq)
        self._dbi_seq += 1
        self._handles[name] = entry
        return entry

    def _open_existing(self) -> None:
        with self._env.begin(write=False) as txn:
            names = [bytes(k).decode() for k in txn.cursor().iternext(keys=True, values=False)]
        for name in names:
            with contextlib.suppress(lmdb.Error):  # a key of the main db that is no table
                self._handle(name)

    def ensure(self, *names: str) -> None:
        """Create the named tables if they do not exist yet (before writing to them)."""
        if self.readonly or all(n in self._handles for n in names):
            return
        self._check_open()
        with self._write_lock, self._handles_lock, self._resize.shared():
            self._take_writer_lock()
            try:
                with self._env.begin(write=True) as txn:
                    opened = [
                        (n, self._env.open_db(n.encode(), txn=txn, create=True))
                        for n in names
                        if n not in self._handles
                    ]
            except lmdb.Error as e:
                raise _translate(e, self.path) from e
            for name, handle in opened:
                self._remember(name, handle)

    # -- transactions ------------------------------------------------------------

    @contextlib.contextmanager
    def read(self) -> Iterator[ReadTxn]:
        """A consistent read view (a snapshot of the last commit)."""
        self._check_open()
        with self._resize.shared():
            seq = self._dbi_seq
            txn = self._begin_read()
            try:
                yield ReadTxn(self, txn, seq)
            except lmdb.Error as e:
                raise _translate(e, self.path) from e
            finally:
                txn.abort()

    def _begin_read(self) -> Any:
        for _ in range(3):
            try:
                return self._env.begin(write=False, buffers=False)
            except lmdb.MapResizedError:
                # Another process grew the map; adopt its size (no txn of ours is open
                # on this thread, and set_mapsize(0) only re-reads the size).
                self._env.set_mapsize(0)
            except lmdb.Error as e:
                raise _translate(e, self.path) from e
        raise StorageError(detail=f"map kept being resized under {self.path}")

    def write(self, work: Callable[[WriteTxn], T]) -> T:
        """Run ``work`` in a write transaction and commit it durably; return its result.

        Group commit: while one thread commits, others queue their work; the next
        committer runs every queued function in one transaction (each in its own
        nested transaction, so one that raises is rolled back alone and its
        exception goes back to its caller) and pays one fsync for all of them.

        ``work`` may run more than once: if the map fills (in ``put`` or at
        commit) the transaction is aborted, the map doubled, and the batch run
        again from the start. It must not have effects outside the transaction.
        """
        self._check_open()
        if self.readonly:
            raise JournalReadOnlyError(path=self.path, detail="write refused")
        request = _WriteRequest(work)
        with self._pending_lock:
            self._pending.append(request)
        with self._write_lock:
            if not request.done:
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit_batch(batch)
                self._notify()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[no-any-return]

    def _commit_batch(self, batch: list[_WriteRequest]) -> None:
        try:
            self._take_writer_lock()
            while True:
                try:
                    with self._resize.shared():
                        self._run_batch(batch)
                except lmdb.MapFullError:
                    self._grow()
                    continue
                except lmdb.MapResizedError:
                    with self._resize.exclusive():
                        self._env.set_mapsize(0)
                    continue
                break
        except lmdb.Error as e:
            error: BaseException = _translate(e, self.path)
            error.__cause__ = e
            for request in batch:
                request.error = error
        except XoError as e:
            for request in batch:
                request.error = e
        finally:
            for request in batch:
                request.done = True

    def _run_batch(self, batch: list[_WriteRequest]) -> None:
        seq = self._dbi_seq
        txn = self._env.begin(write=True)
        try:
            for request in batch:
                request.error = None
                self._run_one(request, txn, seq, nested=len(batch) > 1)
            if len(batch) == 1 and batch[0].error is not None:
                txn.abort()
                return
            txn.commit()
        except BaseException:
            with contextlib.suppress(lmdb.Error):
                txn.abort()  # LMDB has aborted a failed commit already
            raise

    def _run_one(self, request: _WriteRequest, txn: Any, seq: int, *, nested: bool) -> None:
        inner = self._env.begin(write=True, parent=txn) if nested else txn
        wtxn = WriteTxn(self, inner, seq)
        try:
            request.result = request.work(wtxn)
        except lmdb.Error:
            raise
        except Exception as e:  # noqa: BLE001 (the caller's own error goes back to it)
            request.error = e
            if nested:
                inner.abort()
            return
        if nested:
            inner.commit()

    def _grow(self) -> None:
        with self._resize.exclusive():
            current = int(self._env.info()["map_size"])
            self._env.set_mapsize(current * 2)

    def _take_writer_lock(self) -> None:
        if self._lock_fd is not None:
            return
        lock_path = str(Path(self.path) / _LOCK_FILE)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                pid_text = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            finally:
                os.close(fd)
            raise JournalLockedError(path=self.path, pid=pid_text) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(detail=f"store {self.path} is closed")

    # -- change notification -----------------------------------------------------

    def listen(self, event: threading.Event, *, on_close: Callable[[], None] | None = None) -> None:
        """Set ``event`` after every commit, this process's or another's.

        Commits made here set it at once; another process's commits are seen by
        a watcher thread that polls LMDB's last transaction id every
        :attr:`poll_interval` seconds while anyone listens. ``on_close`` runs
        (to stop and join the listener's threads) before the environment closes.
        """
        with self._listen_lock:
            self._listeners[event] = on_close
            if self._watcher is None and not self._closed:
                self._watcher_stop.clear()
                self._watcher = threading.Thread(
                    target=self._watch, name=f"xoengine-watch:{self.path}", daemon=True
                )
                self._watcher.start()

    def unlisten(self, event: threading.Event) -> None:
        """Stop setting ``event``; the watcher thread ends with the last listener."""
        with self._listen_lock:
            self._listeners.pop(event, None)
            watcher = self._watcher if not self._listeners else None
            if watcher is not None:
                self._watcher = None
                self._watcher_stop.set()
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join()

    def _notify(self) -> None:
        with self._listen_lock:
            events = list(self._listeners)
        for event in events:
            event.set()

    def _watch(self) -> None:
        seen = -1
        while not self._watcher_stop.wait(self.poll_interval):
            try:
                with self._resize.shared():
                    if self._closed:
                        return
                    current = int(self._env.info()["last_txnid"])
            except lmdb.Error:
                continue
            if current != seen:
                seen = current
                self._notify()

    def last_txnid(self) -> int:
        """Id of the last committed transaction by any process (to see others' commits)."""
        self._check_open()
        return int(self._env.info()["last_txnid"])

    def info(self) -> StoreInfo:
        """Size, use and reader figures."""
        self._check_open()
        info = self._env.info()
        stat = self._env.stat()
        used = (int(info["last_pgno"]) + 1) * int(stat["psize"])
        return StoreInfo(
            path=self.path,
            map_size=int(info["map_size"]),
            used_bytes=used,
            last_txnid=int(info["last_txnid"]),
            readers=int(info["num_readers"]),
            durability=self.durability.value,
            readonly=self.readonly,
        )

    def copy_to(self, destination: str, *, compact: bool = True) -> None:
        """Write a consistent copy of the environment into ``destination`` (hot copy)."""
        self._check_open()
        Path(destination).mkdir(parents=True, exist_ok=True)
        if (Path(destination) / "data.mdb").exists():
            raise ConfigurationError(detail=f"{destination} already holds a journal")
        with self._resize.shared():
            try:
                self._env.copy(destination, compact=compact)
            except lmdb.Error as e:
                raise _translate(e, destination) from e


# -- the process-wide registry -----------------------------------------------------

_registry: dict[str, Store] = {}
_registry_lock = threading.Lock()
_registry_pid = os.getpid()


def open_store(
    path: str | os.PathLike[str],
    *,
    map_size: int | None = None,
    durability: Durability | str | None = None,
    readonly: bool = False,
) -> Store:
    """Return the process's :class:`Store` for ``path``, opening it if needed.

    Each call takes one reference; pair it with :meth:`Store.close`. A path that
    is already open writable serves read-only openers too. Asking for another
    durability than the open one is a :class:`~xoengine.errors.ConfigurationError`.
    """
    global _registry_pid  # noqa: PLW0603
    real = os.path.realpath(os.fspath(path))
    mode = Durability.parse(durability)
    with _registry_lock:
        if os.getpid() != _registry_pid:
            # After fork the parent's environments must not be used (FACTS.md).
            _registry.clear()
            _registry_pid = os.getpid()
        store = _registry.get(real)
        if store is not None and not store.closed:
            if store.readonly and not readonly:
                raise ConfigurationError(
                    detail=f"{real} is open read-only in this process; close it first"
                )
            if not readonly and durability is not None and store.durability is not mode:
                raise ConfigurationError(
                    detail=f"{real} is open with durability {store.durability.value}, "
                    f"not {mode.value}"
                )
        else:
            store = Store(
                real,
                map_size=map_size or DEFAULT_MAP_SIZE,
                durability=mode,
                readonly=readonly,
            )
            _registry[real] = store
        store._refs += 1
        return store


def _release(store: Store) -> None:
    with _registry_lock:
        if store._refs <= 0:
            return
        store._refs -= 1
        if store._refs:
            return
        if _registry.get(store.path) is store:
            del _registry[store.path]
    store._really_close()
