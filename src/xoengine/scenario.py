"""The scenario handle: life cycle, capture, replication, rewind, statistics and reports.

Room: engine (with ``engine``, which creates scenarios and holds their
definitions; this module sees it only for type checking). May import every
lower room: the producers and projections it drives, storage, algorithms,
record and floor.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import os
import re
import stat
import tempfile
import threading
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from xoengine import blocks, codec
from xoengine.capture import Capture, CaptureResult, MasterState
from xoengine.errors import (
    CaptureFailedError,
    ConfigurationError,
    FrameError,
    JournalReadOnlyError,
    ParentNotDirectoryError,
    ReplicaDivergedError,
    ReplicaNotFoundError,
    ReplicationTimeoutError,
    ReplicaWriteError,
    RewindUnreachableError,
    RewindWriteError,
    ScenarioStateError,
    SymlinkedParentError,
    XoError,
)
from xoengine.events import (
    AlertRaised,
    BytesWritten,
    ContentReplaced,
    FileCreated,
    FileDeleted,
    FileEvent,
    FileRenamed,
    FileTruncated,
    ReplicaResumed,
    ReplicaRewound,
    ReplicaSuspended,
    RewindPointSet,
    RewindStarted,
    ScenarioStarted,
    ScenarioStateChanged,
    ScenarioStopped,
    UndoTrimmed,
    event_bytes,
    root_label,
)
from xoengine.journal import iso_time, read_iso_time
from xoengine.journaledfile import JournaledFile
from xoengine.layout import Layout
from xoengine.ledger import SYNC_EVENTS, Span, operation, sync_runs
from xoengine.manifest import FileState, Manifest
from xoengine.masterstate import racy
from xoengine.replica import ReplicaApplier, replica_state_name
from xoengine.rewind import (
    CLEAR_SHARE,
    RetentionDecision,
    RetentionPolicy,
    RewindPoint,
    UndoUsage,
    retention,
    rewind_back,
)
from xoengine.sync import LEVELS, Keep, Synchronizer, SyncSummary
from xoengine.tree import TMP_PREFIX, ReplicaTree, reserved_name
from xoengine.walk import (
    Entry,
    ParentCache,
    normalize_relpath,
    path_and_parents,
    stat_entry,
    walk,
)
from xoengine.worker import ApplierThread, ScanFollower, coded_failure, compare_trees

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Mapping, Sequence

    from xoengine.datastore import ReadTxn, WriteTxn
    from xoengine.engine import Engine, _Definition
    from xoengine.forensic import DiffResult
    from xoengine.replica import Applied
    from xoengine.tree import UndoLog

__all__ = [
    "DEFAULT_DATABASE_PATTERNS",
    "ReplicaStatistics",
    "Scenario",
    "ScenarioStatistics",
    "master_manifest",
]


DEFAULT_DATABASE_PATTERNS: Final = ("*.db", "*.sqlite", "*.sqlite3", "*.mdf")


_DB_COMPANIONS: Final = ("-wal", "-shm", "-journal", ".ldf")

_POINT_NAME_MAX: Final = 256
"""The longest rewind point name, in characters (they are journaled with every point)."""

_AUTO_POINT_NAME: Final = re.compile(r"(?:sync|auto|backup|integrity)-\d+")
"""Names of automatic rewind points (kind, then position): refused for user points."""

CLOCK_BEHIND_SLACK_NS: Final = 10**9
"""How far the clock may stand behind the journal's last label before AW0006 (NTP's small steps)."""
_MOVES: Final = (FileCreated, FileRenamed, BytesWritten, FileTruncated, ContentReplaced)
"""The events that give a path other bytes, or a file another path."""


RESYNCING: Final = b"resyncing:"
"""Before a rewound replica's content print while a resume's resync runs (see _resume)."""


def master_manifest(scenario: str) -> Manifest:
    """The tables of ``scenario``'s master state (path entries and block digests)."""
    return Manifest(f"scenario.{scenario}.master")


def _reads_as_time(name: str) -> bool:
    """Whether the command line would read ``name`` as an ISO 8601 time too."""
    return read_iso_time(name) is not None


def _trim_inline(undo: UndoLog, upto: int, txn: WriteTxn, _positions: list[int]) -> None:
    """Trim ``undo`` up to ``upto`` in the transaction that journals UndoTrimmed."""
    undo.trim_in(txn, upto)


@dataclass(frozen=True)
class ReplicaStatistics:
    """One replica's figures: how far it is, how much waits, what it received."""

    name: str
    path: str
    suspended: bool
    applied_position: int
    backlog_events: int
    backlog_bytes: int
    oldest_unapplied_age_s: float | None
    bytes_replicated: int
    files_replicated: int
    undo_records: int
    undo_bytes: int = 0
    """Room the undo log takes in the state directory: its records and the before-images
    only it holds (those the journal holds already are not stored twice)."""
    rewind_floor: int = 0  # a rewind reaches positions >= this one (retention trimmed below)
    xattrs_left_out: list[str] = field(default_factory=list)
    """Extended attributes the master has and this replica leaves out (alert AW0003)."""
    synchronized: bool = True
    """False until the replica's first synchronization: its backlog is then no measure of
    what it lacks (the master's whole tree, which the journal does not hold yet)."""
    rewind_pending: tuple[int, int] | None = None
    """``(from, to)`` of a rewind begun and not finished (killed midway, or stopped on an
    error): the replica holds neither position until the next writable open, or a
    ``rewind`` called again, completes it (``resume`` gives it up)."""
    standing_alerts: list[str] = field(default_factory=list)
    """Codes of the alerts that stand for this replica (raised, not yet cleared): AW0001
    spool over its limit, AW0002 undo budget near the window, AW0005 the clock ahead
    of elapsed time, E3011 changed outside xoengine, an applier's error."""


@dataclass(frozen=True)
class ScenarioStatistics:
    """A scenario's figures (R31): state, journal position, per root and per replica."""

    name: str
    kind: str
    state: str
    journal_position: int
    roots: dict[str, dict[str, int]]
    replicas: dict[str, ReplicaStatistics]


class Scenario:
    """A protected tree and its replicas: the handle returned by :meth:`Engine.create_scenario`."""

    def __init__(self, engine: Engine, definition: _Definition) -> None:
        """Wire capture, appliers and synchronizers for ``definition`` (internal)."""
        self._engine = engine
        self._def = definition
        self._lock = threading.RLock()
        # Kept across an update's rewiring: a capture or a wait under way holds them.
        self._capture_lock = threading.RLock()  # one capture at a time per scenario
        self._captured = threading.Condition()  # notified after every append
        self._wire()

    def _wire(self) -> None:
        """Build what the definition's options decide (again after an update, stopped)."""
        engine, definition = self._engine, self._def
        options = definition.options
        self.block_size: int = int(options.get("block_size", blocks.DEFAULT_BLOCK_SIZE))
        self.layout = Layout(tuple(definition.roots))
        store = engine.store
        self.manifest = master_manifest(definition.name)
        store.ensure(*self.manifest.tables)
        self.master_state = MasterState(definition.name, self.manifest, self.block_size)
        self.capture_engine = Capture(
            definition.name,
            self.layout,
            self.master_state,
            store,
            engine.blobs,
            engine._append,
            include=options.get("include", ()),
            exclude=options.get("exclude", ()),
            roots=lambda: engine.forensics(definition.name).roots(None),
        )
        self.capture_engine.lock = self._capture_lock
        if hasattr(self, "_appliers"):  # wired again (an update): the new appliers claim
            self._release_replicas()
        self._appliers: dict[str, ReplicaApplier] = {}
        self._threads: dict[str, ApplierThread] = {}
        self._failed_inline: dict[str, XoError] = {}
        """Replicas whose inline apply (``wait_replicated`` with no thread) failed last."""
        self._watch_error: XoError | None = None  # the live watcher's passes fail with it
        self._labels: dict[int, int] = {}  # position -> time label, of the rewind points
        self._watcher: Any = None
        self._trim_checked = -float("inf")  # monotonic time of the last automatic retention
        self._clock_behind_label = 0  # the time label of the flat span AW0006 was raised in
        for replica in definition.replicas:
            self._wire_replica(replica)
        with store.read() as txn:
            interrupted = self.manifest.is_rebuilding(txn)
        if interrupted:  # a rebuild killed midway left part of the master state
            self.rebuild_master_state()

    def _usable(self, action: str) -> None:
        """Refuse to ``action`` through a handle of a closed engine or a removed scenario."""
        self._engine._check_open(f"{action} scenario {self.name!r}")
        self._engine._refresh()  # a read-only engine beside a writer: what it journaled since
        if self._def.removed:
            raise ScenarioStateError(name=self.name, state="removed", action=action)

    def _wire_replica(self, replica: str) -> ReplicaApplier:
        engine = self._engine
        # The root is made for a replica never synchronized. Once one was, a missing
        # root means its volume is gone (deleted, not mounted): made anew, it would
        # take changes as if it held the rest, and rewinds would answer from nothing.
        # Applying and rewinding then stop with TreeRootMissingError; a synchronization
        # (resume after a rewind, or sync) builds it again.
        synchronized = bool(engine._finished_syncs(self.name, replica))
        tree = ReplicaTree(
            self._def.replicas[replica],
            fsync=engine.fsync,
            create=not engine.readonly and not synchronized,
        )

        def read_events(after: int, limit: int) -> Sequence[tuple[int, Applied | None]]:
            return engine._read_file_events(self._own(after), limit)

        applier = ReplicaApplier(
            engine.store,
            replica_state_name(self.name, replica),
            self.name,
            tree,
            read_events,
            recover=functools.partial(self._recover, replica),
            diverged=functools.partial(self._diverged, replica),
        )
        self._appliers[replica] = applier
        return applier

    # -- description ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The scenario's name."""
        return self._def.name

    @property
    def kind(self) -> str:
        """file_server, database or storage_group."""
        return self._def.kind

    @property
    def roots(self) -> list[str]:
        """Master root directories."""
        return list(self._def.roots)

    @property
    def replicas(self) -> dict[str, str]:
        """Replica name -> replica directory."""
        self._engine._refresh()
        return dict(self._def.replicas)

    @property
    def options(self) -> dict[str, Any]:
        """The scenario's options."""
        self._engine._refresh()
        return dict(self._def.options)

    @property
    def state(self) -> str:
        """Running, Stopped or Problem (R31)."""
        self._engine._refresh()
        return self._def.state

    @property
    def watch_error(self) -> Exception | None:
        """The error the live watcher's passes fail with (they are retried); else None.

        Also journaled (an error alert, the scenario in Problem) where the
        journal can take it: a full journal volume cannot.
        """
        watcher = self._watcher
        return None if watcher is None else watcher.failing

    @property
    def suspended(self) -> set[str]:
        """Names of suspended replicas."""
        self._engine._refresh()
        return set(self._def.suspended)

    def entities(self) -> list[dict[str, Any]]:
        """The units of backup and restore (R10): per root, per database, or per group."""
        self._usable("list the entities of")
        kind = self._def.kind
        if kind == "file_server":
            return [
                {"entity": Layout.root_name(r), "root": r, "paths": [self.layout.prefix(i) or "."]}
                for i, r in enumerate(self._def.roots)
            ]
        if kind == "storage_group":
            groups = self._def.options.get("groups", {})
            return [{"entity": g, "paths": list(p)} for g, p in sorted(groups.items())]
        return self._databases()

    def _databases(self) -> list[dict[str, Any]]:
        import fnmatch  # noqa: PLC0415

        patterns = self._def.options.get("databases", DEFAULT_DATABASE_PATTERNS)
        found = []
        with self._engine.store.read() as txn:
            paths = [p for p, s in self.manifest.items(txn) if s.kind == "file"]
        names = set(paths)
        for path in sorted(paths):
            base = path.rpartition("/")[2]
            if any(fnmatch.fnmatchcase(base, pat) for pat in patterns):
                members = [path] + [path + c for c in _DB_COMPANIONS if path + c in names]
                found.append({"entity": path, "paths": members})
        return found

    # -- life cycle -------------------------------------------------------------------------

    def start(self, *, watch: bool = False, level: str = "block") -> list[SyncSummary]:
        """Synchronize every active replica, then replicate continuously.

        With ``watch`` a live watcher journals changes as they happen (within
        ``watch_delay`` seconds, default 1); otherwise call :meth:`capture`.
        """
        self._usable("start")
        with self._lock:
            summaries = self.synchronize(level=level)
            if not self._def.running:
                self._engine._scenario_event(self._def, ScenarioStarted)
            self._start_threads()
            if watch:
                self._start_watch()
            return summaries

    def stop(self) -> None:
        """Stop replicating (the watcher and applier threads end; nothing is lost)."""
        self._usable("stop")
        with self._lock:
            try:
                self._stop_threads()  # the live watcher's last pass may fail: raised after
            finally:
                if self._def.running:
                    with contextlib.suppress(XoError):  # a full volume: the error above says so
                        self._engine._scenario_event(self._def, ScenarioStopped)

    def _start_threads(self) -> None:
        # Not for suspended replicas (a rewound one among them: _start_thread says):
        # they stay as they are, across a second start and across a restart, until
        # resume().
        for replica in self._appliers:
            self._start_thread(replica)

    def _start_thread(self, replica: str) -> None:
        applier = self._appliers[replica]
        # Under the replica's control lock, as a suspension or rewind of it stops it:
        # one of them on another thread could otherwise stop a thread not started yet
        # (an uncoded RuntimeError), or this start follow a replica just suspended.
        with applier.control:
            if replica in self._def.suspended or replica in self._def.rewound:
                return
            old = self._threads.get(replica)
            if old is not None and old.error is None:
                return
            if old is not None:
                old.stop()  # it failed: a fresh thread retries from the tracking position
            thread = ApplierThread(self, replica, applier)
            thread.start()
            self._threads[replica] = thread

    def _stop_threads(self, *, drain: bool = True) -> None:
        """End the watcher and the appliers; then raise the watcher's last pass's error, if any.

        With ``drain`` the appliers first apply everything journaled by then
        (the watcher's last pass among it), so a stopped scenario's running
        replicas hold every change made before the stop.
        """
        watcher, self._watcher = self._watcher, None
        try:
            if watcher is not None:
                watcher.stop()
        except Exception:
            raise  # its last pass failed: what was journaled is still applied
        except BaseException:
            drain = False  # Ctrl-C: stop now
            raise
        finally:
            threads, self._threads = self._threads, {}
            try:
                for thread in threads.values() if drain else ():
                    thread.drain()
            finally:  # Ctrl-C in a long drain: every thread still ends (what is left waits)
                for thread in threads.values():
                    thread.stop()
            if self._watch_error is not None:  # no live capture fails now: said, and cleared
                self._watch_failed(None)

    def _release_replicas(self) -> None:
        """Let go of the replica roots this engine held (:meth:`ReplicaApplier.claim`)."""
        for applier in self._appliers.values():
            applier.release()

    def _start_watch(self) -> None:
        from xoengine.watch import Watcher  # noqa: PLC0415 (watchdog loads only when watching)

        if self._watcher is None:
            delay = float(self._def.options.get("watch_delay", 1.0))
            self._watcher = Watcher(self, delay=delay)
            self._watcher.start()

    def _watch_failed(self, error: Exception | None) -> None:
        """The live watcher's passes began to fail (``error``), or one succeeded again (None).

        An error alert when they begin (the error's code; details say ``watcher``)
        and the scenario goes to Problem; an ``info`` alert of the same code and
        the state back when one succeeds. The watcher retries meanwhile.
        """
        was = self._watch_error
        if error is None or isinstance(error, XoError):
            self._watch_error = error
        else:  # an uncoded failure: coded, with it as the cause
            self._watch_error = CaptureFailedError(name=self.name, detail=repr(error))
            self._watch_error.__cause__ = error
        with contextlib.suppress(XoError):  # a full volume refuses these too
            if self._watch_error is not None:
                self._alert(
                    code=self._watch_error.code,
                    severity="error",
                    message=f"live capture failed, retried as full passes: {self._watch_error}",
                    details={"watcher": True},
                )
            elif was is not None:
                self._alert(
                    code=was.code,
                    severity="info",
                    message="cleared: live capture works again",
                    details={"watcher": True, "cleared": True},
                )
            self._check_state()

    # -- capture ----------------------------------------------------------------------------

    def capture(self, paths: Sequence[str] | None = None) -> CaptureResult:
        """Journal what changed on the master since the last capture (all of it, or ``paths``)."""
        self._usable("capture")
        with self._capture_lock:  # taken before the engine is read: an update may rewire it
            result = self.capture_engine.scan(paths)
        self._after_append(result.last_position)
        return result

    def open(self, path: str, mode: str = "r+b") -> JournaledFile:
        """Open a master file whose writes are journaled as exact byte ranges.

        A read-only engine refuses a mode that writes (E4003) before the file
        is opened: the bytes would reach the master with nothing journaled.
        """
        self._usable("open a file of")
        if self._engine.readonly and set(mode) & set("wax+"):
            raise JournalReadOnlyError(
                path=str(self._engine.store.path),
                detail=f"opening a master file to write ({mode!r}) refused: nothing journals it",
            )
        rel = normalize_relpath(path)
        if reserved_name(rel):
            raise ConfigurationError(
                detail=f"{rel!r}: a name beginning with {TMP_PREFIX} is kept for xoengine's "
                "temporary files on replicas, and never replicated (W2004)"
            )
        return _NotifyingFile(self, self.capture_engine, rel, mode)

    def _after_append(self, appended: int = 0) -> None:
        """Wake the appliers, run the checks after appends (``appended``: a capture's last)."""
        for thread in list(self._threads.values()):
            thread.wake()
        self._check_state()
        self._check_clock(appended)
        self._auto_point(appended)
        self._auto_trim()
        with self._captured:
            self._captured.notify_all()

    def _check_clock(self, appended: int) -> None:
        """Alert AW0006 once per flat span: the clock stands behind the journal's last label.

        Labels never go back, so while the clock is behind (set back by hand or
        by NTP) every commit gets the journal's last label: a time in that span
        resolves to the span's end. The alert, journaled with that label, lets
        ``cat``, ``replay`` and ``diff`` say so of a time there. Asked after a
        capture (or a journaled file's flush) of this scenario that appended
        ``appended`` last, and only if that is still the journal's last commit
        (whose lag the recorder knows).
        """
        if not appended or appended != self._engine.last_position():
            return
        label, behind = self._engine.recorder.clock_lag()
        if behind <= CLOCK_BEHIND_SLACK_NS or label == self._clock_behind_label:
            return
        self._clock_behind_label = label
        seconds = round(behind / 1e9)
        self._alert(
            code="AW0006",
            severity="warning",
            message=(
                f"the clock is {seconds} s behind the journal's last time label "
                f"{iso_time(label)} (set back?): changes are labelled {iso_time(label)} until "
                "the clock passes it, in journal order; a time in that span names its end, "
                "so tell its changes apart by position"
            ),
            details={"behind_s": seconds, "label_ns": label},
        )

    def wait_captured(self, path: str, timeout: float | None = None) -> None:
        """Block until ``path`` is in the master state (journaled), e.g. by the live watcher.

        Write a marker file after a burst of changes and wait for it: the kernel
        reports changes in order, so everything before the marker is journaled too.
        """
        self._usable("wait for")
        wanted = normalize_relpath(path)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._captured:
            while True:
                with self._engine.store.read() as txn:
                    if self.manifest.get(txn, wanted) is not None:
                        return
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise ReplicationTimeoutError(timeout=timeout, what=f"{wanted} to be journaled")
                self._captured.wait(remaining)

    def _auto_point(self, position: int) -> None:
        """An automatic point at ``position``, this scenario's own last change, if one is due.

        Changes flow on this master only: not another scenario's appends, nor this
        one's bookkeeping (a suspend, a rewind).
        """
        interval = self._def.options.get("rewind_interval")
        if not interval or not position:
            return
        # The newest automatic point: from the end (the list holds every point ever set).
        last = next((pos for _, pos, kind in reversed(self._def.points) if kind == "auto"), 0)
        if position <= last:
            return
        if (
            last
            and self._engine.recorder.time_of(position) - self._engine.recorder.time_of(last)
            < float(interval) * 1e9
        ):
            return
        self._engine._scenario_event(
            self._def, RewindPointSet, name=f"auto-{position}", position=position, kind="auto"
        )

    def _auto_trim(self) -> None:
        """Apply the configured retention after appends, at most every ``undo_check_interval`` s.

        Only when a limit is configured (``undo_max_age``, ``undo_max_bytes`` or
        ``undo_window``); the check reads every undo record's size, so it is paced
        (default every 60 s).
        """
        policy = self._retention_policy()
        if policy.max_age_s is None and policy.max_bytes is None and policy.window_s is None:
            return  # (a limit of 0 is a limit: keep nothing beyond the points)
        now = time.monotonic()
        if now - self._trim_checked < float(self._def.options.get("undo_check_interval", 60)):
            return
        self._trim_checked = now
        self.trim_undo(policy)

    def _retention_policy(self) -> RetentionPolicy:
        """The retention the scenario's options configure."""
        options = self._def.options
        return RetentionPolicy(
            max_age_s=options.get("undo_max_age"),
            max_bytes=options.get("undo_max_bytes"),
            min_points=int(options.get("undo_min_points", 1)),
            window_s=options.get("undo_window"),
        )

    # -- synchronization --------------------------------------------------------------------

    def synchronize(self, level: str = "block", replica: str | None = None) -> list[SyncSummary]:
        """Bring replicas (all active ones, or ``replica``) in line with the master (R3)."""
        self._usable("synchronize")
        return self._synchronize(level, replica)

    def _synchronize(
        self,
        level: str,
        replica: str | None,
        recheck: Collection[str] = (),
        *,
        foreign: bool = False,
    ) -> list[SyncSummary]:
        """:meth:`synchronize`; the files in ``recheck`` have their bytes compared.

        (Whatever their size and modification time say.) ``foreign``: the
        replica holds a state the journal does not name (see
        :meth:`Synchronizer.run`).
        """
        if level not in LEVELS:
            raise ConfigurationError(detail=f"sync level {level!r} is not one of {LEVELS}")
        names = (
            [replica]
            if replica
            else [r for r in self._def.replicas if r not in self._def.suspended]
        )
        for name in names:
            # Nothing copied into, or deleted from, the target of a link put there.
            self._replica(name).check_place()
            # Nor into another open engine's replica: refused before the scan journals.
            self._replica(name).claim()
        summaries: list[SyncSummary] = []
        with self.capture_engine.lock:
            # The scan makes the master state current, and no other capture runs
            # while replicas are compared. The replicas are synchronized beside it,
            # in another thread that follows the scan (a file is copied only after
            # the scan read it; SyncFinished comes after the scan's last event), so
            # the journal's writes and the replica's writes overlap.
            follower = ScanFollower()
            start = self._engine.last_position()

            def replicate() -> None:
                for name in names:
                    applier = self._appliers[name]
                    with applier.lock:
                        sync = Synchronizer(
                            self.name,
                            name,
                            self.layout,
                            applier.tree,
                            applier.undo,
                            self._engine.store,
                            self._engine._append,
                            include=self.capture_engine.include,
                            exclude=self.capture_engine.exclude,
                            block_size=self.block_size,
                            recheck=recheck,
                        )
                        summaries.append(
                            sync.run(
                                level,
                                start,
                                applier.set_position,
                                follow=follower,
                                settle=functools.partial(self._settle, applier.tree, follower),
                                held=self._own(applier.position()),
                                first=not self._own_syncs(name),
                                foreign=foreign,
                                check_held=self._held_otherwise,
                                moved_since=self._moved_since,
                            )
                        )

            with ThreadPoolExecutor(1, thread_name_prefix=f"xoengine-sync:{self.name}") as pool:
                copying = pool.submit(replicate)
                try:
                    self.capture_engine.scan(progress=follower)
                except BaseException:
                    follower.finish(None)  # the synchronizer stops; leaving the pool joins it
                    raise
                follower.finish(self._engine.last_position())
                copying.result()  # the synchronizer's own error, if any
            # A rewind point at every synchronization (R6).
            end = self._engine.last_position()
            self._engine._scenario_event(
                self._def, RewindPointSet, name=f"sync-{end}", position=end, kind="sync"
            )
        for summary in summaries:
            if summary.diverged:
                self._alert(
                    code="AW0004",
                    severity="warning",
                    message=(
                        f"replica {summary.replica!r} held {len(summary.diverged)} path(s) "
                        "otherwise than the journal (changed outside xoengine), e.g. "
                        f"{summary.diverged[0]!r}: the synchronization repaired them; a "
                        "rewind of it reaches this synchronization and later only (it "
                        "would put them back); a replay reads any earlier state from the journal"
                    ),
                    details={"replica": summary.replica, "paths": summary.diverged[:100]},
                )
        for name in names:  # exact again: a divergence found is over
            self._standing("E3011", name, None, "it was synchronized with the master")
        self._alert_left_out()
        return summaries

    def _held_otherwise(self, held: int, entries: dict[str, Entry | None]) -> list[str]:
        """Of a synchronization's changed paths, where the replica did not hold the journal's state.

        (A :class:`~xoengine.sync.HeldCheck`.) A path the journal changed after
        ``held`` (itself; or a directory above it made, deleted or renamed, not
        only its times or mode) is the master's change, not the replica's. A
        file made beside it moves its directory's mtime: what lies below that
        directory is still checked. For any other, the journal's state at ``held`` is the
        master state's now: the replica's entry must be of its kind (and a
        file's size and mtime, which replicas keep), or absent where the
        journal has nothing. A file the master gained or lost beside the scan
        is neither: the journal has nothing of it, or still has it.
        """
        changed: set[str] = set()
        placed: set[str] = set()  # made, deleted or renamed: what was below it moved too
        for _, _, event in self._engine.file_events(self.name, None, after=held):
            changed.add(event.path)
            if isinstance(event, FileCreated | FileDeleted | FileRenamed):
                placed.add(event.path)
            if isinstance(event, FileRenamed):
                changed.add(event.new_path)
                placed.add(event.new_path)
        out: list[str] = []
        with self._engine.store.read() as txn:
            for path in sorted(entries, key=os.fsencode):
                if path in changed or any(p in placed for p in path_and_parents(path)):
                    continue
                entry, state = entries[path], self.manifest.get(txn, path)
                if entry is None or state is None:
                    if (entry is None) != (state is None):  # gone from the replica, or extra
                        out.append(path)
                    continue
                if entry.kind != state.kind or (
                    entry.kind == "file"
                    and (entry.size, entry.mtime_ns) != (state.size, state.mtime_ns)
                ):
                    out.append(path)
        return out

    def _settle(
        self,
        tree: ReplicaTree,
        scan: ScanFollower,
        written: list[str],
        position: int,
        keep: Keep,
        walked: dict[str, Entry],
        unknown: Callable[[str], bool],
    ) -> None:
        """Make the replica paths a sync settled on hold what the journal holds at ``position``.

        (A :class:`~xoengine.sync.Settle`, for a sync beside a scan.) A copy is
        trusted when the master file still has the stat the scan recorded
        (nothing was written to it since the scan read it) and the replica's
        copy its size and time (it was made). Otherwise the copy
        may hold later bytes, which must arrive through the next capture
        instead. And where the sync's walk found a path the journal does not
        hold, or missed one it holds, or found another kind (the master moved
        between the two walks: a directory swapped, a file made a directory),
        the replica followed the walk. Each such path is written again from
        the journal (a replay of that one path), as what the journal holds
        there (a file, a directory, a link), or removed if it holds nothing.
        """
        moved: dict[str, FileState | None] = {}
        caches = [ParentCache(root) for root in self.layout.roots]
        with contextlib.ExitStack() as closing, self._engine.store.read() as txn:
            for cache in caches:
                closing.callback(cache.close)
            for path in written:
                state = self.manifest.get(txn, path)
                index, rel = self.layout.split(path)
                st = stat_entry(self.layout.roots[index], rel, caches[index])  # as the scan saw it
                seen = (st.size, st.mtime_ns, st.ctime_ns, st.inode) if st else None
                known = (state.size, state.mtime_ns, state.ctime_ns, state.ino) if state else None
                # What the copy left: none where the file went before it (W2001).
                have = tree.lstat_placed(path)
                copied = (have.st_size, have.st_mtime_ns) if have else None
                # A racy stat cannot say the file is unchanged: take the journal's bytes.
                if (
                    state is None
                    or seen != known
                    or racy(state)
                    or copied != (state.size, state.mtime_ns)
                ):
                    moved[path] = state
            moved.update(self._walked_otherwise(txn, scan.scan_walk, walked, unknown))
        if not moved:
            return
        order = sorted(moved, key=os.fsencode)  # parents before what goes in them
        gone = []
        for path in order:
            found, state = tree.lstat_placed(path), moved[path]
            if found and stat.S_ISDIR(found.st_mode) and (state is None or state.kind != "dir"):
                gone.append(path)
        keep(order, gone)
        # Each path's identity is the master state's (no capture runs beside a sync:
        # it is the state at ``position``), read from its own events: the cost is
        # those events', not the journal's. The journal's extended attributes, not
        # a scratch copy's: a scratch directory may keep fewer (tmpfs before Linux
        # 6.6 has no user.*).
        forensics = self._engine.forensics(self.name)
        with tempfile.TemporaryDirectory(prefix="xoengine-settle-") as scratch:
            for number, path in enumerate(order):
                state = moved[path]
                owner = (state.uid, state.gid) if state and state.uid >= 0 else None
                have = tree.lstat_placed(path)  # None below a path settled as a file
                if state is None or state.kind != "file":
                    dirs = have is not None and stat.S_ISDIR(have.st_mode)
                    kept = dirs and state is not None and state.kind == "dir"
                    if have is not None and not kept:
                        tree.delete(path)
                    if state is not None:
                        if not kept:
                            tree.create(path, state.kind, state.mode, state.target)
                        mode = state.mode if state.kind == "dir" else None
                        tree.set_meta(path, mode, None, owner)
                        live = forensics.live(state.file_id, position)
                        tree.set_xattrs(path, (live.xattrs if live else None) or {})
                    continue
                out = os.path.join(scratch, str(number))
                live = forensics.rebuild_file(state.file_id, position, out, path)
                if live is None:
                    raise FrameError(
                        position=position,
                        detail=f"the master state holds {path!r}, its own events do not",
                    )
                if have is not None and not stat.S_ISREG(have.st_mode):
                    tree.delete(path)
                tree.copy_new(path, os.path.join(out, path), state.mode, owner)
                tree.set_meta(path, None, state.mtime_ns)  # owner and mode: copy_new
                tree.set_xattrs(path, live.xattrs or {})  # last (none handed down)
        tree.flush([path for path in order if moved[path] is not None])

    def _walked_otherwise(
        self,
        txn: ReadTxn,
        scanned: Mapping[str, Entry],
        walked: dict[str, Entry],
        unknown: Callable[[str], bool],
    ) -> dict[str, FileState | None]:
        """The paths a sync's walk found otherwise than the journal's state: present, absent, kind.

        Each with the journal's state (None: it holds nothing there). Only where
        the sync's walk and the scan's (``scanned``: what the journal's state
        was made from) differ can the journal differ from the sync's walk in
        presence or kind: only those paths are looked up. The roots' own
        entries and what lies in directories the sync could not list are not
        compared (a synchronization leaves those as they are).
        """
        roots = self.layout.root_paths()
        suspects = [p for p, e in walked.items() if getattr(scanned.get(p), "kind", None) != e.kind]
        if len(walked) - len(suspects) < len(scanned):  # the scan found paths the sync did not
            suspects.extend(p for p in scanned if p not in walked)
        out: dict[str, FileState | None] = {}
        for path in suspects:
            if path in roots or unknown(path):
                continue
            state, entry = self.manifest.get(txn, path), walked.get(path)
            if (state.kind if state else None) != (entry.kind if entry else None):
                out[path] = state
        return out

    # -- replicas ---------------------------------------------------------------------------

    def _replica(self, name: str) -> ReplicaApplier:
        try:
            return self._appliers[name]
        except KeyError:
            raise ReplicaNotFoundError(name=self.name, replica=name) from None

    def applied_position(self, replica: str) -> int:
        """The journal position ``replica`` holds: applied up to it, or rewound to it."""
        self._usable("read the position of a replica of")
        return self._replica(replica).position()

    def rewind_floor(self, replica: str) -> int:
        """The lowest position a rewind of ``replica`` reaches (retention trimmed below it)."""
        self._usable("read the rewind floor of a replica of")
        applier = self._replica(replica)
        with self._engine.store.read() as txn:
            return self._floor(applier, txn)

    def rewindable(self, replica: str) -> bool:
        """Whether a rewind of ``replica`` is allowed now (to a point at or above its floor).

        Not while it is found changed outside xoengine (E3011) or was used while
        rewound: undoing and applying the journal from a state neither the undo
        log nor the journal knows would give a tree the journal never held. A
        synchronization (or :meth:`resume`) makes it exact first.
        """
        self._usable("check a rewind of a replica of")
        self._replica(replica)
        return not (replica in self._def.standing("E3011") or self._used_while_rewound(replica))

    def reachable_by(self, point: RewindPoint | int) -> list[str]:
        """The replicas a rewind to ``point`` (a rewind point, or a position) reaches now.

        Those :meth:`rewindable` whose :meth:`rewind_floor` is at or below it:
        retention trimmed the before-images below a floor, and a point after what
        a replica applied is reached by applying forward.
        """
        position = point.position if isinstance(point, RewindPoint) else point
        if not isinstance(position, int) or isinstance(position, bool) or position < 0:
            raise ConfigurationError(
                detail=f"a rewind point or a position (int >= 0), not {point!r}"
            )
        if position > (top := self._engine.last_position()):  # as every reader refuses it
            raise ConfigurationError(detail=f"position {position} is outside 0..{top}")
        return [name for name, floor in self.rewind_floors().items() if floor <= position]

    def rewind_floors(self) -> dict[str, int]:
        """The :meth:`rewind_floor` of each replica that is :meth:`rewindable` now.

        A point at or above a replica's floor is :meth:`reachable_by` it.
        """
        self._usable("check the rewinds of")
        return {name: self.rewind_floor(name) for name in self.replicas if self.rewindable(name)}

    def suspend(self, replica: str) -> None:
        """Stop applying changes to ``replica``; they accumulate in the journal (R9)."""
        self._usable("suspend a replica of")
        with self._replica(replica).control:
            if replica not in self._def.suspended:
                self._stop_thread(replica)
                self._engine._scenario_event(self._def, ReplicaSuspended, replica=replica)

    def _stop_thread(self, replica: str) -> None:
        """End the applier thread of ``replica``, if one runs (a suspension, a rewind)."""
        thread = self._threads.pop(replica, None)
        if thread is not None:
            thread.stop()

    def resume(self, replica: str) -> None:
        """Apply what accumulated during the suspension, then follow again (no resync).

        A replica that was rewound is first brought back to the master's state by
        a block-level resynchronization (only differing blocks move), since its
        files may have been used or changed while it was out of replication.
        A replica whose applier stopped on an error (the scenario is then in
        Problem) is retried from its tracking position. A rewind that could not
        finish (a full disk, a volume gone) is given up the same way: the
        replica is resynchronized and follows the master again.

        A rewind or suspension of the replica running in another thread is
        waited for.
        """
        self._usable("resume a replica of")
        applier = self._replica(replica)
        with applier.control:
            self._resume(replica, applier)

    def _resume(self, replica: str, applier: ReplicaApplier) -> None:
        if replica in self._def.rewound or replica in self._def.pending_rewinds:
            # A rewind puts back the files' old modification times: a file the
            # master has changed since, at the same size and time (cp -p, tar x),
            # would pass the size-and-time check. The files the journal changed
            # after the position the replica holds have their bytes compared.
            held = applier.position()
            recheck = self._moved_since(self._own(held))
            # A rewind given up midway left a tree the journal never held, as a
            # replica used while rewound does: the undo log below it no longer fits.
            given_up = replica in self._def.pending_rewinds
            used = self._used_while_rewound(replica) or given_up
            # The verdict outlives a resync killed midway (its own writes change the
            # print): a later rewind or resume goes by it. Not used: what the resync
            # changes is in the undo log (a rewind undoes it first), and what is done
            # by hand after a resync that did not finish must be seen: the print is
            # noted where it stopped (killed: at the next open).
            self._keep_print(replica, b"" if used else RESYNCING + self._content_print(replica))
            try:
                self._synchronize("block", replica, recheck, foreign=used)
            except BaseException:
                if not used:
                    self._keep_print(replica, self._print_or_used(replica))
                raise
            if not used:  # replicating again: nothing to compare with
                self._keep_print(replica, None)
            else:
                self._alert(
                    code="AW0004",
                    severity="warning",
                    message=(
                        f"replica {replica!r} "
                        + (
                            f"was left part-rewound by a rewind given up (at {held})"
                            if given_up
                            else f"was changed while rewound (to {held})"
                        )
                        + ": a rewind of it reaches the resume's synchronization and "
                        "later only; a replay reads any earlier state from the journal"
                    ),
                    details={"replica": replica, "held": held},
                )
        if replica in self._def.suspended or replica in self._def.rewound:
            self._engine._scenario_event(self._def, ReplicaResumed, replica=replica)
        self._failed_inline.pop(replica, None)
        if self._def.running:
            self._start_thread(replica)
        self._check_state()

    def _moved_since(self, after: int) -> set[str]:
        """The master's paths of the files whose bytes or place changed after ``after``.

        From the events after it and the master state, never a fold of the journal
        from its start: a resume after a rewind costs what changed since, not the
        journal's age. A directory moved or made since brings what is under it.
        """
        ids = {
            event.originator_id
            for _, _, event in self._engine.file_events(self.name, None, after=after, kinds=_MOVES)
        }
        if not ids:
            return set()
        with self._engine.store.read() as txn:
            now = [(path, st.kind) for path, st in self.manifest.items(txn) if st.file_id in ids]
            paths = {path for path, _ in now}
            for path, kind in now:
                if kind == "dir":
                    paths.update(below for below, _ in self.manifest.items(txn, path + "/"))
        return paths

    def wait_replicated(self, timeout: float | None = None) -> int:
        """Block until every active replica applied everything journaled so far.

        Returns the position waited for. Suspended replicas are not waited for.
        Without running applier threads (scenario stopped) the replicas are
        brought up to date in this thread.
        """
        self._usable("wait for")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout >= 0
        ):
            raise ConfigurationError(
                detail=f"timeout is a number of seconds >= 0, or None, not {timeout!r}"
            )
        target = self._engine.last_position()
        # inf (or a huge number) is no deadline: Condition.wait cannot take one that far.
        deadline = None if timeout is None or timeout > 1e9 else time.monotonic() + timeout
        for name, applier in self._appliers.items():
            if name in self._def.suspended:
                continue
            thread = self._threads.get(name)
            if thread is None:
                try:
                    applier.apply_available(upto=target)
                except Exception as e:
                    # As an applier thread's failure: journaled, and the scenario in Problem.
                    error = coded_failure(name, e)
                    self._failed_inline[name] = error
                    self._applier_failed(name, error)
                    if error is e:
                        raise
                    raise error from e
                if self._failed_inline.pop(name, None) is not None:
                    self._check_state()
                continue
            thread.wake()
            if not thread.wait_position(target, deadline):
                raise ReplicationTimeoutError(
                    timeout=timeout, what=f"replica {name} to reach {target}"
                )
        if self._def.state == "Problem":
            self._check_state()  # caught up: the spool may be back under its limit
        self._alert_left_out()  # what was applied is told by now, whichever thread applied it
        if not self._engine.readonly:
            # The check after the appends saw the undo logs before these were applied:
            # their before-images count now (AW0002 early, not one capture late).
            self._auto_trim()
        return target

    # -- rewind (R5, R6) --------------------------------------------------------------------

    def set_rewind_point(self, name: str) -> RewindPoint:
        """Bookmark the journal now, after journaling every change on the master.

        The master is scanned whole first, with the live watcher on too (it may
        not have seen the latest writes yet), so the point holds every change
        made before the call. Its name must name it alone: it is refused if
        empty, if another point of the scenario has it, if it is a number (the
        CLI reads a number as a position), if it reads as an ISO 8601 time (the
        CLI reads it as an instant), if it holds a control character or if it
        has the form of an automatic point's name (``sync-N``, ``auto-N``,
        ``backup-N``, ``integrity-N``).
        """
        self._check_point_name(name)
        self.capture()
        with self._engine._lock:  # checked again with the append: one point of a name
            self._check_point_name(name)
            position = self._engine.last_position()
            self._engine._scenario_event(
                self._def, RewindPointSet, name=name, position=position, kind="user"
            )
        return self._point(name, position, "user")

    def _check_point_name(self, name: object) -> None:
        if not isinstance(name, str):
            raise ConfigurationError(detail=f"a rewind point's name is a str, not {name!r}")
        why = None
        if not name.strip():
            why = "it is empty"
        elif len(name) > _POINT_NAME_MAX:
            why = f"it is longer than {_POINT_NAME_MAX} characters"
        elif not name.isprintable():
            why = "it holds a control character"
        elif name.strip().isdigit():
            why = "it is a number, which names a position"
        elif _reads_as_time(name):
            why = "it reads as an ISO 8601 time, which names an instant"
        elif _AUTO_POINT_NAME.fullmatch(name):
            why = "that form is kept for automatic points"
        elif any(_same_name(point_name, name) for point_name, _, _ in self._def.points):
            why = "another rewind point of this scenario has it (or one that looks the same)"
        if why is not None:
            raise ConfigurationError(detail=f"rewind point name {name!r} refused: {why}")

    def _point(self, name: str, position: int, kind: str) -> RewindPoint:
        time_ns = self._labels.get(position)
        if time_ns is None:  # read once: a label never changes
            time_ns = self._labels[position] = (
                self._engine.recorder.time_of(position) if position else 0
            )
        return RewindPoint(name=name, position=position, time_ns=time_ns, kind=kind)

    def rewind_points(self) -> list[RewindPoint]:
        """Every rewind point (user, auto, sync ...) with its position and time label."""
        self._usable("list the rewind points of")
        return [self._point(n, p, k) for n, p, k in self._def.points]

    def resolve(
        self,
        to: RewindPoint | str | int | dt.datetime | None = None,
        *,
        position: int | None = None,
        at: dt.datetime | None = None,
    ) -> int:
        """Turn a rewind point (or its name), a position or a time into a journal position.

        ``to`` may be any of them (an ``int`` is a position, a ``datetime`` a
        time). A time resolves to the last position whose time label is at or
        before it (labels never go back, whatever the wall clock did).
        """
        self._usable("resolve an instant of")
        given = [x is not None for x in (to, position, at)]
        if sum(given) != 1:
            raise ConfigurationError(detail="give exactly one of a rewind point, position= or at=")
        if isinstance(to, RewindPoint):  # made by anyone: its position is checked as one
            return self._engine.instant(self, to)
        if isinstance(to, str):
            for name, pos, _ in reversed(self._def.points):
                if _same_name(name, to):  # as typed, in whichever Unicode form
                    return pos
            raise ConfigurationError(detail=f"no rewind point named {to!r}")
        if isinstance(to, dt.datetime):
            return self._engine.position_of(at=to)
        if to is not None:
            return self._engine.position_of(to)
        return self._engine.position_of(position, at)

    def rewind(
        self,
        replica: str,
        to: RewindPoint | str | int | dt.datetime | None = None,
        *,
        position: int | None = None,
        at: dt.datetime | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        """Reset ``replica`` to its state at a rewind point, a position or a time (R6).

        The replica leaves replication (it is suspended) and stays at that state
        until :meth:`resume`, which resynchronizes it at block level. Returns the
        position the replica now holds. Journaled; a rewind killed midway is
        completed when the engine opens again.

        A target inside one of this replica's synchronization runs (from its
        SyncStarted up to, not including, its SyncFinished) is moved to that
        SyncFinished: while a synchronization runs the replica holds no state
        the journal names, and at SyncFinished it holds exactly the journal's
        state there. The position returned says where the replica is.

        ``progress(done, total)`` is called after each commit of undone
        before-images (records of the undo log), from the calling thread.
        """
        self._usable("rewind a replica of")
        with self._replica(replica).control:
            return self._rewind(replica, to, position, at, progress)

    def _rewind(
        self,
        replica: str,
        to: RewindPoint | str | int | dt.datetime | None,
        position: int | None,
        at: dt.datetime | None,
        progress: Callable[[int, int], None] | None,
    ) -> int:
        applier, target = self._rewind_target(replica, to, position, at)
        applier.check_root()  # refused before anything is journaled
        earlier = self._def.pending_rewinds.get(replica)
        if earlier is not None and earlier[1] < target:
            # A rewind stopped on an error may have undone records below this target
            # in a commit it never made: it is finished first (journaled as it is, so
            # a kill leaves no mixture), then this one goes forward from its target.
            self._finishing(replica, *earlier, progress)
        suspending = replica not in self._def.suspended
        if suspending:  # journaled with the rewind's start: a kill between leaves neither
            self._stop_thread(replica)
        with applier.lock:
            current = applier.position()
            started: dict[str, Any] = {
                "replica": replica,
                "from_position": current,
                "to_position": target,
            }
            try:
                self._engine._scenario_events_at_once(
                    self._def,
                    [(ReplicaSuspended, {"replica": replica})] * suspending
                    + [(RewindStarted, started)],
                )
            except BaseException:
                if suspending and self._def.running:
                    self._start_thread(replica)  # not rewound, not suspended: it follows
                raise
            return self._finishing(replica, current, target, progress)

    def _finishing(
        self,
        replica: str,
        current: int,
        target: int,
        progress: Callable[[int, int], None] | None,
    ) -> int:
        """:meth:`_finish_rewind`, its errors said as a rewind's."""
        try:
            return self._finish_rewind(replica, current, target, progress)
        except ReplicaDivergedError as e:
            self._diverged(replica, e)
            raise
        except ReplicaWriteError as e:  # its hint is an apply's: "retried on resume"
            raise RewindWriteError(e.message, **e.fields) from e

    def rewind_preview(
        self,
        replica: str,
        to: RewindPoint | str | int | dt.datetime | None = None,
        *,
        position: int | None = None,
        at: dt.datetime | None = None,
    ) -> DiffResult:
        """What :meth:`rewind` with the same arguments would change on ``replica``; nothing is done.

        A diff from the position the replica holds to the one it would hold
        (``to_position``, moved out of a synchronization run as a rewind
        moves it): ``added`` paths come back, ``removed`` paths go, ``renamed``
        are renamed back, ``modified`` byte ranges are put back. A target the
        undo log no longer reaches is refused as the rewind would refuse it.
        """
        self._usable("preview a rewind of")
        applier, target = self._rewind_target(replica, to, position, at)
        return self._engine.diff(self, applier.position(), target)

    def _rewind_target(
        self,
        replica: str,
        to: RewindPoint | str | int | dt.datetime | None,
        position: int | None,
        at: dt.datetime | None,
    ) -> tuple[ReplicaApplier, int]:
        """The replica's applier and the position a rewind would take it to (or refuse)."""
        applier = self._replica(replica)
        target = self._outside_syncs(replica, self.resolve(to, position=position, at=at))
        with self._engine.store.read() as txn:
            floor = self._floor(applier, txn)
        if target < applier.position() and target < floor:
            # Refused before anything is journaled or suspended.
            raise RewindUnreachableError(
                name=self.name, replica=replica, position=target, floor=floor
            )
        if not self.rewindable(replica):
            raise ReplicaDivergedError(replica=replica, path=".", position=applier.position())
        return applier, target

    def _floor(self, applier: ReplicaApplier, txn: ReadTxn) -> int:
        """The lowest position a rewind of the replica reaches (below its position).

        Where retention trimmed its undo log, or a first synchronization found
        its directory not empty (see :meth:`Synchronizer.run`); never before
        the scenario was created (under a reused name, another one's events).
        """
        return max(applier.undo.floor(txn), self._def.created)

    def _own_syncs(self, replica: str) -> list[tuple[int, int]]:
        """``(SyncStarted, SyncFinished)`` of the replica's finished runs in this scenario."""
        runs = self._engine._finished_syncs(self.name, replica)
        return [(started, finished) for started, finished in runs if started > self._def.created]

    def _outside_syncs(self, replica: str, target: int) -> int:
        """``target``, or the end of the synchronization run of ``replica`` it falls in."""
        for started, finished in self._own_syncs(replica):
            if started <= target < finished:
                return finished
        return target

    def _finish_rewind(
        self,
        replica: str,
        current: int,
        target: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> int:
        applier = self._appliers[replica]
        with applier.lock:
            applier.check_root()  # a root gone, or another volume mounted there: not written
            applier.sweep_once()  # a rewind or apply killed mid-replace leaves one
            self._recover(replica)
            applied = applier.position()
            records = 0
            undo = applier.undo
            with self._engine.store.read() as txn:
                floor, gaps = self._floor(applier, txn), undo.gaps(txn)
            if target < applied and target < floor:
                raise RewindUnreachableError(
                    name=self.name, replica=replica, position=target, floor=floor
                )
            # A target inside a gap left by an earlier rewind: undo down to the gap's
            # start, then apply the journal forward to the target.
            low = next((lo for lo, hi in gaps if lo < target < (hi or applied + 1)), None)
            if low is not None and target < applied:
                records = rewind_back(
                    self._engine.store,
                    applier.tree,
                    undo,
                    applied,
                    low,
                    lambda txn, p: applier.set_position(txn, p, force=True),
                    progress,
                )
                self._engine.store.write(lambda txn: undo.open_gap(txn, low))
                applied = low
            if target < applied:
                records += rewind_back(
                    self._engine.store,
                    applier.tree,
                    applier.undo,
                    applied,
                    target,
                    lambda txn, p: applier.set_position(txn, p, force=True),
                    progress,
                )
                self._engine.store.write(lambda txn: undo.open_gap(txn, target))
            elif target > applied:
                applier.apply_available(upto=target)
                # States after the target were never held since: a later resync opens a gap.
                self._engine.store.write(lambda txn: undo.open_gap(txn, target))
            self._rewound(replica, current, target, records)
            return target

    def _rewound(self, replica: str, current: int, held: int, records: int) -> None:
        """Journal ReplicaRewound, and note the replica's print as the rewind left it.

        :meth:`resume` compares it with the replica's print then: a replica used
        while it was out of replication holds a state the journal does not name.
        """
        undo = self._appliers[replica].undo
        mark = self._print_or_used(replica)
        self._engine._scenario_event(
            self._def,
            ReplicaRewound,
            lambda txn, _: undo.set_rewound_print(txn, mark),
            replica=replica,
            from_position=current,
            to_position=held,
            records=records,
        )

    def _diverged(self, replica: str, error: ReplicaDivergedError) -> None:
        """Journal that ``replica`` was found changed outside xoengine (once, until synced)."""
        self._standing(error.code, replica, ("error", str(error)))

    def _used_while_rewound(self, replica: str) -> bool:
        """Whether a rewound replica changed since its rewind (its print is another).

        A resume's resync killed midway left the content print of the tree it
        started from: the next writable open undoes what it did and compares
        (:meth:`_settle_resync`), or this does, where that open could not. Until
        then the replica is taken as used.
        """
        if replica not in self._def.rewound:
            return False
        if not self._settle_resync(replica):
            return True  # cannot be told yet (a volume not mounted): not rewound on a guess
        with self._engine.store.read() as txn:
            left = self._appliers[replica].undo.rewound_print(txn)
        return left is not None and left != self._print(replica)

    def _settle_resync(self, replica: str) -> bool:
        """Undo a resume's resync killed midway and compare the tree with the print it left.

        The tree it started from is kept as the print to compare with, or (changed
        by hand since) the replica is taken as used. The open does it; where the
        replica could not be read then (a volume not mounted yet), the first
        question asked of it does (review 26 N B4). False: still not possible.
        """
        applier = self._appliers[replica]
        with self._engine.store.read() as txn:
            left = applier.undo.rewound_print(txn)
        if left is None or not left.startswith(RESYNCING):
            return True
        if self._engine.readonly:  # only a writer may undo it
            return False
        try:  # back to the tree it started from, then compared with it
            applier.sweep_once()
            self._recover(replica)
            same = self._content_print(replica) == left[len(RESYNCING) :]
        except (XoError, OSError):
            return False
        self._keep_print(replica, self._print_or_used(replica) if same else b"")
        return True

    def _keep_print(self, replica: str, value: bytes | None) -> None:
        """Note the print a rewound replica is compared with (``b""``: used; None: none)."""
        undo = self._appliers[replica].undo
        self._engine.store.write(lambda txn: undo.set_rewound_print(txn, value))

    def _print_or_used(self, replica: str) -> bytes:
        """:meth:`_print`, or ``b""`` (matches no print: taken as used) if it cannot be read."""
        try:
            return self._print(replica)
        except (XoError, OSError):
            return b""

    def _content_print(self, replica: str) -> bytes:
        """A digest of what the replica's tree holds, as undoing a resync puts it back.

        Each entry's kind, size, mode, owner, link target and (but a directory's)
        mtime; not change times nor inodes, which nothing puts back.
        """
        return self._digest_tree(
            replica,
            lambda e: (
                f"{e.relpath}\0{e.kind}\0{e.size}\0{e.mode}\0{e.uid}\0{e.gid}"
                f"\0{e.target}\0{0 if e.kind == 'dir' else e.mtime_ns}"
            ),
            reserved=TMP_PREFIX,
        )

    def _print(self, replica: str) -> bytes:
        """A digest of every entry of the replica's tree as ``lstat`` sees it.

        Any write, creation, deletion, rename or change of mode or owner changes
        an entry's change time (which nothing sets back) or the entries listed.
        """
        return self._digest_tree(
            replica,
            lambda e: f"{e.relpath}\0{e.kind}\0{e.size}\0{e.mtime_ns}\0{e.ctime_ns}\0{e.inode}",
        )

    def _digest_tree(self, replica: str, row: Callable[[Entry], str], reserved: str = "") -> bytes:
        """A digest of the replica's tree: one ``row`` per entry, sorted."""
        tree = walk(self._appliers[replica].tree.root, reserved=reserved)
        with contextlib.closing(tree):
            rows = sorted(row(e) for e in tree)
        return codec.digest128("\n".join(rows).encode("utf-8", "surrogateescape"))

    def _recover(self, replica: str) -> int:
        """Undo what an apply or a synchronization that did not finish left on ``replica``.

        Every change to a replica is recorded in its undo log before it is
        made, and the applied position moves after it: records above that
        position belong to an apply or a synchronization that was killed or
        failed midway. Undone (newest first), the replica holds its applied
        position's state again: the state the next events and a rewind start
        from. (A synchronization needs no such start: it compares whatever is
        there, and a rewind across it undoes both.) Returns the records undone.
        """
        applier = self._appliers[replica]
        with applier.lock:
            applied = applier.position()
            with self._engine.store.read() as txn:
                top = applier.undo.last_position(txn)
            if top <= applied:
                return 0
            applier.check_root()  # never undone into another volume's mount point
            # Each commit would move the applied position to below what it undid:
            # never above the position held (the events between were not applied).
            return rewind_back(
                self._engine.store,
                applier.tree,
                applier.undo,
                top,
                applied,
                lambda txn, p: applier.set_position(txn, min(p, applied), force=True),
                leftovers=True,
            )

    def _complete_rewinds(self) -> None:
        for replica in self._appliers:
            if replica in self._def.rewound:  # a resume's resync killed midway
                self._settle_resync(replica)
        for replica, (current, target) in list(self._def.pending_rewinds.items()):
            try:
                self._finish_rewind(replica, current, target)
            except XoError as e:
                # Opening never fails on it: say why. A passing cause (a volume not
                # mounted yet, a full disk, a file that could not be written) leaves
                # the rewind pending, the replica suspended: the next open completes
                # it, or resume() gives it up. History trimmed meanwhile never comes
                # back: the rewind is closed at the position the replica holds.
                self._alert(
                    code=e.code,
                    severity="error",
                    message=str(e),
                    details={"replica": replica, "rewind_to": target},
                )
                if not isinstance(e, RewindUnreachableError):
                    continue
                self._rewound(replica, current, self._appliers[replica].position(), 0)

    def trim_undo(
        self, policy: RetentionPolicy | None = None, *, now_ns: int | None = None
    ) -> dict[str, RetentionDecision]:
        """Apply the retention policy to every replica's undo log; journal what was dropped.

        ``now_ns``: the time ages are measured at. By default the engine's
        :attr:`~xoengine.engine.Engine.retention_clock`, which a clock stepped
        forward does not move (AW0005 stands per replica while it is ahead).
        """
        self._usable("trim the undo logs of")
        if policy is not None and not isinstance(policy, RetentionPolicy):
            raise ConfigurationError(
                detail=f"a retention policy is a RetentionPolicy, not {policy!r}"
            )
        if now_ns is not None and (not isinstance(now_ns, int) or isinstance(now_ns, bool)):
            raise ConfigurationError(
                detail=f"now_ns is a time in ns since the epoch, not {now_ns!r}"
            )
        policy = policy or self._retention_policy()
        now, ahead = self._engine.retention_clock.read() if now_ns is None else (now_ns, 0)
        ages = policy.max_age_s is not None or policy.window_s is not None
        recorder = self._engine.recorder
        decisions: dict[str, RetentionDecision] = {}
        points = self.rewind_points()
        for name, applier in self._appliers.items():
            with applier.lock:  # not while a batch is applied or a rewind reads the log
                # Records above the applied position are what an apply or a sync that
                # did not finish left: kept for _recover, which undoes their changes.
                applied = applier.position()
                sizes = [(p, b) for p, b in applier.undo.position_sizes() if p <= applied]
                labels = recorder.times_of(p for p, _ in sizes)  # one read, not one each
                usage = [UndoUsage(p, t, b) for (p, b), t in zip(sizes, labels, strict=True)]
                # The points it rewinds back to: one past what it holds (a suspended
                # replica's, a point set during the suspension) is reached forward, by
                # applying the journal, and uses up none of its undo_min_points.
                behind = [p for p in points if p.position <= applied]
                decision = retention(usage, behind, policy, now)
                decisions[name] = decision
                if decision.trim_upto:
                    # The trim and its UndoTrimmed commit together: history is never
                    # shortened without the journal saying so.
                    upto = decision.trim_upto
                    with self._engine.store.read() as txn:
                        count = applier.undo.count_upto(txn, upto)
                    self._engine._scenario_event(
                        self._def,
                        UndoTrimmed,
                        functools.partial(_trim_inline, applier.undo, upto),
                        replica=name,
                        upto=decision.trim_upto,
                        records=count,
                        bytes=decision.records_bytes,
                        reasons=list(decision.reasons),
                    )
            if now_ns is None and (ages or name in self._def.standing("AW0005")):
                self._clock_ahead(name, ahead if ages else 0)  # (a caller's time says nothing)
            raised = None if decision.alert is None else ("warning", decision.alert)
            share = decision.window_share
            if raised is None and share is not None and share >= CLEAR_SHARE:
                continue  # standing or not, it stays so until the share falls under 0.7
            self._standing("AW0002", name, raised, "its undo budget holds what it must keep again")
        return decisions

    def _clock_ahead(self, replica: str, ahead_ns: int) -> None:
        """Keep AW0005 standing while the clock is ahead of the time that has passed."""
        seconds = round(ahead_ns / 1e9)
        message = (
            f"the clock is {seconds} s ahead of the time that has passed since it was last "
            f"trusted (stepped forward?): the undo log of replica {replica!r} is aged by "
            "elapsed time, not by the clock; check the clock"
        )
        self._standing(
            "AW0005",
            replica,
            ("warning", message) if ahead_ns else None,
            "age retention measures with the clock again",
            {"ahead_s": seconds},
        )

    # -- difference report (R35) ------------------------------------------------------------

    def difference_report(self, replica: str, *, verify: bool = False) -> dict[str, Any]:
        """Master vs replica now: files and bytes pending per path, and (verify) a hash compare."""
        self._usable("report on")
        applier = self._replica(replica)
        pending: dict[str, dict[str, Any]] = {}
        moved = 0
        # One reading of each end: the pending events are those between them, as reported.
        held, end = applier.position(), self._engine.last_position()
        unfinished = self._def.pending_rewinds.get(replica)  # (from, to)
        since = self._own(self._pending_from(replica, held))
        for _, event in self._engine._iter_file_events(since, self.name, end):
            entry = pending.setdefault(event.path, {"events": 0, "bytes": 0})
            entry["events"] += 1
            entry["bytes"] += event_bytes(event)
            if isinstance(event, FileRenamed):
                entry["renamed_to"] = event.new_path
                if "entries_moved" not in entry:
                    # What the replica holds below a renamed directory moves with it:
                    # pending too, though no event names those paths.
                    entry["entries_moved"] = _entries_below(applier.tree, event.path)
                    moved += entry["entries_moved"]
        for _, _, change in self._engine.root_events(self.name, end, after=since):
            entry = pending.setdefault(root_label(change.root), {"events": 0, "bytes": 0})
            entry["events"] += 1  # a root's own mode, owner or attributes
        report: dict[str, Any] = {
            "scenario": self.name,
            "replica": replica,
            "suspended": replica in self._def.suspended,
            "applied_position": held,
            "journal_position": end,
            # Never synchronized (a scenario not started yet): what the journal holds
            # pending is no measure of what the replica lacks (the master's whole tree).
            "synchronized": held > 0,
            "rewind_pending": None if unfinished is None else list(unfinished),
            "pending_files": len(pending),
            "pending_bytes": sum(v["bytes"] for v in pending.values()),
            "pending_moved": moved,
            "pending": pending,
            "xattrs_left_out": self._left_out(replica),
        }
        if verify:
            report["differences"] = compare_trees(self, applier.tree)
        return report

    # -- statistics -------------------------------------------------------------------------

    def statistics(self) -> ScenarioStatistics:
        """Backlog, data amounts and replicated totals (R31)."""
        self._usable("read the statistics of")
        engine = self._engine
        journal_position = engine.last_position()
        roots: dict[str, dict[str, int]] = {}
        with engine.store.read() as txn:
            for index, root in enumerate(self._def.roots):
                prefix = self.layout.prefix(index)
                files = dirs = size = 0
                for _, state in self.manifest.items(txn, prefix):
                    if state.kind == "file":
                        files += 1
                        size += state.size
                    elif state.kind == "dir":
                        dirs += 1
                roots[root] = {"files": files, "dirs": dirs, "bytes": size}
        replicas = {name: self._replica_statistics(name) for name in self._def.replicas}
        return ScenarioStatistics(
            self.name, self.kind, self.state, journal_position, roots, replicas
        )

    def _pending_from(self, replica: str, held: int) -> int:
        """The position after which the journal's events are pending for ``replica``.

        The one it holds; a rewind left unfinished (killed midway) leaves it between
        its target and where it started, holding neither: every path changed since
        the target may differ from the master. Since the lowest state the rewind
        passes through, in fact: a target inside a gap an earlier rewind and its
        resync left is reached by undoing down to the gap's start, then applying
        forward (so a path deleted between the two is back on the replica meanwhile).
        """
        unfinished = self._def.pending_rewinds.get(replica)
        if unfinished is None:
            return held
        lowest = target = unfinished[1]
        with self._engine.store.read() as txn:
            gaps = self._appliers[replica].undo.gaps(txn)
        for low, high in gaps:
            if low < target and (high is None or target < high):
                lowest = low
        return min(held, lowest)

    def _own(self, after: int) -> int:
        """``after``, or the scenario's creation if it is earlier.

        The name's events before its creation are a removed scenario's, which
        no replica of this one held, received or waits for: what is applied,
        pending, counted or reported of this scenario starts here.
        """
        return max(after, self._def.created)

    def _span(self, after: int, upto: int | None = None) -> Span:
        """The totals of the scenario's own events in (``after``, ``upto``] (from the ledger)."""
        return self._engine._ledger.span(self.name, self._own(after), upto)

    def _replica_statistics(self, name: str) -> ReplicaStatistics:
        applier = self._appliers[name]
        applied = applier.position()
        unfinished = self._def.pending_rewinds.get(name)
        backlog = self._span(self._pending_from(name, applied))
        done = self._span(0, applied)
        oldest: float | None = None
        if backlog.first is not None:
            journaled = self._engine.recorder.time_of(backlog.first) / 1e9
            oldest = max(0.0, time.time() - journaled)
        with self._engine.store.read() as txn:
            floor = self._floor(applier, txn)
            undo_count, undo_bytes = applier.undo.usage(txn)
        return ReplicaStatistics(
            name=name,
            path=self._def.replicas[name],
            suspended=name in self._def.suspended,
            applied_position=applied,
            backlog_events=backlog.events,
            backlog_bytes=backlog.bytes,
            oldest_unapplied_age_s=oldest,
            bytes_replicated=done.bytes,
            files_replicated=done.events,
            undo_records=undo_count,
            undo_bytes=undo_bytes,
            rewind_floor=floor,
            xattrs_left_out=self._left_out(name),
            rewind_pending=unfinished,
            synchronized=applied > 0,
            standing_alerts=sorted(
                {code for code, names in self._def.standing_alerts.items() if name in names}
                | self._failure_codes(name)
            ),
        )

    def _failure(self, replica: str) -> BaseException | None:
        """The error ``replica``'s applier (its thread, or an inline apply) stopped on, if any.

        It stands until a resume or a synchronization gets the replica going.
        """
        thread = self._threads.get(replica)
        error = thread.error if thread is not None else None
        return error if error is not None else self._failed_inline.get(replica)

    def _failure_codes(self, replica: str) -> set[str]:
        """The code of :meth:`_failure` (none if it has none)."""
        code = getattr(self._failure(replica), "code", None)
        return {code} if isinstance(code, str) else set()

    def _left_out(self, replica: str) -> list[str]:
        """Attribute names a replica leaves out: told by AW0003 (the journal), or since."""
        told = self._def.left_out.get(replica, set())
        return sorted(told | self._replica(replica).tree.xattrs_left_out)

    def _check_state(self) -> None:
        """Problem while a replica's applier has failed or the spool is over its limit."""
        with self._engine._lock:  # appliers call this too: one decision at a time
            self._check_state_locked()
        self._alert_left_out()

    def _applier_failed(self, replica: str, error: XoError) -> None:
        """Journal an applier's failure (an error alert) and put the scenario in Problem."""
        self._appliers[replica].counts.errors.append(str(error))
        with contextlib.suppress(XoError):
            if replica not in self._def.standing_alerts.get(error.code, ()):  # said already
                self._alert(
                    code=error.code,
                    severity="error",
                    message=str(error),
                    details={"replica": replica},
                )
            self._check_state()

    def _alert(self, *, code: str, severity: str, message: str, details: dict[str, Any]) -> None:
        """Journal an ``AlertRaised`` of this scenario."""
        self._engine._scenario_event(
            self._def, AlertRaised, code=code, severity=severity, message=message, details=details
        )

    def _standing(
        self,
        code: str,
        replica: str,
        raised: tuple[str, str] | None,
        cleared: str = "",
        details: dict[str, Any] | None = None,
    ) -> None:
        """Keep the journal's word on an alert that stands while its condition does.

        ``raised``: the condition holds, as ``(severity, message)``: alerted once
        while it stands, across opens too (the journal says whether it stands).
        None: it does not, and a standing alert is cleared by an ``info`` one of
        the same code, saying ``cleared``. ``details`` go into the raised alert.
        """
        standing = replica in self._def.standing(code)
        if raised is not None and not standing:
            severity, message = raised
            said = {"replica": replica, **(details or {})}
            self._alert(code=code, severity=severity, message=message, details=said)
        elif raised is None and standing:
            self._alert(
                code=code,
                severity="info",
                message=f"cleared: replica {replica!r}: {cleared}",
                details={"replica": replica, "cleared": True},
            )

    def _alert_left_out(self) -> None:
        """Alert AW0003 once per replica and attribute name it left out (the journal says which).

        A replica that cannot hold a master's attribute (an NT ACL on a replica
        run by a user, a value too large for its file system) goes on without
        it: an operator must hear of it before failing over to that replica.
        """
        with self._engine._lock:
            for name, applier in self._appliers.items():
                reported = self._def.left_out.get(name, set())
                new = sorted(frozenset(applier.tree.xattrs_left_out) - reported)
                if not new:
                    continue
                self._alert(
                    code="AW0003",
                    severity="warning",
                    message=f"replica {name} cannot hold extended attributes "
                    f"{', '.join(new)} of the master: left out",
                    details={"replica": name, "names": new},
                )

    def _check_state_locked(self) -> None:
        limit = int(self._def.options.get("spool_limit") or 0)
        over = False
        for name, applier in self._appliers.items():
            # The spool is what waits for a suspended replica (a replica that follows
            # has a backlog only until it applies the last append). Raised once per
            # replica while it stays over the limit, across opens too (the journal
            # says it stands), and cleared when it falls back or the replica resumes.
            spooling = limit and name in self._def.suspended
            waiting = self._span(applier.position()).bytes if spooling else 0
            raised = None
            if spooling and waiting > limit:
                over = True
                message = f"spool over threshold: {waiting} bytes waiting (limit {limit})"
                raised = ("warning", message)
            elif name not in self._def.standing("AW0001"):
                continue  # nothing to say (and no backlog read when no limit is set)
            self._standing(
                "AW0001",
                name,
                raised,
                cleared=f"spool back under threshold ({limit} bytes)",
                details={"backlog_bytes": waiting, "limit": limit},
            )
        failed = sorted(name for name in self._appliers if self._failure(name) is not None)
        watch = self._watch_error
        if (over or failed or watch) and self._def.state != "Problem":
            reason = (
                "spool over threshold"
                if over
                else f"replica {failed[0]} stopped on an error"
                if failed
                else f"live capture failed ({watch.code if watch else ''})"
            )
            self._engine._scenario_event(
                self._def, ScenarioStateChanged, state="Problem", reason=reason
            )
        elif not over and not failed and not watch and self._def.state == "Problem":
            state = "Running" if self._def.running else "Stopped"
            self._engine._scenario_event(
                self._def, ScenarioStateChanged, state=state, reason="problem cleared"
            )

    # -- projections ------------------------------------------------------------------------

    def rebuild_master_state(self) -> int:
        """Drop the master state and fold it again from the journal alone; return events folded.

        A rebuilt projection equals the live one (tested): the fold is the same
        code that runs inline with every append. A rebuild killed midway runs
        again when the engine opens (the manifest is marked until it ends).
        """
        self._usable("rebuild the master state of")
        engine = self._engine

        def drop(txn: WriteTxn) -> None:
            self.manifest.drop(txn)
            self.manifest.mark_rebuilding(txn, rebuilding=True)

        with self.capture_engine.lock:
            self.capture_engine.forget_master_state()
            engine.store.write(drop)
            batch: list[FileEvent] = []

            def fold(txn: WriteTxn) -> None:
                for event in batch:
                    self.master_state.fold(txn, event)

            count = 0
            for _, event in engine._iter_file_events(0, self.name):
                batch.append(event)
                if len(batch) >= 1000:
                    engine.store.write(fold)
                    count += len(batch)
                    batch.clear()
            if batch:
                engine.store.write(fold)
                count += len(batch)
            self._derive_maps()
            engine.store.write(functools.partial(self.manifest.mark_rebuilding, rebuilding=False))
            return count

    def _derive_maps(self) -> None:
        """Derive the block maps a delta left unknown, from the content the journal holds."""
        with self._engine.store.read() as txn:
            wanted = self.manifest.underived(txn)
        if not wanted:
            return
        forensics = self._engine.forensics(self.name)
        for file_id, content in forensics.contents(wanted, scratch=self._engine.store.path):
            block_map = blocks.BlockMap.compute(content, self.block_size)
            self._engine.store.write(
                functools.partial(self.master_state.derive, file_id=file_id, block_map=block_map)
            )

    def master_state_snapshot(self) -> dict[str, Any]:
        """The master state as plain data (path -> entry and block digests), for comparison."""
        self._usable("read the master state of")
        out: dict[str, Any] = {}
        with self._engine.store.read() as txn:
            for path, state in self.manifest.items(txn):
                digests = self.master_state.digests(txn, state) if state.kind == "file" else b""
                out[path] = (state, digests)
        return out

    # -- reports ----------------------------------------------------------------------------

    def sync_report(self, replica: str | None = None, *, last_only: bool = True) -> dict[str, Any]:
        """The synchronization report (R35): files sent with paths and sizes, counts, bytes.

        ``replica``: one replica's runs (a replica removed since keeps its runs);
        a name the scenario never synchronized is :class:`ReplicaNotFoundError`.
        """
        self._usable("report on")
        ordered = sync_runs(self._engine._iter_events(SYNC_EVENTS), self.name, replica)
        if replica is not None and not ordered:
            self._replica(replica)  # a typo is never an empty report
        if last_only:
            latest: dict[str, dict[str, Any]] = {}
            for run in ordered:
                latest[run["replica"]] = run
            ordered = list(latest.values())
        return {"scenario": self.name, "runs": ordered}

    def replication_report(
        self, replica: str | None = None, *, detail: bool = False
    ) -> dict[str, Any]:
        """The replication report (R35): bytes since start and since the last report, counts."""
        self._usable("report on")
        if replica is not None:
            self._replica(replica)  # a typo is never an empty report
        report: dict[str, Any] = {"scenario": self.name, "replicas": {}}
        marks = self._engine._report_marks.setdefault(self.name, {})
        for name, applier in self._appliers.items():
            if replica and name != replica:
                continue
            applied = applier.position()
            since = marks.get(name, 0)
            done = self._span(0, applied)
            totals = {op: done.counts[op] for op in ("created", "updated", "deleted", "renamed")}
            totals["bytes"] = done.bytes
            totals["bytes_since_last_report"] = self._span(since, applied).bytes
            files: list[dict[str, Any]] = []
            if detail:
                events = self._engine._iter_file_events(self._own(0), self.name, upto=applied)
                for position, event in events:
                    files.append(
                        {
                            "position": position,
                            "path": event.path,
                            "operation": operation(event),
                            "bytes": event_bytes(event),
                        }
                    )
            entry: dict[str, Any] = {
                "applied_position": applied,
                **totals,
                "errors": list(applier.counts.errors),
            }
            if detail:
                entry["files"] = files
            report["replicas"][name] = entry
            marks[name] = applied
        return report


class _NotifyingFile(JournaledFile):
    def __init__(self, scenario: Scenario, capture: Capture, path: str, mode: str) -> None:
        super().__init__(capture, path, mode)
        self._scenario = scenario

    def flush(self) -> None:
        engine = self._scenario._engine
        before = engine.last_position()
        super().flush()
        after = engine.last_position()
        self._scenario._after_append(after if after != before else 0)


def _same_name(a: str, b: str) -> bool:
    """Whether two point names look the same: one Unicode form (NFC), outer spaces aside."""
    return unicodedata.normalize("NFC", a.strip()) == unicodedata.normalize("NFC", b.strip())


def _entries_below(tree: ReplicaTree, path: str) -> int:
    """How many entries the replica holds below ``path`` (0 unless it is a directory there).

    A replica out of replication (suspended, rewound) may hold a file or a link
    where the pending events have a directory above ``path``: it holds nothing there.
    """
    try:
        st = tree.lstat(path)
    except (ParentNotDirectoryError, SymlinkedParentError):
        return 0
    if st is None or not stat.S_ISDIR(st.st_mode):
        return 0
    entries = walk(os.path.join(tree.root, path))
    with contextlib.closing(entries):
        return sum(1 for _ in entries)
