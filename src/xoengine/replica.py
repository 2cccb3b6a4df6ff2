"""The replica applier: the projection that keeps one replica an exact copy, from the journal.

Room: producers and projections. May import ``errors``, ``codec``, ``datastore``,
``events``, ``journal``, ``tree``, ``walk`` (never capture, sync or other projections).

:class:`ReplicaApplier` follows the journal from its tracking position and
applies one scenario's file events to one replica tree, in batches:

1. for every event of the batch it records the *before-image* of what the
   event will overwrite, truncate, delete, rename or re-mode (the undo log,
   keyed by position) and commits it durably;
2. it changes the files (idempotent operations, fsynced);
3. it commits its tracking position.

A crash between any two steps is harmless: step 1 keeps the first
before-image recorded for a position, and step 2 re-applied gives the same
files (a delta is checked against the content digests it applies to and
results in). A remote replica host runs the same applier over its copy of
the journal (ARCHITECTURE.md: the master's journal is the spool).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from eventsourcing.persistence import Tracking
from eventsourcing.utils import get_topic

from xoengine.blobtable import blob_chunks
from xoengine.errors import (
    ReplicaDivergedError,
    ReplicaInUseError,
    ReplicaVolumeChangedError,
    TreeRootMissingError,
)
from xoengine.events import (
    APPLIED_EVENTS,
    FILE_EVENTS,
    BytesWritten,
    ContentReplaced,
    FileCreated,
    FileDeleted,
    FileEvent,
    FileRenamed,
    FileTruncated,
    MetadataChanged,
    RootChanged,
    XattrsChanged,
    observed_owner,
)
from xoengine.journal import BlobTable, LMDBTrackingRecorder
from xoengine.tree import (
    Image,
    ImageBytes,
    UndoLog,
    event_delta,
    image_of_existing,
    image_of_writes,
)
from xoengine.walk import check_real_root, path_and_parents

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from xoengine.datastore import ReadTxn, Store, WriteTxn
    from xoengine.tree import ReplicaTree

__all__ = [
    "APPLIED_TOPICS",
    "FILE_TOPICS",
    "Applied",
    "AppliedCounts",
    "ReplicaApplier",
    "forget_replica",
    "replica_state_name",
    "replica_tables",
]

FILE_TOPICS: Final = tuple(get_topic(cls) for cls in FILE_EVENTS)
APPLIED_TOPICS: Final = tuple(get_topic(cls) for cls in APPLIED_EVENTS)
"""What a replica applies: the file events, and the changes of the roots' own metadata."""

Applied: TypeAlias = "FileEvent | RootChanged"


def replica_state_name(scenario: str, replica: str) -> str:
    """The prefix of the tables a replica's applier keeps (tracking, undo log)."""
    return f"replica.{scenario}.{replica}"


def replica_tables(store: Store, scenario: str, replica: str) -> tuple[str, ...]:
    """The tables an applier of ``replica`` keeps: its tracking position and its undo log."""
    name = replica_state_name(scenario, replica)
    return (LMDBTrackingRecorder(store, prefix=name).tracking_table, *UndoLog.table_names(name))


def forget_replica(store: Store, scenario: str, replica: str) -> None:
    """Empty what an applier of ``replica`` kept: its tracking position and its undo log.

    For a scenario removed (its before-images and their blobs are freed), and
    for a new scenario before it is journaled: its replicas start from nothing
    (a synchronization builds them), not from a position and before-images
    that a removed scenario's replicas left under the same tables.
    """
    tables = replica_tables(store, scenario, replica)
    store.ensure(*tables)

    def work(txn: WriteTxn) -> None:
        for table in tables:
            txn.drop(table)

    store.write(work)


@dataclass
class AppliedCounts:
    """What an applier did since it was created (live statistics; reports use the journal)."""

    events: int = 0
    bytes: int = 0
    created: int = 0
    updated: int = 0
    deleted: int = 0
    renamed: int = 0
    errors: list[str] = field(default_factory=list)


REPLICA_LOCKS: Final = os.path.join(tempfile.gettempdir(), f"xoengine-replicas-{os.getuid()}")
"""Where this user's engines hold the replica roots they write (:meth:`ReplicaApplier.claim`):
a directory of this user's alone (mode 0700), so that no other user can plant a link there
or hold a name to block these engines."""


def _lock_place() -> bool:
    """Whether :data:`REPLICA_LOCKS` is (made, if missing) a directory of this user's alone."""
    with contextlib.suppress(OSError):  # there already, or not to be made: looked at next
        os.mkdir(REPLICA_LOCKS, 0o700)
    try:
        st = os.lstat(REPLICA_LOCKS)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def _lock_path(st: os.stat_result) -> str:
    """The lock file of the directory ``st``: named by its device and inode."""
    return os.path.join(REPLICA_LOCKS, f"{st.st_dev:x}-{st.st_ino:x}")


def _lock_replica(path: str) -> int | None:
    """An ``flock``-held lock file at ``path`` (:func:`_lock_path`; -1: no place for one).

    None if another holder has it. The file is removed by its holder's release,
    so a lock taken on a file removed meanwhile is taken again on the new one.
    """
    if not _lock_place():
        return -1  # best effort: nowhere safe to hold it
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError:
            return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # removed by the holder that let go while this one opened it


class ReplicaApplier:
    """Applies one scenario's file events to one replica tree, tracked exactly once.

    ``read_events(after, limit)`` returns ``(position, event)`` pairs for the
    positions after ``after`` (``event`` is None for anything it does not
    apply: not of :data:`APPLIED_TOPICS`); the applier's tracking lives in
    ``<name>.tracking``.
    """

    UPSTREAM: Final = "journal"

    def __init__(
        self,
        store: Store,
        name: str,
        scenario: str,
        tree: ReplicaTree,
        read_events: Callable[[int, int], Sequence[tuple[int, Applied | None]]],
        recover: Callable[[], object] | None = None,
        diverged: Callable[[ReplicaDivergedError], object] | None = None,
    ) -> None:
        """Apply ``scenario``'s events to ``tree``; ``name`` prefixes its tables.

        ``recover()`` runs before each pass (under :attr:`lock`): it undoes what
        an apply or a synchronization that did not finish left past the applied
        position, so that events apply to the state they follow. ``diverged(e)``
        hears of a pass stopped by :class:`ReplicaDivergedError` before it is raised.
        """
        self.store = store
        self.recover = recover
        self.diverged = diverged
        self.name = name
        self.scenario = scenario
        self.tree = tree
        self.read_events = read_events
        self.blobs = BlobTable(store)
        self.undo = UndoLog(store, name)
        self.tracking = LMDBTrackingRecorder(store, prefix=name)
        self.tracking.create_table()
        self.counts = AppliedCounts()
        self.lock = threading.RLock()  # one applier pass (or sync, or rewind) at a time
        # One suspend, rewind or resume at a time: each decides from the replica's
        # state (suspended, rewound, a rewind under way) and changes it.
        self.control = threading.RLock()
        self._swept = False
        self._held: tuple[int, str] | None = None  # the root's flock: fd, lock file
        self._claiming = threading.Lock()  # an applier thread and a synchronization at once

    def position(self) -> int:
        """The last journal position applied (0 if none)."""
        return self.tracking.max_tracking_id(self.UPSTREAM) or 0

    def read_position(self, txn: ReadTxn) -> int:
        """The applied position as seen inside ``txn``."""
        return self.tracking._read_tracking(txn, self.UPSTREAM) or 0

    def set_position(self, txn: WriteTxn, position: int, *, force: bool = False) -> None:
        """Record ``position`` as applied inside ``txn`` (``force`` allows going back: rewind)."""
        current = self.read_position(txn)
        if position > current or (force and position != current):
            if force:
                txn.delete(self.tracking.tracking_table, self.UPSTREAM.encode())
            self.tracking._put_tracking(txn, Tracking(self.UPSTREAM, position))

    def sweep_once(self) -> None:
        """Delete what a writer killed mid-replace left (once per process; later ones clean up)."""
        if not self._swept:
            self.tree.sweep_temporary()
            self._swept = True

    def apply_available(
        self, limit: int = 500, upto: int | None = None, stopping: Callable[[], bool] | None = None
    ) -> int:
        """Apply journaled events after the tracked position; return how many were read.

        ``stopping`` is asked between groups of events (each a commit of the
        tracking position): when it says so, the rest waits for the next call.
        """
        total = 0
        with self.lock:
            self.sweep_once()
            try:
                if self.recover is not None:
                    self.recover()
                while stopping is None or not stopping():
                    after = self.position()
                    if upto is not None and after >= upto:
                        break
                    batch = [
                        (p, e)
                        for p, e in self.read_events(after, limit)
                        if upto is None or p <= upto
                    ]
                    if not batch:
                        break
                    total += self._apply_batch(batch, stopping)
            except ReplicaDivergedError as e:
                if self.diverged is not None:
                    self.diverged(e)
                raise
        return total

    def _apply_batch(
        self, batch: Sequence[tuple[int, Applied | None]], stopping: Callable[[], bool] | None
    ) -> int:
        """Apply ``batch`` in groups; return how many events were applied (all, unless stopping)."""
        # Split where a path (or an ancestor) repeats: before-images are read from
        # the tree as it is before the group, right only if no path is touched twice.
        start = 0
        touched: set[str] = set()
        for index, (_, event) in enumerate(batch):
            paths = self._paths(event)
            if touched & paths:
                self._apply_group(batch[start:index])
                if stopping is not None and stopping():
                    return index
                start, touched = index, set()
            touched |= paths
        self._apply_group(batch[start:])
        return len(batch)

    def _mine(self, event: Applied | None) -> bool:
        return isinstance(event, FileEvent | RootChanged) and event.scenario == self.scenario

    def _paths(self, event: Applied | None) -> set[str]:
        if event is None or not self._mine(event):
            return set()
        if isinstance(event, RootChanged):
            return {"\0root\0" + event.root}  # no path's: a root's own metadata
        names = [event.path, event.new_path] if isinstance(event, FileRenamed) else [event.path]
        return {path for name in names for path in path_and_parents(name)}

    def check_place(self) -> None:
        """Refuse a root that leads elsewhere through a link now (see ``check_real_root``).

        Asked by synchronizations too, which otherwise build the replica where it is.
        """
        check_real_root(self.tree.root, "replica")

    def claim(self) -> None:
        """Hold the replica's root for this engine until :meth:`release`.

        Another engine whose scenario names the same directory (another state
        directory, in this process or another) is refused
        (:class:`ReplicaInUseError`) before it writes: two journals writing one
        tree would each undo and resynchronize behind the other. The hold is an
        ``flock`` on a lock file named by the root's device and inode in
        :data:`REPLICA_LOCKS` (outside the replica: nothing is written into it,
        and its volume stays free to unmount); where that place cannot be made
        or opened, nothing is held. A root made anew (a synchronization after it
        was deleted) is held anew; a root not there yet is not held.
        """
        if self.store.readonly:
            return  # a read-only engine writes nothing (its journal writes are refused)
        with self._claiming:
            try:
                st = os.stat(self.tree.root)
            except OSError:
                return  # not there (yet): nothing of it to write over
            path = _lock_path(st)
            if self._held is not None and self._held[1] == path:
                return
            fd = _lock_replica(path)
            if fd is None:
                raise ReplicaInUseError(
                    root=self.tree.root,
                    detail=f"replica {self.name!r} of scenario {self.scenario!r} is another "
                    "open engine's replica too",
                )
            if fd < 0:
                return  # nowhere to hold it: not held (said in the guide)
            self.release()
            self._held = (fd, path)

    def release(self) -> None:
        """Let go of the root :meth:`claim` held (the engine closes, the scenario is removed)."""
        held, self._held = self._held, None
        if held is not None:
            with contextlib.suppress(OSError):  # the next holder makes it again
                os.unlink(held[1])
            os.close(held[0])

    def check_root(self) -> None:
        """Refuse to write if the root is gone, or on another file system than the last sync built.

        A deleted replica is not made again, empty, behind the operator's back;
        an unmounted volume leaves its mount point, an empty directory on the
        file system below: written into, it would fill that one and pass for
        the replica. A synchronization builds the replica again where it is.
        """
        self.check_place()
        if not os.path.isdir(self.tree.root):
            raise TreeRootMissingError(
                root=self.tree.root,
                detail="the replica is gone (deleted, or its volume not mounted): restore "
                "it, or synchronize the replica to build it again from the master",
            )
        with self.store.read() as txn:
            was = self.undo.volume(txn)
        now = self.tree.volume()
        if was is not None and now is not None and now != was:
            raise ReplicaVolumeChangedError(
                root=self.tree.root, detail=f"file system id {now:x}, was {was:x}"
            )
        self.claim()

    def _apply_group(self, group: Sequence[tuple[int, Applied | None]]) -> None:
        if not group:
            return
        mine = [(p, e) for p, e in group if e is not None and self._mine(e)]
        if mine:
            self.check_root()
        last = group[-1][0]
        # 1. Before-images, durable before any change.
        if mine:
            images = [(p, self._before_images(p, e)) for p, e in mine]

            def record_undo(txn: WriteTxn) -> None:
                for position, records in images:
                    self.undo.record(txn, position, records)

            self.store.write(record_undo)
        # 2. The changes themselves (idempotent).
        for position, event in mine:
            self._apply(position, event)
        # 3. Tracking.
        self.store.write(lambda txn: self.set_position(txn, last))

    # -- before-images -------------------------------------------------------------------

    def _before_images(self, position: int, event: Applied) -> list[Image]:
        tree = self.tree
        if isinstance(event, RootChanged):
            return [("root", event.root, tree.root_meta(event.root), {})]
        path = event.path
        st = tree.lstat(path)
        if isinstance(event, FileCreated):
            return (
                [("created", path, {}, {})]
                if st is None
                else [image_of_existing(tree, path, st, deleted=False)]
            )
        if isinstance(event, FileDeleted):
            return [] if st is None else [image_of_existing(tree, path, st, deleted=True)]
        if isinstance(event, FileRenamed):
            images: list[Image] = []
            target = tree.lstat(event.new_path)
            if target is not None:  # the rename replaces whatever was at new_path
                images.append(image_of_existing(tree, event.new_path, target, deleted=True))
            return [*images, ("renamed", path, {"new_path": event.new_path}, {})]
        if isinstance(event, MetadataChanged):
            return [] if st is None else [("meta", path, tree.meta(path, st), {})]
        if isinstance(event, XattrsChanged):
            xattrs = None if st is None else tree.get_xattrs(path)
            return [] if xattrs is None else [("xattrs", path, {"xattrs": xattrs}, {})]
        if isinstance(event, BytesWritten | FileTruncated) and (
            st is None or not stat.S_ISREG(st.st_mode)
        ):
            # The file these bytes go into is not there (a group never creates and
            # writes one path): something outside xoengine removed or replaced it.
            raise ReplicaDivergedError(path=path, position=position, replica=self.tree.root)
        if isinstance(event, BytesWritten):
            return [image_of_writes(tree, path, [(r[0], r[1]) for r in event.ranges], event.size)]
        if isinstance(event, FileTruncated):
            return [image_of_writes(tree, path, [], event.size)]
        if isinstance(event, ContentReplaced):
            return [self._inverse_delta(event, st)]
        return []

    def _inverse_delta(self, event: ContentReplaced, st: os.stat_result | None) -> Image:
        # Old bytes the delta copies survive in the new content: undo copies them
        # back from there; old bytes it drops are saved as data.
        path = event.path
        old_size = 0 if st is None else st.st_size
        covered: list[tuple[int, int, int]] = []  # (old offset, length, new offset)
        new_offset = 0
        for op in event.ops:
            if op[0] == "copy":
                covered.append((op[1], op[2], new_offset))
            new_offset += op[2]
        covered.sort()
        ops: list[list[Any]] = []
        data: dict[str, ImageBytes] = {}
        cursor = 0

        def save(offset: int, length: int) -> None:  # old bytes no copy keeps: as data
            for start, size in blob_chunks(offset, length):  # each read as it is stored
                name = f"d{len(data)}"
                data[name] = functools.partial(self.tree.read, path, start, size)
                ops.append(["data", name, size])

        for old_off, length, new_off in covered:
            if old_off > cursor:
                save(cursor, old_off - cursor)
            start = max(old_off, cursor)
            if old_off + length > start:
                ops.append(["copy", new_off + (start - old_off), old_off + length - start])
            cursor = max(cursor, old_off + length)
        if old_size > cursor:
            save(cursor, old_size - cursor)
        # Digests of both contents make undoing it idempotent (a rewind may be resumed).
        args = {
            "old_size": old_size,
            "ops": ops,
            "old_digest": self.tree.digest128(path).hex(),
            "new_digest": event.result,
            **self.tree.meta(path, st),
        }
        return ("content", path, args, data)

    # -- applying --------------------------------------------------------------------------

    def _apply(self, position: int, event: Applied) -> None:
        tree = self.tree
        counts = self.counts
        counts.events += 1
        if isinstance(event, RootChanged):
            tree.set_root(event.root, event.mode, event.owner, event.xattrs)
            return
        if isinstance(event, FileCreated):
            tree.create(event.path, event.kind, event.mode, event.target)
            if event.kind != "symlink":
                tree.set_meta(event.path, None, event.mtime_ns)
            counts.created += 1
        elif isinstance(event, BytesWritten):
            pieces = ((offset, self.blobs.view(blob)) for offset, _, blob in event.ranges)
            tree.write_ranges(event.path, pieces, event.size)
            counts.bytes += sum(r[1] for r in event.ranges)
            counts.updated += 1
        elif isinstance(event, FileTruncated):
            tree.truncate(event.path, event.size)
            counts.updated += 1
        elif isinstance(event, ContentReplaced):
            self._apply_delta(position, event)
            counts.updated += 1
        elif isinstance(event, FileRenamed):
            tree.rename(event.path, event.new_path)
            counts.renamed += 1
        elif isinstance(event, FileDeleted):
            tree.delete(event.path)
            counts.deleted += 1
        elif isinstance(event, MetadataChanged):
            tree.set_meta(event.path, event.mode, event.mtime_ns)
        if event.observed and not isinstance(event, (FileDeleted, FileRenamed)):
            # Content writes move the mtime: put the master's back (like rsync -a). The
            # mode too: a chmod between two captures travels only in the observed stat.
            observed = event.observed
            tree.set_meta(event.path, observed[1], observed[2], observed_owner(observed))
        if isinstance(event, XattrsChanged):  # last: see the event
            tree.set_xattrs(event.path, event.xattrs)
        elif isinstance(event, FileCreated) and event.kind != "symlink":
            # Made with none, as on the master (an XattrsChanged follows if it has
            # some): not with an ACL the replica's directory would hand down to it.
            tree.set_xattrs(event.path, {})

    def _apply_delta(self, position: int, event: ContentReplaced) -> None:
        # Built from a replica that differs from what the master had: refused, and
        # the old content stays. Applied already (a re-application after a crash): done.
        outcome = self.tree.rebuild(
            event.path,
            *event_delta(event.ops, self.blobs.view),
            base=event.base or None,
            result=event.result,
        )
        if outcome == "diverged":
            raise ReplicaDivergedError(path=event.path, position=position, replica=self.tree.root)
        self.counts.bytes += sum(op[2] for op in event.ops if op[0] == "data")
