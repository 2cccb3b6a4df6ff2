"""Capture: turn what happened on the master into file events, and fold them into the master state.

Room: producers and projections. May import ``errors``, ``codec``, ``datastore``,
``events``, ``journal``, ``blocks``, ``manifest``, ``layout``, ``walk``.

Three sources produce the same events:

- :meth:`Capture.scan` compares the master tree with the master state (a
  manifest: size, mode, mtime, ctime, inode and block digests per path) and
  journals the differences. A content change whose mtime was put back is
  still caught: putting an mtime back changes the ctime.
- the live watcher (``xoengine.watch``) calls :meth:`Capture.scan` with the
  paths it saw change, so the tree is not rescanned.
- :class:`JournaledFile` (``sc.open``) journals its writes as exact ranges.

Changed content is journaled as cheaply as the change allows: changed aligned
blocks as :class:`~xoengine.events.BytesWritten`; when the size changed and
data shifted, an rsync-style delta (:func:`blocks.delta`) as
:class:`~xoengine.events.ContentReplaced`, if that carries fewer bytes. Bytes
go to the blob table; events carry blob ids.

:class:`MasterState` is the fold of file events into the manifest. It runs
inside the append transaction (the journal's ``inline`` hook), so the master
state is exactly as current as the journal, and it can be dropped and rebuilt
from the journal alone.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Final, Protocol, Self

import numpy as np

from xoengine import blocks, codec
from xoengine.blocks import BlockMap, Copy
from xoengine.errors import TreeWarning, XoError
from xoengine.events import (
    BytesWritten,
    ContentReplaced,
    FileCreated,
    FileDeleted,
    FileEvent,
    FileRenamed,
    FileTruncated,
    MetadataChanged,
    new_id,
)
from xoengine.manifest import DIGEST_WIDTH, FileState, Manifest
from xoengine.walk import (
    Entry,
    PathFilter,
    entry_from_stat,
    normalize_relpath,
    resolve_under,
    stat_entry,
    walk,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from xoengine.datastore import ReadTxn, Store, WriteTxn
    from xoengine.journal import BlobTable
    from xoengine.layout import Layout

__all__ = [
    "Capture",
    "CaptureResult",
    "ChangeWhileReadWarning",
    "JournaledFile",
    "MasterState",
    "ScanProgress",
    "pack_digests",
    "unpack_map",
]

BLOB_MAX: Final = 4 * 1024 * 1024
_CHUNK: Final = 16 * 1024 * 1024
"""Largest blob a capture stores (longer ranges are split)."""

FLUSH_BYTES: Final = 64 * 1024 * 1024
FLUSH_EVENTS: Final = 2000
_PACKED = np.dtype([("strong", "<u8"), ("weak", "<u4")])


class ChangeWhileReadWarning(TreeWarning):
    """{path!r} changed while it was read: {detail}."""

    code = "W2010"
    hint = "The next capture (or the live watcher) journals the final content."


# -- block digests in the manifest ------------------------------------------------------


def pack_digests(block_map: BlockMap, first: int = 0, last: int | None = None) -> bytes:
    """Blocks ``first..last-1`` of ``block_map`` in the manifest's 12-byte layout."""
    count = block_map.block_count
    last = count if last is None else min(last, count)
    packed = np.empty(max(last - first, 0), dtype=_PACKED)
    packed["strong"] = block_map.digest_array()[first:last]
    packed["weak"] = block_map.weak_array()[first:last]
    return packed.tobytes()


def unpack_map(packed: bytes, size: int, block_size: int) -> BlockMap:
    """A :class:`BlockMap` for ``size`` bytes from manifest digests (file digest unknown)."""
    records = np.frombuffer(packed, dtype=_PACKED)
    return BlockMap(
        block_size=block_size,
        size=size,
        digests=records["strong"].astype("<u8").tobytes(),
        weak=records["weak"].astype("<u4").tobytes(),
        file_digest=bytes(16),
    )


def _observed(st: os.stat_result | None) -> list[int]:
    """The stat of a file just read, with the time it was taken (call right after fstat)."""
    if st is None:
        return []
    return [
        st.st_size,
        stat.S_IMODE(st.st_mode),
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
        time.time_ns(),
    ]


RACY_WINDOW_NS: Final = 20_000_000
"""How close to its stat's timestamps a file may be seen and still be racy (ns).

A filesystem stamps files with a coarse clock: a jiffy (up to 10 ms) on Linux
before multigrain timestamps (6.13), a whole second on ext4 with 128-byte
inodes or on many NFS servers, two seconds on FAT. A file whose stat was taken
within one tick of its mtime or ctime may be rewritten, same size, in that very
tick: its stat then shows nothing. Such a file is *racy* (git's term) and the
capture reads it again while its stat stays the same (see ``Capture._racy``).
"""
RACY_WINDOW_WHOLE_SECONDS_NS: Final = 2_000_000_000
"""The window for timestamps that are whole seconds (filesystems without sub-second time)."""


def _racy_window(state: FileState) -> int:
    whole = state.mtime_ns % 1_000_000_000 == 0 and state.ctime_ns % 1_000_000_000 == 0
    return RACY_WINDOW_WHOLE_SECONDS_NS if whole else RACY_WINDOW_NS


def racy(state: FileState) -> bool:
    """Whether ``state``'s stat was taken too soon after its timestamps to vouch for it."""
    if state.kind != "file" or not state.size or not state.observed_ns:
        return False
    return state.observed_ns - max(state.mtime_ns, state.ctime_ns) < _racy_window(state)


# -- the fold ----------------------------------------------------------------------------


class MasterState:
    """The master-state projection of one scenario: a fold of its file events into a manifest."""

    def __init__(self, scenario: str, manifest: Manifest, block_size: int) -> None:
        """Fold ``scenario``'s events into ``manifest``."""
        self.scenario = scenario
        self.manifest = manifest
        self.block_size = block_size

    def fold(self, txn: WriteTxn, event: FileEvent) -> None:
        """Apply one file event to the manifest (inside the append transaction)."""
        manifest = self.manifest
        if isinstance(event, FileRenamed):
            self._rename(txn, event.path, event.new_path, event.originator_version)
            return
        if isinstance(event, FileDeleted):
            old = manifest.get(txn, event.path)
            manifest.remove(txn, event.path)
            if old is not None:
                manifest.cut_digests(txn, old.file_id, 0)
            return
        if isinstance(event, FileCreated):
            state = FileState(
                file_id=event.originator_id,
                version=event.originator_version,
                kind=event.kind,
                mode=event.mode,
                mtime_ns=event.mtime_ns,
                target=event.target,
                size=len(os.fsencode(event.target)) if event.target is not None else 0,
            )
        else:
            current = manifest.get(txn, event.path)
            if current is None:  # a stream the master state never saw: ignore, never invent
                return
            state = current.evolve(version=event.originator_version)
            if isinstance(event, MetadataChanged):
                state = state.evolve(mode=event.mode, mtime_ns=event.mtime_ns)
            elif isinstance(event, (BytesWritten, FileTruncated, ContentReplaced)):
                state = state.evolve(size=event.size)
                nblocks = -(-event.size // self.block_size)
                for first, packed in event.digests:
                    manifest.set_digests(txn, state.file_id, first, packed, None)
                manifest.cut_digests(txn, state.file_id, nblocks)
        if event.observed:
            size, mode, mtime_ns, ctime_ns, ino, dev, *when = event.observed
            state = state.evolve(
                size=size,
                mode=mode,
                mtime_ns=mtime_ns,
                ctime_ns=ctime_ns,
                ino=ino,
                dev=dev,
                observed_ns=when[0] if when else 0,
            )
        manifest.put(txn, event.path, state)

    def _rename(self, txn: WriteTxn, old: str, new: str, version: int) -> None:
        manifest = self.manifest
        moving = [(old, manifest.get(txn, old))]
        moving += list(manifest.items(txn, old + "/"))
        for path, state in moving:
            if state is None:
                continue
            manifest.remove(txn, path)
            moved = new + path[len(old) :]
            manifest.put(txn, moved, state.evolve(version=version) if path == old else state)

    def block_map(self, txn: ReadTxn, state: FileState) -> BlockMap:
        """The block map the master state holds for a file."""
        nblocks = -(-state.size // self.block_size)
        return unpack_map(
            self.manifest.digests(txn, state.file_id, nblocks), state.size, self.block_size
        )


# -- capture ---------------------------------------------------------------------------------


@dataclass
class CaptureResult:
    """What one capture pass journaled."""

    events: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    renamed: int = 0
    metadata: int = 0
    bytes_journaled: int = 0
    bytes_changed: int = 0
    positions: list[int] = field(default_factory=list)
    warnings: list[XoError] = field(default_factory=list)

    @property
    def last_position(self) -> int:
        """The last position this pass appended (0 if none)."""
        return self.positions[-1] if self.positions else 0


@dataclass
class _Pending:
    """One event waiting for its blobs: ``make(blob_ids)`` builds it once they are stored."""

    make: Callable[[list[bytes]], FileEvent]
    blobs: list[bytes | memoryview]


class Capture:
    """Journals the changes of one scenario's master tree.

    ``append(events, inline)`` appends domain events in one transaction and runs
    ``inline(txn, positions)`` in it; the engine wires it to the journal.
    """

    def __init__(
        self,
        scenario: str,
        layout: Layout,
        state: MasterState,
        store: Store,
        blobs: BlobTable,
        append: Callable[[Sequence[FileEvent], Callable[[WriteTxn, list[int]], None]], list[int]],
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
    ) -> None:
        """Capture ``scenario`` (its master roots in ``layout``) into the journal."""
        self.scenario = scenario
        self.layout = layout
        self.state = state
        self.store = store
        self.blobs = blobs
        self._append = append
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self._filter = PathFilter(self.include, self.exclude)
        self.lock = threading.RLock()  # one capture at a time per scenario
        self._pending: list[_Pending] = []
        self._chunk: bytearray | None = None  # the streaming read buffer, reused
        self._known: dict[str, FileState] | None = None  # decoded master state, see _collect
        self._pending_bytes = 0
        self._versions: dict[uuid.UUID, int] = {}
        self._result = CaptureResult()
        self._settled: set[tuple[str, int]] = set()  # racy files re-read after their tick
        self._committer: _Committer | None = None  # set during scan(): commits off-thread
        self._progress: ScanProgress | None = None

    # -- scanning ------------------------------------------------------------------------------

    def scan(
        self, scopes: Iterable[str] | None = None, progress: ScanProgress | None = None
    ) -> CaptureResult:
        """Journal every difference between the master and the master state.

        ``scopes`` limits the pass to those scenario paths and what is below them
        (the live watcher's dirty set); None scans every root. ``progress`` is
        told when the walk is done and as each path has been read (a
        synchronizer running beside the scan copies a file only after that).

        Batches are committed by a writer thread while the next batch is read
        and hashed (LMDB commits release the GIL); their order is kept, and
        the scan returns only when every batch is committed.
        """
        with self.lock:
            self._result = CaptureResult()
            self._versions = {}
            self._progress = progress
            self._committer = _Committer()
            try:
                walked, known = self._collect(scopes)
                if progress is not None:
                    progress.walked()
                self._diff(walked, known)
                self._flush()
                self._committer.finish()
            finally:
                self._committer.close()
                self._committer = None
                self._progress = None
            return self._result

    def _collect(
        self, scopes: Iterable[str] | None
    ) -> tuple[dict[str, Entry], dict[str, FileState]]:
        walked: dict[str, Entry] = {}
        known: dict[str, FileState] = {}
        layout = self.layout
        with self.store.read() as txn:
            if scopes is None:
                # Only this capture (under its lock) changes the master state, so the
                # decoded manifest stays valid until the next append: a no-change pass
                # decodes nothing.
                if self._known is None:
                    self._known = dict(self.state.manifest.items(txn))
                known = dict(self._known)
            else:
                for scope in _top_scopes(scopes):
                    held = self.state.manifest.get(txn, scope)
                    if held is not None:
                        known[scope] = held
                    known.update(self.state.manifest.items(txn, scope + "/"))
        if scopes is None:
            for index, root in enumerate(layout.roots):
                self._walk_into(walked, root, layout.prefix(index))
            return walked, known
        for scope in _top_scopes(scopes):
            index, rel = layout.split(scope)
            root = layout.roots[index]
            entry = stat_entry(root, rel)
            if entry is None or not self._wanted(rel, entry.kind) or entry.kind == "special":
                continue
            walked[scope] = entry
            if entry.kind == "dir":
                self._walk_into(walked, os.path.join(root, rel), layout.prefix(index) + rel + "/")
        self._widen_for_moves(walked, known)
        return walked, known

    def _widen_for_moves(self, walked: dict[str, Entry], known: dict[str, FileState]) -> None:
        """Bring a moved path's old name into a scoped pass (its notification may be lost)."""
        new = {(e.dev, e.inode): p for p, e in walked.items() if p not in known}
        if not new:
            return
        with self.store.read() as txn:
            everything = list(self.state.manifest.items(txn))
        for path, state in everything:
            if path in known or (state.dev, state.ino) not in new:
                continue
            index, rel = self.layout.split(path)
            still = stat_entry(self.layout.roots[index], rel)
            if still is not None and still.inode == state.ino:
                continue  # a hard link, not a move
            known[path] = state
            prefix = path + "/"
            known.update((p, s) for p, s in everything if p.startswith(prefix))

    def _wanted(self, rel: str, kind: str) -> bool:
        return self._filter.selects(rel, is_dir=kind == "dir")

    def _walk_into(self, walked: dict[str, Entry], root: str, prefix: str) -> None:
        tree = walk(root, self.include, self.exclude)
        with contextlib.closing(tree):
            for entry in tree:
                if entry.kind == "special":
                    continue
                walked[prefix + entry.relpath] = entry
        self._result.warnings.extend(tree.warnings)

    def _diff(self, walked: dict[str, Entry], known: dict[str, FileState]) -> None:
        # 1. Renames (they move known entries, so the steps below see them moved).
        self._find_renames(walked, known)
        # 2. Creations and changes, parents before children (walk order).
        # ``walked`` is in walk order (each directory right before its contents), all
        # this loop needs: no sort on the no-change path.
        for path in list(walked):
            entry = walked[path]
            state = known.get(path)
            if state is not None and state.kind != entry.kind:
                self._delete_tree(path, known)
                state = None
            if state is None:
                self._create(path, entry)
            else:
                self._update(path, entry, state)
            if self._progress is not None:
                self._progress.read(path)
        # 3. Deletions, children before parents.
        for path in sorted((p for p in known if p not in walked), key=os.fsencode, reverse=True):
            self._delete(path, known[path])
            del known[path]

    def _find_renames(self, walked: dict[str, Entry], known: dict[str, FileState]) -> None:
        """Journal moves: a new path (or a changed kind) with a vanished path's inode and kind.

        Parents first, so a directory's move carries its children, and their own
        moves are then found at their new place.
        """
        gone = {(s.dev, s.ino): p for p, s in known.items() if p not in walked and s.ino}
        candidates = [p for p in walked if p not in known or known[p].kind != walked[p].kind]
        for path in sorted(candidates, key=lambda p: p.count("/")):
            entry = walked[path]
            old = gone.get((entry.dev, entry.inode))
            if old is None or old not in known or known[old].kind != entry.kind:
                continue
            if path.startswith(old + "/") or old.startswith(path + "/"):
                continue  # into itself, or out of the directory it replaces
            if not self._parents_are_dirs(path, known):
                continue  # under what the replica still holds as a file or link
            if path in known:
                if known[path].kind == entry.kind:
                    continue  # moved into place already, with its parent
                self._delete_tree(path, known)  # the kind changed: replaced by the moved one
            self._create_parents(path, walked, known)
            self._rename(old, path, known)
            for key, was in gone.items():
                if was.startswith(old + "/"):
                    gone[key] = path + was[len(old) :]

    @staticmethod
    def _parents_are_dirs(path: str, known: dict[str, FileState]) -> bool:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            state = known.get("/".join(parts[:depth]))
            if state is not None and state.kind != "dir":
                return False
        return True

    def _rename(self, old: str, new: str, known: dict[str, FileState]) -> None:
        state = known[old]
        version = self._next_version(state)
        event = FileRenamed(
            originator_id=state.file_id,
            originator_version=version,
            timestamp=FileRenamed.create_timestamp(),
            scenario=self.scenario,
            path=old,
            observed=[],
            new_path=new,
        )
        self._queue(lambda _ids: event, [])
        self._result.renamed += 1
        for path in [old, *[p for p in known if p.startswith(old + "/")]]:
            moved = new + path[len(old) :]
            moving = known.pop(path)
            known[moved] = moving.evolve(version=version) if path == old else moving

    def _delete_tree(self, path: str, known: dict[str, FileState]) -> None:
        for child in sorted(
            (p for p in known if p.startswith(path + "/")), key=os.fsencode, reverse=True
        ):
            self._delete(child, known.pop(child))
        self._delete(path, known.pop(path))

    def _delete(self, path: str, state: FileState) -> None:
        event = FileDeleted(
            originator_id=state.file_id,
            originator_version=self._next_version(state),
            timestamp=FileDeleted.create_timestamp(),
            scenario=self.scenario,
            path=path,
            observed=[],
        )
        self._queue(lambda _ids: event, [])
        self._result.deleted += 1

    def _next_version(self, state: FileState) -> int:
        version = self._versions.get(state.file_id, state.version) + 1
        self._versions[state.file_id] = version
        return version

    def _abs(self, path: str) -> str:
        index, rel = self.layout.split(path)
        return os.path.join(self.layout.roots[index], rel)

    def _create(self, path: str, entry: Entry) -> uuid.UUID:
        file_id = new_id()
        self._versions[file_id] = 1
        created = FileCreated(
            originator_id=file_id,
            originator_version=1,
            timestamp=FileCreated.create_timestamp(),
            scenario=self.scenario,
            path=path,
            observed=[] if entry.kind == "file" else _entry_observed(entry),
            kind=entry.kind,
            mode=entry.mode,
            mtime_ns=entry.mtime_ns,
            target=entry.target,
        )
        self._queue(lambda _ids: created, [])
        self._result.created += 1
        if entry.kind == "file":
            state = FileState(file_id=file_id, version=1, kind="file", mode=entry.mode)
            self._capture_content(path, state, None)
        return file_id

    def _create_parents(
        self, path: str, walked: dict[str, Entry], known: dict[str, FileState]
    ) -> None:
        """Journal the new directories above ``path`` before something is moved into them.

        So a replica (and a rewind of it) sees the directory made, then the move,
        as on the master; step 2 of the diff then finds them known and unchanged.
        """
        parts = path.split("/")
        for depth in range(1 if self.layout.single else 2, len(parts)):
            parent = "/".join(parts[:depth])
            entry = walked.get(parent)
            if parent in known or entry is None or entry.kind != "dir":
                continue
            file_id = self._create(parent, entry)
            known[parent] = FileState(
                file_id=file_id,
                version=1,
                kind="dir",
                mode=entry.mode,
                mtime_ns=entry.mtime_ns,
                ctime_ns=entry.ctime_ns,
                ino=entry.inode,
                dev=entry.dev,
            )

    def _update(self, path: str, entry: Entry, state: FileState) -> None:
        same_stat = (
            entry.size == state.size
            and entry.mtime_ns == state.mtime_ns
            and entry.ctime_ns == state.ctime_ns
            and entry.inode == state.ino
        )
        if entry.kind == "symlink" and entry.target != state.target:
            # Checked before the stat: a link re-made in the same tick on a reused
            # inode can show the old stat (a link's size is its target's length).
            self._delete(path, state)
            self._create(path, entry)
            return
        if same_stat and entry.kind == "file" and self._racy(path, state):
            # The stat cannot vouch for the bytes: look at them. A content event
            # carries the new stat (a new mode too); same bytes journal only a
            # mode that moved.
            self._capture_content(path, state, state, quiet=entry.mode == state.mode)
            return
        if same_stat and entry.mode == state.mode:
            return
        if entry.kind == "file" and not same_stat:
            self._capture_content(path, state, state)
            return  # content events carry the new stat (observed); metadata included
        if entry.mode != state.mode or entry.mtime_ns != state.mtime_ns or not same_stat:
            event = MetadataChanged(
                originator_id=state.file_id,
                originator_version=self._next_version(state),
                timestamp=MetadataChanged.create_timestamp(),
                scenario=self.scenario,
                path=path,
                observed=_entry_observed(entry),
                mode=entry.mode,
                mtime_ns=entry.mtime_ns,
            )
            self._queue(lambda _ids: event, [])
            self._result.metadata += 1

    # -- content -----------------------------------------------------------------------------

    def _read(self, path: str) -> tuple[bytes, os.stat_result] | None:
        """Read a regular file consistently (retry once if it changes while read)."""
        full = self._abs(path)
        for attempt in range(2):
            try:
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                self._result.warnings.append(ChangeWhileReadWarning(path=path, detail=e.strerror))
                return None
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    return None
                data = _read_all(fd, before.st_size)
                after = os.fstat(fd)
            except OSError as e:
                self._result.warnings.append(ChangeWhileReadWarning(path=path, detail=e.strerror))
                return None
            finally:
                os.close(fd)
            if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns) and len(
                data
            ) == after.st_size:
                return data, after
            if attempt:
                self._result.warnings.append(
                    ChangeWhileReadWarning(path=path, detail="size or mtime moved during the read")
                )
                return data, after
        return None

    def _racy(self, path: str, state: FileState) -> bool:
        """Whether an unchanged stat cannot vouch for ``path``: read its bytes again.

        Once a re-read happens after the racy window has passed, any later
        write moves the stat, so that version of the file is settled for the
        life of this capture (a new process re-reads it once more).
        """
        if not racy(state):
            return False
        key = (path, state.version)
        if key in self._settled:
            return False
        if time.time_ns() - max(state.mtime_ns, state.ctime_ns) >= _racy_window(state):
            self._settled.add(key)
        return True

    def _capture_content(
        self, path: str, state: FileState, old: FileState | None, *, quiet: bool = False
    ) -> None:
        """Journal what changed in ``path``'s bytes (``quiet``: nothing if they did not)."""
        if old is not None and old.size > 0:
            with self.store.read() as txn:
                old_map = self.state.block_map(txn, old)
            streamed = self._stream_changes(path, old_map)
            if streamed is None:
                return
            runs, size, st = streamed
            bs = self.state.block_size
            changed = sum(len(d) for _, d in runs)
            # Shifted data is worth a delta; a change confined to the old tail (an
            # append, a cut) is cheaper as in-place writes: the replica writes in
            # place and its undo is a truncate, not a whole-file rebuild.
            tail_only = bool(runs) and runs[0][0] >= (old.size // bs) * bs
            if size == old.size or changed <= bs or tail_only:
                if not runs and size == old.size:
                    # Same bytes: only metadata moved (e.g. touch); keep the stat current.
                    if not quiet:
                        self._metadata_only(path, state, _observed(st))
                    return
                self._write_runs(path, state, runs, _observed(st), size)
                return
        got = self._read(path)
        if got is None:
            return
        data, st = got
        observed = _observed(st)  # first: its time must not lag the fstat (racy rule)
        bs = self.state.block_size
        new_map = BlockMap.compute(data, bs)
        view = memoryview(data)
        if old is None or old.size == 0:
            ranges = [(0, len(data))] if data else []
            self._write_ranges(path, state, view, ranges, new_map, observed, len(data))
            return
        ranges = blocks.changed_ranges(old_map, new_map)
        aligned_bytes = sum(length for _, length in ranges)
        ops = blocks.delta(old_map, view, new_map=new_map)
        literal = blocks.literal_bytes(ops)
        if literal + 2 * bs < aligned_bytes:
            self._replace(path, state, view, ops, old, new_map, observed)
            return
        self._write_ranges(path, state, view, ranges, new_map, observed, len(data))

    def _stream_changes(
        self, path: str, old_map: BlockMap
    ) -> tuple[list[tuple[int, bytes]], int, os.stat_result] | None:
        """Read a file in chunks through one reused buffer; return its changed block runs.

        Only the strong digests are computed while streaming (weak sums are made
        for the changed blocks alone), and nothing but changed bytes is kept.
        """
        bs = self.state.block_size
        full = self._abs(path)
        if self._chunk is None:
            self._chunk = bytearray(max(bs, _CHUNK - _CHUNK % bs))
        view = memoryview(self._chunk)
        old_digests = old_map.digest_array()
        for attempt in range(2):
            try:
                fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                self._result.warnings.append(ChangeWhileReadWarning(path=path, detail=e.strerror))
                return None
            runs: list[tuple[int, bytes]] = []
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    return None
                offset = 0
                with os.fdopen(fd, "rb", buffering=0, closefd=False) as reader:
                    while True:
                        got = reader.readinto(view) or 0
                        if got:
                            self._changed_runs(view[:got], offset, old_digests, old_map.size, runs)
                            offset += got
                        if got < len(view):
                            break
                after = os.fstat(fd)
            except OSError as e:
                self._result.warnings.append(ChangeWhileReadWarning(path=path, detail=e.strerror))
                return None
            finally:
                os.close(fd)
            steady = (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)
            if steady and offset == after.st_size:
                return runs, offset, after
            if attempt:
                self._result.warnings.append(
                    ChangeWhileReadWarning(path=path, detail="size or mtime moved during the read")
                )
                return runs, offset, after
        return None

    def _changed_runs(
        self,
        chunk: memoryview,
        offset: int,
        old_digests: Any,
        old_size: int,
        runs: list[tuple[int, bytes]],
    ) -> None:
        bs = self.state.block_size
        digests = blocks.block_digests(chunk, bs)
        first = offset // bs
        old = old_digests[first : first + len(digests)]
        differs = np.ones(len(digests), dtype=bool)
        differs[: len(old)] = digests[: len(old)] != old
        # A short last block with the same digest but another length is a change too.
        last = len(digests) - 1
        if last >= 0 and not differs[last] and last < len(old):
            start = (first + last) * bs
            if min(bs, old_size - start) != len(chunk) - last * bs:
                differs[last] = True
        for index in np.flatnonzero(differs).tolist():
            begin = index * bs
            data = bytes(chunk[begin : begin + bs])
            at = offset + begin
            if runs and runs[-1][0] + len(runs[-1][1]) == at and len(runs[-1][1]) < BLOB_MAX:
                runs[-1] = (runs[-1][0], runs[-1][1] + data)
            else:
                runs.append((at, data))

    def _write_runs(
        self,
        path: str,
        state: FileState,
        runs: list[tuple[int, bytes]],
        observed: list[int],
        size: int,
    ) -> None:
        bs = self.state.block_size
        # Digests of the changed blocks only, one span per run: the event stays small.
        spans = [[at // bs, pack_digests(BlockMap.compute(data, bs))] for at, data in runs]
        self._bytes_written(path, state, runs, spans, observed, size)

    def _metadata_only(self, path: str, state: FileState, observed: list[int]) -> None:
        event = MetadataChanged(
            originator_id=state.file_id,
            originator_version=self._next_version(state),
            timestamp=MetadataChanged.create_timestamp(),
            scenario=self.scenario,
            path=path,
            observed=observed,
            mode=observed[1],
            mtime_ns=observed[2],
        )
        self._queue(lambda _ids: event, [])
        self._result.metadata += 1

    def _write_ranges(
        self,
        path: str,
        state: FileState,
        view: memoryview,
        ranges: list[tuple[int, int]],
        new_map: BlockMap,
        observed: list[int],
        size: int,
    ) -> None:
        bs = self.state.block_size
        pieces = [
            (offset, view[offset : offset + min(BLOB_MAX, start + length - offset)])
            for start, length in ranges
            for offset in range(start, start + length, BLOB_MAX)
        ]
        spans = [
            [start // bs, pack_digests(new_map, start // bs, -(-(start + length) // bs))]
            for start, length in ranges
        ]
        self._bytes_written(path, state, pieces, spans, observed, size)

    def _bytes_written(
        self,
        path: str,
        state: FileState,
        pieces: Sequence[tuple[int, bytes | memoryview]],
        spans: list[list[Any]],
        observed: list[int],
        size: int,
    ) -> None:
        """Queue one BytesWritten: ``pieces`` become blobs, ``spans`` the new block digests."""
        version = self._next_version(state)
        scenario = self.scenario

        def make(ids: list[bytes]) -> FileEvent:
            return BytesWritten(
                originator_id=state.file_id,
                originator_version=version,
                timestamp=BytesWritten.create_timestamp(),
                scenario=scenario,
                path=path,
                observed=observed,
                ranges=[[at, len(data), b] for (at, data), b in zip(pieces, ids, strict=True)],
                size=size,
                digests=spans,
            )

        self._queue(make, [data for _, data in pieces])
        self._result.bytes_changed += sum(len(data) for _, data in pieces)
        self._result.updated += 1

    def _replace(
        self,
        path: str,
        state: FileState,
        view: memoryview,
        ops: list[blocks.Op],
        old: FileState,
        new_map: BlockMap,
        observed: list[int],
    ) -> None:
        literals = [(op.offset, op.length) for op in ops if not isinstance(op, Copy)]
        pieces = [
            (offset, min(BLOB_MAX, start + length - offset))
            for start, length in literals
            for offset in range(start, start + length, BLOB_MAX)
        ]
        version = self._next_version(state)
        scenario = self.scenario
        base = self._base_digest(old)
        result = codec.digest128(view).hex()
        digests = [[0, pack_digests(new_map)]]
        size = len(view)

        def make(ids: list[bytes]) -> FileEvent:
            by_offset = dict(zip((o for o, _ in pieces), ids, strict=True))
            plain: list[list[Any]] = []
            for op in ops:
                if isinstance(op, Copy):
                    plain.append(["copy", op.offset, op.length])
                else:
                    for offset in range(op.offset, op.offset + op.length, BLOB_MAX):
                        length = min(BLOB_MAX, op.offset + op.length - offset)
                        plain.append(["data", by_offset[offset], length])
            return ContentReplaced(
                originator_id=state.file_id,
                originator_version=version,
                timestamp=ContentReplaced.create_timestamp(),
                scenario=scenario,
                path=path,
                observed=observed,
                ops=plain,
                size=size,
                base=base,
                result=result,
                digests=digests,
            )

        self._queue(make, [view[o : o + n] for o, n in pieces])
        self._result.bytes_changed += sum(n for _, n in pieces)
        self._result.updated += 1

    def _base_digest(self, old: FileState) -> str:
        # The xxh3-128 of the old content is not in the manifest; the replica keeps
        # the old content, so it checks against the digest of what the journal
        # says the file held. Reconstructing it is costly, so it is left to the
        # replica: an empty base means "check block digests instead".
        del old
        return ""

    # -- batching ------------------------------------------------------------------------------

    def _queue(
        self, make: Callable[[list[bytes]], FileEvent], data: list[bytes | memoryview]
    ) -> None:
        self._pending.append(_Pending(make, data))
        self._pending_bytes += sum(len(d) for d in data)
        if self._pending_bytes >= FLUSH_BYTES or len(self._pending) >= FLUSH_EVENTS:
            self._flush()

    def forget_master_state(self) -> None:
        """Drop the decoded copy of the master state (after it was changed elsewhere)."""
        self._known = None

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        self._pending_bytes = 0
        if not pending:
            return
        self._known = None
        if self._committer is not None:
            self._committer.submit(lambda: self._commit(pending))
        else:
            self._commit(pending)

    def _commit(self, pending: list[_Pending]) -> None:
        # Blobs first (own transaction): an event never references a missing blob;
        # a crash in between leaves only unreferenced blobs.
        flat = [d for p in pending for d in p.blobs]
        ids: list[bytes] = []
        if flat:
            # Room for the batch first: a map filling in mid-batch would abort and rerun it.
            size = sum(len(d) for d in flat)
            self.store.reserve(size + size // 8 + (1 << 20))
            ids = self.store.write(lambda txn: [self.blobs.put(txn, d) for d in flat])
        events: list[FileEvent] = []
        cursor = 0
        for item in pending:
            n = len(item.blobs)
            events.append(item.make(ids[cursor : cursor + n]))
            cursor += n

        def fold(txn: WriteTxn, _positions: list[int]) -> None:
            for event in events:
                self.state.fold(txn, event)

        positions = self._append(events, fold)
        result = self._result
        result.events += len(events)
        result.positions.extend(positions)
        result.bytes_journaled += sum(len(d) for d in flat)


class ScanProgress(Protocol):
    """What a scan tells a reader that follows it (a synchronizer copying behind it)."""

    def walked(self) -> None:
        """The master tree was walked: every path the scan will journal is known."""

    def read(self, path: str) -> None:
        """``path`` was read (its content is in the batch being journaled)."""


class _Committer:
    """One writer thread running commits in order, at most one behind the caller.

    ``submit`` waits for the previous commit first, so at most two batches are
    held in memory, and a failure surfaces in the caller at its next submit or
    at ``finish``.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _run(self, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as e:  # noqa: BLE001 (handed back to the caller in finish)
            self._error = e

    def submit(self, work: Callable[[], None]) -> None:
        self.finish()
        self._thread = threading.Thread(
            target=self._run, args=(work,), name="xoengine-capture-commit", daemon=True
        )
        self._thread.start()

    def finish(self) -> None:
        """Wait for the running commit; raise its error, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Wait for the running commit (an error already being raised wins)."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._error = None


def _read_all(fd: int, size: int) -> bytes:
    chunks = []
    remaining = size
    while True:
        chunk = os.read(fd, max(remaining, 1 << 20) if remaining > 0 else 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _top_scopes(scopes: Iterable[str]) -> list[str]:
    ordered = sorted({normalize_relpath(s) for s in scopes}, key=os.fsencode)
    top: list[str] = []
    for scope in ordered:
        if not any(scope == t or scope.startswith(t + "/") for t in top):
            top.append(scope)
    return top


def _entry_observed(entry: Entry) -> list[int]:
    return [entry.size, entry.mode, entry.mtime_ns, entry.ctime_ns, entry.inode, entry.dev]


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
        if "b" not in mode:
            mode += "b"
        self._capture = capture
        self.path = normalize_relpath(path)
        full = capture._abs(self.path)
        index, rel = capture.layout.split(self.path)
        self._journaled = capture._filter.selects(rel, is_dir=False)
        # Like the walker, never follow a symlink below the root: a parent that is
        # one is refused (SymlinkedParentError), and so is a leaf (O_NOFOLLOW).
        resolve_under(capture.layout.roots[index], rel)
        if self._journaled:
            self._catch_up(index, rel, truncating="w" in mode)
        self._make_parents(index, rel)
        existed = os.path.lexists(full)
        # Read access even for "w"/"a" modes: flush reads back what was written.
        self._file: IO[bytes] = open(full, mode, opener=_read_write_opener)  # noqa: SIM115
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
                if leaf and not truncating and (_entry_observed(entry)[:5] != known or racy(state)):
                    stale = prefix + sub
        if stale is not None:
            capture.scan([stale])

    def _make_parents(self, index: int, rel: str) -> None:
        root = self._capture.layout.roots[index]
        parts = rel.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            with contextlib.suppress(FileExistsError):
                os.mkdir(os.path.join(root, *parts[:depth]))

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
        ranges = _coalesce(self._ranges)
        cut = self._cut
        self._ranges, self._buffered, self._cut = [], 0, None
        capture = self._capture
        with capture.lock:
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
                old_packed = (
                    capture.state.manifest.digests(
                        txn, state.file_id, -(-state.size // capture.state.block_size)
                    )
                    if state is not None
                    else b""
                )
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
            self._queue_changes(state, old_packed, ranges, cut, st)
            capture._flush()

    def _queue_changes(
        self,
        state: FileState,
        old_packed: bytes,
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
        pieces = [(o, os.pread(fd, n, o)) for o, n in ranges if o < size]
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
        spans = [(a, b) for a, b in _coalesce([(a, b - a) for a, b in spans if b > a])]
        spans = [(a, a + n) for a, n in spans]
        first = spans[0][0] if spans else last_block
        last = spans[-1][1] if spans else last_block
        packed = bytearray(old_packed[: last * DIGEST_WIDTH].ljust(last * DIGEST_WIDTH, b"\0"))
        for a, b in spans:
            region = os.pread(fd, (b - a) * bs, a * bs)
            packed[a * DIGEST_WIDTH : b * DIGEST_WIDTH] = pack_digests(BlockMap.compute(region, bs))
        digests = [[first, bytes(packed[first * DIGEST_WIDTH : last * DIGEST_WIDTH])]]
        version = capture._next_version(state)

        def make(ids: list[bytes]) -> FileEvent:
            if not pieces:
                return FileTruncated(
                    originator_id=state.file_id,
                    originator_version=version,
                    timestamp=FileTruncated.create_timestamp(),
                    scenario=scenario,
                    path=self.path,
                    observed=observed,
                    size=size,
                    digests=digests,
                )
            return BytesWritten(
                originator_id=state.file_id,
                originator_version=version,
                timestamp=BytesWritten.create_timestamp(),
                scenario=scenario,
                path=self.path,
                observed=observed,
                ranges=[[o, len(d), b] for (o, d), b in zip(pieces, ids, strict=True)],
                size=size,
                digests=digests,
            )

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


def _read_write_opener(path: str, flags: int) -> int:
    if flags & os.O_WRONLY:
        flags = (flags & ~os.O_WRONLY) | os.O_RDWR
    return os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, 0o666)


def _coalesce(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, length in sorted(ranges):
        if out and start <= out[-1][0] + out[-1][1]:
            prev_start, prev_len = out[-1]
            out[-1] = (prev_start, max(prev_start + prev_len, start + length) - prev_start)
        else:
            out.append((start, length))
    return out


def _fd_entry(path: str, st: os.stat_result) -> Entry:
    return entry_from_stat(path, "file", st)
