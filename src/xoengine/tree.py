"""Replica trees and undo logs: the one writer of replica files and the before-images it keeps.

Room: algorithms/storage. May import ``errors``, ``codec``, ``datastore``, ``journal``
(blob table, positions) and ``walk``; no eventsourcing events.

:class:`ReplicaTree` is the one writer of replica files: every path goes
through :func:`walk.open_parent` (no symlink below the root is ever followed,
a hostile path is refused with a coded error), whole files are written to a
temporary name, fsynced and renamed, and ``OSError`` is translated here:
no method lets one out uncoded. A name added or removed in a directory of
this process's that lacks ``u+wx`` (a read-only directory, as a user runs
it) is retried with ``u+wx`` given for the call (:func:`walk.as_owner`).

:class:`Extents` maps the bytes of one file to pieces of blobs, first claim
wins: the plan of a coalesced rewind (oldest before-images) or replay
(newest writes), so each byte is written once.

:class:`UndoLog` keeps, per replica and keyed by journal position, what is
needed to undo each change: the *before-images*. The replica applier and the
synchronizer record them durably before they change anything; rewind plays
them backwards.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import errno
import functools
import mmap
import os
import stat
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, TypeVar

from xoengine import blocks, codec
from xoengine.blobtable import BLOB_MAX, BLOB_SUFFIX, blob_chunks, content_key
from xoengine.errors import (
    DiskFullError,
    FrameError,
    ParentNotDirectoryError,
    ReplicaWriteError,
    SymlinkedParentError,
    XoError,
    quoted,
)
from xoengine.journal import BlobTable, encode_position
from xoengine.walk import (
    READ_FLAGS,
    ParentCache,
    Xattrs,
    as_owner,
    at_fd,
    normalize_relpath,
    open_directory,
    open_parent,
    own_meta,
    owner_access,
    read_xattrs,
    xattrs_below,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from xoengine.blocks import Buffer
    from xoengine.datastore import ReadTxn, Store, WriteTxn

__all__ = [
    "HOLD_MAX",
    "TMP_PREFIX",
    "Extents",
    "Image",
    "ImageBytes",
    "Owner",
    "Piece",
    "Rebuilt",
    "ReplicaTree",
    "UndoLog",
    "UndoRecord",
    "copy_sparse",
    "data_of",
    "event_delta",
    "holes_of",
    "kind_of",
    "pread_all",
    "read_whole",
    "reserved_name",
    "thin",
    "undo_blob_size",
]

TMP_PREFIX: Final = ".xoengine-tmp-"
"""Name prefix of temporary files (never left behind; skipped by scans of a replica)."""


def reserved_name(relpath: str) -> bool:
    """Whether a part of ``relpath`` begins with :data:`TMP_PREFIX` (never replicated: W2004)."""
    return any(part.startswith(TMP_PREFIX) for part in relpath.split("/"))


_WRITEBACK_EARLY: Final = 1024 * 1024
"""``copy_new`` starts the writeback of copies at least this large (small ones: at flush)."""
_FSYNC_EACH_MAX: Final = 2048
"""Up to this many paths ``flush`` fsyncs each (other processes' dirty data is not waited
for); more get one syncfs of the replica's file system."""
_FSYNC_THREADS: Final = 8
"""Threads that fsync the paths of one ``flush`` (below this many paths: the caller alone)."""
_FILE_THREADS: Final = 4
"""Threads of ``for_each`` in a tree that fsyncs: each file's fsync waits for the device with
the GIL released while other threads write (a rewind at ``sync``: 0.90 -> 0.69 s). Without
fsync, threads only contend for the GIL (measured slower): one thread does the work."""

_WAIT_SLICE_S: Final = 0.2
"""``for_each`` checks for signals (Ctrl-C) at least this often while its threads work."""

_Item = TypeVar("_Item")


def _find_syncfs() -> Callable[[int], int] | None:
    try:
        syncfs = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    syncfs.argtypes = [ctypes.c_int]
    syncfs.restype = ctypes.c_int
    return syncfs


_syncfs = _find_syncfs()


def _find_fallocate() -> Callable[[int, int, int, int], int] | None:
    try:
        fallocate = ctypes.CDLL(None, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fallocate.restype = ctypes.c_int
    result: Callable[[int, int, int, int], int] = fallocate
    return result


_fallocate = _find_fallocate()
_PUNCH_HOLE: Final = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE


def _punch(fd: int, offset: int, length: int) -> bool:
    """Make ``[offset, offset + length)`` of ``fd`` a hole (it reads as zeros); whether it did."""
    return _fallocate is not None and _fallocate(fd, _PUNCH_HOLE, offset, length) == 0


ImageBytes: TypeAlias = "bytes | Callable[[], bytes]"
Piece: TypeAlias = "bytes | memoryview | int"
"""Bytes to write at an offset, or (an int) that many zeros: see :func:`_write_pieces`."""
"""Bytes of a before-image, or a reader of them called when they are stored (one chunk of a
large file at a time: a 20 GiB file's before-image never sits in memory whole)."""

Rebuilt: TypeAlias = 'Literal["rebuilt", "done", "diverged"]'
"""What :meth:`ReplicaTree.rebuild` did."""

Owner: TypeAlias = "Sequence[int]"
"""``(uid, gid)`` of a file (a list once it went through msgpack)."""

Image = tuple[str, str, dict[str, Any], dict[str, ImageBytes]]
"""A before-image being prepared: (op, path, args, {arg name: bytes to store as a blob})."""


HOLD_MAX: Final = 256 * 1024 * 1024
"""Most bytes of one file read whole into memory: a larger one is a private mapped copy
(:func:`read_whole`); the capture's stream of changed blocks stops holding them there."""

_DIGEST_CHUNK: Final = 1024 * 1024
"""Bytes read at a time to hash a whole file."""

_EAGER_IMAGE: Final = 16 * 1024 * 1024
"""Before-images of in-place writes up to this size are read at once, in one open."""


# -- extent maps -----------------------------------------------------------------------


class Extents:
    """Where each byte of one file comes from: pieces of blobs; the first claim of a byte wins.

    A rewind claims before-images oldest first (a byte gets its oldest
    before-image), a replay claims writes newest first (a byte gets its newest
    write): either way each byte is written once, and only the blobs that
    still contribute a byte are read. ``pieces`` are
    ``(file offset, blob id, offset in blob, length)``.
    """

    def __init__(self) -> None:
        """An empty map: no byte claimed."""
        self._starts: list[int] = []  # sorted disjoint claimed intervals, merged when they touch
        self._ends: list[int] = []
        self.pieces: list[tuple[int, bytes, int, int]] = []

    def claim(self, offset: int, blob_id: bytes, length: int, limit: int | None = None) -> None:
        """Give the bytes of ``blob_id`` at ``offset`` (up to ``limit``) to what is unclaimed."""
        end = offset + length if limit is None else min(offset + length, limit)
        if end <= offset:
            return
        starts, ends = self._starts, self._ends
        first = bisect.bisect_left(ends, offset)  # claimed intervals touching [offset, end]
        last = bisect.bisect_right(starts, end)
        cursor = offset
        for index in range(first, last):
            if starts[index] > cursor:
                self.pieces.append((cursor, blob_id, cursor - offset, starts[index] - cursor))
            cursor = max(cursor, ends[index])
        if cursor < end:
            self.pieces.append((cursor, blob_id, cursor - offset, end - cursor))
        low = min(offset, starts[first]) if first < last else offset
        high = max(end, ends[last - 1]) if first < last else end
        starts[first:last] = [low]
        ends[first:last] = [high]

    def by_blob(self) -> dict[bytes, list[tuple[int, int, int]]]:
        """``{blob id: [(file offset, offset in blob, length)]}``: read each blob once."""
        out: dict[bytes, list[tuple[int, int, int]]] = {}
        for offset, blob_id, start, length in self.pieces:
            out.setdefault(blob_id, []).append((offset, start, length))
        return out


# -- the replica tree -------------------------------------------------------------------


def data_segments(fd: int, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of each data segment of the file ``fd`` within ``[start, end)``.

    Holes (``SEEK_DATA``/``SEEK_HOLE``) are left out; where the file system
    cannot tell them apart, the rest of the range is one segment. ``end``
    None: the file's size as each segment is looked for (it may change).
    """
    position = start
    while True:
        limit = os.fstat(fd).st_size if end is None else end
        if position >= limit:
            return
        try:
            low = os.lseek(fd, position, os.SEEK_DATA)
            high = os.lseek(fd, low, os.SEEK_HOLE)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data at or after position
                return
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
            yield position, limit
            return
        if low >= limit:
            return
        yield low, min(high, limit)
        position = high


def thin(st: os.stat_result) -> bool:
    """Whether the file of ``st`` may have holes: fewer blocks than bytes (a thin image).

    Only such a file is worth asking for its :func:`data_segments`.
    """
    return st.st_blocks * 512 < st.st_size


def data_of(fd: int, st: os.stat_result, length: int) -> list[tuple[int, int]] | None:
    """The data segments of the file ``fd`` in its first ``length`` bytes, if it may have holes.

    ``st``: its fstat. None for a file that is not :func:`thin`: all of it is data.
    The file's offset is left where it was (a reader may go on from it).
    """
    if not thin(st):
        return None
    at = os.lseek(fd, 0, os.SEEK_CUR)
    try:
        return [
            (start, min(stop, length))
            for start, stop in data_segments(fd, 0, st.st_size)
            if start < length
        ]
    finally:
        os.lseek(fd, at, os.SEEK_SET)


def holes_of(fd: int, st: os.stat_result, chunk: int) -> blocks.Holes | None:
    """The :class:`blocks.Holes` of the file ``fd`` (``st``: its fstat), read in ``chunk``s.

    None where it is not :func:`thin`: a reader reads it all.
    """
    segments = data_of(fd, st, st.st_size)
    return None if segments is None else blocks.Holes(segments, st.st_size, chunk)


def copy_sparse(src: int, dst: int) -> int:
    """Copy ``src`` into the new, empty ``dst`` in the kernel, holes kept; return the bytes copied.

    Only the data segments of ``src`` are copied (:func:`data_segments`), then
    ``dst`` gets ``src``'s size: a sparse master file (a thin disk image)
    stays sparse on the replica instead of taking its whole size on disk.
    """
    copied = 0
    kernel = True  # copy_file_range until it cannot cross file systems, then sendfile
    for start, stop in data_segments(src):
        moved, kernel = _copy_range(src, dst, start, stop - start, kernel)
        copied += moved
        if start + moved < stop:  # the file shrank while being copied
            break
    size = os.fstat(src).st_size
    if os.fstat(dst).st_size != size:
        os.ftruncate(dst, size)
    return copied


def _copy_range(src: int, dst: int, offset: int, count: int, kernel: bool) -> tuple[int, bool]:
    """Copy ``count`` bytes at ``offset`` from ``src`` to the same offset of ``dst``.

    Returns the bytes copied (fewer if ``src`` ended first) and whether
    ``copy_file_range`` still works between the two (it may share extents; it
    cannot cross file systems, EXDEV: then ``sendfile``).
    """
    done = 0
    while kernel and done < count:
        try:
            moved = os.copy_file_range(src, dst, count - done, offset + done, offset + done)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            kernel = False
            break
        if not moved:
            return done, kernel
        done += moved
    os.lseek(dst, offset + done, os.SEEK_SET)
    while done < count:  # sendfile writes at dst's position
        moved = os.sendfile(dst, src, offset + done, count - done)
        if not moved:
            break
        done += moved
    return done, kernel


_ZEROS: Final = bytes(1 << 20)
"""Compared against, never written: a calloc'd buffer costs no memory until touched."""
_HOLE_GRAINS: Final = (64 * 1024, 4096)
"""Zeros past a file's end are found (and left unwritten) in runs of these many bytes: the
large run first, then the block (the smallest hole a file system keeps) at the edge."""


def _is_zeros(data: memoryview) -> bool:
    """Whether every byte of ``data`` is zero (memcmp speed; stops at the first other byte)."""
    step = len(_ZEROS)
    return all(_ZEROS.startswith(data[i : i + step]) for i in range(0, len(data), step))


def _nonzero_span(view: memoryview, low: int, high: int) -> tuple[int, int]:
    """``view[low:high]`` without the runs of zeros (``_HOLE_GRAINS``) that lead or end it."""
    for grain in _HOLE_GRAINS:
        while high > low:
            cut = max(low, high - grain)
            if not _is_zeros(view[cut:high]):
                break
            high = cut
        while low < high:
            cut = min(high, low + grain)
            if not _is_zeros(view[low:cut]):
                break
            low = cut
    return low, high


def _nonzero_runs(view: memoryview, low: int, high: int, offset: int) -> Iterator[tuple[int, int]]:
    """The parts of ``view[low:high]`` (at ``offset`` in its file) that are not runs of zeros.

    Its leading and ending zeros go (:func:`_nonzero_span`), and so does each run
    of zeros inside it that covers whole ``_HOLE_GRAINS[0]`` blocks of the file
    (a hole between the data of a thin image's before-image). Data costs a look at
    a byte or two per grain (6 ms a GiB): only a grain that starts and ends with zeros
    is compared whole.
    """
    low, high = _nonzero_span(view, low, high)
    grain = _HOLE_GRAINS[0]
    at = low + (-(offset + low)) % grain  # the first whole grain of the file inside
    start = low
    while at + grain <= high:
        if view[at] or view[at + grain - 1] or not _is_zeros(view[at : at + grain]):
            at += grain  # (data: its first or last byte tells, mostly)
            continue
        if at > start:
            yield start, at
        at += grain
        start = at
    if high > start:
        yield start, high


def _write_pieces(handle: int, pieces: Iterable[tuple[int, Piece]], size: int) -> int:
    """Write ``(offset, bytes)`` pieces into a file of ``size`` bytes; return its size after.

    Zeros over no byte the file holds (past its first ``size`` bytes and the
    pieces before them) are left unwritten where they lead or end a part of a
    piece, or fill whole grains inside it (``_nonzero_runs``): they read as zeros once the caller
    sets the size, and holes stay holes, so a sparse file replicates and
    replays sparse. Everything over bytes the file holds is written as is.
    A piece given as an ``int`` is that many zeros (a hole's before-image):
    over bytes the file holds a hole is punched (or, where the file system
    cannot, the zeros written).
    """
    held = Extents()  # the claims are the bytes held; its pieces, the parts of a piece over none
    held.claim(0, b"", size)
    end = size

    def put(view: memoryview, offset: int, low: int, high: int) -> None:
        nonlocal end
        if high > low:
            _pwrite_all(handle, view[low:high], offset + low)
            end = max(end, offset + high)

    def zero(low: int, high: int) -> None:
        if high <= low or _punch(handle, low, high - low):  # a hole again where it was one
            return
        zeros = memoryview(_ZEROS)  # no holes here: the zeros themselves
        for at in range(low, high, len(zeros)):
            _pwrite_all(handle, zeros[: min(len(zeros), high - at)], at)

    for offset, data in pieces:
        if isinstance(data, int):  # zeros: over held bytes only (the rest reads as zeros)
            held.pieces.clear()
            held.claim(offset, b"", data)
            cursor = offset
            for at, _, _, length in held.pieces:
                zero(cursor, at)
                cursor = at + length
            zero(cursor, offset + data)
            continue
        view = memoryview(data).cast("B")
        held.pieces.clear()
        held.claim(offset, b"", len(view))
        cursor = 0
        for _, _, start, length in held.pieces:
            put(view, offset, cursor, start)
            for low, high in _nonzero_runs(view, start, start + length, offset):
                put(view, offset, low, high)
            cursor = start + length
        put(view, offset, cursor, len(view))
    return end


class ReplicaTree:
    """Safe, idempotent file operations under one replica root.

    Every ``OSError`` of its methods is raised as a coded error:
    :class:`~xoengine.errors.ReplicaWriteError` (E3010), or
    :class:`~xoengine.errors.DiskFullError` for a full volume.
    """

    def __init__(
        self, root: str, *, fsync: bool = True, create: bool = True, replica: bool = True
    ) -> None:
        """Operate under ``root`` (made if missing and ``create``); ``fsync``: durable writes.

        ``replica`` False: the tree is no replica (a replay's target, a scratch
        directory) and its errors say "the tree at" instead of "the replica at".
        """
        # Resolved once, here: from now on no link on its way is followed (a directory
        # swapped for one while this writes is refused: walk.open_directory).
        self.root = os.path.realpath(root)
        self.fsync = fsync
        self.replica = replica
        self.owners = os.geteuid() == 0
        """Whether files here can be given their owners (root, until a chown is refused):
        where not, they stay this process's, and owners are not compared (sync, verify)."""
        self.xattrs_refused: set[str] = set() if self.owners else set(_ROOT_XATTRS)
        """Extended attributes this tree cannot be given: namespaces (``trusted`` and
        ``security`` where not root) and names (each one the system refused, once it
        has): left as they are, and not compared (sync, verify)."""
        self.xattrs_left_out: set[str] = set()
        """Names of the attributes a set given to this tree held and it left out (in
        :attr:`xattrs_refused`): what a replica lacks that the master has."""
        self._held: dict[int, ParentCache] = {}  # thread -> its cache, inside holding_parents
        if create:
            # Where it cannot be made (a file in the way), its use says so, coded:
            # opening the engine does not fail on it.
            with contextlib.suppress(XoError):
                self.make_root()

    def make_root(self) -> None:
        """Make the root directory (and its parents) where missing; a coded error if it cannot."""
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise self._error(".", "make the directory", e) from e

    @contextlib.contextmanager
    def holding_parents(self) -> Iterator[None]:
        """Open each parent directory once for the calls made inside (this thread only).

        Only around work that moves and removes no directory (a replay, a run of
        in-place undos): a held directory fd follows its directory if it moves.
        """
        me = threading.get_ident()
        if me in self._held:
            yield  # nested: the outer one holds them
            return
        cache = self._held[me] = ParentCache(self.root)
        try:
            yield
        finally:
            del self._held[me]
            cache.close()

    def for_each(
        self, work: Callable[[_Item], object], items: Iterable[_Item], threads: int | None = None
    ) -> None:
        """Run ``work`` on every item from up to ``threads`` threads, each holding its parents.

        For batches of per-file work on distinct paths that moves and removes no
        directory (the paths of a run of undos, the fsyncs of :meth:`flush`). By
        default a tree that fsyncs uses :data:`_FILE_THREADS` threads, so that
        fsyncs overlap, and one that does not uses one. After a failure (or an
        interruption of the caller) no new item is started, and the first error
        is raised once every thread has stopped.
        """
        if threads is None:
            threads = _FILE_THREADS if self.fsync else 1
        pending = list(items)
        if threads < 2 or len(pending) < 2:
            with self.holding_parents():
                for item in pending:
                    work(item)
            return
        feed = iter(pending)
        lock = threading.Lock()
        failed = threading.Event()

        def run() -> None:
            with self.holding_parents():
                while not failed.is_set():
                    with lock:
                        try:
                            item = next(feed)
                        except StopIteration:
                            return
                    try:
                        work(item)
                    except BaseException:
                        failed.set()
                        raise

        count = min(threads, len(pending))
        with ThreadPoolExecutor(count, thread_name_prefix="xoengine-files") as pool:
            try:
                # Submitted inside: a Ctrl-C taken while the first threads run (one
                # of them may raise it) must stop them as well.
                futures = [pool.submit(run) for _ in range(count)]
                # Wait in slices: a signal caught by one of the threads (Ctrl-C) is
                # handled by this one, which an untimed wait would leave asleep.
                while wait(futures, timeout=_WAIT_SLICE_S).not_done:
                    pass
                for future in futures:
                    future.result()
            finally:  # an interrupted caller stops the threads after their item
                failed.set()

    def _open_parent(
        self, path: str, *, create: bool = False
    ) -> contextlib.AbstractContextManager[tuple[int, str]]:
        cache = self._held.get(threading.get_ident())
        return open_parent(self.root, path, create=create, cache=cache)

    @contextlib.contextmanager
    def _parent(self, path: str, *, create: bool = True) -> Iterator[tuple[int, str]]:
        try:
            with self._open_parent(path, create=create) as where:
                yield where
        except OSError as e:
            raise self._error(path, "open parent", e) from e

    def _error(self, path: str, action: str, e: OSError) -> Exception:
        if e.errno == errno.ENOSPC:
            return DiskFullError(path=self.root, detail=f"could not {action} {quoted(path)}")
        fields = {"path": path, "root": self.root, "action": action, "detail": e.strerror}
        if self.replica:
            return ReplicaWriteError(**fields)
        where = f"in the tree at {quoted(self.root)}"
        return ReplicaWriteError(f"Cannot {action} {quoted(path)} {where}: {e.strerror}.", **fields)

    def sweep_temporary(self) -> list[str]:
        """Delete temporary files a killed writer left behind; return their paths.

        Whole-file writes go through ``<dir>/.xoengine-tmp-*`` then rename; a
        kill -9 between the two leaves the temporary file. Run once before
        applying (the applier and the synchronizer do).
        """
        from xoengine.walk import walk  # noqa: PLC0415

        found: list[str] = []
        if not os.path.isdir(self.root):
            return found
        tree = walk(self.root)
        with contextlib.closing(tree):
            found = [e.relpath for e in tree if e.name.startswith(TMP_PREFIX)]
        for relpath in found:
            self.delete(relpath)
        return found

    def lstat(self, path: str) -> os.stat_result | None:
        """``lstat`` of ``path`` (None if absent or its parent is missing)."""
        try:
            with self._open_parent(path) as (fd, leaf):
                return os.stat(leaf, dir_fd=fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:  # an error, never "absent": a rewind would take it for gone
            raise self._error(path, "look up", e) from e

    def lstat_placed(self, path: str) -> os.stat_result | None:
        """:meth:`lstat`, None also where a parent is a file or a link: nothing is there."""
        try:
            return self.lstat(path)
        except (ParentNotDirectoryError, SymlinkedParentError):
            return None

    def read(self, path: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes of a regular file (b"" beyond its end or if it is absent)."""
        with self._reading(path) as handle:
            if handle is None:
                return b""
            if length is None:
                length = max(os.fstat(handle).st_size - offset, 0)
            return pread_all(handle, length, offset)

    def volume(self) -> int | None:
        """The id of the file system holding the root (``statvfs`` f_fsid); None if unknown.

        ext4 and xfs derive it from the file system's UUID, so it stays the same
        across reboots; a file system that reports 0 (tmpfs) is unknown.
        """
        try:
            fsid = os.statvfs(self.root).f_fsid
        except OSError:
            return None
        return fsid or None

    def digest128(self, path: str) -> bytes:
        """:func:`codec.digest128` of a regular file, read 1 MiB at a time (of b"" if absent)."""
        with self._reading(path) as handle:
            return _digest_of(handle)

    def block_map(self, path: str, block_size: int) -> blocks.BlockMap:
        """:meth:`blocks.BlockMap.compute_file` of a regular file (of b"" if absent)."""
        with self._reading(path) as handle:
            if handle is None:
                return blocks.BlockMap.compute(b"", block_size)
            holes = holes_of(handle, os.fstat(handle), blocks.READ_CHUNK)
            with os.fdopen(handle, "rb", 0, closefd=False) as reader:
                return blocks.BlockMap.compute_file(reader, block_size, holes=holes)

    def data_segments(self, path: str, start: int, end: int) -> list[tuple[int, int]]:
        """The data segments of the regular file at ``path`` within ``[start, end)`` (no holes)."""
        with self._reading(path) as handle:
            return [] if handle is None else list(data_segments(handle, start, end))

    def read_ranges(self, path: str, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """Bytes at each ``(offset, length)`` of a regular file, in one open (as :meth:`read`)."""
        with self._reading(path) as handle:
            if handle is None:
                return [b"" for _ in ranges]
            return [pread_all(handle, length, offset) for offset, length in ranges]

    @contextlib.contextmanager
    def _reading(self, path: str) -> Iterator[int | None]:
        """A read-only fd of the regular file at ``path`` (None if it or a parent is absent).

        An ``OSError`` of the block (a read) is raised coded too.
        """
        try:
            with self._open_parent(path) as (fd, leaf):
                handle = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        except (FileNotFoundError, NotADirectoryError):
            yield None
            return
        except OSError as e:  # unreadable is not absent: b"" would pass for its bytes
            raise self._error(path, "read", e) from e
        try:
            yield handle
        except OSError as e:
            raise self._error(path, "read", e) from e
        finally:
            os.close(handle)

    def readlink(self, path: str) -> str:
        """Target of the symlink at ``path`` (fsdecoded, byte-exact)."""
        with self._parent(path, create=False) as (fd, leaf):
            try:
                return os.fsdecode(os.readlink(leaf, dir_fd=fd))
            except OSError as e:
                raise self._error(path, "read link", e) from e

    def _open_file(self, fd: int, leaf: str, path: str, mode: int = 0o644) -> int:
        """Open (or make) a regular file to write in place: one of the replica's own."""
        try:
            handle = _open_at(fd, leaf, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
        except OSError as e:
            raise self._error(path, "open", e) from e
        try:
            return self._own_inode(fd, leaf, path, handle)
        except BaseException:
            os.close(handle)
            raise

    def _own_inode(self, fd: int, leaf: str, path: str, handle: int) -> int:
        """``handle`` (open to write at ``leaf`` of ``fd``), or one of an inode of its own.

        xoengine makes no hard links in a replica: one there is another tool's
        (a ``cp -al`` snapshot kept outside the root), and an in-place write
        would change that file too. The bytes (holes kept), owner, mode, times
        and extended attributes are copied to a new file renamed over the
        path, as rsync does; the other links keep the old inode, and ``handle``
        is closed once the copy is open. Errors leave ``handle`` open.
        """
        st = os.fstat(handle)
        if not _shared(st):
            return handle
        owner, mode = (st.st_uid, st.st_gid), stat.S_IMODE(st.st_mode)
        with self._temporary(path, mode, owner, read_xattrs(handle)) as copy:
            copy_sparse(handle, copy)
            os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
        try:
            mine = _open_at(fd, leaf, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise self._error(path, "open", e) from e
        os.close(handle)
        return mine

    def _unshare(self, fd: int, leaf: str, path: str) -> None:
        """Give the file at ``leaf`` of ``fd`` an inode of its own (see :meth:`_own_inode`).

        Before a change of its mode, times, owner or extended attributes alone:
        those too would reach the other names of a hard-linked file.
        """
        try:
            handle = _open_at(fd, leaf, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise self._error(path, "open", e) from e
        try:
            handle = self._own_inode(fd, leaf, path, handle)
        finally:
            os.close(handle)

    def write_ranges(
        self, path: str, pieces: Iterable[tuple[int, bytes | memoryview]], size: int
    ) -> None:
        """Write ``(offset, bytes)`` pieces in place, then set the size."""
        with self._parent(path) as (fd, leaf):
            handle = self._open_file(fd, leaf, path)
            try:
                end = _write_pieces(handle, pieces, os.fstat(handle).st_size)
                if end != size:
                    os.ftruncate(handle, size)
                if self.fsync:
                    os.fsync(handle)
            except OSError as e:
                raise self._error(path, "write", e) from e
            finally:
                os.close(handle)

    def copy_new(
        self, path: str, source: str | Callable[[], int], mode: int, owner: Owner | None = None
    ) -> int | None:
        """Create ``path`` with the bytes of the file ``source`` (kernel copy); return the size.

        ``owner`` is given before the mode: a setuid copy never belongs to root.
        ``source`` is a path, or what opens the source (an fd this closes). The
        copy has ``source``'s modification time as it was opened. None, and
        nothing made, where ``source`` cannot be opened (gone, moved or
        unreadable since it was listed): the caller decides what goes there.

        For files that did not exist on the replica: written in place and not
        fsynced here (the caller makes the whole batch durable at once with
        :meth:`flush`; writeback starts here); a copy
        cut short by a crash has the wrong mtime, so the next sync sends it again.
        """
        with self._parent(path) as (fd, leaf):
            try:
                src = os.open(source, READ_FLAGS) if isinstance(source, str) else source()
                opened = os.fstat(src)
                if not stat.S_ISREG(opened.st_mode):  # made a directory meanwhile
                    os.close(src)
                    return None
            except OSError:
                return None  # not the replica's failure: the master's file went meanwhile
            try:
                dst = _create_in(fd, leaf)
                try:
                    total = copy_sparse(src, dst)
                    self._chown(dst, owner, None)
                    os.fchmod(dst, mode)
                    # The time of the bytes copied, not of an earlier listing: written
                    # to since, the file is no longer what its listing said.
                    os.utime(dst, ns=(opened.st_atime_ns, opened.st_mtime_ns))
                    if self.fsync and total >= _WRITEBACK_EARLY:
                        # Start writing a large copy back now (asynchronously): the
                        # caller's flush of the batch then finds little left to wait for.
                        os.posix_fadvise(dst, 0, 0, os.POSIX_FADV_DONTNEED)
                    return total
                finally:
                    os.close(dst)
            except OSError as e:
                raise self._error(path, "copy", e) from e
            finally:
                os.close(src)

    def flush(self, paths: Iterable[str]) -> None:
        """Make paths written without a flush of their own durable (``copy_new``, ``create``).

        One pass after the whole batch was written: fsync each file and
        directory (a symlink is covered by its directory), then each parent
        directory once, for the new names. Nothing to do without ``fsync``.
        """
        if not self.fsync:
            return
        rels = [normalize_relpath(path) for path in paths]
        if len(rels) > _FSYNC_EACH_MAX:
            self._syncfs()
            return
        parents = sorted({rel.rpartition("/")[0] for rel in rels}, key=len, reverse=True)
        if len(rels) <= _FSYNC_THREADS:
            for rel in [*rels, *parents]:
                self._fsync_path(rel)
            return
        # Many small files: fsyncs from a few threads (they release the GIL) share
        # the file system's journal commits instead of waiting for one each.
        self.for_each(self._fsync_path, rels, threads=_FSYNC_THREADS)
        self.for_each(self._fsync_path, parents, threads=_FSYNC_THREADS)

    def _syncfs(self) -> None:
        # Thousands of paths: one syncfs(2) of the replica's file system beats a
        # fsync each (measured: 10,000 small files, ~1.3 s more); sync(2) where
        # syncfs is missing.
        try:
            handle = open_directory(self.root)
        except OSError as e:
            raise self._error(".", "flush", e) from e
        try:
            if _syncfs is None or _syncfs(handle) != 0:
                os.sync()
        finally:
            os.close(handle)

    def _fsync_path(self, rel: str) -> None:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            if not rel:
                handle = open_directory(self.root)
            else:
                with self._open_parent(rel) as (fd, leaf):
                    try:
                        handle = os.open(leaf, flags, dir_fd=fd)
                    except OSError as e:
                        if e.errno == errno.ELOOP:
                            return  # a symlink: its directory's fsync makes it durable
                        raise
            try:
                os.fsync(handle)
            finally:
                os.close(handle)
        except OSError as e:
            raise self._error(rel or ".", "flush", e) from e

    def write_file(self, path: str, data: bytes, mode: int, mtime_ns: int) -> None:
        """Write a whole file in place with its mode and mtime, in one open.

        For trees being built from nothing (a forensic replay into an empty
        directory): no temporary name, since there is no old content to keep.
        """
        self.write_new(path, [(0, data)], len(data), mode, mtime_ns)

    def write_new(
        self,
        path: str,
        pieces: Iterable[tuple[int, bytes | memoryview]],
        size: int,
        mode: int,
        mtime_ns: int,
        owner: Owner | None = None,
    ) -> None:
        """Write a file from scratch: ``(offset, bytes)`` pieces, then its size, mode and mtime.

        Bytes no piece covers are zeros (holes). In place, as :meth:`write_file`.
        ``owner``: ``(uid, gid)`` to give it, where this process may.
        """
        with self._parent(path) as (fd, leaf):
            try:
                handle = _create_in(fd, leaf)
                try:
                    end = _write_pieces(handle, pieces, 0)
                    if end != size:
                        os.ftruncate(handle, size)
                    self._chown(handle, owner, os.fstat(handle))
                    os.fchmod(handle, mode)
                    os.utime(handle, ns=(mtime_ns, mtime_ns))
                    if self.fsync:
                        os.fsync(handle)
                finally:
                    os.close(handle)
            except OSError as e:
                raise self._error(path, "write", e) from e

    def restore_bytes(
        self,
        path: str,
        pieces: Iterable[tuple[int, Piece]],
        size: int,
        mode: int | None,
        mtime_ns: int | None,
        owner: Owner | None = None,
        xattrs: Xattrs | None = None,
    ) -> bool:
        """Put back bytes, size, mode, mtime, owner and extended attributes of a regular file.

        The undo of in-place writes (one record's, or a whole coalesced run's), in
        one open. Anything but a regular file at ``path`` (absent, a directory, a
        link) is left alone and False returned: a rewind redoing what a killed one
        did finds there what an undo of an older record put there (the caller
        knows whether that can be). ``pieces`` is consumed only if the file is
        there. Size, mode and mtime are set only where they differ; ``xattrs``
        (None: left as they are) last, as a write or a chown drops
        ``security.capability``, and before the fsync.
        """
        try:
            with self._open_parent(path) as (fd, leaf):
                try:
                    handle = _open_at(fd, leaf, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError as e:
                    if e.errno in {errno.ENOENT, errno.ELOOP, errno.EISDIR, errno.ENOTDIR}:
                        return False
                    raise self._error(path, "restore", e) from e
                try:
                    st = os.fstat(handle)
                    if not stat.S_ISREG(st.st_mode):
                        return False
                    mine = self._own_inode(fd, leaf, path, handle)
                    if mine != handle:  # another inode's link: its copy, in its place
                        handle, st = mine, os.fstat(mine)
                    end = _write_pieces(handle, pieces, st.st_size)
                    if end != size:
                        os.ftruncate(handle, size)
                    chowned = self._chown(handle, owner, st)  # may clear setuid: mode after it
                    if mode is None and chowned:
                        mode = stat.S_IMODE(st.st_mode)
                    if mode is not None and (chowned or stat.S_IMODE(st.st_mode) != mode):
                        os.fchmod(handle, mode)
                    if mtime_ns is not None:
                        os.utime(handle, ns=(mtime_ns, mtime_ns))
                    if xattrs is not None:
                        self._put_xattrs(handle, xattrs)
                    if self.fsync:
                        os.fsync(handle)
                except OSError as e:
                    raise self._error(path, "restore", e) from e
                finally:
                    os.close(handle)
        except (FileNotFoundError, NotADirectoryError):
            return False
        except OSError as e:  # a parent that cannot be opened (no permission)
            raise self._error(path, "restore", e) from e
        return True

    def truncate(self, path: str, size: int) -> None:
        """Cut or extend the file to ``size`` bytes."""
        self.write_ranges(path, (), size)

    def replace(
        self,
        path: str,
        chunks: Iterable[Piece],
        mode: int | None = None,
        owner: Owner | None = None,
    ) -> None:
        """Write a whole new content through temp + fsync + rename.

        A chunk given as an ``int`` is that many zeros, left a hole.

        If ``chunks`` raises (a verification failed) the temporary file is removed
        and the old content stays. ``owner`` None: this process's. Runs of zeros
        are left as holes, as in any new file (a thin image's whole before-image
        comes back thin).
        """
        size = 0

        def pieces() -> Iterator[tuple[int, Piece]]:
            nonlocal size
            for chunk in chunks:
                yield size, chunk
                size += chunk if isinstance(chunk, int) else len(chunk)

        with self._temporary(path, mode, owner) as handle:
            if _write_pieces(handle, pieces(), 0) != size:
                os.ftruncate(handle, size)  # it ends in zeros left unwritten

    def rebuild(
        self,
        path: str,
        ops: Sequence[blocks.Op],
        literals: blocks.LiteralSource,
        *,
        base: str | None,
        result: str | None,
        mode: int | None = None,
        owner: Owner | None = None,
    ) -> Rebuilt:
        """Replace a file by a delta over its own bytes (:func:`blocks.apply_delta_to`).

        The current bytes are read through the open file as the new content is
        written to a temporary file, so memory stays at a chunk whatever the
        file's size. ``base`` and ``result`` are hex :func:`codec.digest128` s
        (None: not checked): ``"done"`` if the file holds ``result`` already (a
        resumed apply or undo), ``"diverged"`` if it does not hold ``base``, a
        copy reaches past its end, or the bytes written do not hash to
        ``result`` (the file is then left as it was); else ``"rebuilt"``.
        ``mode`` and ``owner`` None keep the file's; its extended attributes are
        kept (the master's file kept them: the delta stands for writes in place).
        :func:`event_delta` turns the ops of an event or an undo record into
        ``ops`` and ``literals``.
        """
        with self._reading(path) as handle:
            st = None if handle is None else os.fstat(handle)
            size = 0 if st is None else st.st_size
            if base is not None or result is not None:
                digest = _digest_of(handle).hex()
                if digest == result:
                    return "done"
                if base is not None and digest != base:
                    return "diverged"
            if any(isinstance(op, blocks.Copy) and op.offset + op.length > size for op in ops):
                return "diverged"
            if mode is None and st is not None:
                mode = stat.S_IMODE(st.st_mode)
            if owner is None and st is not None:
                owner = (st.st_uid, st.st_gid)
            xattrs = None if handle is None else read_xattrs(handle)  # the file's, kept
            old: Any = b"" if handle is None else os.fdopen(handle, "rb", 0, closefd=False)
            try:
                with self._temporary(path, mode, owner, xattrs) as out:
                    sink = _Appender(out)
                    blocks.apply_delta_to(old, ops, literals, sink)
                    sink.check(result)
            except (_NotTheResultError, FrameError):  # FrameError: it shrank while read
                return "diverged"
        return "rebuilt"

    @contextlib.contextmanager
    def _temporary(
        self,
        path: str,
        mode: int | None,
        owner: Owner | None = None,
        xattrs: Xattrs | None = None,
    ) -> Iterator[int]:
        """A new file's fd, renamed over ``path`` (fsynced) if the block ends well, else removed.

        It gets ``owner``, ``mode`` and ``xattrs`` (in that order) before the rename.
        """
        with self._parent(path) as (fd, leaf):
            # The first 100 bytes of the name, not characters: 85 CJK ones are 255 bytes.
            head = os.fsdecode(os.fsencode(leaf)[:100])
            tmp = f"{TMP_PREFIX}{head}-{os.getpid()}-{threading.get_ident()}"
            try:
                handle = _create_in(fd, tmp)
                try:
                    yield handle
                    self._chown(handle, owner, None)
                    if mode is not None:
                        os.fchmod(handle, mode)
                    if xattrs is not None:  # none inherited from a default ACL either
                        self._put_xattrs(handle, xattrs)
                    if self.fsync:
                        os.fsync(handle)
                finally:
                    os.close(handle)
                as_owner(lambda: os.rename(tmp, leaf, src_dir_fd=fd, dst_dir_fd=fd), fd)
                if self.fsync:
                    os.fsync(fd)
            except BaseException as e:
                with contextlib.suppress(OSError):
                    as_owner(lambda: os.unlink(tmp, dir_fd=fd), fd)
                if isinstance(e, OSError):
                    raise self._error(path, "replace", e) from e
                raise

    def create(self, path: str, kind: str, mode: int, target: str | None) -> None:
        """Make a file, directory or symlink if it is not there already (idempotent)."""
        with self._parent(path) as (fd, leaf):
            try:
                try:
                    st = os.stat(leaf, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    st = None
                if st is not None and kind_of(st.st_mode) != kind:
                    self._remove_at(fd, leaf, st)
                    st = None
                if kind == "dir":
                    if st is None:
                        as_owner(lambda: os.mkdir(leaf, mode or 0o755, dir_fd=fd), fd)
                    os.chmod(leaf, mode, dir_fd=fd) if mode else None
                elif kind == "symlink":
                    if st is not None:
                        if os.readlink(leaf, dir_fd=fd) == os.fsencode(target or "").decode(
                            "utf-8", "surrogateescape"
                        ):
                            return
                        as_owner(lambda: os.unlink(leaf, dir_fd=fd), fd)
                    link = os.fsencode(target or "")
                    as_owner(lambda: os.symlink(link, leaf, dir_fd=fd), fd)
                elif st is None:
                    # No setuid/setgid yet: the file is this process's (root's) until
                    # its owner is set, which puts the whole mode back after it.
                    mode &= ~_SPECIAL_BITS
                    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                    os.close(as_owner(lambda: os.open(leaf, flags, mode, dir_fd=fd), fd))
                    os.chmod(leaf, mode, dir_fd=fd)
            except OSError as e:
                raise self._error(path, "create", e) from e

    def _remove_at(self, fd: int, leaf: str, st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            sub = os.open(
                leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            try:
                names = os.listdir(sub)
                # Emptied whole: a read-only directory of this user's gets u+wx once
                # (not once a name), its mode back if it outlives this (an error).
                with owner_access(sub) if names and not self.owners else contextlib.nullcontext():
                    for name in names:
                        self._remove_at(sub, name, os.stat(name, dir_fd=sub, follow_symlinks=False))
            finally:
                os.close(sub)
            as_owner(lambda: os.rmdir(leaf, dir_fd=fd), fd)
        else:
            as_owner(lambda: os.unlink(leaf, dir_fd=fd), fd)

    def delete(self, path: str) -> None:
        """Remove a file, link or directory (with its contents); absent is fine."""
        try:
            with self._open_parent(path) as (fd, leaf):
                try:
                    st = os.stat(leaf, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    return
                self._remove_at(fd, leaf, st)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise self._error(path, "delete", e) from e

    def rename(self, path: str, new_path: str) -> None:
        """Move ``path`` to ``new_path``; done already (old gone, new there) is fine."""
        with (
            self._parent(path, create=False) as (src_fd, src_leaf),
            self._parent(new_path) as (
                dst_fd,
                dst_leaf,
            ),
        ):

            def move() -> None:
                os.rename(src_leaf, dst_leaf, src_dir_fd=src_fd, dst_dir_fd=dst_fd)

            try:
                try:
                    move()
                except PermissionError:
                    # Read-only directories of this user's: both parents, and a
                    # directory moved to another parent (its ".." changes).
                    with _moved_dir(src_fd, src_leaf) as moved:
                        as_owner(move, src_fd, dst_fd, *moved)
            except FileNotFoundError:
                return
            except OSError as e:
                raise self._error(path, "rename", e) from e

    def _chown(
        self,
        target: int | str,
        owner: Owner | None,
        st: os.stat_result | None,
        dir_fd: int | None = None,
    ) -> bool:
        """Give ``owner`` to ``target`` unless it has it (``st``); True if done.

        ``target`` is an open file, or a name in the directory ``dir_fd`` (a link
        itself then, never what it points to). A refusal (not root, an id the
        namespace does not map) turns :attr:`owners` off and leaves the file as
        it is: not an error.
        """
        if owner is None or (st is not None and (st.st_uid, st.st_gid) == tuple(owner)):
            return False
        try:
            if dir_fd is None:
                os.chown(target, owner[0], owner[1])
            else:
                os.chown(target, owner[0], owner[1], dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            if e.errno not in _CANNOT_CHOWN:
                raise
            self.owners = False
            return False
        return True

    def get_xattrs(self, path: str) -> Xattrs | None:
        """Extended attributes of ``path`` (a link itself), None if it is not there.

        Read from its parent directory, as every path here is (no link on the way
        followed), kept open where this thread holds its parents (a sync compares
        every path, the applier reads one per before-image).
        """
        try:
            return xattrs_below(self.root, path, self._held.get(threading.get_ident()))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise self._error(path, "read extended attributes of", e) from e

    def comparable(self, xattrs: Xattrs) -> Xattrs:
        """``xattrs`` without those this tree cannot be given (:attr:`xattrs_refused`)."""
        refused = self.xattrs_refused
        if not refused:
            return xattrs
        return {
            k: v
            for k, v in xattrs.items()
            if k not in refused and k.partition(".")[0] not in refused
        }

    def set_xattrs(self, path: str, xattrs: Xattrs) -> bool:
        """Make ``path``'s extended attributes exactly ``xattrs``; True if any changed.

        Names it has and ``xattrs`` lacks are removed. What the system refuses
        is left as it is and its name recorded in :attr:`xattrs_refused`: a
        value too large for this file system, an ACL naming an id a container
        does not map, an NT ACL a container's root may not set, a name the file
        system does not keep (:data:`_CANNOT_SET_XATTR`). Last after
        other changes: a write or a chown drops ``security.capability``, and
        setting a POSIX ACL sets mode bits.
        """
        try:
            with self._open_parent(path) as (fd, leaf):
                where = at_fd(fd, leaf)
                if _shared(os.stat(leaf, dir_fd=fd, follow_symlinks=False)) and (
                    self.comparable(read_xattrs(where)) != self.comparable(xattrs)
                ):
                    self._unshare(fd, leaf, path)
                return self._put_xattrs(where, xattrs)
        except (FileNotFoundError, NotADirectoryError):
            return False  # not there (a rewind resumed after a kill: deleted since)
        except OSError as e:
            raise self._error(path, "set extended attributes", e) from e

    def _put_xattrs(self, where: str | int, xattrs: Xattrs) -> bool:
        """:meth:`set_xattrs` on a path (a link itself) or an open file."""
        changed = False
        have = self.comparable(read_xattrs(where))
        want = self.comparable(xattrs)
        if len(want) < len(xattrs):
            self.xattrs_left_out.update(name for name in xattrs if name not in want)
        for name in [n for n in have if n not in want]:
            changed |= self._xattr(os.removexattr, where, name)
        for name, value in want.items():
            if have.get(name) != value:
                changed |= self._xattr(os.setxattr, where, name, value)
        return changed

    def _xattr(self, call: Callable[..., None], where: str | int, name: str, *value: bytes) -> bool:
        follow = {} if isinstance(where, int) else {"follow_symlinks": False}
        try:
            try:
                call(where, name, *value, **follow)
            except PermissionError as e:
                # user.* needs write access, even for the owner: a user's replica
                # of a read-only file or directory gets it as rsync -X does.
                if e.errno != errno.EACCES or self.owners:
                    raise
                with owner_access(where, stat.S_IWUSR):
                    call(where, name, *value, **follow)
        except OSError as e:
            if e.errno == errno.ENODATA:  # removed already
                return False
            if e.errno not in _CANNOT_SET_XATTR:
                raise
            self.xattrs_refused.add(name)
            if value:  # a removal refused leaves nothing out
                self.xattrs_left_out.add(name)
            return False
        return True

    def meta(self, path: str, st: os.stat_result | None) -> dict[str, Any]:
        """Mode, mtime, owner and extended attributes for a before-image (``st``: its lstat).

        Empty if there was nothing; no ``xattrs`` key if they could not be read.
        """
        if st is None:
            return {}
        meta: dict[str, Any] = {
            "mode": stat.S_IMODE(st.st_mode),
            "mtime_ns": st.st_mtime_ns,
            "owner": [st.st_uid, st.st_gid],
        }
        xattrs = self.get_xattrs(path)
        if xattrs is not None:
            meta["xattrs"] = xattrs
        return meta

    def root_meta(self, sub: str) -> dict[str, Any]:
        """Mode, owner and extended attributes of a master root's copy (a before-image).

        ``sub`` is the root's name in scenario paths: "" for this tree's own
        directory (a scenario of one root), else the directory of that name in
        it. Empty if it is not there.
        """
        if sub:
            st = self.lstat(sub)
            xattrs = self.get_xattrs(sub)
            if st is None or xattrs is None:
                return {}
            return {
                "mode": stat.S_IMODE(st.st_mode),
                "owner": [st.st_uid, st.st_gid],
                "xattrs": xattrs,
            }
        try:
            return own_meta(self.root)
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise self._error(".", "read the metadata of", e) from e

    def set_root(self, sub: str, mode: int, owner: Owner | None, xattrs: Xattrs) -> None:
        """Give a master root's copy (``sub``: see :meth:`root_meta`) its mode, owner, attributes.

        As :meth:`set_meta` and :meth:`set_xattrs` do for a path: an owner or an
        attribute this process may not give is left as it is.
        """
        if sub:
            self.set_meta(sub, mode, None, owner)
            self.set_xattrs(sub, xattrs)
            return
        try:
            fd = open_directory(self.root)
        except OSError as e:
            raise self._error(".", "open the root", e) from e
        try:
            self._chown(fd, owner, os.fstat(fd))
            os.chmod(fd, mode)
            self._put_xattrs(fd, xattrs)  # last: setting an ACL sets mode bits
        except OSError as e:
            raise self._error(".", "set the root's metadata", e) from e
        finally:
            os.close(fd)

    def set_meta(
        self, path: str, mode: int | None, mtime_ns: int | None, owner: Owner | None = None
    ) -> None:
        """Set owner, permission bits and/or mtime (links: owner and mtime only).

        ``owner`` is ``(uid, gid)``; it is set where this process may (root, or
        a group of its own), and left as it is where the system refuses.
        """
        with self._parent(path) as (fd, leaf):
            try:
                st = os.stat(leaf, dir_fd=fd, follow_symlinks=False)
                link = stat.S_ISLNK(st.st_mode)
                if _shared(st) and (
                    mode not in (None, stat.S_IMODE(st.st_mode))
                    or mtime_ns not in (None, st.st_mtime_ns)
                    or (owner is not None and tuple(owner) != (st.st_uid, st.st_gid))
                ):
                    self._unshare(fd, leaf, path)
                if self._chown(leaf, owner, st, fd) and mode is None:
                    mode = stat.S_IMODE(st.st_mode)  # a chown may have cleared setuid
                if mode is not None and not link:
                    os.chmod(leaf, mode, dir_fd=fd)
                if mtime_ns is not None:
                    os.utime(leaf, ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=not link)
            except FileNotFoundError:
                return
            except OSError as e:
                raise self._error(path, "set metadata", e) from e


_SPECIAL_BITS: Final = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX

_NO_TMPFILE: Final = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})
"""What ``open(O_TMPFILE)`` says where the file system (or the kernel) has no such thing."""

_ROOT_XATTRS: Final = ("trusted", "security")
"""Namespaces of extended attributes only root may set (``security.capability`` needs
``CAP_SETFCAP``; an unprivileged process cannot even list ``trusted``)."""

_CANNOT_SET_XATTR: Final = frozenset(
    {
        errno.EPERM,
        errno.EACCES,
        errno.EINVAL,
        errno.ENOSPC,
        errno.E2BIG,
        errno.ERANGE,
        errno.ENOTSUP,
        errno.EOPNOTSUPP,
    }
)
"""Refusals of one extended attribute, left as it is: not permitted to this process (a
container's root may set a capability, not an NT ACL), an ACL naming an id not mapped
here, a value too large for this file system (ext4 says ENOSPC past its block, E2BIG
past 64 KiB), a name it does not keep (``system.nfs4_acl`` on ext4). Replication goes on."""


def _shared(st: os.stat_result) -> bool:
    """Whether ``st`` is a regular file with other names: hard links xoengine never makes."""
    return st.st_nlink > 1 and stat.S_ISREG(st.st_mode)


def _create_in(fd: int, leaf: str) -> int:
    """A new (or emptied) file ``leaf`` in the directory ``fd``, open for writing, mode 0600."""
    return _open_at(fd, leaf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)


def _open_at(fd: int, leaf: str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` of ``leaf`` in the directory ``fd`` for writing, as far as its owner may.

    Refused (EACCES) in a read-only directory of this user's (a new name), or
    on a read-only file of this user's (an existing one), it is opened again
    with ``u+wx`` on the directory, then with ``u+w`` on the file, for the
    open only: the fd stays writable once their modes are back.
    """

    def call() -> int:
        return os.open(leaf, flags, mode, dir_fd=fd)

    try:
        return as_owner(call, fd)
    except PermissionError as e:
        if e.errno != errno.EACCES:
            raise
        refused = e
    with (
        contextlib.suppress(FileNotFoundError),
        owner_access(at_fd(fd, leaf), stat.S_IWUSR) as granted,
    ):
        if granted:
            return call()
    raise refused


@contextlib.contextmanager
def _moved_dir(fd: int, leaf: str) -> Iterator[tuple[int, ...]]:
    """``(fd,)`` of the directory ``leaf`` in ``fd`` for the block; ``()`` if it is none."""
    try:
        handle = os.open(
            leaf, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
        )
    except OSError:
        yield ()
        return
    try:
        yield (handle,)
    finally:
        os.close(handle)


_CANNOT_CHOWN: Final = frozenset({errno.EPERM, errno.EINVAL})
"""Refusals that leave a file with this process's owner: not root (as rsync without
``--super``), or an id the user namespace does not map (a container)."""


class _NotTheResultError(Exception):
    """The bytes a rebuild wrote do not hash to the result it was given."""


class _Appender:
    """A writer that appends to a new file's fd and hashes what it wrote (for ``apply_delta_to``).

    Runs of zeros are left unwritten, holes of the new file (``_nonzero_runs``):
    a delta of a thin image copies its holes' zeros, and they stay holes.
    """

    def __init__(self, handle: int) -> None:
        self.handle = handle
        self.offset = 0
        self.hasher = codec.hasher128()

    def write(self, data: bytes | memoryview, /) -> int:
        view = memoryview(data).cast("B")
        for low, high in _nonzero_runs(view, 0, len(view), self.offset):
            _pwrite_all(self.handle, view[low:high], self.offset + low)
        self.hasher.update(view)
        self.offset += len(view)
        return len(view)

    def check(self, result: str | None) -> None:
        """Give the file its size; :class:`_NotTheResultError` unless it hashes to ``result``."""
        os.ftruncate(self.handle, self.offset)  # it may end in zeros left unwritten
        if result is not None and self.hasher.hexdigest() != result:
            raise _NotTheResultError


def _digest_of(handle: int | None) -> bytes:
    """:func:`codec.digest128` of an open file's bytes, read 1 MiB at a time (of b"" if None)."""
    hasher = codec.hasher128()
    offset = 0
    while handle is not None and (chunk := os.pread(handle, _DIGEST_CHUNK, offset)):
        hasher.update(chunk)
        offset += len(chunk)
    return bytes(hasher.digest())


def _pwrite_all(handle: int, data: bytes | memoryview, offset: int) -> None:
    """All of ``data`` at ``offset``: one call moves at most ~2 GiB on Linux."""
    view = memoryview(data).cast("B")
    while view:
        done = os.pwrite(handle, view, offset)
        view, offset = view[done:], offset + done


def pread_all(handle: int, length: int, offset: int) -> bytes:
    """``length`` bytes at ``offset`` (fewer only at the end): one call reads ~2 GiB at most."""
    first = os.pread(handle, length, offset) if length > 0 else b""
    if len(first) == length or not first:
        return first
    parts = [first]
    got = len(first)
    while got < length and (more := os.pread(handle, length - got, offset + got)):
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def event_delta(
    ops: Iterable[Sequence[Any]], blob: Callable[[Any], Buffer]
) -> tuple[list[blocks.Op], blocks.LiteralSource]:
    """The ops of an event or undo record as :mod:`blocks` ops and their literal source.

    ``("copy", offset, length)`` takes old bytes; ``("data", ref, length)``
    takes the bytes ``blob(ref)`` gives (a blob id, or the name of the record
    argument that holds one).
    """
    delta: list[blocks.Op] = []
    refs: dict[int, Any] = {}
    cursor = 0
    for kind, ref, length in ops:
        if kind == "copy":
            delta.append(blocks.Copy(ref, length))
        else:
            refs[cursor] = ref
            delta.append(blocks.Literal(cursor, length))
        cursor += length
    return delta, lambda offset, _: blob(refs[offset])


def read_whole(
    fd: int, st: os.stat_result, scratch: str
) -> tuple[bytes | mmap.mmap, list[tuple[int, int]] | None]:
    """The bytes of an open file (``st``: its fstat), and its :func:`data_of` them.

    The one way a master file is read whole (a capture, a synchronization):
    the segments let a thin image's holes go unread, unhashed and unjournaled
    (see :func:`_bytes_of` for where the bytes are held).
    """
    data = _bytes_of(fd, st.st_size, scratch)
    return data, data_of(fd, st, len(data))


def _bytes_of(fd: int, size: int, scratch: str) -> bytes | mmap.mmap:
    """The bytes of an open file (``size`` from its fstat): in memory, or a private mapped copy.

    A file larger than :data:`HOLD_MAX` is copied in the kernel to an unnamed
    file in the directory ``scratch`` (``O_TMPFILE``: nothing is left behind,
    even by a kill) and mapped: whoever reads it whole (a delta, a block map)
    then reads page cache the kernel can reclaim, not process memory (a 20 GiB
    file is not 20 GiB of RAM), and the copy is private, so nothing truncates
    it under the map. A file system without ``O_TMPFILE`` (NFS, FAT) gets a
    named file, unlinked at once. Where no copy can be made at all (no space,
    no such directory) the file is read into memory. ``OSError`` of the source
    propagates.
    """
    if size <= HOLD_MAX:
        return pread_all(fd, size, 0)
    try:
        copy = _unnamed_file(scratch)
    except OSError:
        return pread_all(fd, size, 0)
    try:
        copy_sparse(fd, copy)
        if os.fstat(copy).st_size == 0:  # emptied while copied: nothing to map
            return b""
        return mmap.mmap(copy, 0, access=mmap.ACCESS_READ)
    except OSError:
        return pread_all(fd, size, 0)
    finally:
        os.close(copy)  # the map holds the unnamed file until it is dropped


def _unnamed_file(directory: str) -> int:
    """A new file in ``directory`` that no name reaches, open for reading and writing."""
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno not in _NO_TMPFILE:
            raise
    handle, name = tempfile.mkstemp(prefix=TMP_PREFIX, dir=directory)  # then unnamed at once
    os.unlink(name)
    return handle


def kind_of(mode: int) -> str:
    """file, dir, symlink or special for an ``st_mode``."""
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISREG(mode):
        return "file"
    return "special"


# -- the undo log ----------------------------------------------------------------------


@dataclass(frozen=True)
class UndoRecord:
    """What undoes one change: ``op`` and its arguments (blob ids for bytes).

    ops: ``created`` (undo = delete), ``bytes`` (restore ``pieces`` and the old
    size), ``content`` (rebuild from ``ops`` over the new content),
    ``deleted`` (recreate kind/mode/mtime/target and content blobs),
    ``renamed`` (move back), ``meta`` (restore mode and mtime).
    """

    position: int
    op: str
    path: str
    args: dict[str, Any] = field(default_factory=dict)


_XATTRS_ID: Final = "xattrs_id"
"""An undo record's key for the blob id of its extended attributes (see :meth:`UndoLog.put`)."""

_OWN_IDS: Final = "own_ids"
"""An undo record's key for the ids of the blobs it holds a reference to in its log's own table."""

_OWN: Final = b"u"
"""First byte of the id of a blob in an undo log's own table (26 bytes; the journal's are 25)."""


def undo_blob_size(blob_id: bytes) -> int:
    """Length of the bytes of a blob id an undo record holds (either table; no lookup)."""
    return BlobTable.size_of(blob_id[1:] if len(blob_id) > BlobTable.ID_SIZE else blob_id)


class UndoLog:
    """Before-images of one replica, keyed by journal position (durable before each change)."""

    def __init__(self, store: Store, name: str) -> None:
        """Use tables ``<name>.undo``, ``<name>.undo-horizon``, ``.undo.blobs`` and ``.undo.refs``.

        Before-images whose bytes the journal's blob table holds already (what
        an earlier write put there) point at them: those are never deleted.
        The others go to the log's own blob table, with a count of the records
        that point at each (``.undo.refs``), and leave it with their last
        record: a trim or a rewind frees what it drops, in its transaction.
        """
        self.store = store
        self.tables = self.table_names(name)
        self.table, self.horizon_table, self.refs_table, own = self.tables
        self.blobs = BlobTable(store)
        self.own = BlobTable(store, own)
        store.ensure(self.table, self.horizon_table, self.refs_table)

    @staticmethod
    def table_names(name: str) -> tuple[str, str, str, str]:
        """The tables of the undo log ``name``: records, horizon, counts and own blobs."""
        undo = f"{name}.undo"
        return undo, f"{name}.undo-horizon", f"{undo}.refs", f"{undo}{BLOB_SUFFIX}"

    # -- reachability: what a rewind can reach exactly ---------------------------------------
    #
    # ``floor``: records at or below it were trimmed; no exact rewind below it.
    # ``gaps``: [low, high) pairs: a rewind back to ``low`` consumed the records
    # after it, and the next record written (``high``) followed a different path
    # (a resynchronization): states strictly between are reached by undoing to
    # ``low`` and applying forward. ``high`` is None while the gap is open.

    def _meta(self, txn: ReadTxn, key: bytes, default: Any) -> Any:
        value = txn.get(self.horizon_table, key)
        return default if value is None else codec.unpack(codec.unframe(key, value))

    def _set_meta(self, txn: WriteTxn, key: bytes, value: Any) -> None:
        txn.put(self.horizon_table, key, codec.frame(key, codec.pack(value)))

    def floor(self, txn: ReadTxn) -> int:
        """Highest position whose before-images were trimmed away (0: none)."""
        return int(self._meta(txn, b"floor", 0))

    def gaps(self, txn: ReadTxn) -> list[tuple[int, int | None]]:
        """Gaps left by rewinds (see the comment above), in order; only the last may be open.

        A gap still open when the next one opens (the replica went from its
        ``low`` to the next ``low`` recording nothing: no file event between)
        ends at the next one's ``low``. Left open, it claimed every position up
        to the replica's, and a rewind into it after a trim undid down to a
        ``low`` whose records were gone, then applied the journal again over a
        tree that already held it.
        """
        stored = [(lo, hi) for lo, hi in self._meta(txn, b"gaps", [])]
        return [
            (lo, stored[i + 1][0] if hi is None and i + 1 < len(stored) else hi)
            for i, (lo, hi) in enumerate(stored)
        ]

    def volume(self, txn: ReadTxn) -> int | None:
        """The file system the replica was on at its last synchronization (None: unknown)."""
        value = self._meta(txn, b"volume", None)
        return None if value is None else int(value)

    def set_volume(self, txn: WriteTxn, fsid: int | None) -> None:
        """Note the file system a synchronization just built the replica on."""
        if fsid is not None:
            self._set_meta(txn, b"volume", fsid)

    def undoing(self, txn: ReadTxn) -> bool:
        """Whether a rewind of this log started and did not finish (see ``rewind_back``)."""
        return bool(self._meta(txn, b"undoing", default=False))

    def set_undoing(self, txn: WriteTxn, value: bool) -> None:
        """Note that a rewind of this log starts (True) or finished (False)."""
        self._set_meta(txn, b"undoing", value)

    def rewound_print(self, txn: ReadTxn) -> bytes | None:
        """The replica's print as its last rewind left it (None: none noted)."""
        value = self._meta(txn, b"rewound-print", None)
        return None if value is None else bytes(value)

    def set_rewound_print(self, txn: WriteTxn, value: bytes | None) -> None:
        """Note the replica's print as a rewind leaves it (see ``Scenario.resume``).

        None: nothing to compare with; ``b""``: used (matches no print).
        """
        self._set_meta(txn, b"rewound-print", value)

    def open_gap(self, txn: WriteTxn, low: int) -> None:
        """Note that the records after ``low`` were consumed by a rewind."""
        kept = [[lo, hi] for lo, hi in self.gaps(txn) if lo < low and (hi is None or hi <= low)]
        self._set_meta(txn, b"gaps", [*kept, [low, None]])

    def raise_floor(self, txn: WriteTxn, upto: int) -> None:
        """Note that records at or below ``upto`` were trimmed."""
        self._set_meta(txn, b"floor", max(self.floor(txn), upto))
        kept = [[lo, hi] for lo, hi in self.gaps(txn) if hi is None or hi > upto]
        self._set_meta(txn, b"gaps", kept)

    @staticmethod
    def _key(position: int, seq: int) -> bytes:
        return encode_position(position) + seq.to_bytes(4, "big")

    def last_position(self, txn: ReadTxn) -> int:
        """The highest position that has records (0: none)."""
        last = txn.last(self.table)
        return 0 if last is None else int.from_bytes(last[0][:8], "big")

    def has(self, txn: ReadTxn, position: int) -> bool:
        """Whether before-images for ``position`` are recorded already."""
        key = self._key(position, 0)
        return any(True for _ in txn.items(self.table, key, prefix=key[:8]))

    def put(self, txn: WriteTxn, position: int, seq: int, image: Image) -> None:
        """Record one before-image and its bytes (first wins: re-application keeps the original).

        A non-empty set of extended attributes is stored as a blob, once for
        every record that holds the same set (an NT ACL of a few KiB would
        otherwise be repeated in each before-image of the file's writes);
        :meth:`records` gives it back in ``args["xattrs"]``.
        """
        key = self._key(position, seq)
        if txn.get(self.table, key) is not None:
            return
        op, path, args, data = image
        own: list[bytes] = []
        args = args | {
            name: self._store(txn, value() if callable(value) else value, own)
            for name, value in data.items()
        }
        if args.get("xattrs"):
            shared = codec.pack(dict(sorted(args["xattrs"].items())))
            args = {k: v for k, v in args.items() if k != "xattrs"}
            args[_XATTRS_ID] = self._store(txn, shared, own)
        if own:
            args[_OWN_IDS] = own
        body = codec.pack([op, path, args])
        txn.put(self.table, key, codec.frame(key, body), overwrite=False)
        gaps = self.gaps(txn)
        if gaps and gaps[-1][1] is None and position > gaps[-1][0]:
            self._set_meta(
                txn, b"gaps", [*[[lo, hi] for lo, hi in gaps[:-1]], [gaps[-1][0], position]]
            )

    def _store(self, txn: WriteTxn, data: bytes | memoryview, own: list[bytes]) -> bytes:
        """The id of ``data``: the journal's blob if it holds these bytes, else one of our own."""
        key = content_key(data)
        shared = self.blobs.find(txn, data, key)
        if shared is not None:
            return shared
        blob_id, new = self.own.add(txn, data, key)
        if not new:  # held by another record too: counted (no count: held by one)
            count = self._refs(txn, blob_id) + 1
            txn.put(self.refs_table, blob_id, codec.frame(blob_id, codec.pack(count)))
        own.append(blob_id)
        return _OWN + blob_id

    def _refs(self, txn: ReadTxn, blob_id: bytes) -> int:
        """How many records hold an own blob: its count, or one if it has none."""
        refs = txn.get(self.refs_table, blob_id)
        return 1 if refs is None else int(codec.unpack(codec.unframe(blob_id, refs)))

    def _release(self, txn: WriteTxn, key: bytes, value: bytes) -> None:
        """Delete one record; its own blobs go with their last reference."""
        _, _, args = codec.unpack(codec.unframe(key, value, where=self.table))
        for blob_id in args.get(_OWN_IDS, ()):
            count = self._refs(txn, blob_id) - 1
            if count > 1:
                txn.put(self.refs_table, blob_id, codec.frame(blob_id, codec.pack(count)))
            elif count == 1:
                txn.delete(self.refs_table, blob_id)
            else:
                self.own.discard(txn, blob_id)
        txn.delete(self.table, key)

    def view(self, blob_id: bytes, txn: ReadTxn | None = None) -> memoryview:
        """The verified bytes of a blob id an undo record holds (in our table or the journal's)."""
        if len(blob_id) > BlobTable.ID_SIZE and blob_id[:1] == _OWN:
            return self.own.view(blob_id[1:], txn)
        return self.blobs.view(blob_id, txn)

    def check(self) -> list[str]:
        """Where the records, the reference counts and the own blob table disagree ([]: nowhere).

        Each own blob is stored exactly while a record holds it, and counted
        once per record that holds it when more than one does (no count: one).
        """
        held: dict[bytes, int] = {}
        with self.store.read() as txn:
            for key, value in txn.items(self.table):
                _, _, args = codec.unpack(codec.unframe(key, value, where=self.table))
                for blob_id in args.get(_OWN_IDS, ()):
                    held[blob_id] = held.get(blob_id, 0) + 1
            counted = {
                k: codec.unpack(codec.unframe(k, v, where=self.refs_table))
                for k, v in txn.items(self.refs_table)
            }
            stored = {k for k, _ in txn.items(self.own.table)}
        problems = []
        for blob_id in sorted(held.keys() | counted.keys() | stored):
            records = held.get(blob_id, 0)
            count = counted.get(blob_id, 1 if blob_id in stored else 0)
            stray = counted.get(blob_id, 2) < 2  # a count is kept for two records or more
            if records != count or (blob_id in stored) != (records > 0) or stray:
                problems.append(
                    f"blob {blob_id.hex()}: held by {records} records, counted {count}, "
                    f"{'stored' if blob_id in stored else 'missing'}"
                )
        return problems

    def record(self, txn: WriteTxn, position: int, images: list[Image]) -> None:
        """Store the before-images of one position; keep existing ones."""
        if self.has(txn, position):
            return  # re-application after a crash: the original images stay
        for seq, image in enumerate(images):
            self.put(txn, position, seq, image)

    def records(
        self, after: int = 0, upto: int | None = None, *, reverse: bool = False
    ) -> list[UndoRecord]:
        """Records with ``after < position <= upto``, in (reverse) journal order."""
        out: list[UndoRecord] = []
        sets: dict[bytes, Xattrs] = {}
        with self.store.read() as txn:
            for key, value in txn.items(self.table, self._key(after + 1, 0)):
                position = int.from_bytes(key[:8], "big")
                if upto is not None and position > upto:
                    break
                op, path, args = codec.unpack(codec.unframe(key, value, where=self.table))
                args.pop(_OWN_IDS, None)
                if _XATTRS_ID in args:
                    blob_id = args.pop(_XATTRS_ID)
                    if blob_id not in sets:
                        sets[blob_id] = codec.unpack(self.view(blob_id, txn))
                    args["xattrs"] = dict(sets[blob_id])
                out.append(UndoRecord(position, op, path, args))
        if reverse:
            out.reverse()
        return out

    def position_sizes(self) -> list[tuple[int, int]]:
        """(position, bytes of its records and their blobs) for every position held."""
        sizes: dict[int, int] = {}
        with self.store.read() as txn:
            for key, value in txn.items(self.table):
                position = int.from_bytes(key[:8], "big")
                _, _, args = codec.unpack(codec.unframe(key, value, where=self.table))
                blob_bytes = sum(  # a shared set of attributes not counted: stored once
                    undo_blob_size(v)
                    for k, v in args.items()
                    if isinstance(v, bytes)
                    and len(v) in {BlobTable.ID_SIZE, BlobTable.ID_SIZE + 1}
                    and k != _XATTRS_ID
                )
                sizes[position] = sizes.get(position, 0) + len(value) + blob_bytes
        return sorted(sizes.items())

    def trim(self, upto: int) -> int:
        """Drop every record at or before ``upto`` (and what only they held); return how many."""
        return self.store.write(lambda txn: self.trim_in(txn, upto))

    def trim_in(self, txn: WriteTxn, upto: int) -> int:
        """:meth:`trim` inside ``txn`` (the one that journals the trim)."""
        doomed = list(self._upto(txn, upto))
        for key, value in doomed:
            self._release(txn, key, value)
        self.raise_floor(txn, upto)
        return len(doomed)

    def count_upto(self, txn: ReadTxn, upto: int) -> int:
        """How many records lie at or before ``upto``."""
        return sum(1 for _ in self._upto(txn, upto))

    def _upto(self, txn: ReadTxn, upto: int) -> Iterator[tuple[bytes, bytes]]:
        """The records at or before ``upto``, oldest first."""
        for key, value in txn.items(self.table):
            if int.from_bytes(key[:8], "big") > upto:
                return
            yield key, value

    def drop(self, txn: WriteTxn, position: int) -> None:
        """Delete the records of ``position`` (a rewind undid them), and what only they held."""
        prefix = encode_position(position)
        for key, value in list(txn.items(self.table, prefix, prefix=prefix)):
            self._release(txn, key, value)

    def usage(self, txn: ReadTxn) -> tuple[int, int]:
        """(records, bytes of pages its tables hold): its records and the blobs only it holds.

        Before-images that point at the journal's blobs take no room here.
        """
        return txn.count(self.table), sum(txn.page_bytes(t) for t in self.tables)

    def size(self) -> tuple[int, int]:
        """(records, bytes of frames) held."""
        count = 0
        total = 0
        with self.store.read() as txn:
            for _, value in txn.items(self.table):
                count += 1
                total += len(value)
        return count, total


def image_of_existing(tree: ReplicaTree, path: str, st: os.stat_result, *, deleted: bool) -> Image:
    """Before-image of a path about to be deleted or replaced: kind, metadata, content."""
    kind = kind_of(st.st_mode)
    args: dict[str, Any] = {"kind": kind, **tree.meta(path, st)}
    blobs: dict[str, ImageBytes] = {}
    if kind == "symlink":
        args["target"] = tree.readlink(path)
    elif kind == "file":
        parts = list(blob_chunks(0, st.st_size))
        if len(parts) <= 1:
            blobs["content"] = tree.read(path)
        else:  # saved as several blobs, restored in order, each read as it is stored
            # A part wholly in a hole of a thin image is a count of zeros, not a blob
            # (consecutive ones one count): a 1 TiB image's holes are not read.
            data = tree.data_segments(path, 0, st.st_size) if thin(st) else [(0, st.st_size)]
            holes = blocks.Holes(data, st.st_size, BLOB_MAX)
            names: list[str | int] = []
            for index, (offset, length) in enumerate(parts):
                last = names[-1] if names else None
                if holes.covers(offset, length) is None:
                    names.append(f"content.{index}")
                    blobs[f"content.{index}"] = functools.partial(tree.read, path, offset, length)
                elif isinstance(last, int):
                    names[-1] = last + length
                else:
                    names.append(length)
            args["chunks"] = names
    return ("deleted" if deleted else "replaced", path, args, blobs)


def image_of_writes(
    tree: ReplicaTree, path: str, ranges: Iterable[tuple[int, int]], new_size: int
) -> Image:
    """Before-image of in-place writes over ``ranges`` that leave the file ``new_size`` long."""
    st = tree.lstat(path)
    old_size = 0 if st is None else st.st_size
    # Fewer blocks than bytes: the file may have holes (a thin image). Their zeros
    # are noted, not read and stored, and a rewind makes them holes again.
    sparse = st is not None and thin(st)
    spans: list[list[Any]] = []
    wanted: list[tuple[int, int]] = []
    holes: list[list[int]] = []

    def take(low: int, high: int, stem: str) -> None:
        """The before-image of ``[low, high)``: its data in blobs, its holes noted."""
        cursor, part = low, 0
        for start, stop in tree.data_segments(path, low, high) if sparse else [(low, high)]:
            if start > cursor:
                holes.append([cursor, start - cursor])
            for at, size in blob_chunks(start, stop - start):
                spans.append([at, stem if part == 0 else f"{stem}.{part}"])
                wanted.append((at, size))
                part += 1
            cursor = stop
        if cursor < high:
            holes.append([cursor, high - cursor])

    for index, (offset, length) in enumerate(ranges):
        if min(offset + length, old_size) > offset:
            take(offset, min(offset + length, old_size), f"b{index}")
    if old_size > new_size:  # the change also cuts the file
        take(new_size, old_size, "tail")
    pieces: dict[str, ImageBytes]
    if sum(length for _, length in wanted) <= _EAGER_IMAGE:
        # Every before-image through one open of the file.
        read = tree.read_ranges(path, wanted) if wanted else []
        pieces = {name: data for (_, name), data in zip(spans, read, strict=True)}
    else:  # a large cut or rewrite: each chunk read as it is stored
        pieces = {
            name: functools.partial(tree.read, path, start, length)
            for (_, name), (start, length) in zip(spans, wanted, strict=True)
        }
    if st is None:
        return ("created", path, {}, {})
    args = {"old_size": old_size, "spans": spans, **tree.meta(path, st)}
    if holes:  # zeros that were no data (a thin file's holes): none stored
        args["holes"] = holes
    return ("bytes", path, args, pieces)
