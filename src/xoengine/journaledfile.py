"""The journaled file object: a master file whose writes are journaled as exact byte ranges.

Room: producers, above ``capture`` (it journals through a scenario's
:class:`~xoengine.capture.Capture`). May import what ``capture`` may, and
``capture``.
"""

from __future__ import annotations

import errno
import functools
import os
from typing import IO, TYPE_CHECKING, Any, Final, Self

from xoengine.blobtable import BLOB_MAX, blob_chunks
from xoengine.blocks import BlockMap, coalesce_ranges
from xoengine.capture import Capture, CaptureResult, _entry_observed, _observed
from xoengine.errors import ConfigurationError, PathError
from xoengine.events import (
    BytesWritten,
    FileEvent,
    FileTruncated,
)
from xoengine.masterstate import pack_digests, racy, without_holes
from xoengine.tree import holes_of, pread_all
from xoengine.walk import (
    Entry,
    at_fd,
    entry_from_stat,
    normalize_relpath,
    open_parent,
    resolve_under,
    stat_entry,
)

if TYPE_CHECKING:
    from xoengine.manifest import FileState

__all__ = ["JournaledFile"]

_DIGEST_READ: Final = 64 * 1024 * 1024
"""Bytes read at a time to refresh the block digests of what a flush changed."""


# -- the journaled file object ------------------------------------------------------------


class JournaledFile:
    """A binary file on the master whose writes are journaled as exact byte ranges.

    Writes go to the file at once; the ranges are journaled on :meth:`flush`,
    on :meth:`close` and whenever more than :data:`BLOB_MAX` bytes are buffered.
    A file the open creates or truncates (modes ``w``, ``x``, ``a`` on a new
    file) is journaled at the next flush even if nothing is written, and so
    are parent directories the master state lacks. A file changed outside
    the journal since it was last captured is captured at open, so journaled
    ranges always apply over what the replicas hold. A path the scenario's
    include/exclude patterns leave out is an ordinary, unjournaled file.
    Parents and the file itself are never reached through a symlink.
    """

    def __init__(self, capture: Capture, path: str, mode: str) -> None:
        """Open scenario path ``path`` on the master (``mode`` as for ``open``, binary)."""
        if (
            not isinstance(mode, str)
            or set(mode) - set("rwxab+")
            or sum(mode.count(c) for c in "rwxa") != 1
            or any(mode.count(c) > 1 for c in "b+")
        ):
            raise ConfigurationError(detail=f"a file's mode is r, w, x or a, with b or +: {mode!r}")
        if "b" not in mode:
            mode += "b"
        self._capture = capture
        self.path = normalize_relpath(path)
        index, rel = capture.layout.split(self.path)
        self._journaled = capture._filter.selects(rel, is_dir=False)
        # Like the walker, never follow a symlink below the root: a parent that is
        # one is refused (SymlinkedParentError), and so is a leaf (O_NOFOLLOW).
        resolve_under(capture.layout.roots[index], rel)
        if self._journaled:
            self._catch_up(index, rel, truncating="w" in mode)
        # Opened from its parent, made if missing, each directory on the way opened
        # without following a link (one swapped in after the check above would lead
        # the truncation and the writes out of the master).
        with open_parent(capture.layout.roots[index], rel, create=True) as (parent, leaf):
            existed = os.path.lexists(at_fd(parent, leaf))
            # Read access even for "w"/"a" modes: flush reads back what was written.
            try:
                self._file: IO[bytes] = open(  # noqa: SIM115
                    leaf, mode, opener=functools.partial(_read_write_opener, dir_fd=parent)
                )
            except OSError as e:  # a link (never followed), a directory, a name too long ...
                link = e.errno == errno.ELOOP
                detail = "a symbolic link (never followed)" if link else e.strerror
                raise PathError(path=self.path, detail=detail or str(e)) from None
        if not self._file.seekable():  # a fifo, a socket: no byte ranges to journal
            self._file.close()
            raise PathError(path=self.path, detail="not a regular file")
        self._ranges: list[tuple[int, int]] = []
        self._buffered = 0
        # The smallest size the file had since the last flush (None: never cut).
        self._cut: int | None = 0 if ("w" in mode or not existed) else None
        self.closed = False

    def _catch_up(self, index: int, rel: str, *, truncating: bool) -> None:
        """Capture what changed behind the journal's back on the way to this file.

        Journaled ranges apply over what the replicas hold. If the file (or a
        parent: a directory made, a file replaced by a directory) changed since
        the last capture, that is captured first; otherwise the new ranges would
        land on content or parents the replicas do not have, and the stat the
        next flush records would hide the change from later captures.
        """
        capture = self._capture
        root = capture.layout.roots[index]
        prefix = capture.layout.prefix(index)
        parts = rel.split("/")
        stale = None
        with capture.store.read() as txn:
            for depth in range(1, len(parts) + 1):
                sub = "/".join(parts[:depth])
                state = capture.state.manifest.get(txn, prefix + sub)
                entry = stat_entry(root, sub)
                if state is None and entry is None:
                    break  # neither here nor below: the open makes it
                leaf = depth == len(parts)
                if state is None or entry is None or state.kind != entry.kind:
                    stale = prefix + sub
                    break
                known = [state.size, state.mode, state.mtime_ns, state.ctime_ns, state.ino]
                # A racy file's stat cannot say it is unchanged: let the scan look.
                if (
                    leaf
                    and not truncating
                    and (_entry_observed(entry, 0)[:5] != known or racy(state))
                ):
                    stale = prefix + sub
        if stale is not None:
            capture.scan([stale])

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at the current position; it is journaled at the next flush."""
        offset = self._file.tell()
        written = self._file.write(data)
        if written:
            self._ranges.append((offset, written))
            self._buffered += written
            if self._buffered >= BLOB_MAX:
                self.flush()
        return written

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the file position."""
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        """The file position."""
        return self._file.tell()

    def read(self, size: int = -1) -> bytes:
        """Read (nothing to journal)."""
        return self._file.read(size)

    def truncate(self, size: int | None = None) -> int:
        """Cut (or extend) the file; journaled at the next flush."""
        result = self._file.truncate(size)
        self._cut = result if self._cut is None else min(self._cut, result)
        return result

    def flush(self) -> None:
        """Journal what changed since the last flush (one transaction)."""
        self._file.flush()
        if not self._journaled or (not self._ranges and self._cut is None):
            return
        ranges = coalesce_ranges(self._ranges)
        cut = self._cut
        self._ranges, self._buffered, self._cut = [], 0, None
        try:
            self._journal(ranges, cut)
        except BaseException:
            # Nothing of it is journaled (one transaction): the next flush journals it
            # with what is written meanwhile, never a stat that vouches for bytes it left.
            self._ranges[:0] = ranges
            self._buffered += sum(n for _, n in ranges)
            if cut is not None:
                self._cut = cut if self._cut is None else min(self._cut, cut)
            raise

    def _journal(self, ranges: list[tuple[int, int]], cut: int | None) -> None:
        """Journal ``ranges`` written and the file ``cut`` to that size (if not None)."""
        capture = self._capture
        with capture.lock:
            capture.check_not_removed()
            capture._result = CaptureResult()
            capture._versions = {}
            fd = self._file.fileno()
            st = os.fstat(fd)
            index, rel = capture.layout.split(self.path)
            prefix = capture.layout.prefix(index)
            parts = rel.split("/")[:-1]
            parents = [prefix + "/".join(parts[: d + 1]) for d in range(len(parts))]
            with capture.store.read() as txn:
                missing = [p for p in parents if capture.state.manifest.get(txn, p) is None]
                state = capture.state.manifest.get(txn, self.path)
            # Parent directories the master state lacks come first (this open made
            # them, or they were not captured yet), as a capture would journal them.
            for parent in missing:
                rel_parent = capture.layout.split(parent)[1]
                if capture._wanted(rel_parent, "dir"):
                    entry = stat_entry(capture.layout.roots[index], rel_parent)
                    if entry is not None and entry.kind == "dir":
                        capture._create(parent, entry)
            if state is None:
                # A new file: journal it as a creation with its whole content.
                capture._create(self.path, _fd_entry(self.path, st))
                capture._flush()
                return
            self._queue_changes(state, ranges, cut, st)
            capture._flush()

    def _queue_changes(
        self,
        state: FileState,
        ranges: list[tuple[int, int]],
        cut: int | None,
        st: os.stat_result,
    ) -> None:
        capture = self._capture
        fd = self._file.fileno()
        bs = capture.state.block_size
        size = st.st_size
        observed = _observed(st)
        scenario = capture.scenario
        pieces = [  # one blob each, whatever one write() was
            (start, pread_all(fd, length, start))
            for o, n in ranges
            if o < size
            for start, length in blob_chunks(o, n)
        ]
        pieces = [(o, d) for o, d in pieces if d]
        low = min(state.size, size if cut is None else min(cut, size))
        if cut is not None and cut < min(state.size, size):
            # The file was cut below what it holds now: the bytes between the cut and
            # the current size that no write covers are zeros on the master but old
            # data on a replica. A truncation to the cut first makes them zeros there.
            version = capture._next_version(state)
            cut_at = cut
            truncated = FileTruncated(
                originator_id=state.file_id,
                originator_version=version,
                timestamp=FileTruncated.create_timestamp(),
                scenario=scenario,
                path=self.path,
                observed=[],
                size=cut_at,
                digests=[[-(-cut_at // bs), b""]],
            )
            capture._queue(lambda _ids: truncated, [])
        # Block digests to refresh: blocks the writes touched, and every block from
        # the lowest size the file had (a cut, a hole or an extension) to its end.
        last_block = -(-size // bs)
        spans = [(o // bs, min(last_block, -(-(o + len(d)) // bs))) for o, d in pieces]
        if low != size or size != state.size:
            spans.append((low // bs, last_block))
        spans = [(a, a + n) for a, n in coalesce_ranges([(a, b - a) for a, b in spans if b > a])]
        # Past the block holding the lowest size, none is stored: a hole there needs
        # none either (a block without one is zeros), and is not read.
        fresh = low // bs + 1
        step = max(1, _DIGEST_READ // bs)  # blocks per read: memory stays bounded
        holes = holes_of(fd, st, step * bs)
        digests: list[list[Any]] = []
        for a, b in spans:
            for lo in range(a, b, step):
                hi = min(b, lo + step)
                if lo >= fresh and holes is not None and holes.covers(lo * bs, (hi - lo) * bs):
                    continue
                region = pread_all(fd, (hi - lo) * bs, lo * bs)
                packed = pack_digests(BlockMap.compute(region, bs))
                digests += without_holes(lo, packed, capture.state.hole, fresh)
        version = capture._next_version(state)

        common: dict[str, Any] = {
            "originator_id": state.file_id,
            "originator_version": version,
            "scenario": scenario,
            "path": self.path,
            "observed": observed,
            "size": size,
            "digests": digests,
        }

        def make(ids: list[bytes]) -> FileEvent:
            if not pieces:  # only the size moved
                return FileTruncated(timestamp=FileTruncated.create_timestamp(), **common)
            ranges = [[o, len(d), b] for (o, d), b in zip(pieces, ids, strict=True)]
            return BytesWritten(timestamp=BytesWritten.create_timestamp(), ranges=ranges, **common)

        capture._queue(make, [d for _, d in pieces])
        capture._result.updated += 1

    def close(self) -> None:
        """Journal what is left and close the file."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self._file.close()
            self.closed = True

    def __enter__(self) -> Self:
        """Use as a context manager."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Close (journaling what is left)."""
        self.close()


def _read_write_opener(path: str, flags: int, *, dir_fd: int) -> int:
    if flags & os.O_WRONLY:
        flags = (flags & ~os.O_WRONLY) | os.O_RDWR
    # Never waits (a FIFO there opens at once, and is refused as not seekable).
    flags |= os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    return os.open(path, flags, 0o666, dir_fd=dir_fd)


def _fd_entry(path: str, st: os.stat_result) -> Entry:
    return entry_from_stat(path, "file", st)
