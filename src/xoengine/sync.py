"""Synchronization: compare a master tree with a replica and send only what differs (R3).

Room: producers and projections. May import ``errors``, ``codec``, ``datastore``,
``events``, ``journal``, ``blocks``, ``layout``, ``tree``, ``walk``.

Two levels:

- ``file``: a file whose size or mtime differs is sent whole (small files,
  empty replicas);
- ``block``: only changed blocks are sent. Aligned blocks are compared by
  digest; when the size changed and data shifted, an rsync-style delta
  (:func:`blocks.delta`) finds the replica's blocks at their new offsets, so an
  insertion near the start of a large file costs about the inserted bytes.

Every change to the replica records its before-image in the replica's undo
log first (keyed by the SyncStarted position), so a rewind can cross a
synchronization. The run is journaled: SyncStarted, one FileSynced per path
changed, SyncFinished (which also moves the replica's applied position, in
the same transaction).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import mmap
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from xoengine import blocks
from xoengine.blocks import BlockMap
from xoengine.errors import (
    ConfigurationError,
    EntryUnreadableWarning,
    EntryVanishedWarning,
    ReplicaWriteError,
    SpecialFileSkippedWarning,
    XoError,
)
from xoengine.events import FileSynced, SyncFinished, SyncStarted, new_id
from xoengine.tree import (
    TMP_PREFIX,
    Image,
    image_of_existing,
    image_of_writes,
    read_whole,
)
from xoengine.walk import Entry, entry_from_stat, open_below, own_meta, walk, xattrs_below

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from eventsourcing.domain import DomainEvent

    from xoengine.datastore import Store, WriteTxn
    from xoengine.layout import Layout
    from xoengine.tree import ReplicaTree, UndoLog

__all__ = ["LEVELS", "CaptureFollower", "HeldCheck", "Settle", "SyncSummary", "Synchronizer"]

LEVELS: Final = ("block", "file")
_BATCH_PATHS: Final = 8192
_SMALL_AVERAGE: Final = 256 * 1024  # below this average file size, copy after the scan
"""New paths whose before-images (a few bytes each) share one transaction: few commits,
since each may wait for a capture commit of many MiB running beside the sync."""


def _shifted(ranges: list[tuple[int, int]], size: int, old_size: int) -> bool:
    """Whether changed ``ranges`` may be data shifted (an insertion): worth a delta.

    Shifted data differs in every block from the insertion to the end of what
    both files hold; a few writes in place (into a large file, or into a
    thin image's data between its holes, which compare equal) change a small
    part of that span, and a delta would read and map both files whole for
    them. An eighth of the span from the first change on is the line.
    """
    common = min(size, old_size)
    first = ranges[0][0] if ranges else common
    if first >= common:
        return False
    covered = sum(max(0, min(at + n, common) - max(at, first)) for at, n in ranges)
    return 8 * covered >= common - first


@dataclass
class SyncSummary:
    """What one synchronization of one replica did."""

    scenario: str
    replica: str
    level: str
    position: int = 0
    files_checked: int = 0
    files_changed: int = 0
    files_deleted: int = 0
    bytes_sent: int = 0
    transferred: list[tuple[str, str, int, int]] = field(default_factory=list)
    warnings: list[XoError] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    """Paths where the replica held what the journal never held at its position
    (changed outside xoengine): this run repaired them, and the undo log's floor
    moved to its start (a rewind would put them back)."""


class CaptureFollower(Protocol):
    """A capture scan running beside a synchronization, as the synchronizer waits on it."""

    def wait_walked(self) -> None:
        """Return once the scan has walked the master (or ended)."""

    def wait_read(self, path: str) -> None:
        """Return once the scan has read ``path`` (or ended)."""

    def wait_done(self) -> int:
        """Return the journal position after the scan's last event; raise if it failed."""


class HeldCheck(Protocol):
    """Says where a replica did not hold the journal's state at its position (the scenario's)."""

    def __call__(self, held: int, entries: dict[str, Entry | None]) -> list[str]:
        """Those of ``entries`` (the replica's; None: none) not as the journal held at ``held``."""


class Settle(Protocol):
    """Makes the files a sync wrote beside a scan hold what the journal holds (the scenario's)."""

    def __call__(
        self,
        written: list[str],
        position: int,
        keep: Keep,
        walked: dict[str, Entry],
        unknown: Callable[[str], bool],
    ) -> None:
        """Rewrite those of ``written`` the journal holds otherwise at ``position``.

        And the paths whose presence or kind the journal holds otherwise than
        ``walked`` (the master as the synchronization walked it, after the
        scan's walk; ``unknown`` paths lie where it could not list): the master moved
        between the two walks. ``keep(paths, gone)`` must be called with the
        paths before they change, and the replica directories among them that
        go with everything below them.
        """


class Keep(Protocol):
    """Records the before-images of replica paths a settle is about to change (the sync's)."""

    def __call__(self, paths: list[str], gone: list[str]) -> None:
        """``paths`` are about to change; the directories ``gone`` go with their contents."""


class Synchronizer:
    """Brings one replica tree in line with the master tree, journaling what it did.

    ``append(events, inline)`` appends events in one transaction and runs
    ``inline(txn, positions)`` inside it (the engine wires it to the journal).
    """

    def __init__(
        self,
        scenario: str,
        replica: str,
        layout: Layout,
        tree: ReplicaTree,
        undo: UndoLog,
        store: Store,
        append: Callable[
            [Sequence[DomainEvent], Callable[[WriteTxn, list[int]], None] | None], list[int]
        ],
        *,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        block_size: int = blocks.DEFAULT_BLOCK_SIZE,
        recheck: Collection[str] = (),
    ) -> None:
        """Synchronize ``replica`` (its ``tree`` and ``undo`` log) with the master roots.

        A file of the same size and modification time on both sides is taken
        as the same, unless its path is in ``recheck``: its bytes are compared.
        """
        self.scenario = scenario
        self.replica = replica
        self.layout = layout
        self.tree = tree
        self.undo = undo
        self.store = store
        self._append = append
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.block_size = block_size
        self.recheck = recheck
        self._follow: CaptureFollower | None = None

    def run(
        self,
        level: str,
        position: int,
        set_applied: Callable[[WriteTxn, int], None],
        follow: CaptureFollower | None = None,
        settle: Settle | None = None,
        *,
        held: int,
        first: bool = False,
        foreign: bool = False,
        check_held: HeldCheck | None = None,
        moved_since: Callable[[int], set[str]] | None = None,
    ) -> SyncSummary:
        """Synchronize at journal ``position`` (the master state the capture just journaled).

        ``set_applied(txn, p)`` records the replica's applied position; it runs in
        the transaction that appends SyncFinished. ``held`` is the position the
        replica holds now: when journal positions lie between it and this run's
        start, the replica never holds their states (this run takes it from
        ``held`` to the master's state by another path than their events), so
        the undo log opens a gap at ``held`` (see :meth:`UndoLog.gaps`): a
        rewind to one of them undoes to ``held`` and applies the journal
        forward from there.

        With ``follow``, a capture scan runs beside this one (another thread) and
        ``position`` is where it started: the master is walked after the scan's
        walk, each file is read after the scan read it, and SyncFinished comes
        after the scan's last event. So the replica is never older than what the
        journal holds below SyncFinished (the applier starts after it), exactly
        as when the scan runs first. A file written on the master between the
        scan's read and the copy would reach the replica early (or one the scan
        never saw at all): ``settle(written, position, keep)`` runs before
        SyncFinished to make the files this run wrote (created or updated in
        place) hold exactly what the journal holds at ``position``; it calls
        ``keep(paths)`` before it changes any of them, so that their before-images
        (the bytes this run wrote over) go to the undo log first.

        ``first``: the replica's first synchronization. If its directory held
        anything then, the replica held no state the journal names before this
        run: a rewind reaches this run and later (the undo log's floor moves
        to its SyncStarted), never the directory's old contents. ``foreign``
        says the same of a replica changed while it was rewound.

        ``check_held(held, entries)``: of the paths this run changed (each with
        the replica's entry before it, None where it had none), those where the
        replica did not hold what the journal holds at ``held`` (a hand edit, an
        encryption while replication was stopped): it held no state the journal
        names, as for ``foreign``; they go to :attr:`SyncSummary.diverged`.

        ``moved_since(p)``: the master paths whose bytes or place the journal
        changed after ``p``. A file of the same size and modification time on
        both sides whose change the scan beside this run journaled (``cp -p``,
        ``tar x``: the ctime told it) has its bytes compared, as ``recheck``
        would have it; not at a first synchronization, whose scan journals every
        file anew (a seeded replica is trusted by size and time, as rsync does).
        """
        if level not in LEVELS:
            raise ConfigurationError(detail=f"sync level {level!r} is not one of {LEVELS}")
        # A synchronization builds the replica from whatever is there: the root too,
        # and only here (an applier finding it gone stops instead; see _wire_replica).
        self.tree.make_root()
        summary = self._summary = SyncSummary(self.scenario, self.replica, level, position)
        begun = position  # where the scan beside this run started
        run_id = new_id()
        self._version = 0
        self._run_id = run_id
        self._follow = follow
        self._created: list[str] = []
        self._copied: list[str] = []  # new files and files updated in place (for settle)
        self._existed: set[str] = set()  # of those, the ones the replica had before this run
        self._trusted: set[str] = set()  # files taken as the same by size and time
        # 1. Journal the start; before-images are keyed by its position.
        (started,) = self._append([self._event(SyncStarted, level=level, position=position)], None)
        if started > held + 1:  # before this run records anything: it closes the gap
            self.store.write(lambda txn: self.undo.open_gap(txn, held))
        self._undo_position = started
        self._undo_seq = 0
        # 2. Compare and transfer (behind the capture's walk and reads, if one runs).
        if follow is not None:
            follow.wait_walked()
        master = self._walk_master(summary)
        if follow is not None and _mostly_small(master):
            # Copying small files while the scan reads and journals them costs both
            # threads more (a GIL handoff at every system call, creations waiting
            # on the journal's fsyncs) than the overlap saves: copy after the scan.
            follow.wait_done()
        replica = self._walk_replica(summary)
        if self._replica_unlisted:
            self._list_again(master, replica)
        self._replica_entries = replica  # kept current as kind changes delete subtrees
        roots = self.layout.root_paths()
        seeded = foreign or (first and any(path not in roots for path in replica))
        # As this run found it, for check_held (the run deletes from ``replica``).
        found: dict[str, Entry] = dict(replica) if check_held and not seeded else {}
        synced: list[DomainEvent] = []
        creations: list[tuple[str, Entry]] = []
        # Files taken as the same by size and time, told once the scan is done.
        trusted: list[tuple[str, Entry, str]] = []
        late = moved_since is not None and not first  # first: a seeded replica is trusted

        def note(path: str, entry: Entry, action: str, sent: int) -> None:
            summary.files_changed += 1
            summary.bytes_sent += sent
            summary.transferred.append((path, action, entry.size, sent))
            synced.append(self._synced(path, action, entry.size, sent))

        for path in sorted(master, key=os.fsencode):
            summary.files_checked += 1
            entry = master[path]
            if path not in replica and entry.kind in {"file", "dir", "symlink"}:
                # New paths go in batches: one transaction for their before-images.
                creations.append((path, entry))
                if len(creations) >= _BATCH_PATHS:
                    for done in self._create_batch(creations):
                        note(*done)
                    creations = []
                continue
            action, sent = self._bring(path, entry, replica.get(path), level)
            if self._xattrs(path, record=True) and not action:
                action = "metadata"
            if path in self._trusted and late:
                trusted.append((path, entry, action))
            elif action:
                note(path, entry, action, sent)
        for done in self._create_batch(creations):
            note(*done)
        # The new paths were written without flushes of their own: durable before SyncFinished.
        self.tree.flush(self._created)
        if follow is not None:
            # The journal holds everything the scan found before SyncFinished moves
            # the applied position past it (raises if the scan failed).
            position = follow.wait_done()
            summary.position = position
        if trusted:
            assert moved_since is not None
            # The scan journaled a change to some of them that kept size and time.
            moved = moved_since(begun)
            for path, entry, first_action in trusted:
                action, sent = first_action, 0
                if path in moved and path in replica:
                    again, sent = self._bring(path, entry, replica[path], level, compare=True)
                    action = again or first_action
                if action:
                    note(path, entry, action, sent)
        for path in sorted((p for p in replica if p not in master), key=os.fsencode, reverse=True):
            if self._unknown(path):
                continue  # unknown master contents: never delete on a guess
            self._record(
                [image_of_existing(self.tree, path, _still_there(self.tree, path), deleted=True)]
            )
            self.tree.delete(path)
            summary.files_deleted += 1
            summary.transferred.append((path, "deleted", 0, 0))
            synced.append(self._synced(path, "deleted", 0, 0))
        if follow is not None and settle is not None:  # after the deletions: it may put some back
            settle(self._copied, position, self._keep, master, self._unknown)
        if self.layout.single and self._root():
            summary.files_changed += 1
        if not seeded and check_held is not None:
            changed = {path for path, action, _, _ in summary.transferred if action != "metadata"}
            if changed:
                summary.diverged = check_held(held, {path: found.get(path) for path in changed})
                seeded = bool(summary.diverged)
        # 3. Journal the results; SyncFinished moves the applied position atomically.
        finished = self._event(
            SyncFinished,
            level=level,
            position=position,
            files_checked=summary.files_checked,
            files_changed=summary.files_changed,
            files_deleted=summary.files_deleted,
            bytes_sent=summary.bytes_sent,
            warnings=[str(w) for w in summary.warnings],
        )

        volume = self.tree.volume()

        def applied(txn: WriteTxn, positions: list[int]) -> None:
            set_applied(txn, positions[-1])
            self.undo.set_volume(txn, volume)  # what appliers and rewinds check it against
            if seeded:
                self.undo.raise_floor(txn, started)

        self._append([*synced, finished], applied)
        return summary

    # -- walking ---------------------------------------------------------------------------

    def _walk_master(self, summary: SyncSummary) -> dict[str, Entry]:
        found: dict[str, Entry] = {}
        self._unlisted: list[str] = []
        for index, root in enumerate(self.layout.roots):
            prefix = self.layout.prefix(index)
            tree = walk(root, self.include, self.exclude, reserved=TMP_PREFIX)
            with contextlib.closing(tree):
                for entry in tree:
                    if entry.kind == "special":
                        summary.warnings.append(
                            SpecialFileSkippedWarning(
                                path=prefix + entry.relpath,
                                detail=_special_kind(os.path.join(root, entry.relpath)),
                            )
                        )
                    else:
                        found[prefix + entry.relpath] = entry
            summary.warnings.extend(tree.warnings)
            self._unlisted.extend(prefix + u for u in tree.unlisted)
            if prefix:
                found[prefix.rstrip("/")] = _root_entry(prefix.rstrip("/"), root)
        return found

    def _walk_replica(self, summary: SyncSummary | None, below: str = "") -> dict[str, Entry]:
        """The replica's entries (below the directory ``below``); its warnings to ``summary``.

        The directories it could not list are left in ``_replica_unlisted``.
        """
        found: dict[str, Entry] = {}
        prefix = below + "/" if below else ""
        tree = walk(os.path.join(self.tree.root, below))
        with contextlib.closing(tree):
            for entry in tree:
                if entry.name.startswith(TMP_PREFIX):
                    # A temporary file left by a crash: never part of the copy.
                    self.tree.delete(prefix + entry.relpath)
                    continue
                found[prefix + entry.relpath] = entry
        if summary is not None:
            summary.warnings.extend(tree.warnings)
        self._replica_unlisted = [prefix + u for u in tree.unlisted]
        return found

    def _list_again(self, master: dict[str, Entry], replica: dict[str, Entry]) -> None:
        """List the replica directories the walk could not (a mode changed by hand).

        Each is given the master's mode first (its before-image kept), then what it
        holds is compared like the rest, never taken as empty (a file the master
        deleted would stay, the run said done). One the master no longer has as a
        directory is given its owner's rwx, so that it is deleted with what it
        holds, their before-images kept (review 26 N B5: the run stopped on it).
        One still unreadable stops the run (E3010): the replica cannot be made the
        master's copy.
        """
        first = self._replica_unlisted  # (each listing below sets it anew)
        for below in first:
            if self._unknown(below):
                continue  # its master contents unknown
            st = self.tree.lstat(below)
            if below in master and master[below].kind == "dir":
                mode = master[below].mode
            elif st is not None:
                mode = stat.S_IMODE(st.st_mode) | stat.S_IRWXU
            else:
                continue  # gone meanwhile
            if st is not None:
                self._record([("meta", below, self.tree.meta(below, st), {})])
            self.tree.set_meta(below, mode, None)
            try:
                again = self._walk_replica(None, below)
            except XoError as e:
                detail = str(e)
            else:
                if not self._replica_unlisted:
                    replica.update(again)
                    continue
                detail = f"{self._replica_unlisted[0]!r} cannot be listed"
            raise ReplicaWriteError(
                path=below,
                root=self.tree.root,
                action="list",
                detail=f"{detail}: what it holds is unknown, and the replica cannot be "
                "made the master's copy",
            )

    # -- one path -----------------------------------------------------------------------------

    def _delete_tree(self, path: str) -> None:
        """Delete a replica path and everything below it, keeping every before-image."""
        below = sorted(
            (p for p in self._replica_entries if p.startswith(path + "/")),
            key=os.fsencode,
            reverse=True,
        )
        images = []
        for victim in [*below, path]:
            st = self.tree.lstat(victim)
            if st is not None:
                images.append(image_of_existing(self.tree, victim, st, deleted=True))
            self._replica_entries.pop(victim, None)
        self._record(images)
        self.tree.delete(path)

    def _create_batch(self, batch: list[tuple[str, Entry]]) -> list[tuple[str, Entry, str, int]]:
        """Create paths the replica lacks: their before-images first, in one transaction."""
        if not batch:
            return []
        self._record([("created", path, {}, {}) for path, _ in batch])
        self._created.extend(path for path, _ in batch)
        # Creations only (nothing moves or goes): each parent directory opened once.
        with self.tree.holding_parents():
            return self._create_each(batch)

    def _create_each(self, batch: list[tuple[str, Entry]]) -> list[tuple[str, Entry, str, int]]:
        done = []
        for path, entry in batch:
            if entry.kind == "dir":
                self.tree.create(path, "dir", entry.mode, None)
                sent = 0
            elif entry.kind == "symlink":
                self.tree.create(path, "symlink", 0, entry.target)
                self.tree.set_meta(path, None, entry.mtime_ns, self._owner(entry))
                sent = 0
            else:
                if self._follow is not None:
                    self._follow.wait_read(path)
                source = functools.partial(self._open_master, path, entry)
                copied = self.tree.copy_new(path, source, entry.mode, self._owner(entry))
                self._copied.append(path)  # settled: what the journal holds goes there
                if copied is None:  # gone, moved or unreadable since the walk
                    self._created.remove(path)
                    self._summary.warnings.append(_not_copied(path, self.layout.master_path(path)))
                    continue
                sent = copied  # owner, mode and mtime (as it was copied): copy_new
            done.append((path, entry, "created", sent))
        for path, entry in batch:  # directory modes last: creating children moves mtimes
            if entry.kind == "dir":
                self.tree.set_meta(path, entry.mode, None, self._owner(entry))
        for path, _ in batch:  # extended attributes after modes (an ACL sets mode bits)
            self._xattrs(path, record=False)
        return done

    def _bring(
        self, path: str, entry: Entry, have: Entry | None, level: str, *, compare: bool = False
    ) -> tuple[str, int]:
        """Make the replica's ``path`` what the master's is; (action, bytes sent).

        A file of the same size and time is taken as the same (and noted in
        ``_trusted``) unless ``compare`` or ``recheck`` says to compare its bytes.
        """
        tree = self.tree
        if have is not None and have.kind != entry.kind:
            self._delete_tree(path)
            have = None
        if entry.kind == "dir":
            if have is None:
                self._record([("created", path, {}, {})])
                tree.create(path, "dir", entry.mode, None)
                tree.set_meta(path, None, None, self._owner(entry))
                return "created", 0
            return self._meta(path, entry, have), 0
        if entry.kind == "symlink":
            if have is not None and have.target == entry.target:
                return self._meta(path, entry, have), 0
            if have is not None:
                self._record(
                    [image_of_existing(tree, path, _still_there(tree, path), deleted=True)]
                )
            else:
                self._record([("created", path, {}, {})])
            tree.create(path, "symlink", 0, entry.target)
            tree.set_meta(path, None, entry.mtime_ns, self._owner(entry))
            return ("created" if have is None else "updated"), 0
        # Regular files.
        if (
            have is not None
            and have.size == entry.size
            and have.mtime_ns == entry.mtime_ns
            and path not in self.recheck
            and not compare
        ):
            self._trusted.add(path)
            return self._meta(path, entry, have), 0
        got = self._read_master(path, entry)
        data, segments = got if got is not None else (None, None)
        self._copied.append(path)  # settled: a file gone meanwhile gets the journal's state
        if have is not None:
            self._existed.add(path)
        if data is None:
            return "", 0
        if have is None or level == "file" or have.size == 0:
            st = tree.lstat(path) if have else None
            self._record(
                [image_of_existing(tree, path, st, deleted=False)]
                if st is not None
                else [("created", path, {}, {})]
            )
            tree.replace(path, [memoryview(data)], mode=entry.mode, owner=self._owner(entry))
            tree.set_meta(path, None, entry.mtime_ns)  # owner and mode: replace
            return ("created" if have is None else "updated"), len(data)
        sent = self._block_update(path, data, have, segments)
        if self._meta_of(have) != self._meta_of(entry):
            self._record([("meta", path, tree.meta(path, tree.lstat(path)), {})])
        tree.set_meta(path, entry.mode, entry.mtime_ns, self._owner(entry))
        return ("updated" if sent or have.size != len(data) else "metadata"), sent

    def _block_update(
        self,
        path: str,
        data: bytes | mmap.mmap,
        have: Entry,
        segments: list[tuple[int, int]] | None,
    ) -> int:
        """Send the blocks of ``data`` (``segments``: its data, if it has holes) that differ."""
        tree = self.tree
        bs = self.block_size
        old_size = _still_there(tree, path).st_size
        ranges = self._changed_ranges(path, data, segments, old_size)
        aligned = sum(n for _, n in ranges)
        if len(data) != old_size and aligned > 2 * bs and _shifted(ranges, len(data), old_size):
            old_map = tree.block_map(path, bs)  # read a chunk at a time: the file may be large
            new_map = BlockMap.compute(data, bs, segments=segments)
            ops = blocks.delta(old_map, data, new_map=new_map)
            literal = blocks.literal_bytes(ops)
            if literal < aligned:
                self._record(
                    [image_of_existing(tree, path, _still_there(tree, path), deleted=False)]
                )
                base, result = old_map.file_digest.hex(), new_map.file_digest.hex()
                made = tree.rebuild(path, ops, data, base=base, result=result, mode=have.mode)
                if made == "diverged":  # the replica's file moved under the sync: send it whole
                    tree.replace(path, [memoryview(data)], mode=have.mode)
                    return len(data)
                return literal
        if not ranges and len(data) == old_size:
            return 0
        self._record([image_of_writes(tree, path, ranges, len(data))])
        view = memoryview(data)
        tree.write_ranges(path, ((o, view[o : o + n]) for o, n in ranges), len(data))
        return aligned

    def _changed_ranges(
        self,
        path: str,
        data: bytes | mmap.mmap,
        segments: list[tuple[int, int]] | None,
        old_size: int,
    ) -> list[tuple[int, int]]:
        """:func:`blocks.changed_ranges` of the replica's file and ``data``, a window at a time.

        A window where neither file holds data (holes, or past the replica's
        end) is not read: the blocks of a 1 TiB thin image are not all held
        at once, and its holes are not hashed.
        """
        bs = self.block_size
        size = len(data)
        window = max(bs, blocks.READ_CHUNK - blocks.READ_CHUNK % bs)
        ours = blocks.Holes([(0, size)] if segments is None else segments, size, window)
        theirs = blocks.Holes(self.tree.data_segments(path, 0, old_size), old_size, window)
        view = memoryview(data)
        ranges: list[tuple[int, int]] = []
        for low in range(0, size, window):  # past the master's end: cut, nothing to send
            high = min(size, low + window)
            held = min(old_size, low + window) - low
            if ours.covers(low, high - low) is not None and (
                held <= 0 or theirs.covers(low, held) is not None
            ):
                continue  # zeros on both sides (past the replica's end: cut to size)
            theirs_now = self.tree.read(path, low, max(held, 0))
            found = blocks.changed_ranges(theirs_now, view[low:high], bs)  # no weak sums
            ranges += [(low + offset, length) for offset, length in found]
        return blocks.coalesce_ranges(ranges)

    def _owner(self, entry: Entry) -> tuple[int, int] | None:
        """The owner to give (and compare): None where the replica cannot be given owners."""
        return (entry.uid, entry.gid) if self.tree.owners else None

    def _meta_of(self, entry: Entry) -> dict[str, Any]:
        """The metadata of a walked entry, as a ``meta`` before-image holds it."""
        meta: dict[str, Any] = {"mode": entry.mode, "mtime_ns": entry.mtime_ns}
        owner = self._owner(entry)
        return meta if owner is None else {**meta, "owner": list(owner)}

    def _meta(self, path: str, entry: Entry, have: Entry) -> str:
        """Bring the master's mode, mtime and owner; "" if the replica had them.

        A link has no mode of its own; a directory's mtime moves with every entry
        made in it.
        """
        link = entry.kind == "symlink"
        timed = entry.kind != "dir"
        if (
            self._owner(have) == self._owner(entry)
            and (link or have.mode == entry.mode)
            and (not timed or have.mtime_ns == entry.mtime_ns)
        ):
            return ""
        st = self.tree.lstat(path)
        self._record([("meta", path, self.tree.meta(path, st), {})] if st else [])
        mode = None if link else entry.mode
        self.tree.set_meta(path, mode, entry.mtime_ns if timed else None, self._owner(entry))
        return "metadata"

    def _xattrs(self, path: str, *, record: bool) -> bool:
        """Give the replica's ``path`` the master's extended attributes; True if they differed.

        ``record``: keep the replica's old ones as a before-image first (not for
        a path this run created: undoing its creation removes them with it).
        Namespaces the replica cannot be given are not compared.
        """
        tree = self.tree
        try:
            want = xattrs_below(*self.layout.master_place(path))
        except OSError:
            return False  # gone from the master: the capture journals that
        have = tree.get_xattrs(path)
        if have is None or have == want:
            return False
        want = tree.comparable(want)
        if tree.comparable(have) == want:
            return False
        if record:
            self._record([("xattrs", path, {"xattrs": have}, {})])
        return tree.set_xattrs(path, want)

    def _root(self) -> bool:
        """Give the replica's own directory the master root's mode, owner and attributes.

        (The roots of a scenario of several are directories of the replica: the
        walk brings them.) True if they differed; the old ones are kept first.
        """
        tree = self.tree
        try:
            master = own_meta(self.layout.roots[0])
        except OSError:
            return False
        want = tree.comparable(master["xattrs"])
        have = tree.root_meta("")
        owner = master["owner"] if tree.owners else have.get("owner")
        if (
            have.get("mode") == master["mode"]
            and have.get("owner") == owner
            and tree.comparable(have.get("xattrs", {})) == want
        ):
            return False
        self._record([("root", "", have, {})])
        tree.set_root("", master["mode"], owner, want)
        return True

    def _unknown(self, path: str) -> bool:
        """Whether ``path`` lies in a master directory this run's walk could not list."""
        return any(path == u or path.startswith(u + "/") for u in self._unlisted)

    def _keep(self, paths: list[str], gone: list[str]) -> None:
        """Before-images of replica paths about to change again (a :class:`Keep`, for settle).

        What is there now, and everything below the directories of ``gone``;
        a creation where nothing is. Not the paths this run created: their
        ``created`` records undo whatever is there.
        """
        tree = self.tree
        ours = {*self._created, *(p for p in self._copied if p not in self._existed)}
        below: list[str] = []
        for path in gone:
            listing = walk(os.path.join(tree.root, path))
            with contextlib.closing(listing):
                below.extend(f"{path}/{entry.relpath}" for entry in listing)
        images: list[Image] = []
        listed = set(below)
        for path in [*sorted(below, key=os.fsencode, reverse=True), *paths]:
            st = tree.lstat_placed(path)
            if st is None:
                if path not in listed:
                    images.append(("created", path, {}, {}))
            elif path not in ours:
                images.append(image_of_existing(tree, path, st, deleted=False))
        self._record(images)

    def _read_master(
        self, path: str, entry: Entry
    ) -> tuple[bytes | mmap.mmap, list[tuple[int, int]] | None] | None:
        """A master file's bytes, and its data segments if it may have holes (``read_whole``).

        None where ``path`` is no longer the file the walk found (``entry``).
        """
        if self._follow is not None:
            self._follow.wait_read(path)
        try:
            fd = self._open_master(path, entry)
        except OSError:
            return None
        try:
            return read_whole(fd, os.fstat(fd), self.store.path)
        finally:
            os.close(fd)

    def _open_master(self, path: str, entry: Entry) -> int:
        """Open the master file the walk found at ``path`` (``entry``): that inode, or OSError.

        Another file renamed there since (a file of another owner, in a directory
        a user may write) would go to the replica with the walk's mode and owner:
        its bytes to a user the master never gave them to. Found: it is left for
        the capture (it journals what is there) and the next run.
        """
        fd = open_below(*self.layout.master_place(path))
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (entry.dev, entry.inode) or not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise FileNotFoundError(errno.ENOENT, "replaced since the walk", path)
        return fd

    # -- journal and undo ---------------------------------------------------------------------

    def _record(self, images: list[Image]) -> None:
        if not images:
            return
        position = self._undo_position
        seq = self._undo_seq
        self._undo_seq += len(images)

        def write(txn: WriteTxn) -> None:
            for offset, image in enumerate(images):
                self.undo.put(txn, position, seq + offset, image)

        self.store.write(write)

    def _event(self, cls: Any, **fields: Any) -> DomainEvent:
        self._version += 1
        event: DomainEvent = cls(
            originator_id=self._run_id,
            originator_version=self._version,
            timestamp=cls.create_timestamp(),
            scenario=self.scenario,
            replica=self.replica,
            **fields,
        )
        return event

    def _synced(self, path: str, action: str, size: int, sent: int) -> DomainEvent:
        return self._event(FileSynced, path=path, action=action, size=size, bytes_sent=sent)


def _not_copied(path: str, source: str) -> XoError:
    """The warning for a new master file a synchronization could not open to copy."""
    if os.path.isfile(source):
        return EntryUnreadableWarning(path=path, detail="it could not be opened to copy")
    return EntryVanishedWarning(path=path, detail="it went, moved or was replaced before its copy")


def _mostly_small(entries: dict[str, Entry]) -> bool:
    """Whether the regular files average less than :data:`_SMALL_AVERAGE` bytes."""
    sizes = [e.size for e in entries.values() if e.kind == "file"]
    return bool(sizes) and sum(sizes) < _SMALL_AVERAGE * len(sizes)


def _root_entry(name: str, root: str) -> Entry:
    return entry_from_stat(name, "dir", os.stat(root))


def _still_there(tree: ReplicaTree, path: str) -> os.stat_result:
    """The stat of a replica path the synchronization listed, for its before-image."""
    st = tree.lstat(path)
    if st is not None:
        return st
    raise ReplicaWriteError(
        action="keep the before-image of",
        path=path,
        root=tree.root,
        detail="it vanished during the synchronization: something else changes the replica",
    )


def _special_kind(path: str) -> str:
    """What a special file is, in words (for the warning that skips it)."""
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "special file"
    for test, name in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"
