"""Capture: turn what happened on the master into file events, and fold them into the master state.

Room: producers and projections. May import ``errors``, ``codec``, ``datastore``,
``events``, ``journal``, ``blocks``, ``masterstate``, ``manifest``, ``layout``, ``walk``.

Three sources produce the same events:

- :meth:`Capture.scan` compares the master tree with the master state (a
  manifest: size, mode, mtime, ctime, inode and block digests per path) and
  journals the differences. A content change whose mtime was put back is
  still caught: putting an mtime back changes the ctime.
- the live watcher (``xoengine.watch``) calls :meth:`Capture.scan` with the
  paths it saw change, so the tree is not rescanned.
- :class:`~xoengine.journaledfile.JournaledFile` (``sc.open``) journals its
  writes as exact ranges.

Changed content is journaled as cheaply as the change allows: changed aligned
blocks as :class:`~xoengine.events.BytesWritten`; when the size changed and
data shifted, an rsync-style delta (:func:`blocks.delta`) as
:class:`~xoengine.events.ContentReplaced`, if that carries fewer bytes. Bytes
go to the blob table; events carry blob ids.

The master state (the fold of file events into the manifest, and the racy
rule) is ``xoengine.masterstate``; its names are re-exported here.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import mmap
import os
import stat
import threading
import time
import typing
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import numpy as np

from xoengine import blocks, codec
from xoengine import tree as trees
from xoengine.blobtable import BLOB_MAX, blob_chunks
from xoengine.blocks import BlockMap, Copy, Literal
from xoengine.errors import (
    EntryUnreadableWarning,
    ScenarioStateError,
    TreeRootMissingError,
    TreeWarning,
    XoError,
)
from xoengine.events import (
    BytesWritten,
    ContentReplaced,
    FileCreated,
    FileDeleted,
    FileEvent,
    FileRenamed,
    MetadataChanged,
    RootChanged,
    XattrsChanged,
    new_id,
    root_stream,
)
from xoengine.manifest import FileState
from xoengine.masterstate import (
    MasterState,
    holds_capability,
    pack_digests,
    racy,
    racy_window,
    strong_digests,
    unpack_map,
    xattr_digest,
    xattrs_racy,
)
from xoengine.tree import TMP_PREFIX, read_whole, reserved_name
from xoengine.walk import (
    Entry,
    ParentCache,
    PathFilter,
    birth_ns,
    check_real_root,
    normalize_relpath,
    open_below,
    own_meta,
    stat_entry,
    walk,
    xattrs_below,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence

    from xoengine.datastore import Store, WriteTxn
    from xoengine.journal import BlobTable
    from xoengine.layout import Layout

__all__ = [
    "Capture",
    "CaptureResult",
    "ChangeWhileReadWarning",
    "MasterState",
    "ScanProgress",
    "pack_digests",
    "unpack_map",
]

_CHUNK: Final = 16 * 1024 * 1024
FLUSH_BYTES: Final = 64 * 1024 * 1024
FLUSH_EVENTS: Final = 2000
MAX_DELTA_OPS: Final = 1_000_000
"""Most ops a change is journaled with as a delta (a ContentReplaced record of ~40 MB)."""
OFF_THREAD_BYTES: Final = 16 * 1024 * 1024
"""A scan's batch at least this large is committed by a thread beside the scan (overlap)."""


class ChangeWhileReadWarning(TreeWarning):
    """{path!r} changed while it was read: {detail}."""

    code = "W2010"
    hint = "The next capture (or the live watcher) journals the final content."


def _unread(path: str, error: OSError) -> TreeWarning:
    """The warning for a file that could not be opened: unreadable (W2002), or gone meanwhile."""
    if error.errno in {errno.EACCES, errno.EPERM}:
        return EntryUnreadableWarning(path=path, detail=error.strerror, errno=error.errno)
    return ChangeWhileReadWarning(path=path, detail=error.strerror)


def _observed(st: os.stat_result | None, size: int | None = None) -> list[int]:
    """The stat of a file just read, with the time it was taken (call right after fstat).

    ``size``: the bytes read, where the file moved under the read (``st`` is
    then the stat the read began with: the next pass finds it moved, and reads
    again what was written meanwhile).
    """
    if st is None:
        return []
    return [
        st.st_size if size is None else size,
        stat.S_IMODE(st.st_mode),
        st.st_mtime_ns,
        st.st_ctime_ns,
        st.st_ino,
        st.st_dev,
        time.time_ns(),
        st.st_uid,
        st.st_gid,
    ]


_HOLE_WINDOW: Final = 64 * 1024 * 1024
"""Bytes of a long hole compared with the old digests at a time (whole blocks, one at least)."""


def _append_runs(
    differs: Any, chunk: memoryview, offset: int, bs: int, runs: list[tuple[int, bytes]]
) -> int:
    """Append the blocks of ``chunk`` (at ``offset``) that ``differs`` marks to ``runs``.

    Runs of consecutive blocks are sliced once (a block-by-block concatenation
    copied each run over again: quadratic in its length) and grow to the most
    whole blocks a blob holds, never past: each run starts on a block, whose
    digests are taken from there (a block size that does not divide
    ``BLOB_MAX``, 1536 say, cut a run inside a block). Returns the bytes appended.
    """
    edges = np.flatnonzero(np.diff(differs.astype(np.int8), prepend=0, append=0))
    per_blob = max(1, BLOB_MAX // bs)
    most = per_blob * bs
    added = 0
    for first_block, end_block in zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True):
        for start in range(first_block, end_block, per_blob):
            begin, end = start * bs, min(end_block, start + per_blob) * bs
            data = chunk[begin:end]
            at = offset + begin
            run_at, run = runs[-1] if runs else (-1, b"")
            if run_at + len(run) == at and len(run) < most:
                room = most - len(run)
                runs[-1] = (run_at, run + data[:room])
                data, at = data[room:], at + room
            if data:
                runs.append((at, bytes(data)))
            added += min(end, len(chunk)) - begin
    return added


def _data_past(
    ranges: list[tuple[int, int]], segments: list[tuple[int, int]] | None, old_size: int
) -> list[tuple[int, int]]:
    """``ranges`` but their parts past ``old_size`` that lie in a hole (``segments``: the data).

    Such a part is no change: the replica's file is cut to size, and a block
    with no digest is zeros.
    """
    if segments is None:
        return ranges
    out: list[tuple[int, int]] = []
    index = 0  # both in order: one pass over the segments
    for start, length in ranges:
        end = start + length
        if start < old_size:
            out.append((start, min(end, old_size) - start))
        low = max(start, old_size)
        while index < len(segments) and segments[index][1] <= low:
            index += 1
        at = index
        while at < len(segments) and segments[at][0] < end:
            a, b = max(low, segments[at][0]), min(end, segments[at][1])
            if b > a:
                out.append((a, b - a))
            at += 1
    return blocks.coalesce_ranges(out)


_DIGEST_WINDOW: Final = 262144
"""Old block digests read from the master state at a time (1 GiB of a file at 4 KiB)."""


class _Digests:
    """The strong digests a file's blocks had, read from the master state a window at a time.

    A stream through a 1 TiB thin image holds a few MiB of them, not 2 GiB.
    """

    def __init__(self, store: Store, state: MasterState, file: FileState) -> None:
        self.store = store
        self.state = state
        self.file = file
        self.size = file.size
        self.count = -(-file.size // state.block_size)
        self._first = 0
        self._window: Any = np.empty(0, dtype=np.uint64)

    def strong(self, first: int, count: int) -> Any:
        """The digests of blocks ``first .. first+count-1`` (fewer past the old end)."""
        last = min(first + count, self.count)
        if last <= first:
            return self._window[:0]
        if not (self._first <= first and last <= self._first + len(self._window)):
            stop = min(self.count, max(last, first + _DIGEST_WINDOW))
            with self.store.read() as txn:
                packed = self.state.digests(txn, self.file, first, stop)
            self._first, self._window = first, strong_digests(packed)
        return self._window[first - self._first : last - self._first]


# -- capture ---------------------------------------------------------------------------------


_Inode = tuple[int, int]
"""A file's identity on the master: (device, inode number)."""


def _link_counts(entries: Iterable[Entry]) -> dict[_Inode, int]:
    """The link counts of the hard-linked files among ``entries``."""
    return {(e.dev, e.inode): e.nlink for e in entries if e.kind == "file" and e.nlink > 1}


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

    make: Callable[[list[bytes]], FileEvent | RootChanged]
    blobs: list[bytes | memoryview]
    derived: bytes | None = None
    """The packed new block map of a ContentReplaced (not in the event; see MasterState.fold)."""


class Capture:
    """Journals the changes of one scenario's master tree.

    ``append(events, inline)`` appends domain events in one transaction and runs
    ``inline(txn, positions)`` in it; the engine wires it to the journal.
    ``roots()`` gives the last :class:`RootChanged` the journal holds for each
    root of the scenario (by name); each pass compares every root with it.
    """

    def __init__(
        self,
        scenario: str,
        layout: Layout,
        state: MasterState,
        store: Store,
        blobs: BlobTable,
        append: Callable[
            [Sequence[FileEvent | RootChanged], Callable[[WriteTxn, list[int]], None]], list[int]
        ],
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        roots: Callable[[], dict[str, RootChanged]] = dict,
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
        self.removed = False  # the scenario is removed (set under the lock): nothing more
        self._pending: list[_Pending] = []
        self._chunk: bytearray | None = None  # the streaming read buffer, reused
        self._known: dict[str, FileState] | None = None  # decoded master state, see _collect
        # Hard-linked files: the names of each (dev, inode) seen, and the link count
        # at which the master state was last searched for its names (_widen_for_links).
        self._link_names: dict[_Inode, set[str]] = {}
        self._link_searched: dict[_Inode, int] = {}
        self._read_roots = roots
        # Root name -> (version, mode, owner, attributes) journaled last (None: not read yet).
        self._roots: dict[str, tuple[int, int, list[int], dict[str, bytes]]] | None = None
        self._pending_bytes = 0
        self._path_start: int | None = None  # where the path being queued began (_one_path)
        self._stored_bytes = 0  # bytes of the queued events stored already (_store_blobs)
        self._versions: dict[uuid.UUID, int] = {}
        self._result = CaptureResult()
        self._settled: set[tuple[str, int]] = set()  # racy files re-read after their tick
        self._settled_xattrs: set[tuple[str, int]] = set()  # the same, for extended attributes
        self._settling: set[tuple[str, int]] = set()  # re-read by the pass running: settled after
        self._settling_xattrs: set[tuple[str, int]] = set()
        self._unlisted: list[str] = []  # directories the pass could not list (W2002)
        # Whether a directory exchanged inodes with another this pass (set by _find_renames).
        self._exchanged: Callable[[str, Entry, FileState], bool] = _exchanged_none
        self._replacing: set[str] = set()  # replaced paths whose moves out go first
        self._done_early: set[str] = set()  # paths diffed before their turn this pass
        self._held_back: Container[str] = ()  # blocked paths this pass: never before their turn
        self._walk_ns = 0  # when the last walk began
        self._committer: _Committer | None = None  # set during scan(): commits off-thread
        self._progress: ScanProgress | None = None
        self._parents: dict[str, ParentCache] = {}  # per master root, while a pass runs

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
            self.check_not_removed()
            for root in self.layout.roots:  # not the state directory through a link
                check_real_root(root, "master")
            self._check_mounted()
            self._result = CaptureResult()
            self._versions = {}
            # Nothing of a pass that failed carries over (its journal is what it committed).
            self._pending, self._pending_bytes, self._stored_bytes = [], 0, 0
            self._path_start = None
            self._settling, self._settling_xattrs = set(), set()
            self._unlisted = []
            self._progress = progress
            self._committer = _Committer(self.store.awaiting_write)
            # The directories files are read from, each opened once a pass (no link followed).
            self._parents = {root: ParentCache(root) for root in self.layout.roots}
            try:
                walked, known = self._collect(scopes)
                if progress is not None:
                    progress.walked(walked)
                self._diff(walked, known)
                self._check_roots()
                self._flush()
                self._committer.finish()
                # Journaled: what the re-reads of racy files found vouches for them now.
                self._settled |= self._settling
                self._settled_xattrs |= self._settling_xattrs
            except BaseException:
                self._roots = None  # what was queued may not be in the journal
                raise
            finally:
                self._committer.close()
                self._committer = None
                self._progress = None
                for cache in self._parents.values():
                    cache.close()
                self._parents = {}
            return self._result

    def _check_mounted(self) -> None:
        """Refuse a pass over a master root that is an empty directory where its files were.

        A master volume not mounted leaves its mount point: empty, on the file
        system below. Walked as the master, it would journal the deletion of
        everything, and every replica would apply it. A root found empty, on
        another file system than every file the master state knows under it, is
        :class:`~xoengine.errors.TreeRootMissingError` (E2005); nothing is journaled.
        """
        with self.store.read() as txn:
            for index, root in enumerate(self.layout.roots):
                try:
                    with os.scandir(root) as entries:
                        if next(entries, None) is not None:
                            continue
                    device = os.stat(root).st_dev
                except OSError:
                    continue  # missing or unreadable: the walk says so
                known = self.state.manifest.items(txn, self.layout.prefix(index))
                devices = {state.dev for _, state in itertools.islice(known, 64) if state.dev}
                if devices and device not in devices:
                    raise TreeRootMissingError(
                        root=root,
                        detail="it is empty, on another file system than the files journaled "
                        "under it: its volume is not mounted? Mount it; nothing was journaled "
                        "(to replicate an empty master, leave a file in it)",
                    )

    def _collect(
        self, scopes: Iterable[str] | None
    ) -> tuple[dict[str, Entry], dict[str, FileState]]:
        walked: dict[str, Entry] = {}
        known: dict[str, FileState] = {}
        layout = self.layout
        self._walk_ns = time.time_ns()  # before any lstat of this walk (see _entry_observed)
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
            self._index_links(walked)
            return walked, known
        unwanted: list[Entry] = []  # an excluded name may be a link to included ones
        for scope in _top_scopes(scopes):
            index, rel = layout.split(scope)
            root = layout.roots[index]
            if reserved_name(rel):
                continue  # a name kept for temporary files: never replicated (W2004)
            entry = stat_entry(root, rel)
            if entry is None or entry.kind == "special":
                continue
            if not self._wanted(rel, entry.kind):
                unwanted.append(entry)
                continue
            walked[scope] = entry
            if entry.kind == "dir":
                self._walk_into(walked, os.path.join(root, rel), layout.prefix(index) + rel + "/")
        self._widen_for_moves(walked, known)
        self._widen_for_links(walked, known, unwanted)
        return walked, known

    def _check_roots(self) -> None:
        """Journal each master root whose own mode, owner or attributes moved, or first seen.

        Every pass, scoped ones too: a root is one stat and one read of its
        attributes, and its own changes come to no scope.
        """
        if self._roots is None:
            self._roots = {
                name: (e.originator_version, e.mode, list(e.owner), dict(e.xattrs))
                for name, e in self._read_roots().items()
            }
        for index, root in enumerate(self.layout.roots):
            name = self.layout.prefix(index).rstrip("/")
            try:
                meta = own_meta(root)
            except OSError:
                continue  # gone or unreadable: the walk says so
            xattrs = meta["xattrs"]
            seen = (meta["mode"], meta["owner"], xattrs)
            known = self._roots.get(name)
            if known is not None and known[1:] == seen:
                continue
            version = (known[0] if known is not None else 0) + 1
            event = RootChanged(
                originator_id=root_stream(self.scenario, name),
                originator_version=version,
                timestamp=RootChanged.create_timestamp(),
                scenario=self.scenario,
                root=name,
                mode=seen[0],
                owner=seen[1],
                xattrs=xattrs,
            )
            self._queue(functools.partial(_made, event), [])
            self._roots[name] = (version, *seen)
            self._result.metadata += 1

    def _widen_for_moves(self, walked: dict[str, Entry], known: dict[str, FileState]) -> None:
        """Bring a moved path's old name into a scoped pass (its notification may be lost)."""
        # New paths only: a path now holding another inode (moved over) had its
        # source's own notification, which put the source in this pass.
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

    def _index_links(self, walked: dict[str, Entry]) -> None:
        """After a full walk: the names of every hard-linked file, all of them found."""
        self._link_names, self._link_searched = {}, _link_counts(walked.values())
        self._note_link_names(walked, self._link_searched)

    def _note_link_names(self, walked: dict[str, Entry], counts: dict[_Inode, int]) -> None:
        for path, e in walked.items():
            if (e.dev, e.inode) in counts:
                self._link_names.setdefault((e.dev, e.inode), set()).add(path)

    def _widen_for_links(
        self, walked: dict[str, Entry], known: dict[str, FileState], unwanted: list[Entry]
    ) -> None:
        """Bring the other names of a hard-linked file into a scoped pass.

        A write or a chmod through one name changed every name of the inode,
        but the kernel tells of the name the program used only (an excluded
        one too). The names are kept from the last full walk and from every
        pass; the master state is searched for an inode's names only when its
        link count grew since it was last searched (a link made since), so a
        pass over a linked file costs its names' stats, not the tree's size.
        """
        counts = _link_counts([*walked.values(), *unwanted])
        if not counts:
            return
        self._note_link_names(walked, counts)
        grown = {k for k, n in counts.items() if self._link_searched.get(k, 0) < n}
        with self.store.read() as txn:
            if grown:
                for path, state in self.state.manifest.items(txn):
                    if (state.dev, state.ino) in grown:
                        self._link_names.setdefault((state.dev, state.ino), set()).add(path)
                self._link_searched.update((k, counts[k]) for k in grown)
            for key in counts:
                names = self._link_names.get(key, set())
                for path in sorted(names - walked.keys()):
                    held = known.get(path)
                    if held is None:
                        held = self.state.manifest.get(txn, path)
                    index, rel = self.layout.split(path)
                    entry = stat_entry(self.layout.roots[index], rel)
                    if held is None or entry is None or (entry.dev, entry.inode) != key:
                        names.discard(path)  # no longer a name of it (its own event says)
                        continue
                    walked[path] = entry
                    known[path] = held

    def _wanted(self, rel: str, kind: str) -> bool:
        return self._filter.selects(rel, is_dir=kind == "dir")

    def _walk_into(self, walked: dict[str, Entry], root: str, prefix: str) -> None:
        tree = walk(root, self.include, self.exclude, reserved=TMP_PREFIX)
        with contextlib.closing(tree):
            for entry in tree:
                if entry.kind == "special":
                    continue
                walked[prefix + entry.relpath] = entry
        self._result.warnings.extend(tree.warnings)
        self._unlisted.extend(prefix + relpath for relpath in tree.unlisted)

    def _diff(self, walked: dict[str, Entry], known: dict[str, FileState]) -> None:
        # 1. Renames (they move known entries, so the steps below see them moved).
        # A move into a directory made anew (or where a file was) waits for it
        # (``waiting``): step 2 moves it. A move onto a path whose own identity
        # goes to such a waiting path (``blocked``) comes after it: step 2 takes
        # that path (and what is below it) last.
        waiting, blocked = self._find_renames(walked, known)
        self._held_back = blocked
        # 2. Creations and changes, parents before children (walk order).
        # ``walked`` is in walk order (each directory right before its contents), all
        # this loop needs: no sort on the no-change path.
        last: dict[str, None] = {}  # (in walk order: a parent before its contents)
        for path in list(walked):
            if path in self._done_early:
                continue  # taken before its turn (_moves_out_first)
            if blocked and (path in blocked or path.rpartition("/")[0] in last):
                last[path] = None
            else:
                self._diff_path(path, walked, known, waiting)
        self._done_early.clear()
        self._held_back = ()
        for path in last:  # their own identities have moved on: each moves in
            self._diff_path(path, walked, known, {**waiting, **blocked})
        # 3. Deletions, children before parents. Not below a directory the walk could
        # not list (W2002): its contents are unknown, not gone.
        unknown = tuple(u + "/" for u in self._unlisted)
        for path in sorted((p for p in known if p not in walked), key=os.fsencode, reverse=True):
            if unknown and path.startswith(unknown):
                continue
            self._delete(path, known[path])
            del known[path]
        self._exchanged = _exchanged_none  # holds the pass's walk: not kept past it

    def _diff_path(
        self,
        path: str,
        walked: dict[str, Entry],
        known: dict[str, FileState],
        waiting: dict[str, Callable[[], bool]],
    ) -> None:
        """Step 2 of :meth:`_diff` for one path: create it, or journal what changed."""
        entry = walked[path]
        state = known.get(path)
        replaced = state is not None and (
            state.kind != entry.kind or self._made_anew(path, entry, state)
        )
        if replaced and waiting:
            self._moves_out_first(path, walked, known, waiting)
        with self._one_path():
            if replaced:
                self._delete_tree(path, known)
                state = None
            if state is None and path in waiting and waiting[path]():
                state = known.get(path)  # moved in (under its parent made anew)
            if state is None:
                made = self._create(path, entry)
                if waiting and entry.kind == "dir":  # a parent of what moves in later
                    known[path] = self._made_dir(made, entry)
            else:
                self._update(path, entry, state)
        if self._progress is not None:
            self._progress.read(path)

    def _moves_out_first(
        self,
        path: str,
        walked: dict[str, Entry],
        known: dict[str, FileState],
        waiting: dict[str, Callable[[], bool]],
    ) -> None:
        """Journal the waiting moves out of ``path`` (replaced) before it goes.

        ``rm -r b; mkdir b; mv a/f b/g; rmdir a; mkdir a``: ``b/g`` waits for
        ``b`` made anew, and ``a``, made anew too, comes first in walk order:
        deleted with what it holds, it would take ``f``'s identity with it (``b/g``
        journaled as created). So ``b`` and then ``b/g`` are taken before their
        turn, ``a/f`` moves to ``b/g``, and only then ``a`` goes. Not where the
        move waits for ``path`` itself, or for a directory taken so already.
        """
        held = {(known[p].dev, known[p].ino) for p in [path, *_below(path, known)]}
        self._replacing.add(path)
        try:
            for moving in sorted(waiting, key=lambda p: (p.count("/"), os.fsencode(p))):
                entry = walked[moving]
                if (entry.dev, entry.inode) not in held or moving in known:
                    continue
                parts = moving.split("/")
                line = ["/".join(parts[:depth]) for depth in range(1, len(parts) + 1)]
                if any(p in self._replacing or p in self._held_back for p in line):
                    continue  # into what is being replaced, or what comes last: its turn
                for step in line:
                    if step in walked and step not in self._done_early:
                        self._done_early.add(step)
                        self._diff_path(step, walked, known, waiting)
        finally:
            self._replacing.discard(path)

    def _find_renames(
        self, walked: dict[str, Entry], known: dict[str, FileState]
    ) -> tuple[dict[str, Callable[[], bool]], dict[str, Callable[[], bool]]]:
        """Journal moves: a path that holds an inode (and kind) another path held and lost.

        Parents first, so a directory's move carries its children, and their own
        moves are then found at their new place. A move onto a path that existed
        (``mv a b`` over ``b``, an editor's save through a temporary file) is
        journaled as what it is: ``b`` deleted, then ``a`` renamed to ``b``. A
        path may give its inode away and take another's in one pass (``mv A B;
        mv C A``, a deployment's swap): new paths come first at each depth, and a
        path whose own inode went to a path not handled yet is not deleted (its
        identity moves there first). Where neither order serves (two paths that
        exchanged inodes), their contents are compared as usual: two directories
        that did (``mv A T; mv B A; mv T B``) keep their names' identities, not
        made anew, and what they hold moves between them. A directory a move
        replaces first gives up what it held that lives on (``_rescue``).

        A move into a directory made anew in the same pass (``rm -r out; mkdir
        out; mv report out/``, or ``rm x; mkdir x; mv f x/``) waits for it:
        the old directory (or file) goes with what it held, the new one is
        made, then the file moves in. A move onto the name such a file freed
        (``rm -r z; mkdir z; mv a z/a; mv b a``) comes after that: ``b`` to
        ``a`` once ``a``'s identity is at ``z/a``. Returned: for each such path
        (waiting, then blocked), what journals its move then (True if it did).
        """
        gone = {
            (s.dev, s.ino): p
            for p, s in known.items()
            if s.ino and (p not in walked or not _same_inode(s, walked[p]))
        }
        self._exchanged = functools.partial(self._exchanged_with, walked, known, gone)
        if not gone:
            return {}, {}

        @functools.cache
        def now_at() -> dict[tuple[int, int], str]:  # only a replaced path asks (rare)
            return {(e.dev, e.inode): p for p, e in walked.items()}

        candidates = [p for p in walked if p not in known or not _same_inode(known[p], walked[p])]
        ordered = sorted(candidates, key=lambda p: (p.count("/"), p in known))
        # Each one moved in turn; kept: those whose own identity had to move on first.
        waiting: set[str] = set()
        deferred = ordered
        while True:  # again while a round moves one: each may free a name another waits for
            left = [
                p
                for p in deferred
                if self._move_into(p, walked, known, gone, now_at, waiting) is None
            ]
            if len(left) == len(deferred):
                break
            deferred = left
        # Their identity went on (now new paths), or they exchanged; or it goes to a
        # path that waits: after it (blocked). So does a path that holds another file
        # now (one made anew on a freed inode number), whose identity moves to one.
        blocked = deferred if waiting else []
        for path in waiting:
            origin = gone.get((walked[path].dev, walked[path].inode))
            if origin is not None and origin in walked and origin not in waiting:
                blocked.append(origin)

        def later(path: str) -> Callable[[], bool]:
            return lambda: self._move_into(path, walked, known, gone, now_at, None) is True

        return {path: later(path) for path in waiting}, {path: later(path) for path in blocked}

    def _move_into(
        self,
        path: str,
        walked: dict[str, Entry],
        known: dict[str, FileState],
        gone: dict[tuple[int, int], str],
        now_at: Callable[[], dict[tuple[int, int], str]],
        waiting: set[str] | None,
    ) -> bool | None:
        """Journal the move of what ``path`` holds from where it was, if it moved there.

        True if it did, False if it did not move, None if it may once the
        identity ``path`` holds now has moved on (to a path not handled yet).
        A path under a directory made anew is added to ``waiting`` (False):
        its move comes once that directory is (None: it is now).
        """
        entry = walked[path]
        old = gone.get((entry.dev, entry.inode))
        if old is None or old not in known or not _same_inode(known[old], entry):
            return False  # its inode was no other known path's, or that one moved on
        if path.startswith(old + "/") or old.startswith(path + "/"):
            return False  # into itself, or out of the directory it replaces
        if self._reborn(path, known[old]):
            return False  # a new file given the freed inode number: created, not moved
        dirs = self._parents_are_dirs(path, known)
        inside = None if dirs else self._in_moving_parent(path, walked, known, gone)
        if inside is not None:
            # Into a directory that moves there after it, over what is known there now
            # (``mv a x/z; mv b a; mv x b``): into it where it is still known, and with
            # it to ``path`` then.
            if not self._free(inside, known, now_at):
                return None  # once what is known there has moved on
            path = inside
        elif waiting is not None and self._made_anew_above(path, walked, known):
            waiting.add(path)
            return False  # into a directory made anew (or of a file): once it is (step 2)
        elif not dirs:
            return False  # under what the replica still holds as a file or link
        if path in known:
            mine = known[path]
            if _same_inode(mine, entry):
                return False  # moved into place already, with its parent
            elsewhere = now_at().get((mine.dev, mine.ino), path)
            if elsewhere == path or self._reborn(elsewhere, mine):
                self._rescue(path, old, walked, known, gone, now_at)
                self._delete_tree(path, known)  # replaced by the moved one
            elif not self._move_inside(path, old, elsewhere, known, gone, now_at):
                return None  # its own identity moves on first (or the two exchanged)
        self._create_parents(path, walked, known)
        self._rename(old, path, known)
        self._moved_on(old, path, gone, known)
        return True

    @staticmethod
    def _in_moving_parent(
        path: str,
        walked: dict[str, Entry],
        known: dict[str, FileState],
        gone: dict[tuple[int, int], str],
    ) -> str | None:
        """``path``'s name in its directory where that directory is still known, if it moved.

        None where the directory did not move, or moved into place already.
        """
        parent, _, name = path.rpartition("/")
        entry = walked.get(parent)
        if not parent or entry is None or entry.kind != "dir":
            return None
        was = gone.get((entry.dev, entry.inode))
        state = None if was is None else known.get(was)
        if state is None or state.kind != "dir" or not _same_inode(state, entry):
            return None
        return f"{was}/{name}"

    def _move_inside(
        self,
        path: str,
        old: str,
        elsewhere: str,
        known: dict[str, FileState],
        gone: dict[tuple[int, int], str],
        now_at: Callable[[], dict[tuple[int, int], str]],
    ) -> bool:
        """Move what ``path`` held into the directory ``old`` that takes its name next.

        ``mv top D/top; mv D top``: ``top``'s file is at ``top/top`` now, below
        the directory coming from ``D``. It goes to ``D/top`` first, then ``D``
        (with it) to ``top``. A ``D/top`` it was moved over (its inode is gone)
        is deleted first. False where ``elsewhere`` is not below ``path`` or has
        no known directory to go to below ``old``, or where what ``D/top`` held
        lives on elsewhere (it moves first).
        """
        if not elsewhere.startswith(path + "/"):
            return False
        inside = old + elsewhere[len(path) :]
        parent = known.get(inside.rpartition("/")[0])
        if parent is None or parent.kind != "dir" or not self._free(inside, known, now_at):
            return False
        self._rename(path, inside, known)
        for key, was in gone.items():  # where they are now: they move on with ``old``
            if was == path or was.startswith(path + "/"):
                gone[key] = inside + was[len(path) :]
        return True

    def _rescue(
        self,
        path: str,
        old: str,
        walked: dict[str, Entry],
        known: dict[str, FileState],
        gone: dict[tuple[int, int], str],
        now_at: Callable[[], dict[tuple[int, int], str]],
    ) -> None:
        """Move out what the directory ``path``, replaced by ``old``, held that lives on.

        ``mv release/config keep/; mv release-new release``: config goes to keep
        first, then the old release is deleted and release-new takes its name.
        ``mv c/y b/y; rmdir c; mv b c``: y goes into b first and comes back to
        c/y with it. What has no known directory to go to (or goes below one
        made anew) is deleted with ``path``, as before.
        """
        for child in sorted(_below(path, known), key=lambda p: p.count("/")):
            state = known.get(child)
            if state is None or not state.ino:
                continue  # moved on with its directory, or of no known inode
            at = now_at().get((state.dev, state.ino))
            if at is None or self._reborn(at, state):
                continue  # gone (or a new file took its number): deleted with ``path``
            if at.startswith(path + "/"):
                to = old + at[len(path) :]  # into ``old``: with it to ``at``
                parent = known.get(to.rpartition("/")[0])
                if parent is None or parent.kind != "dir" or not self._free(to, known, now_at):
                    continue
            else:
                to = at
                if (
                    at.startswith((old + "/", child + "/"))
                    or not self._parents_are_dirs(at, known)
                    or self._made_anew_above(at, walked, known)
                    or not self._free(at, known, now_at)
                ):
                    continue
                self._create_parents(at, walked, known)
            self._rename(child, to, known)
            self._moved_on(child, to, gone, known)

    def _free(
        self,
        path: str,
        known: dict[str, FileState],
        now_at: Callable[[], dict[tuple[int, int], str]],
    ) -> bool:
        """Whether a move may go to ``path``: nothing known there, or what was is deleted first.

        A move over a file (or a directory) that lives on nowhere, nor anything
        below it, is its deletion (``mv a b`` over ``b``; ``rm -r x/z; mv a
        x/z``). False where what ``path`` held, or held below it, lives on
        elsewhere (it moves first).
        """
        over = known.get(path)
        if over is None:
            return True
        held = [(path, over), *((p, known[p]) for p in _below(path, known))]
        for _, state in held:
            at = now_at().get((state.dev, state.ino))
            if at is not None and not self._reborn(at, state):
                return False
        self._delete_tree(path, known)  # moved over
        return True

    @staticmethod
    def _moved_on(
        old: str, new: str, gone: dict[tuple[int, int], str], known: dict[str, FileState]
    ) -> None:
        """Note in ``gone`` that what was below ``old`` is below ``new`` (now in ``known``)."""
        if known[new].kind != "dir":
            return  # nothing is below a file
        for key, was in gone.items():
            if was.startswith(old + "/"):
                gone[key] = new + was[len(old) :]

    def _reborn(self, path: str, was: FileState) -> bool:
        """Whether ``path``'s inode was created after ``was`` (the vanished path) was last seen.

        ext4 hands a freed inode number out again at once: "delete a, create b"
        between two scans looks like "rename a to b" by inode. A rename keeps
        the inode's birth time, which is at or before any change time seen of
        it; a new inode is born after the old one's last change time. Where no
        birth time is known, the inode decides, as before.
        """
        index, rel = self.layout.split(path)
        root = self.layout.roots[index]
        born = birth_ns(root, rel, self._parents.get(root))
        return born is not None and was.ctime_ns > 0 and born > was.ctime_ns

    def _made_anew(self, path: str, entry: Entry, state: FileState) -> bool:
        """Whether ``path`` holds a new inode given the number of the one known there.

        ``rm a; echo > a`` (or ``rmdir e; mkdir e``) between two scans keeps the
        inode number on ext4: the old file is gone and this is another one, not
        a write to it. Only a path whose change time moved can be one (a new
        inode's is at or after its birth), so an unchanged tree costs no statx.

        A directory on another inode, not moved there (renames are found
        first) nor exchanged with another (``_exchanged``), was made again
        too, whatever number ext4 gave it (``rm -r T`` and a new ``T`` take
        the freed numbers in any order). A file on another inode stays the
        same file, written: an editor's save through a temporary file renamed
        over it.
        """
        return (
            entry.ctime_ns > state.ctime_ns
            and bool(state.ino)
            and (
                _same_inode(state, entry)
                or (entry.kind == "dir" and not self._exchanged(path, entry, state))
            )
            and self._reborn(path, state)
        )

    def _exchanged_with(
        self,
        walked: dict[str, Entry],
        known: dict[str, FileState],
        gone: dict[tuple[int, int], str],
        path: str,
        entry: Entry,
        state: FileState,
    ) -> bool:
        """Whether the directory ``path`` (``state``, now ``entry``) exchanged inodes with others.

        ``mv A T; mv B A; mv T B``: A holds what B held, B what A held, and
        neither move can be journaled before the other. So with three or more
        (``mv E t; mv c E; mv G/D c; mv t G/D``): each holds what the next one
        held, round to ``path``. Not directories made anew that ext4 gave each
        other's numbers: each inode is born before it was last seen at the path
        it came from.
        """
        at, now = path, entry
        for _ in range(len(gone)):
            other = gone.get((now.dev, now.inode))
            if other is None or other == at or other not in known or other not in walked:
                return False
            was = known[other]
            if not _same_inode(was, now) or self._reborn(at, was):
                return False
            at, now = other, walked[other]
            if _same_inode(state, now):
                return True  # round to ``path``: the one before it holds what it held
        return False

    def _made_anew_above(
        self, path: str, walked: dict[str, Entry], known: dict[str, FileState]
    ) -> bool:
        """Whether a directory above ``path`` is another one than the one (or file) known there."""
        parts = path.split("/")
        for depth in range(1, len(parts)):
            above = "/".join(parts[:depth])
            state, entry = known.get(above), walked.get(above)
            if (
                state is not None
                and entry is not None
                and (state.kind != entry.kind or self._made_anew(above, entry, state))
            ):
                return True
        return False

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
        version = self._journal(FileRenamed, state, old, [], new_path=new)
        self._result.renamed += 1
        for path in [old, *_below(old, known)]:
            moved = new + path[len(old) :]
            moving = known.pop(path)
            known[moved] = moving.evolve(version=version) if path == old else moving

    def _delete_tree(self, path: str, known: dict[str, FileState]) -> None:
        for child in sorted(_below(path, known), key=os.fsencode, reverse=True):
            self._delete(child, known.pop(child))
        self._delete(path, known.pop(path))

    def _delete(self, path: str, state: FileState) -> None:
        self._journal(FileDeleted, state, path, [])
        self._result.deleted += 1

    def _journal(
        self, cls: type[FileEvent], state: FileState, path: str, observed: list[int], **fields: Any
    ) -> int:
        """Queue an event of ``cls`` that carries no file data for ``state``'s file; its version."""
        version = self._next_version(state)
        event = cls(
            originator_id=state.file_id,
            originator_version=version,
            timestamp=cls.create_timestamp(),
            scenario=self.scenario,
            path=path,
            observed=observed,
            **fields,
        )
        self._queue(lambda _ids: event, [])
        return version

    def _next_version(self, state: FileState) -> int:
        version = self._versions.get(state.file_id, state.version) + 1
        self._versions[state.file_id] = version
        return version

    def _create(self, path: str, entry: Entry) -> FileState:
        """Journal a new path: its creation, content and extended attributes; its new state."""
        file_id = new_id()
        self._versions[file_id] = 1
        created = FileCreated(
            originator_id=file_id,
            originator_version=1,
            timestamp=FileCreated.create_timestamp(),
            scenario=self.scenario,
            path=path,
            observed=[] if entry.kind == "file" else _entry_observed(entry, self._walk_ns),
            kind=entry.kind,
            mode=entry.mode,
            mtime_ns=entry.mtime_ns,
            target=entry.target,
            xattrs_recorded=True,
        )
        self._queue(lambda _ids: created, [])
        self._result.created += 1
        state = FileState(file_id=file_id, version=1, kind=entry.kind, mode=entry.mode, xattrs=0)
        if entry.kind == "file":
            self._capture_content(path, state, None)
        return state.evolve(xattrs=self._xattrs(path, entry, state))

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
            known[parent] = self._made_dir(self._create(parent, entry), entry)

    def _made_dir(self, made: FileState, entry: Entry) -> FileState:
        """The state of a directory just journaled as made (``made``), as the walk saw it."""
        return made.evolve(
            version=self._versions[made.file_id],
            kind="dir",
            mode=entry.mode,
            mtime_ns=entry.mtime_ns,
            ctime_ns=entry.ctime_ns,
            ino=entry.inode,
            dev=entry.dev,
            uid=entry.uid,
            gid=entry.gid,
        )

    def _update(self, path: str, entry: Entry, state: FileState) -> None:
        same_stat = (
            entry.size == state.size
            and entry.mtime_ns == state.mtime_ns
            and entry.ctime_ns == state.ctime_ns
            and entry.inode == state.ino
        )
        # A chown moves the ctime, but not on a file system of coarse timestamps
        # within its tick: the owner is compared itself. A journal written before
        # owners were recorded (-1) learns each one once, as a metadata change.
        same_meta = entry.mode == state.mode and (entry.uid, entry.gid) == (state.uid, state.gid)
        # Setting an extended attribute moves the ctime only (within a coarse
        # clock's tick, not even that): they are read where the stat moved, where
        # it cannot vouch for them and where the master state does not know them.
        look = (
            state.xattrs < 0
            or not (same_stat and same_meta)
            or self._racy(path, state, xattrs=True)
        )
        updated = self._result.updated  # content events journaled so far
        if self._update_stat(path, entry, state, same_stat, same_meta) and look:
            # A write, truncation or chown dropped any capability (here and on the
            # replica as it applies them): one the path has now was given again.
            # Within a coarse clock's tick only the bytes tell of a write: a content
            # event journaled for the path just now counts.
            again = (
                entry.size != state.size
                or entry.mtime_ns != state.mtime_ns
                or (entry.uid, entry.gid) != (state.uid, state.gid)
                or self._result.updated != updated
            )
            self._xattrs(path, entry, state, again=again)

    def _update_stat(
        self, path: str, entry: Entry, state: FileState, same_stat: bool, same_meta: bool
    ) -> bool:
        """Journal what moved in ``path``'s content, stat and owner; False if it was made anew."""
        if entry.kind == "symlink" and entry.target != state.target:
            # Checked before the stat: a link re-made in the same tick on a reused
            # inode can show the old stat (a link's size is its target's length).
            self._delete(path, state)
            self._create(path, entry)
            return False
        if same_stat and entry.kind == "file" and self._racy(path, state):
            # The stat cannot vouch for the bytes: look at them. A content event
            # carries the new stat (a new mode and owner too); same bytes journal
            # only metadata that moved.
            self._capture_content(path, state, state, quiet=same_meta)
            return True
        if same_stat and same_meta:
            return True
        if entry.kind == "file" and not same_stat:
            self._capture_content(path, state, state)
            return True  # content events carry the new stat (observed); metadata included
        self._metadata_only(path, state, _entry_observed(entry, self._walk_ns))  # what moved
        return True

    def _xattrs(self, path: str, entry: Entry, state: FileState, *, again: bool = False) -> int:
        """Journal ``path``'s extended attributes where they are not what ``state`` knows.

        Read from the inode the walk found (``entry``): another file renamed there
        since would give its attributes (a capability set among them) to this one.

        ``again``: the path was written or given another owner since ``state``,
        so a file capability it has was set again (the kernel drops it): its set
        is journaled even if it is the one known, for the replica lost it too.

        After the path's other events: the replica applies them last (a write or
        a chown there drops ``security.capability``, as it did on the master).
        The event carries no stat: the other events of this pass carry it.
        """
        try:
            place = self.layout.master_place(path)
            inode = (entry.dev, entry.inode)
            found = xattrs_below(*place, cache=self._parents.get(place[0]), inode=inode)
        except OSError:
            return state.xattrs  # gone: the next pass journals that
        digest = xattr_digest(found)
        if digest == state.xattrs and not (again and holds_capability(digest)):
            return digest
        self._journal(XattrsChanged, state, path, [], xattrs=found)
        self._result.metadata += 1
        return digest

    # -- content -----------------------------------------------------------------------------

    def _read(
        self, path: str
    ) -> tuple[bytes | mmap.mmap, os.stat_result, list[tuple[int, int]] | None] | None:
        """Read a regular file consistently (retry once if it changes while read).

        Also its data segments (``tree.data_segments``) if it may have holes
        (:func:`tree.thin`), else None: the holes of a thin image are not read
        again, hashed or journaled as data.
        """
        place = self.layout.master_place(path)
        for attempt in range(2):
            try:
                fd = open_below(*place, cache=self._parents.get(place[0]))
            except OSError as e:
                self._result.warnings.append(_unread(path, e))
                return None
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    return None
                data, segments = read_whole(fd, before, self.store.path)
                after = os.fstat(fd)
            except OSError as e:
                self._result.warnings.append(ChangeWhileReadWarning(path=path, detail=e.strerror))
                return None
            finally:
                os.close(fd)
            if (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns) and len(
                data
            ) == after.st_size:
                return data, after, segments
            if attempt:
                self._result.warnings.append(
                    ChangeWhileReadWarning(path=path, detail="size or mtime moved during the read")
                )
                # The stat it began with, not the one it ended with: that one would vouch
                # for bytes older than the writes it shows, for good (review 21, F1).
                return data, before, segments
        return None

    def _racy(self, path: str, state: FileState, *, xattrs: bool = False) -> bool:
        """Whether an unchanged stat cannot vouch for ``path``: read its bytes again.

        (``xattrs``: its extended attributes, :func:`masterstate.xattrs_racy`.)
        Once a re-read happens after the racy window has passed, any later
        write moves the stat, so that version of the file is settled for the
        life of this capture (a new process re-reads it once more).
        """
        if not (xattrs_racy(state) if xattrs else racy(state)):
            return False
        settled = self._settled_xattrs if xattrs else self._settled
        key = (path, state.version)
        if key in settled:
            return False
        if time.time_ns() - max(state.mtime_ns, state.ctime_ns) >= racy_window(state):
            # Settled once what this re-read finds is journaled: when the pass succeeds.
            (self._settling_xattrs if xattrs else self._settling).add(key)
        return True

    def _capture_content(
        self, path: str, state: FileState, old: FileState | None, *, quiet: bool = False
    ) -> None:
        """Journal what changed in ``path``'s bytes (``quiet``: nothing if they did not).

        Streamed first, as an in-place change (a new file's of an empty one: in
        parts past ``FLUSH_BYTES``, its holes neither read nor journaled); read
        whole, for a delta, only where the change shifts data.
        """
        known = old if old is not None else state.evolve(size=0)
        underived = False
        if known.size > 0:
            with self.store.read() as txn:
                underived = self.state.manifest.is_underived(txn, known.file_id)
        if not underived:

            def spill(runs: list[tuple[int, bytes]], before: os.stat_result) -> bool:
                # Too much held: an in-place change is journaled in parts as it is
                # read (a 300 MiB append to a 20 GiB image is not a copy of it).
                # The size so far, not the final one: a replica extended to the final
                # size at the first part would write the zeros of the later parts over
                # bytes it then holds, filling the holes of a grown thin image.
                reached = max([known.size, *(offset + len(data) for offset, data in runs)])
                part = (runs, before.st_size, before)
                return self._in_place(
                    path, state, known, part, quiet=True, so_far=min(before.st_size, reached)
                )

            streamed = self._stream_changes(path, known, spill, self._parts_forgetter(state))
            if streamed is None:
                return
            if streamed != "whole" and old is None:  # new: its content is a write, even none
                runs, size, st = streamed
                self._write_runs(path, state, runs, _observed(st, size), size)
                return
            if streamed != "whole" and self._in_place(path, state, known, streamed, quiet=quiet):
                return
        # Only a change that shifts data gets here, and an empty old content has none.
        assert old is not None
        got = self._read(path)
        if got is None:
            return
        data, st, segments = got
        observed = _observed(st, len(data))  # first: its time must not lag the fstat (racy)
        bs = self.state.block_size
        new_map = BlockMap.compute(data, bs, segments=segments)
        view = memoryview(data)
        old_map = None
        if not underived:
            with self.store.read() as txn:
                old_map = self.state.block_map(txn, old)
        if old_map is None:  # underived: nothing to compare with, so the whole content goes
            whole: list[blocks.Op] = [Literal(0, len(data))] if data else []
            self._replace(path, state, view, whole, old, new_map, observed)
            return
        ranges = _data_past(blocks.changed_ranges(old_map, new_map), segments, old.size)
        aligned_bytes = sum(length for _, length in ranges)
        first = ranges[0][0] if ranges else None
        if not self._shifts(old, len(data), first, aligned_bytes):  # read whole: too much changed
            self._write_ranges(path, state, view, ranges, new_map, observed, old.size)
            return
        ops = blocks.delta(old_map, view, new_map=new_map)
        literal = blocks.literal_bytes(ops)
        # A delta is one record: one of millions of ops (data shifted at every few
        # blocks of a huge file) would pass a record's cap; in-place parts never do.
        if literal + 2 * bs < aligned_bytes and len(ops) <= MAX_DELTA_OPS:
            self._replace(path, state, view, ops, old, new_map, observed)
            return
        self._write_ranges(path, state, view, ranges, new_map, observed, old.size)

    def _shifts(self, old: FileState, size: int, first: int | None, changed: int) -> bool:
        """Whether changes may have shifted data (worth a delta) rather than written in place.

        ``first``: the offset of the first changed block; ``changed``: the bytes
        of changed blocks. A change confined to the old tail (an append, a cut)
        is cheaper as in-place writes: the replica writes in place and its undo
        is a truncate, not a whole-file rebuild. So is one that keeps the size.
        """
        bs = self.state.block_size
        tail_only = first is not None and first >= (old.size // bs) * bs
        return size != old.size and changed > bs and not tail_only

    def _in_place(
        self,
        path: str,
        state: FileState,
        old: FileState,
        streamed: tuple[list[tuple[int, bytes]], int, os.stat_result],
        *,
        quiet: bool,
        so_far: int | None = None,
    ) -> bool:
        """Journal streamed changes as in-place writes if that is how they are best sent.

        Returns False for changes that shift data: a delta is worth it then.
        ``so_far``: a part of a change journaled as it is read, its size then.
        """
        runs, size, st = streamed
        changed = sum(len(d) for _, d in runs)
        if self._shifts(old, size, runs[0][0] if runs else None, changed):
            return False
        if not runs and size == old.size:
            # Same bytes: only metadata moved (e.g. touch); keep the stat current.
            if not quiet:
                self._metadata_only(path, state, _observed(st, size))
            return True
        if so_far is not None:
            size = so_far
        self._write_runs(path, state, runs, _observed(st, size), size, part=so_far is not None)
        return True

    def _parts_forgetter(self, state: FileState) -> Callable[[], None]:
        """What drops the parts of ``state``'s change queued from here on (none committed yet).

        A read that must start again (the file moved while it was read) may
        have spilled bytes the file held only then; the next read compares with
        the old content again and journals all of what differs from it.
        """
        start = self._path_start
        mark = None if start is None else len(self._pending) - start
        version = self._versions.get(state.file_id)

        def forget() -> None:
            if mark is None or self._path_start is None:
                return
            cut = self._path_start + mark  # the path's items keep their place (_queue)
            dropped = self._pending[cut:]
            del self._pending[cut:]
            self._pending_bytes -= _nbytes(dropped)  # stored ones: orphan blobs, harmless
            if version is None:
                self._versions.pop(state.file_id, None)
            else:
                self._versions[state.file_id] = version

        return forget

    def _stream_changes(
        self,
        path: str,
        old: FileState,
        spill: Callable[[list[tuple[int, bytes]], os.stat_result], bool],
        forget: Callable[[], None],
    ) -> tuple[list[tuple[int, bytes]], int, os.stat_result] | typing.Literal["whole"] | None:
        """Read a file in chunks through one reused buffer; return its changed block runs.

        ``old``: the file as the master state holds it, whose digests are read
        a window at a time. Only the strong digests are computed while
        streaming (weak sums are made for the changed blocks alone), and
        nothing but changed bytes is kept; a hole is not read, and past the
        old size it is no change at all. Past ``FLUSH_BYTES`` of changed
        bytes, ``spill(runs, stat before)`` journals the runs held and the
        stream goes on; if it will not (the change shifts data), past
        ``HOLD_MAX``: ``"whole"``, the caller reads the file whole, mapped, for
        a delta. None if it could not be read. ``forget()`` drops what a read
        spilled, before it starts again or gives up.
        """
        place = self.layout.master_place(path)
        bs = self.state.block_size
        for attempt in range(2):
            if attempt:
                forget()  # read again, from the old content: nothing of the first read stays
            try:
                fd = open_below(*place, cache=self._parents.get(place[0]))
            except OSError as e:
                self._result.warnings.append(_unread(path, e))
                forget()
                return None
            old_digests = _Digests(self.store, self.state, old)
            runs: list[tuple[int, bytes]] = []
            held = 0
            try:
                before = os.fstat(fd)
                if not stat.S_ISREG(before.st_mode):
                    forget()
                    return None
                view = self._buffer(before.st_size)
                offset = 0
                holes = trees.holes_of(fd, before, len(view))
                while True:
                    want = len(view)
                    if holes is not None:
                        # A hole is not read: only its blocks that held data go. Data
                        # is read up to its end (a block's), so a hole is seen whole.
                        in_hole, end = holes.extent(offset)
                        if in_hole and end // bs * bs > offset:
                            held += self._hole_runs(offset, end // bs * bs, old_digests, runs)
                            offset = end // bs * bs
                            in_hole, end = holes.extent(offset)
                        if in_hole:  # less than a block of it left: read through the data
                            end = holes.extent(end)[1]
                        if end < before.st_size:
                            want = min(want, -(-end // bs) * bs - offset)
                    got = os.preadv(fd, [view[:want]], offset)
                    if got:
                        held += self._changed_runs(view[:got], offset, old_digests, runs)
                        offset += got
                    if held > min(FLUSH_BYTES, trees.HOLD_MAX) and spill(runs, before):
                        runs, held = [], 0  # the spilled list is the journal's now
                    elif held > trees.HOLD_MAX:
                        return "whole"
                    if got < want:
                        break
                after = os.fstat(fd)
            except OSError as e:
                self._result.warnings.append(ChangeWhileReadWarning(path=path, detail=e.strerror))
                forget()
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
                return runs, offset, before  # as _read: the stat it began with
        return None

    def _hole_runs(
        self, offset: int, end: int, old: _Digests, runs: list[tuple[int, bytes]]
    ) -> int:
        """Append zeros for the blocks of the hole ``[offset, end)`` that held other bytes.

        Both ends are whole blocks. Blocks past the old size are none: the
        replica's file is cut to size. Compared a window at a time, so a
        terabyte's hole is not a terabyte's digests.
        """
        bs = self.state.block_size
        zero = strong_digests(self.state.hole)[0]
        window = max(bs, _HOLE_WINDOW - _HOLE_WINDOW % bs)
        limit = min(end, old.count * bs)  # past the old end: nothing to compare
        if limit <= offset:
            return 0
        zeros = memoryview(bytes(min(limit - offset, window)))
        added = 0
        for at in range(offset, limit, window):
            stop = min(limit, at + window)
            had = old.strong(at // bs, (stop - at) // bs)
            differs = np.zeros((stop - at) // bs, dtype=bool)
            differs[: len(had)] = had != zero
            added += _append_runs(differs, zeros[: stop - at], at, bs, runs)
        return added

    def _changed_runs(
        self,
        chunk: memoryview,
        offset: int,
        old: _Digests,
        runs: list[tuple[int, bytes]],
    ) -> int:
        """Append the changed blocks of ``chunk`` (at ``offset``) to ``runs``; return the bytes."""
        bs = self.state.block_size
        first = offset // bs
        count = -(-len(chunk) // bs)
        differs = np.ones(count, dtype=bool)  # past the old end: nothing to digest
        if first < old.count:
            digests = blocks.block_digests(chunk, bs)
            had = old.strong(first, count)
            differs[: len(had)] = digests[: len(had)] != had
            # A short last block with the same digest but another length is a change too.
            last = count - 1
            if not differs[last] and last < len(had):
                start = (first + last) * bs
                if min(bs, old.size - start) != len(chunk) - last * bs:
                    differs[last] = True
        return _append_runs(differs, chunk, offset, bs, runs)

    def _write_runs(
        self,
        path: str,
        state: FileState,
        runs: list[tuple[int, bytes]],
        observed: list[int],
        size: int,
        *,
        part: bool = False,
    ) -> None:
        """Journal changed ``runs`` as one BytesWritten (``part``: one of a change in parts)."""
        bs = self.state.block_size
        # Digests of the changed blocks only, one span per run: the event stays small.
        spans = [[at // bs, pack_digests(BlockMap.compute(data, bs))] for at, data in runs]
        self._bytes_written(path, state, runs, spans, observed, size, part=part)

    def _metadata_only(self, path: str, state: FileState, observed: list[int]) -> None:
        self._journal(
            MetadataChanged, state, path, observed, mode=observed[1], mtime_ns=observed[2]
        )
        self._result.metadata += 1

    def _write_ranges(
        self,
        path: str,
        state: FileState,
        view: memoryview,
        ranges: list[tuple[int, int]],
        new_map: BlockMap,
        observed: list[int],
        old_size: int,
    ) -> None:
        """Journal ``ranges`` of ``view`` as written (with the new digests of their blocks).

        In parts of ``FLUSH_BYTES`` at most, as a streamed change is: a record
        holds a part's digests, whatever the file's size. A part before the
        last leaves the file as long as it is written so far (``old_size`` at
        least), as :meth:`_capture_content`'s spills do.
        """
        bs = self.state.block_size
        size = len(view)
        pieces = [
            (offset, view[offset : offset + length])
            for start, whole in ranges
            for offset, length in blob_chunks(start, whole)
        ]
        per = max(1, FLUSH_BYTES // BLOB_MAX)
        for first in range(0, max(len(pieces), 1), per):
            part = pieces[first : first + per]
            spans = [
                [at // bs, pack_digests(new_map, at // bs, -(-(at + len(data)) // bs))]
                for at, data in part
            ]
            if first + per >= len(pieces):
                self._bytes_written(path, state, part, spans, observed, size)
            else:
                so_far = min(size, max(old_size, part[-1][0] + len(part[-1][1])))
                stat = [so_far, *observed[1:]]
                self._bytes_written(path, state, part, spans, stat, so_far, part=True)

    def _bytes_written(
        self,
        path: str,
        state: FileState,
        pieces: Sequence[tuple[int, bytes | memoryview]],
        spans: list[list[Any]],
        observed: list[int],
        size: int,
        *,
        part: bool = False,
    ) -> None:
        """Queue one BytesWritten: ``pieces`` become blobs, ``spans`` the new block digests.

        ``part``: not the last of a change journaled in parts (the path counts once).
        """
        version = self._next_version(state)
        scenario = self.scenario
        extents = [(at, len(data)) for at, data in pieces]  # not the bytes: stored, they go

        def make(ids: list[bytes]) -> FileEvent:
            return BytesWritten(
                originator_id=state.file_id,
                originator_version=version,
                timestamp=BytesWritten.create_timestamp(),
                scenario=scenario,
                path=path,
                observed=observed,
                ranges=[[at, n, b] for (at, n), b in zip(extents, ids, strict=True)],
                size=size,
                digests=spans,
            )

        self._queue(make, [data for _, data in pieces])
        self._result.bytes_changed += sum(len(data) for _, data in pieces)
        self._result.updated += not part

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
        pieces = [piece for start, length in literals for piece in blob_chunks(start, length)]
        version = self._next_version(state)
        scenario = self.scenario
        base = self._base_digest(old)
        result = codec.digest128(view).hex()
        derived = pack_digests(new_map)
        size = len(view)

        def make(ids: list[bytes]) -> FileEvent:
            by_offset = dict(zip((o for o, _ in pieces), ids, strict=True))
            plain: list[list[Any]] = []
            for op in ops:
                if isinstance(op, Copy):
                    plain.append(["copy", op.offset, op.length])
                else:
                    for offset, length in blob_chunks(op.offset, op.length):
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
                digests=[],
            )

        self._queue(make, [view[o : o + n] for o, n in pieces], derived)
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
        self,
        make: Callable[[list[bytes]], FileEvent | RootChanged],
        data: list[bytes | memoryview],
        derived: bytes | None = None,
    ) -> None:
        self._pending.append(_Pending(make, data, derived))
        self._pending_bytes += sum(len(d) for d in data)
        if self._path_start is None:
            self._flush_if_full()
        elif self._pending_bytes >= FLUSH_BYTES or len(self._pending) >= FLUSH_EVENTS:
            # Full in the middle of a path: the paths before it commit, its own
            # events wait for its end, and past FLUSH_BYTES its bytes go now.
            if self._path_start:
                mine = self._pending[self._path_start :]
                mine_bytes = _nbytes(mine)
                del self._pending[self._path_start :]
                self._pending_bytes -= mine_bytes
                self._flush()
                self._pending, self._pending_bytes, self._path_start = mine, mine_bytes, 0
            if self._pending_bytes >= FLUSH_BYTES:
                self._store_blobs()

    @contextlib.contextmanager
    def _one_path(self) -> Iterator[None]:
        """Journal one path's change in one commit, however many bytes it moves.

        A position between two commits of one file's change would name a state
        the master never had (new bytes up to some offset, old ones after it):
        past ``FLUSH_BYTES`` its bytes are stored as they are read and its
        events wait (a few per 64 MiB) for the commit after its last one.
        """
        self._path_start = len(self._pending)
        try:
            yield
        finally:
            self._path_start = None
        self._flush_if_full()

    def _flush_if_full(self) -> None:
        held = self._pending_bytes + self._stored_bytes
        if held >= FLUSH_BYTES or len(self._pending) >= FLUSH_EVENTS:
            self._flush()

    def _store_blobs(self) -> None:
        """Store the blobs of the queued events now; the events wait for their ids.

        Beside the scan, as a commit is (the committer runs its work in order,
        so the ids are there before any commit of these events), or here.
        """
        pending, nbytes = self._pending, self._pending_bytes
        flat = [d for p in pending for d in p.blobs]
        stored: list[list[bytes]] = []  # the ids, once the blobs are in
        self._stored_bytes += nbytes
        self._pending, self._pending_bytes = [], 0

        def store() -> None:
            stored.append(self._put_blobs(flat))

        committer = self._committer
        if committer is not None and nbytes >= OFF_THREAD_BYTES:
            committer.submit(store)  # waits for the one before: two batches at most held
        else:
            if committer is not None:
                committer.finish()
            store()
        cursor = 0
        for item in pending:
            n = len(item.blobs)
            made = functools.partial(_with_stored, item.make, stored, cursor, n)
            self._pending.append(_Pending(made, [], item.derived))
            cursor += n

    def _put_blobs(self, flat: list[bytes | memoryview]) -> list[bytes]:
        """Store ``flat`` in one transaction of its own; their ids (counted as journaled)."""
        if not flat:
            return []
        # Room for the batch first: a map filling in mid-batch would abort and rerun it.
        size = sum(len(d) for d in flat)
        self.store.reserve(size + size // 8 + (1 << 20))
        ids = self.store.write(lambda txn: [self.blobs.put(txn, d) for d in flat])
        self._result.bytes_journaled += size
        return ids

    def forget_master_state(self) -> None:
        """Drop the decoded copy of the master state (after it was changed elsewhere)."""
        self._known = None

    def _buffer(self, size: int) -> memoryview:
        """The streaming read buffer for a file of ``size`` bytes, reused.

        Whole blocks, at most :data:`_CHUNK`: grown when a larger file needs it (a
        scenario of small files holds a small one).
        """
        bs = self.state.block_size
        want = max(bs, min(_CHUNK - _CHUNK % bs, -(-(size + 1) // bs) * bs))
        if self._chunk is None or len(self._chunk) < want:
            self._chunk = bytearray(want)
        return memoryview(self._chunk)[:want]

    def release_buffers(self) -> None:
        """Drop the streaming read buffer (the engine closes; the next pass makes one)."""
        self._chunk = None

    def check_not_removed(self) -> None:
        """Refuse a pass (under :attr:`lock`) once the scenario is removed.

        A removal waits for the pass under way; one that waited for it finds the
        scenario gone: nothing of the scenario is journaled after its removal.
        """
        if self.removed:
            raise ScenarioStateError(name=self.scenario, state="removed", action="capture")

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        nbytes, self._pending_bytes, self._stored_bytes = self._pending_bytes, 0, 0
        if not pending:
            return
        self._known = None
        committer = self._committer
        if committer is not None and nbytes >= OFF_THREAD_BYTES:
            committer.submit(lambda: self._commit(pending))
            return
        # A batch of small files commits here: a commit thread beside a scan that
        # makes ~10 system calls per file costs both more in GIL handoffs than the
        # overlap saves (10,000 small files: 3.1-3.5 s threaded, 1.9-2.3 s here).
        if committer is not None:
            committer.finish()  # in order: after the batch being committed
        self._commit(pending)

    def _commit(self, pending: list[_Pending]) -> None:
        # Blobs first (own transaction): an event never references a missing blob;
        # a crash in between leaves only unreferenced blobs.
        ids = self._put_blobs([d for p in pending for d in p.blobs])
        events: list[FileEvent | RootChanged] = []
        cursor = 0
        for item in pending:
            n = len(item.blobs)
            events.append(item.make(ids[cursor : cursor + n]))
            cursor += n

        def fold(txn: WriteTxn, _positions: list[int]) -> None:
            for event, item in zip(events, pending, strict=True):
                if isinstance(event, FileEvent):  # a root is not in the master state
                    self.state.fold(txn, event, item.derived)

        positions = self._append(events, fold)
        result = self._result
        result.events += len(events)
        result.positions.extend(positions)


class ScanProgress(Protocol):
    """What a scan tells a reader that follows it (a synchronizer copying behind it)."""

    def walked(self, entries: Mapping[str, Entry]) -> None:
        """The master tree was walked (``entries``): every path the scan will journal is known."""

    def read(self, path: str) -> None:
        """``path`` was read (its content is in the batch being journaled)."""


class _Committer:
    """One writer thread running commits in order, at most one behind the caller.

    ``submit`` waits for the previous commit first, so at most two batches are
    held in memory, and a failure surfaces in the caller at its next submit or
    at ``finish``.
    """

    def __init__(self, awaiting: Callable[[], contextlib.AbstractContextManager[None]]) -> None:
        self._awaiting = awaiting  # marks the caller's wait (Store.awaiting_write)
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
        self._join()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Wait for the running commit (an error already being raised wins)."""
        self._join()
        self._error = None

    def _join(self) -> None:
        if self._thread is not None:
            with self._awaiting():
                self._thread.join()
            self._thread = None


def _made(event: RootChanged, _ids: list[bytes]) -> RootChanged:
    """An event that needs no blob, as :meth:`Capture._queue` wants it."""
    return event


def _nbytes(items: list[_Pending]) -> int:
    return sum(len(d) for item in items for d in item.blobs)


def _with_stored(
    make: Callable[[list[bytes]], FileEvent | RootChanged],
    stored: list[list[bytes]],
    start: int,
    count: int,
    _none: list[bytes],
) -> FileEvent | RootChanged:
    """An event whose blobs were stored before (:meth:`Capture._store_blobs`): its ids."""
    return make(stored[0][start : start + count])


def _below(path: str, known: dict[str, FileState]) -> list[str]:
    """The known paths below ``path``: none below a file (no look at every known path then)."""
    state = known.get(path)
    if state is not None and state.kind != "dir":
        return []
    return [p for p in known if p.startswith(path + "/")]


def _top_scopes(scopes: Iterable[str]) -> list[str]:
    ordered = sorted({normalize_relpath(s) for s in scopes}, key=os.fsencode)
    top: list[str] = []
    for scope in ordered:
        if not any(scope == t or scope.startswith(t + "/") for t in top):
            top.append(scope)
    return top


def _entry_observed(entry: Entry, walk_ns: int) -> list[int]:
    """The stat a walk begun at ``walk_ns`` saw, in the form of :func:`_observed`.

    The walk's start stands for the time the stat was taken: never later than
    it, so the racy rules (:func:`masterstate.racy`, :func:`xattrs_racy`) can
    only find the stat too recent to vouch, never the reverse.
    """
    return [
        entry.size,
        entry.mode,
        entry.mtime_ns,
        entry.ctime_ns,
        entry.inode,
        entry.dev,
        walk_ns,
        entry.uid,
        entry.gid,
    ]


def _exchanged_none(_path: str, _entry: Entry, _state: FileState) -> bool:
    """No directory exchanged inodes (before a pass finds renames)."""
    return False


def _same_inode(state: FileState, entry: Entry) -> bool:
    """Whether ``entry`` is the inode the manifest knows at its path (unknown inodes: by kind)."""
    if state.kind != entry.kind:
        return False
    return not state.ino or (state.dev, state.ino) == (entry.dev, entry.inode)
