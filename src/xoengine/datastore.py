"""LMDB environments: the only module that imports ``lmdb``.

Room: floor. May import ``errors``, ``metapage`` and ``transaction`` only.

py-lmdb refuses to open one path twice in a process, so every opener goes
through :func:`open_store`, a process-wide registry that hands out counted
references to one :class:`Store` per real path. The store hides the rest of
LMDB's traps (FACTS.md):

- the map grows on demand: ``MapFullError`` can come from ``put`` *or* from
  commit, so a write is a re-runnable function; the store aborts, grows the map
  with no transaction open in this process, and runs the function again; a read
  of this process left open and idle fails the write with a coded error
  naming its thread after :data:`GROW_PATIENCE` seconds (at once if that
  thread waits for the write), instead of blocking it for ever;
- a reader that meets ``MapResizedError`` (another process grew the map)
  adopts the new size and retries;
- one writer *process* per path, enforced with ``flock`` on ``writer.lock``,
  so that a second writer gets :class:`~xoengine.errors.JournalLockedError`
  instead of two processes resizing one map;
- never ``writemap`` (a full disk would kill the process with SIGBUS);
- stale reader slots of dead processes are cleared on open and before each
  write transaction (``reader_check``): a killed reader pins no snapshot;
- a full volume is :class:`~xoengine.errors.DiskFullError` even when LMDB
  reports the short write it causes as EIO; a data file at the process's
  file-size limit (EFBIG, also EIO) is said as such;
- at open, damage that LMDB would trust is refused: the data file's length
  (before LMDB maps it: a meta page cut short is SIGBUS), its meta pages and
  the roots of the tables are checked (a flipped bit there would otherwise make
  it read an older snapshot or lose whole tables without an error); damage to
  LMDB's structure is :class:`~xoengine.errors.JournalDamagedError` (exit 4);
- a new journal is never created inside another one's directory (a bare copy
  opened writable by mistake would be hidden by it).
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import errno
import fcntl
import os
import platform
import resource
import stat
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

import lmdb

from xoengine.errors import (
    ConfigurationError,
    DiskFullError,
    JournalDamagedError,
    JournalInsideJournalError,
    JournalLiveUnlockedError,
    JournalLockedError,
    JournalMissingError,
    JournalReadOnlyError,
    JournalUnreadableError,
    OutputLocationError,
    StorageError,
    XoError,
)
from xoengine.metapage import meta_problem, size_problem
from xoengine.transaction import ReadTxn, WriteTxn

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "CATALOG_TABLE",
    "DEFAULT_MAP_SIZE",
    "GROW_PATIENCE",
    "Durability",
    "ReadTxn",
    "Store",
    "StoreInfo",
    "WriteTxn",
    "has_journal",
    "inside_dir",
    "keep_freed_memory",
    "open_store",
    "writer_of",
]

T = TypeVar("T")

DEFAULT_MAP_SIZE = 64 * 1024 * 1024
"""Initial map size for a new journal (bytes); it doubles whenever it fills."""

_MAX_DBS = 512
_RESIZE_RETRIES = 8
_META_RETRIES = 20
_NEARLY_FULL = 1024 * 1024  # free bytes below which a failed write is taken for a full disk
_LOCK_FILE = "writer.lock"
_GATHER_WAIT = 0.0005
"""Longest a group-commit leader waits for writers that were active just now (s)."""
_GATHER_IDLE = 0.020
"""A writer idle for longer than this is not waited for (s)."""
GROW_PATIENCE = 10.0
"""How long a resize of the map waits for reads of this process that do nothing (s).

Past it the write that needed the room fails with a coded error naming the
threads: a read left open would otherwise block it for ever.
"""
_PATIENCE_TICK = 0.25
_ABORT_PATIENCE = 0.02
"""How long an abort waits for reads that do nothing (s): they have no operation in flight."""
CATALOG_TABLE = _CATALOG = "xoengine.tables"
"""Table listing every table name with its CRC-32 (see ``Store._check_catalog``)."""


_MALLOC_TUNED = threading.Event()
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> None:
    """Let glibc reuse the memory of LMDB's dirty pages instead of mapping it afresh.

    Without ``writemap`` LMDB mallocs every dirty page of a write transaction (a
    4 MiB blob: one 4 MiB malloc) and frees them at commit. glibc's defaults
    return such blocks to the kernel (mmap/munmap, heap trimming), so the next
    transaction page-faults and zeroes them again: a 1 GiB baseline capture paid
    ~1 s for that alone (FACTS.md: fresh memory ~1.7 GB/s). Blocks up to 32 MiB
    now come from the heap, which keeps up to 256 MiB of free memory. Process
    wide, once, glibc only; an operator's ``MALLOC_*_`` environment settings win.
    The :class:`~xoengine.engine.Engine` calls it (it captures whole trees); a
    store opened by itself, e.g. by an application using only the persistence
    module, leaves the host process's allocator alone.
    """
    if _MALLOC_TUNED.is_set():
        return
    _MALLOC_TUNED.set()
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    if any(k in os.environ for k in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_")):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)
    mallopt(_M_TRIM_THRESHOLD, 256 * 1024 * 1024)


def _crc(name: bytes) -> bytes:
    return zlib.crc32(name).to_bytes(4, "big")


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


_PEEK_WAITS: Final = (0.005, 0.02, None)
"""How a writer's lock waits out a :func:`writer_of` look (its shared lock) before E4002."""


def writer_of(path: str) -> str | None:
    """The pid (as its lock file says) of the process writing the journal at ``path``; else None.

    Also a writer of the same data file under another name (a hard link of
    ``data.mdb`` in another directory): its pid is not known here.
    """
    pid = _locked_by(os.path.join(path, _LOCK_FILE))
    if pid is None and _locked_by(os.path.join(path, "data.mdb")) is not None:
        return _ELSEWHERE
    return pid


_ELSEWHERE: Final = "unknown: it writes another name (hard link) of this data.mdb"


def _written_elsewhere(path: str) -> bool:
    """Whether a writer holds the data file at ``path`` under another name (not this one)."""
    return writer_of(path) == _ELSEWHERE


def _locked_by(file: str) -> str | None:
    """What the file says (its first line: a pid, or "?") if a writer holds its lock; else None."""
    try:
        handle = os.open(file, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # gone, or never written: nothing writes there
    try:
        fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_holder(handle)
    finally:
        os.close(handle)  # a shared lock taken is let go with it
    return None


def _lock_holder(fd: int) -> str:
    """The pid the writer lock file open at ``fd`` names ("?" if none)."""
    return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"


def _exclusive(fd: int) -> bool:
    """Take ``fd``'s exclusive ``flock``; False if another holds it.

    Retried a few times: :func:`writer_of`'s shared look holds it for an instant.
    """
    for wait in _PEEK_WAITS:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if wait is None:
                return False
            time.sleep(wait)
        else:
            return True
    return False


def has_journal(path: str | os.PathLike[str]) -> bool:
    """Whether the directory ``path`` holds a journal (its ``data.mdb``).

    A directory this user may not search, or a data file it may not read, is
    :class:`JournalUnreadableError`, not "no journal" (``os.path.exists`` says
    False to both).
    """
    data = os.path.join(os.fspath(path), "data.mdb")
    try:
        os.stat(data)
    except PermissionError:
        raise JournalUnreadableError(
            path=os.fspath(path), detail=f"{data}: permission denied (searching its directory)"
        ) from None
    except OSError:
        return False
    if not os.access(data, os.R_OK):
        raise JournalUnreadableError(path=os.fspath(path), detail=f"{data}: not readable")
    return True


def make_directory(target: Path, action: str, not_done: str) -> list[Path]:
    """Make ``target`` and its missing parents; return the ones made, deepest first.

    For what xoengine writes out (a journal copy, a replay): a failure removes
    what it made and is coded, E4004 on a full volume (``not_done`` says what
    was not done), else E2007 (``action``: what could not be done).
    """
    made = [p for p in (target, *target.parents) if not os.path.lexists(p)]
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        for directory in made:
            with contextlib.suppress(OSError):
                directory.rmdir()
        if e.errno == errno.ENOSPC:
            raise DiskFullError(path=str(target), detail=not_done) from e
        raise OutputLocationError(action=action, path=str(target), detail=e.strerror) from e
    return made


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


def _volume_full(path: str) -> bool:
    """Whether the volume holding ``path`` has (next to) no room left for this user."""
    try:
        stat = os.statvfs(path)
    except OSError:
        return False
    blocks = stat.f_bfree if os.geteuid() == 0 else stat.f_bavail
    return blocks * stat.f_frsize < _NEARLY_FULL


def _size_limit_reached(path: str) -> int | None:
    """The process's file-size limit if the journal's data file is at (or near) it, else None."""
    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        size = os.stat(os.path.join(path, "data.mdb")).st_size
    except OSError:
        return None
    return soft if size + _NEARLY_FULL >= soft else None


_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError, lmdb.InvalidError)
"""LMDB's answers to a broken page structure (or a data file that is no LMDB file)."""


def _translate(
    exc: lmdb.Error, path: str, *, not_done: str = "the last write to the journal was not recorded"
) -> StorageError:
    """Map a py-lmdb error onto the coded tree (the one choke point).

    ``not_done``: what a full volume at ``path`` left undone, for the message.
    """
    text = str(exc)
    if isinstance(exc, lmdb.ReadonlyError):
        return JournalReadOnlyError(path=path, detail=text)
    if "No space left" in text or getattr(exc, "errno", None) == errno.ENOSPC:
        return DiskFullError(path=path, detail=not_done)
    if "Input/output error" in text and _volume_full(path):
        # LMDB turns a short write into EIO; the kernel writes short when the volume
        # runs out of room in the middle of a write, so on a full volume it is ENOSPC.
        return DiskFullError(path=path, detail=not_done)
    if "Input/output error" in text and (limit := _size_limit_reached(path)) is not None:
        # So it turns EFBIG too: a write past this process's file-size limit.
        return StorageError(
            detail=f"{type(exc).__name__}: {text} ({path}): the journal's data file reached "
            f"this process's file-size limit (RLIMIT_FSIZE, `ulimit -f`: {limit} bytes); "
            f"{not_done}"
        )
    if isinstance(exc, _DAMAGE):
        return JournalDamagedError(path=path, detail=f"{type(exc).__name__}: {text}")
    if isinstance(exc, (lmdb.NotFoundError,)) and "No such file" in text:
        return JournalMissingError(path=path)
    return StorageError(detail=f"{type(exc).__name__}: {text} ({path})")


class _ReadsHeld(Exception):  # noqa: N818 (internal: turned into a coded error)
    """Reads of this process stayed open, idle, for longer than a resizer's patience."""

    def __init__(self, readers: dict[int, int], waiting: bool) -> None:
        super().__init__(readers)
        self.readers = readers
        self.waiting = waiting  # a reader's thread waits for the resizer (no patience spent)


def _bump(counts: dict[int, int], key: int, step: int) -> None:
    """Add ``step`` to ``counts[key]``; a count that drops to zero leaves the dict."""
    count = counts.get(key, 0) + step
    if count:
        counts[key] = count
    else:
        del counts[key]


class _RWLock:
    """Many readers or one resizer: ``set_mapsize`` needs no transaction open.

    A waiting resizer keeps new readers out (a thread already reading may
    nest), so a stream of short reads cannot starve it. It may be given a
    patience: a read that stays open and idle (a paused reader, perhaps of
    the very thread waiting for the resize) would otherwise keep it waiting for
    ever. Readers count as busy while they begin or end reads, or look up a
    table (every call of a read view does: :meth:`Store._handle`). A reader on
    a thread that is itself waiting for a write (:meth:`blocked`) can never end
    its read first: a patient resizer gives up at once.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers: dict[int, int] = {}  # thread ident -> reads open on it
        self._blocked: dict[int, int] = {}  # thread ident -> waits for a write on it
        self._exclusive = False
        self._waiting = 0  # resizers waiting
        self.activity = 0  # bumped by readers (a hint, read and written without the lock)

    def held_here(self) -> bool:
        """Whether this thread holds the lock shared (it must not wait for exclusive)."""
        return threading.get_ident() in self._readers

    @contextlib.contextmanager
    def blocked(self) -> Iterator[None]:
        """Mark this thread as waiting (for a write) for the block: its open reads are idle."""
        ident = threading.get_ident()
        with self._cond:
            _bump(self._blocked, ident, 1)
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                _bump(self._blocked, ident, -1)

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        # The thread that entered is the one released: a generator holding a read
        # may be finished (or collected) on another thread.
        ident = threading.get_ident()
        with self._cond:
            nested = ident in self._readers
            while self._exclusive or (self._waiting and not nested):
                self._cond.wait()
            _bump(self._readers, ident, 1)
            self.activity += 1
        try:
            yield
        finally:
            with self._cond:
                _bump(self._readers, ident, -1)
                self.activity += 1
                if self._waiting:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self, patience: float | None = None) -> Iterator[None]:
        """Hold the lock alone; with ``patience``, :class:`_ReadsHeld` if readers idle that long."""
        with self._cond:
            self._waiting += 1
            try:
                idle = self._wait_alone(patience)
            finally:
                self._waiting -= 1
                self._cond.notify_all()  # readers held back go on if this one gives up
            if idle is not None:
                raise idle
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()

    def _wait_alone(self, patience: float | None) -> _ReadsHeld | None:
        """Wait (holding the condition) until no one holds the lock; the readers if they idle."""
        seen, since = self.activity, time.monotonic()
        while self._exclusive or self._readers:
            if patience is None:
                self._cond.wait()
                continue
            now = time.monotonic()
            if not self._blocked.keys().isdisjoint(self._readers):
                return _ReadsHeld(dict(self._readers), waiting=True)  # they wait for us
            if self.activity != seen:
                seen, since = self.activity, now
            elif now - since >= patience:
                return _ReadsHeld(dict(self._readers), waiting=False)
            self._cond.wait(min(patience, _PATIENCE_TICK))
        return None


Together = tuple["Callable[[WriteTxn, list[Any]], list[Any]]", Any]
"""``(runner, item)``: a write that may run in one call with others of the same runner.

``runner(txn, items)`` returns one result per item, in order. Requests of
one group commit that share a runner (compared with ``==``: a bound method
of one object) run as one call; if that call raises, each runs alone by its
own work function instead.
"""


class _WriteRequest:
    """One caller's write function waiting for (or done in) a group commit."""

    __slots__ = ("committed", "done", "error", "result", "together", "work")

    def __init__(self, work: Callable[[WriteTxn], Any], together: Together | None) -> None:
        self.work = work
        self.together = together
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.committed: list[Callable[[], None]] = []


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
        self._lockless = False  # read without LMDB's lock file (see _lockable)
        self._refs = 0
        self._views = 0  # of the references: read-only views (open_store)
        self._pid = os.getpid()  # a child forked from this process may not use it (FACTS.md)
        # How the environment was opened: a store that stops being the writer
        # (_drop_writer), and a read-only view of it, keep a writable one.
        self._env_readonly = readonly
        self._resize = _RWLock()
        self._write_lock = threading.Lock()
        self._working: int | None = None  # the thread running a batch's work functions
        self._pending_lock = threading.Lock()
        self._pending: list[_WriteRequest] = []
        self._queue = threading.Condition(self._pending_lock)  # a commit ended
        self._writers: dict[int, float] = {}  # thread -> when it last wrote (group commit)
        self._leading = False
        self._gathering = False
        self._handles: dict[str, tuple[Any, int]] = {}
        self._dbi_seq = 0
        self._handles_lock = threading.Lock()
        self._lock_fd: int | None = None
        self._data_lock_fd: int | None = None
        self._owner: object | None = None  # the one writer of this process (claim_writer)
        self._listeners: dict[threading.Event, Callable[[], None] | None] = {}
        self._listen_lock = threading.Lock()
        self._watcher: threading.Thread | None = None
        self._watcher_stop = threading.Event()
        self.poll_interval = 0.05
        self.grow_patience = GROW_PATIENCE
        self._closed = False
        self._check_size()
        self._env = self._open_env(map_size)
        try:
            self._check_meta()
            self._open_existing()
        except BaseException:
            self._env.close()
            raise

    # -- lifecycle ---------------------------------------------------------------

    def _check_size(self) -> None:
        """Refuse a data file too short for LMDB's meta pages, before LMDB maps it.

        And LMDB's files that are not regular files: a copy whose ``lock.mdb`` is a
        symbolic link would have LMDB write its reader table through it, into
        whatever file it names, though the verb only reads.
        """
        sizes: dict[str, int] = {}
        for name in ("data.mdb", "lock.mdb"):
            with contextlib.suppress(OSError):  # none: a new journal, or said by the open
                st = os.lstat(Path(self.path) / name)
                if stat.S_ISLNK(st.st_mode):
                    raise ConfigurationError(
                        detail=f"{Path(self.path) / name} is a symbolic link: LMDB would "
                        "write its table of readers through it; give the directory that "
                        "holds the journal's files themselves (a copy: `xoengine journal "
                        "copy`)"
                    )
                if not stat.S_ISREG(st.st_mode):
                    raise JournalDamagedError(
                        path=self.path, detail=f"its {name} is not a regular file"
                    )
                sizes[name] = st.st_size
        try:
            fd = os.open(Path(self.path) / "data.mdb", os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return  # none (a new journal, or a missing one: said by the open)
        try:
            problem = size_problem(fd)
        finally:
            os.close(fd)
        if problem is None and sizes.get("data.mdb") == 0 and self.readonly:
            # A read cannot start a journal: an empty data file is a copy cut to nothing.
            problem = "the data file is empty (a copy cut short?)"
        if problem is None and sizes.get("data.mdb") == 0 and sizes.get("lock.mdb"):
            # An empty data file alone is a journal to start; beside the lock table
            # of a journal that was opened, it is one cut to nothing (LMDB would
            # start a new one in it, and the damage would read as "no scenario").
            problem = "the data file is cut short: empty, beside the lock file of a journal in use"
        if problem is not None:
            raise JournalDamagedError(path=self.path, detail=problem)

    def _lockable(self) -> bool:
        """Whether a reader can use the journal's lock file; if not, that no writer runs.

        Without LMDB's lock (a read-only mount, another user's journal) a reader
        registers nowhere, and a live writer reuses pages it is still walking:
        damage reported where there is none, or an abort inside LMDB. Such a
        read is for a journal nothing writes (a copy, evidence); beside a writer
        it is refused (:class:`JournalLiveUnlockedError`).
        """
        lock_file = Path(self.path) / "lock.mdb"
        try:
            names = os.stat(Path(self.path) / "data.mdb").st_nlink
        except OSError:
            names = 1
        if names > 1 and _locked_by(os.path.join(self.path, _LOCK_FILE)) is None:
            # A hard link of the data file: a writer through another name keeps its
            # own table of readers, where this one does not register.
            if _written_elsewhere(self.path):
                raise JournalLiveUnlockedError(
                    path=self.path,
                    writer=f"pid {_ELSEWHERE}",
                    detail=f"its data.mdb has {names} names (hard links), and a writer "
                    "of another name does not see the readers of this one",
                )
            return False
        if os.access(self.path, os.W_OK) and (
            not lock_file.exists() or os.access(lock_file, os.R_OK | os.W_OK)
        ):
            return True
        pid = writer_of(self.path)
        if pid is not None:
            what = "its directory" if not os.access(self.path, os.W_OK) else "lock.mdb"
            raise JournalLiveUnlockedError(
                path=self.path,
                writer=f"pid {pid}",
                detail=f"{what} is not writable by this user or mount",
            )
        return False

    def _torn(self, snapshot: int) -> JournalLiveUnlockedError | None:
        """E4007 if this reader has no lock (:meth:`_lockable`) and a writer ran since ``snapshot``.

        The open refused a lockless read beside a writer; one that started
        since may have reused the pages a read just walked. The read's end
        asks again, so that what it found is never taken for the journal: is a
        writer running now, or did one (come and go and) commit twice since the
        read's snapshot (transaction id ``snapshot``)? LMDB's writer reuses a
        page freed by a commit from the commit after it on, when no reader is
        registered: the second commit after a snapshot may overwrite its pages.
        """
        if not self._lockless:
            return None
        pid = writer_of(self.path)
        if pid is not None:
            return JournalLiveUnlockedError(
                path=self.path,
                writer=f"pid {pid}",
                detail="it started while a read without the lock ran",
            )
        last = int(self._env.info()["last_txnid"])
        if last < snapshot + 2:
            return None
        return JournalLiveUnlockedError(
            path=self.path,
            writer="a writer that has ended since",
            detail=f"it committed {last - snapshot} transactions while a read without the lock ran",
        )

    def _refuse_nested(self) -> None:
        """Refuse to create a journal in a directory of another journal (a bare copy).

        An engine opened writable on a bare copy would make ``COPY/journal``; the
        verbs that only look would then read that empty journal, not the copy.
        """
        here = Path(self.path)
        if not (here / "data.mdb").exists() and (here.parent / "data.mdb").is_file():
            raise JournalInsideJournalError(path=self.path, parent=str(here.parent))

    def _open_env(self, map_size: int) -> Any:
        kwargs: dict[str, Any] = {
            "subdir": True,
            "max_dbs": _MAX_DBS,
            "max_readers": 1024,
            "writemap": False,  # a full disk would be SIGBUS (FACTS.md)
            "map_async": False,
        }
        if self.readonly:
            if not has_journal(self.path):
                raise JournalMissingError(path=self.path)
            self._lockless = not self._lockable()
            env = self._lmdb_open(readonly=True, lock=not self._lockless, create=False, **kwargs)
            if not self._lockless:  # a reader may clear dead readers' slots too
                with contextlib.suppress(lmdb.Error):
                    env.reader_check()
            return env
        self._refuse_nested()
        try:
            Path(self.path).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(detail=f"cannot create {self.path}: {e.strerror}") from e
        existing = (Path(self.path) / "data.mdb").exists()
        if existing and _written_elsewhere(self.path):
            raise JournalLockedError(path=self.path, pid=_ELSEWHERE)
        if existing:
            # Keep the size the file already has when it is larger than asked.
            map_size = max(map_size, (Path(self.path) / "data.mdb").stat().st_size)
        env = self._lmdb_open(
            map_size=map_size,
            sync=self.durability is not Durability.NOSYNC,
            metasync=self.durability is Durability.SYNC,
            **kwargs,
        )
        with contextlib.suppress(lmdb.Error):
            env.reader_check()
        return env

    def _lmdb_open(self, **kwargs: Any) -> Any:
        for _ in range(_RESIZE_RETRIES):
            try:
                return lmdb.open(os.fsencode(self.path), **kwargs)  # any bytes of a name
            except lmdb.MapResizedError:
                # Another process's commit outgrew the map LMDB sized at open, before
                # py-lmdb's first transaction: opening again maps the new size.
                continue
            except lmdb.Error as e:
                if "already open in this process" in str(e):
                    # py-lmdb's own registry (by inode): another path to this journal
                    # (a bind mount), or the process this one was forked from, holds it.
                    raise JournalLockedError(
                        f"The journal at {self.path} is open already, through another path "
                        "to it in this process (a bind mount) or in the process this one "
                        f"was forked from (pid {os.getppid()}).",
                        path=self.path,
                        pid=os.getppid(),
                    ) from e
                if "Permission denied" in str(e):  # at the open: its files, not a write
                    raise JournalUnreadableError(path=self.path, detail=str(e)) from e
                raise _translate(e, self.path) from e
        raise StorageError(detail=f"map kept being resized under {self.path}")

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
        with self._write_lock:  # after a commit under way; none begins after
            self._closed = True
            with self._resize.exclusive():
                self._env.close()
            self._drop_writer_lock()

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
        self._resize.activity += 1  # a read view at work (see _RWLock)
        entry = self._handles.get(name)
        if entry is not None:
            return entry
        with self._handles_lock:
            entry = self._handles.get(name)
            if entry is not None:
                return entry
            try:
                if self._env_readonly:
                    # Without a txn py-lmdb opens it in a read-only transaction of its
                    # own that it really commits (Transaction.commit of a read-only txn
                    # is a reset, which closes the handles opened in it).
                    handle = self._env.open_db(name.encode(), create=False)
                else:
                    # In a writable env py-lmdb's own transaction is a *write* one, begun
                    # with the GIL held: that deadlocks against a write transaction of
                    # another thread. An explicit one waits for LMDB's writer mutex with
                    # the GIL released; it changes nothing, so its commit writes nothing.
                    with self._env.begin(write=True) as txn:
                        handle = self._env.open_db(name.encode(), txn=txn, create=False)
            except lmdb.NotFoundError:
                return None
            return self._remember(name, handle)

    def _remember(self, name: str, handle: Any) -> tuple[Any, int]:
        entry = (handle, self._dbi_seq)
        self._dbi_seq += 1
        self._handles[name] = entry
        return entry

    def _check_meta(self) -> None:
        """Refuse damage in LMDB's two meta pages that LMDB itself would not notice.

        LMDB trusts the meta page with the higher transaction id: one flipped bit
        in a transaction id makes it open the previous snapshot (the last commit
        silently gone), one in a root page number or in the main table's flags
        makes tables vanish or shrink to an older copy (no error). On LMDB 0.9's
        format (others are not checked) this requires: the two ids consecutive and
        in the pages LMDB alternates them between (or both 0); the newer meta using
        no fewer pages than the older; the main table without flags; each root (of
        the free and main tables, and of every table when the main table is one
        page) a page of the right number and kind that the free list does not
        hold; the main table's page holding only table records, as many as it
        counts. Another process may commit meanwhile: a verdict stands only if
        the meta pages did not change while it was reached.

        Not caught: a flipped bit in a table's *name* (the table then reads as
        absent), and the one flip of the older meta's id that makes it exactly
        one above the newer's when the newer commit took no new page.
        """
        if lmdb.version()[:2] != (0, 9):
            return
        try:
            psize = int(self._env.stat()["psize"])
            fd = os.open(Path(self.path) / "data.mdb", os.O_RDONLY)
        except (lmdb.Error, OSError):
            return
        try:
            for _ in range(_META_RETRIES):
                metas = os.pread(fd, 2 * psize, 0)
                problem = meta_problem(fd, metas, psize)
                if os.pread(fd, 2 * psize, 0) == metas:
                    if problem is not None:
                        detail = f"LMDB page structure damaged: {problem}"
                        raise JournalDamagedError(path=self.path, detail=detail)
                    return
        finally:
            os.close(fd)

    def _open_existing(self) -> None:
        """Open the handle of every existing table (before any read can need one)."""
        for _ in range(_RESIZE_RETRIES):
            try:
                self._open_tables()
            except lmdb.MapResizedError:
                # The writer grew the map after this env was opened; no transaction of
                # this env is open yet, so adopt the new size here and start again.
                self._env.set_mapsize(0)
            except lmdb.Error as e:
                raise _translate(e, self.path) from e
            else:
                return
        raise StorageError(detail=f"map kept being resized under {self.path}")

    def _open_tables(self) -> None:
        with self._env.begin(write=False) as txn:
            keys = [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
        self._check_catalog(keys)
        for key in keys:
            try:
                name = key.decode()
            except UnicodeDecodeError:
                # Every table name was written from a str: this one is damaged.
                detail = f"table directory damaged: undecodable table name {key!r}"
                raise JournalDamagedError(path=self.path, detail=detail) from None
            try:
                self._handle(name)
            except lmdb.MapResizedError:
                raise
            except lmdb.Error:  # a key of the main db that is no table
                continue

    def _check_catalog(self, keys: list[bytes]) -> None:
        """Every table ``ensure`` made is listed, checksummed, in the catalog: compare.

        LMDB keeps table names as keys of its main database, without checksums;
        a flipped bit there would make a table vanish (an empty journal, not an
        error). The catalog lists every name with its CRC-32.
        """
        names = {k for k in keys if k != _CATALOG.encode()}
        if not names:
            return
        if _CATALOG.encode() not in keys:
            raise JournalDamagedError(
                path=self.path, detail="table directory damaged: the table catalog is missing"
            )
        listed: set[bytes] = set()
        with self._env.begin(write=False) as txn:
            handle = self._env.open_db(_CATALOG.encode(), txn=txn, create=False)
            for key, value in txn.cursor(db=handle).iternext(keys=True, values=True):
                if bytes(value) != _crc(bytes(key)):
                    damaged = f"catalog entry {bytes(key)!r}"
                    raise JournalDamagedError(
                        path=self.path, detail=f"table directory damaged: {damaged}"
                    )
                listed.add(bytes(key))
        if listed != names:
            missing = sorted(listed - names)
            unknown = sorted(names - listed)
            if missing:  # a name damaged, or a table dropped
                detail = f"table directory damaged: missing {missing}, unknown {unknown}"
            else:
                detail = f"tables xoengine did not make: {unknown} (written by another program)"
            raise JournalDamagedError(path=self.path, detail=detail)

    def ensure(self, *names: str) -> None:
        """Create the named tables if they do not exist yet (before writing to them)."""
        if self.readonly or all(n in self._handles for n in names):
            return
        self._check_open()
        with self._write_lock:
            while True:
                with self._handles_lock, self._resize.shared():
                    self._take_writer_lock()
                    try:
                        with self._env.begin(write=True) as txn:
                            wanted = [n for n in names if n not in self._handles]
                            if _CATALOG not in self._handles:
                                wanted.append(_CATALOG)
                            opened = [
                                (n, self._env.open_db(n.encode(), txn=txn, create=True))
                                for n in wanted
                            ]
                            catalog = dict(opened).get(_CATALOG) or self._handles[_CATALOG][0]
                            for name, _ in opened:
                                if name != _CATALOG:
                                    key = name.encode()
                                    txn.put(key, _crc(key), db=catalog)
                    except lmdb.MapFullError:
                        opened = None
                    except lmdb.Error as e:
                        raise _translate(e, self.path) from e
                    if opened is not None:
                        for name, handle in opened:
                            self._remember(name, handle)
                        return
                # Grow with no lock of ours held (readers may wait for _handles_lock).
                self._grow()

    # -- transactions ------------------------------------------------------------

    def awaiting_write(self) -> contextlib.AbstractContextManager[None]:
        """Mark this thread, for the block, as waiting for a write of this store.

        A read this thread left open cannot end meanwhile,
        so a write that must grow the map fails at once with a coded error
        rather than waiting :attr:`grow_patience` for it. :meth:`write` marks
        its callers itself; code that waits for a write on another thread (a
        commit thread) marks its wait with this.
        """
        return self._resize.blocked()

    @contextlib.contextmanager
    def read(self) -> Iterator[ReadTxn]:
        """A consistent read view (a snapshot of the last commit).

        The read counts as the opening thread's until the block ends, wherever
        it is used: a block left open by a thread that then waits for a write
        makes a write that must grow the map fail at once (E4000).
        """
        self._check_open()
        for _ in range(_RESIZE_RETRIES):
            with self._resize.shared():
                seq = self._dbi_seq
                try:
                    txn = self._begin_read()
                except lmdb.MapResizedError:
                    txn = None
                except lmdb.Error as e:
                    raise _translate(e, self.path) from e
                if txn is not None:
                    view = ReadTxn(self, txn, seq)
                    snapshot = txn.id()  # the first: the view may move to newer ones
                    try:
                        yield view
                    except lmdb.Error as e:
                        raise self._torn(snapshot) or _translate(e, self.path) from e
                    except XoError:  # "damage" a writer's reuse of pages may show
                        torn = self._torn(snapshot)
                        if torn is not None:
                            raise torn from None
                        raise
                    finally:
                        view._txn.abort()  # the view may have moved to a newer snapshot
                        # py-lmdb keeps an aborted read transaction's reader slot until
                        # the object is freed; a traceback cycle holding the view would
                        # keep it for as long as the cycle lives (1,024 slots in all).
                        view._txn = None
                    torn = self._torn(snapshot)
                    if torn is not None:
                        raise torn
                    return
            # Another process grew the map beyond ours: adopt its size, outside the
            # shared lock (set_mapsize invalidates every transaction of this env).
            self._adopt_map_size()
        raise StorageError(detail=f"map kept being resized under {self.path}")

    def _begin_read(self) -> Any:
        try:
            return self._env.begin(write=False, buffers=False)
        except lmdb.ReadersFullError:
            # The table of readers may be full of readers that died (kill -9) while
            # some process kept the journal open: clear their slots, try once more.
            with contextlib.suppress(lmdb.Error):
                self._env.reader_check()
            return self._env.begin(write=False, buffers=False)

    def _adopt_map_size(self) -> None:
        if self._resize.held_here():
            # An enclosing read on this thread keeps the old map in use.
            raise StorageError(
                detail=f"the map of {self.path} was grown by another process during a "
                "nested read; end the enclosing read and retry"
            )
        try:
            # 0: the size the writer recorded
            self._set_map_size(lambda: 0, "was grown by another process", "This read was not done")
        except lmdb.Error as e:
            raise _translate(e, self.path) from e

    def _set_map_size(self, size: Callable[[], int], what: str, not_done: str) -> None:
        """``set_mapsize(size())`` with no transaction open in this process.

        Waits for the reads of this process, but not for reads that stay open
        and idle (:attr:`grow_patience`): rather than a wait that may never end
        (the idle read may be the caller's own, on another thread), a coded
        error naming their threads. ``what``: why the map changes; ``not_done``:
        what the error leaves undone.
        """
        try:
            with self._resize.exclusive(self.grow_patience):
                self._env.set_mapsize(size())
        except _ReadsHeld as e:
            names = {t.ident: t.name for t in threading.enumerate()}
            held = ", ".join(repr(names.get(ident, str(ident))) for ident in sorted(e.readers))
            idle = "which waits for this write" if e.waiting else f"for {self.grow_patience:g} s"
            raise StorageError(
                detail=f"the map of {self.path} {what} but reads of this process stay open "
                f"and idle (thread {held}, {idle}): a Store.read() block left open? "
                f"{not_done}; end the read, then retry"
            ) from None

    def write(self, work: Callable[[WriteTxn], T], *, together: Together | None = None) -> T:
        """Run ``work`` in a write transaction and commit it durably; return its result.

        Group commit: while one thread commits, others queue their work; the next
        committer runs every queued function in one transaction and pays one
        fsync for all of them. The first caller after a commit gathers (for at
        most ``_GATHER_WAIT``) until every thread that wrote lately has queued;
        the caller completing the batch commits it, else the gatherer does. A
        function that raises is left out: its exception goes back to its caller
        and the others run again in a new transaction.
        Queued requests given the same ``together`` runner run as one call of it
        (see :data:`Together`): several callers' appends cost what one batch does.

        ``work`` may run more than once: if the map fills (in ``put`` or at
        commit) the transaction is aborted, the map doubled, and the batch run
        again from the start; likewise when another function of its batch
        raised. It must not have effects outside the transaction.
        """
        self._check_open()
        if self.readonly:
            raise JournalReadOnlyError(path=self.path, detail="write refused")
        if self._working == threading.get_ident():
            raise StorageError(
                detail=f"a write to {self.path} was asked from inside the work of another "
                "(it would wait for its own commit): do it in the same transaction, with "
                "the WriteTxn the work is given"
            )
        request = _WriteRequest(work, together)
        batch: list[_WriteRequest] | None = None
        with self._resize.blocked(), self._queue:
            now = time.monotonic()
            self._writers[threading.get_ident()] = now
            self._pending.append(request)
            if self._gathering and len(self._pending) >= len(self._writers):
                # Everyone is in: the last one commits the batch itself, sparing a
                # wake-up of the gathering leader (it waits for the commit as a follower).
                self._gathering = False
                batch, self._pending = self._pending, []
            else:
                # Followers wait for the commit, never for the write lock: a request
                # committed in someone's batch returns at once.
                while not request.done and self._leading:
                    self._queue.wait()
                if not request.done:
                    self._leading = self._gathering = True
                    # Gather briefly for writers active in the last moments (at most
                    # _GATHER_WAIT; a lone writer never waits), then take the queue,
                    # unless the last of them took it.
                    now = time.monotonic()  # it may have waited for a commit first
                    idle = [i for i, t in self._writers.items() if now - t > _GATHER_IDLE]
                    for ident in idle:
                        del self._writers[ident]
                    deadline = now + _GATHER_WAIT
                    # The last arrival may take the batch (and commit it) meanwhile; by
                    # the time this wakes, the next leader may be gathering its own.
                    while (
                        self._gathering
                        and not request.done
                        and len(self._pending) < len(self._writers)
                    ):
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        self._queue.wait(left)
                    if not request.done and self._gathering:
                        self._gathering = False
                        batch, self._pending = self._pending, []
                    while batch is None and not request.done:  # the last arrival took it
                        self._queue.wait()
        if batch is not None:
            try:
                with self._write_lock:
                    self._commit_batch(batch)
            finally:
                with self._queue:
                    self._leading = False
                    self._queue.notify_all()
            self._notify()
        if request.error is not None:
            raise request.error
        return request.result  # type: ignore[no-any-return]

    def _commit_batch(self, batch: list[_WriteRequest]) -> None:
        try:
            self._check_open()  # a thread left writing past close() takes no lock again
            self._take_writer_lock()
            self._run_batch(batch)
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
        # One transaction for the whole batch. A request whose work raises its own
        # error is dropped (the error goes back to its caller) and the others run
        # again in a fresh transaction: work may run more than once, and a batch
        # without failures (the usual case) pays for no nested transactions. A full
        # map (or one another process grew) runs the whole batch again, resized.
        live = list(batch)
        while live:
            txn: Any = None
            failed: _WriteRequest | None = None
            resize: Callable[[], None] | None = None
            try:
                with self._resize.shared():
                    # A reader killed (kill -9, the OOM killer) leaves its slot holding
                    # an old snapshot, and LMDB then reuses no page freed since: the
                    # file would grow for as long as this writer runs. Clearing dead
                    # slots costs well under a microsecond when there are none.
                    with contextlib.suppress(lmdb.Error):
                        self._env.reader_check()
                    txn = self._env.begin(write=True)
                    for request in live:
                        request.error, request.committed = None, []
                    self._working = threading.get_ident()
                    try:
                        failed = self._run_groups(live, txn, self._dbi_seq)
                    finally:
                        self._working = None
                    if failed is None:
                        done, txn = txn, None
                        done.commit()
            except lmdb.MapFullError:
                resize = self._grow
            except lmdb.MapResizedError:
                resize = self._adopt_size
            finally:
                self._abort(txn)  # None once committed
            if resize is not None:
                resize()
                live = list(batch)
            elif failed is not None:
                if failed.error is not None:
                    live.remove(failed)
            else:
                for request in live:
                    for callback in request.committed:
                        callback()
                return

    def _adopt_size(self) -> None:
        self._set_map_size(lambda: 0, "was grown by another process", "The write was not recorded")

    def _abort(self, txn: Any) -> None:
        """Abort the write transaction ``txn`` (None: none) with no read of this process busy.

        py-lmdb (2.x on) makes an abort wait until no operation of any thread is
        in flight: threads that keep reading would hold it off for as long as
        they read (seconds, or for ever). So new reads are held back and those
        at work finish first; reads left open and idle do nothing in flight,
        and are not waited for beyond a short patience.
        """
        if txn is None:
            return
        with contextlib.ExitStack() as quiet:
            with contextlib.suppress(_ReadsHeld):
                quiet.enter_context(self._resize.exclusive(_ABORT_PATIENCE))
            with contextlib.suppress(lmdb.Error):  # LMDB aborted a failed commit already
                txn.abort()

    def _run_groups(self, live: list[_WriteRequest], txn: Any, seq: int) -> _WriteRequest | None:
        """Run ``live`` in ``txn``, requests of one runner together; the one that failed, if any.

        A failed joint call returns its first request with no error of its own:
        the group's requests lose ``together`` and the batch runs again.
        """
        groups: list[list[_WriteRequest]] = []
        by_runner: dict[Any, list[_WriteRequest]] = {}
        for request in live:
            if request.together is None:
                groups.append([request])
                continue
            group = by_runner.get(request.together[0])
            if group is None:
                group = by_runner[request.together[0]] = []
                groups.append(group)
            group.append(request)
        for group in groups:
            if len(group) > 1:
                if not self._run_joint(group, txn, seq):
                    for request in group:
                        request.together = None
                    return group[0]
                continue
            request = group[0]
            self._run_one(request, txn, seq)
            if request.error is not None:
                return request
        return None

    def _run_joint(self, group: list[_WriteRequest], txn: Any, seq: int) -> bool:
        wtxn = WriteTxn(self, txn, seq)
        runner = group[0].together[0]  # type: ignore[index]
        try:
            results = runner(wtxn, [request.together[1] for request in group])  # type: ignore[index]
        except lmdb.Error:
            raise
        except Exception:  # noqa: BLE001 (each request runs alone and gets its own error)
            return False
        if len(results) != len(group):
            return False  # a runner that does not answer each item: run each alone
        for request, result in zip(group, results, strict=True):
            request.result = result
        group[0].committed = wtxn.committed
        return True

    def _run_one(self, request: _WriteRequest, txn: Any, seq: int) -> None:
        wtxn = WriteTxn(self, txn, seq)
        try:
            request.result = request.work(wtxn)
        except lmdb.Error:
            raise
        except Exception as e:  # noqa: BLE001 (the caller's own error goes back to it)
            request.error = e
            return
        request.committed = wtxn.committed

    def reserve(self, nbytes: int) -> None:
        """Grow the map now if fewer than ``nbytes`` are free above the used pages.

        For a writer about to put a large batch (a capture's blobs): growing first
        saves the aborted transaction and the re-run of the batch that a
        ``MapFullError`` in the middle of it would cost. Call it holding no read.
        """
        if self.readonly:
            return
        self._check_open()
        with self._write_lock:
            self._take_writer_lock()
            while True:
                info = self.info()
                if info.map_size - info.used_bytes >= nbytes:
                    return
                self._grow()

    def _grow(self) -> None:
        if self._resize.held_here():
            raise StorageError(
                detail=f"the map of {self.path} is full and cannot grow while this thread "
                "holds a read (a Store.read() block left open?)"
            )
        self._set_map_size(
            lambda: int(self._env.info()["map_size"]) * 2,
            "is full and must grow",
            "The write that needed the room was not recorded",
        )

    def claim_writer(self, owner: object | None = None) -> None:
        """Become the journal's one writer process now rather than at the first write.

        For owners that keep state derived from the journal in memory (an engine):
        another process writing behind them would leave it stale. Raises
        :class:`JournalLockedError` if another process holds the journal, or if
        another ``owner`` of this process does (this store is every opener's of
        the journal in the process), until :meth:`release_writer`.
        """
        if self.readonly:
            return
        self._check_open()
        with self._write_lock:
            if owner is not None and self._owner not in {None, owner}:
                raise self._held_here()
            self._take_writer_lock()
            if owner is not None:
                self._owner = owner

    def _held_here(self) -> JournalLockedError:
        """The refusal of a second writable engine of this process (see :meth:`claim_writer`)."""
        return JournalLockedError(
            f"An engine of this process (pid {os.getpid()}) has the journal at "
            f"{self.path} open for writing already: close it first (an Engine not "
            "closed keeps its scenarios' threads running).",
            path=self.path,
            pid=os.getpid(),
        )

    def release_writer(self, owner: object) -> None:
        """End ``owner``'s claim (:meth:`claim_writer`); the process stays the writer."""
        with self._write_lock:
            if self._owner is owner:
                self._owner = None

    def _drop_writer(self) -> None:
        """Stop being the journal's writer: read-only from now on, its lock let go.

        When the last writable opener closes while read-only views stay open: another
        process may write the journal then (the views read it as any reader does).
        """
        with self._write_lock:
            self.readonly = True
            self._owner = None
            self._drop_writer_lock()

    def _take_writer_lock(self) -> None:
        """Lock ``writer.lock`` and the data file itself, or raise :class:`JournalLockedError`.

        The data file's lock holds through every name it has: a hard link of a
        live journal's ``data.mdb`` in another directory has a ``writer.lock``
        (and an LMDB lock table) of its own, and two writers of one file would
        damage it.
        """
        if self._lock_fd is not None:
            return
        lock_path = str(Path(self.path) / _LOCK_FILE)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _exclusive(fd):
            try:
                pid_text = _lock_holder(fd)
            finally:
                os.close(fd)
            raise JournalLockedError(path=self.path, pid=pid_text)
        try:
            data_fd = os.open(Path(self.path) / "data.mdb", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            os.close(fd)
            raise StorageError(detail=f"cannot open {self.path}/data.mdb: {e.strerror}") from e
        if not _exclusive(data_fd):
            os.close(data_fd)
            os.close(fd)
            raise JournalLockedError(path=self.path, pid=_ELSEWHERE)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd, self._data_lock_fd = fd, data_fd

    def _drop_writer_lock(self) -> None:
        for fd in (self._lock_fd, self._data_lock_fd):
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._data_lock_fd = None

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError(detail=f"store {self.path} is closed")
        if os.getpid() != self._pid:
            raise StorageError(
                detail=f"the journal at {self.path} was opened by process {self._pid}, which "
                f"this process ({os.getpid()}) was forked from: LMDB forbids using it after "
                "a fork (the parent would not know of the write), and a forked child cannot "
                "open it either while the parent holds it; start workers with the 'spawn' "
                "or 'forkserver' method and open the engine in each"
            )

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
                current = self.last_txnid()
            except XoError:
                continue
            if current != seen:
                seen = current
                self._notify()

    def last_txnid(self) -> int:
        """Id of the last committed transaction by any process (to see others' commits).

        It is the id a read begun now sees, not LMDB's ``info()["last_txnid"]``:
        LMDB publishes a commit's meta page (read by ``info``) before the id that
        new readers take, so a reader woken on ``info`` could read the snapshot
        before that commit and then never be woken for it.
        """
        with self.read() as txn:
            return int(txn._txn.id())

    def info(self) -> StoreInfo:
        """Size, use and reader figures."""
        self._check_open()
        # Under the shared lock: py-lmdb fails (EINVAL) any call made while another
        # thread of this process is inside set_mapsize.
        with self._resize.shared():
            try:
                info = self._env.info()
                stat = self._env.stat()
            except lmdb.Error as e:
                raise _translate(e, self.path) from e
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

    def _copy_env(self, destination: str, *, compact: bool) -> None:
        """LMDB's copy into ``destination``; again after another process grew the map."""
        for _ in range(_RESIZE_RETRIES):
            with self._resize.shared():
                try:
                    self._env.copy(os.fsencode(destination), compact=compact)
                except lmdb.MapResizedError:
                    pass  # a writer in another process grew the map: adopt, copy again
                except lmdb.Error as e:
                    not_done = "the copy was not made (what it wrote is removed)"
                    raise _translate(e, destination, not_done=not_done) from e
                else:
                    return
            with contextlib.suppress(OSError):
                (Path(destination) / "data.mdb").unlink()
            self._adopt_map_size()
        raise StorageError(detail=f"map kept being resized under {self.path}")

    def copy_to(self, destination: str, *, compact: bool = True) -> None:
        """Write a consistent copy of the environment into ``destination`` (hot copy).

        ``destination`` is made if missing, and must be empty (a copy beside other
        files would pass for part of them) and outside this journal's directory
        (a journal nested in a live one). A copy that fails (a full volume)
        removes what it wrote, the directories it made too: a retry finds
        ``destination`` as it was.
        """
        self._check_open()
        target = Path(destination)
        if inside_dir(os.path.realpath(target), os.path.realpath(self.path)):
            raise OutputLocationError(
                action="copy the journal into",
                path=os.fspath(destination),
                detail=f"it is inside the journal's own directory ({self.path})",
            )
        made = make_directory(target, "make the copy's directory", "the copy was not made")
        if (target / "data.mdb").exists():
            raise ConfigurationError(detail=f"{destination} already holds a journal")
        if not made and any(target.iterdir()):
            raise OutputLocationError(
                action="copy the journal into",
                path=os.fspath(destination),
                detail="it is not an empty directory: copy into a new one",
            )
        try:
            self._copy_env(destination, compact=compact)
        except BaseException:
            # A partial data.mdb would pass for a damaged journal and block a retry.
            with contextlib.suppress(OSError):
                (target / "data.mdb").unlink()
            for directory in made:
                with contextlib.suppress(OSError):
                    directory.rmdir()
            raise


def inside_dir(child: str, parent: str) -> bool:
    """Whether the path ``child`` is ``parent`` or below it (both resolved by the caller)."""
    return child == parent or child.startswith(parent.rstrip("/") + "/")


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
                if store._env_readonly:
                    raise ConfigurationError(
                        detail=f"{real} is open read-only in this process; close it first"
                    )
                # Its writer closed while read-only views stayed: writable again (the
                # writer lock is taken as by any writer, at its claim or first write).
                store.readonly = False
            if not readonly and durability is not None and store.durability is not mode:
                if store._owner is not None:  # an engine writes it: that is the refusal
                    raise store._held_here()
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
        if readonly and not store._env_readonly:
            # Open for writing by another opener of this process (now, or before its
            # writer closed): this one reads it through a view that refuses writes,
            # as another process's read would.
            store._views += 1
            return _ReadOnlyView(store)
        return store


def _release(store: Store, *, view: bool = False) -> None:
    with _registry_lock:
        if store._refs <= 0:
            return
        store._refs -= 1
        store._views -= view
        if store._refs and store._refs == store._views and not store.readonly:
            # Only read-only views are left: the process stops being the writer.
            store._drop_writer()
        if store._refs:
            return
        if _registry.get(store.path) is store:
            del _registry[store.path]
    store._really_close()


class _ReadOnlyView(Store):
    """A read-only opener's handle of a :class:`Store` this process has open for writing.

    LMDB allows one environment per file and process, so a read-only opener
    (an ``Engine(readonly=True)``, a forensic reader) beside a writable one
    shares its environment; through this view it reads it, and every write is
    refused (:class:`~xoengine.errors.JournalReadOnlyError`, E4003) as it is
    to another process's read-only opener. Everything else is the store's.
    """

    _OWN: Final = frozenset({"_base", "readonly", "_view_closed"})
    _base: Store
    _view_closed: bool

    def __init__(self, base: Store) -> None:  # the base's environment: none opened here
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "readonly", True)
        object.__setattr__(self, "_view_closed", False)

    def __getattr__(self, name: str) -> Any:
        """The store's attribute (its environment, tables, locks)."""
        return getattr(self._base, name)

    def __setattr__(self, name: str, value: Any) -> None:
        """Set the store's attribute: its state is one, whatever handle changes it."""
        if name in self._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self._base, name, value)

    def close(self) -> None:
        """Drop this view's reference to the store (once)."""
        if not self._view_closed:
            self._view_closed = True
            _release(self._base, view=True)

    @property
    def closed(self) -> bool:
        """Whether this view, or the store, has been closed."""
        return bool(self._view_closed or self._base.closed)

    def _check_open(self) -> None:
        if self._view_closed:
            raise StorageError(detail=f"store {self.path} is closed")
        self._base._check_open()
