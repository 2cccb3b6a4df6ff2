"""The engine: composition root and public API (scenarios, replication, statistics).

Room: engine. May import every room below it.

An :class:`Engine` is an eventsourcing application on the LMDB journal
(``xoengine.journal``) in ``<state_dir>/journal``. Scenarios are folded from
their events at open; each scenario (:class:`~xoengine.scenario.Scenario`, in
its own module of this room) wires a :class:`~xoengine.capture.Capture`
(master side), one :class:`~xoengine.replica.ReplicaApplier` per replica (a
background thread while the scenario runs), and a
:class:`~xoengine.sync.Synchronizer` per replica.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import math
import os
import re
import stat
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, ClassVar, Final, Self, TypeAlias

from eventsourcing.application import Application
from eventsourcing.utils import get_topic

from xoengine import blocks, codec
from xoengine.datastore import (
    Store,
    has_journal,
    inside_dir,
    keep_freed_memory,
    open_store,
    writer_of,
)
from xoengine.errors import (
    ConfigurationError,
    FrameError,
    JournalDamagedError,
    JournalLockedError,
    NoFileAtError,
    OutputLocationError,
    OverlappingTreesError,
    ScenarioError,
    ScenarioExistsError,
    ScenarioNotFoundError,
    ScenarioStateError,
    StateCopiedError,
    TreeRootMissingError,
    XoError,
)
from xoengine.events import (
    APPLIED_EVENTS,
    FILE_EVENTS,
    AlertRaised,
    FileEvent,
    FileRenamed,
    ReplicaAdded,
    ReplicaRemoved,
    ReplicaResumed,
    ReplicaRewound,
    ReplicaSuspended,
    RewindPointSet,
    RewindStarted,
    RootChanged,
    ScenarioCreated,
    ScenarioEvent,
    ScenarioRemoved,
    ScenarioStarted,
    ScenarioStateChanged,
    ScenarioStopped,
    ScenarioUpdated,
    SyncFinished,
    SyncStarted,
    UndoTrimmed,
    new_id,
)
from xoengine.forensic import (
    BURST_WINDOW_S,
    BisectResult,
    DiffResult,
    Forensics,
    HeldSpan,
    HistoryEntry,
    ReplayResult,
)
from xoengine.journal import BlobTable, LMDBApplicationRecorder, datetime_ns
from xoengine.layout import Layout
from xoengine.ledger import Ledger
from xoengine.replica import (
    APPLIED_TOPICS,
    FILE_TOPICS,
    Applied,
    forget_replica,
    replica_state_name,
    replica_tables,
)
from xoengine.rewind import RetentionClock, RewindPoint
from xoengine.scenario import ReplicaStatistics, Scenario, ScenarioStatistics, master_manifest
from xoengine.walk import READ_FLAGS, normalize_relpath, open_parent, open_to_others

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from eventsourcing.domain import DomainEvent

    from xoengine.datastore import WriteTxn

__all__ = ["KINDS", "Engine", "Instant", "ReplicaStatistics", "Scenario", "ScenarioStatistics"]

#: An instant of a scenario's history: a journal position, a time (timezone-aware),
#: or a rewind point (or its name). See :meth:`Engine.instant`.
Instant: TypeAlias = int | dt.datetime | RewindPoint | str

KINDS: Final = ("file_server", "database", "storage_group")
#: Scenario options that are numbers >= 0 (seconds, bytes or counts).
_COUNT_OPTIONS: Final = frozenset({"spool_limit", "undo_max_bytes", "undo_min_points"})
_NUMERIC_OPTIONS: Final = (
    "spool_limit",
    "rewind_interval",
    "undo_max_age",
    "undo_max_bytes",
    "undo_min_points",
    "undo_window",
    "undo_check_interval",
    "watch_delay",
)
#: Every scenario option (a typo must not pass silently for an unset limit).
_KNOWN_OPTIONS: Final = frozenset(
    {"block_size", "include", "exclude", "groups", "databases", *_NUMERIC_OPTIONS}
)
_ROOT_TOPIC: Final = get_topic(RootChanged)
_RUN_TOPICS: Final = [get_topic(c) for c in (ScenarioCreated, ScenarioStarted, ScenarioStopped)]
_ALERT_TOPICS: Final = [get_topic(c) for c in (ScenarioCreated, AlertRaised)]
_POINT_TOPICS: Final = [get_topic(c) for c in (ScenarioCreated, RewindPointSet)]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
SCENARIO_TOPICS: Final = tuple(
    get_topic(c)
    for c in (
        ScenarioCreated,
        ScenarioUpdated,
        ScenarioRemoved,
        ReplicaAdded,
        ReplicaRemoved,
        ScenarioStarted,
        ScenarioStopped,
        ReplicaSuspended,
        ReplicaResumed,
        ScenarioStateChanged,
        AlertRaised,
        RewindPointSet,
        RewindStarted,
        ReplicaRewound,
        UndoTrimmed,
    )
)


class XoApplication(Application[uuid.UUID]):
    """The eventsourcing application every engine runs (msgpack events on the LMDB journal)."""

    name = "xoengine"


# -- scenario definition (a fold of the scenario's own events) ----------------------------------


STANDING_ALERTS: Final = frozenset({"AW0001", "AW0002", "AW0005", "E3011"})
"""Alerts that stand for a replica while their condition does, until an ``info`` alert of
the same code clears them: AW0001 its backlog is over ``spool_limit``, AW0002 the undo
budget nears the window (or the newest ``undo_min_points`` points hold more than it),
AW0005 the clock is ahead of the time that has passed (its undo log is aged by elapsed
time), E3011 the replica was changed outside xoengine (cleared by a synchronization of
it)."""


@dataclass
class _Definition:
    id: uuid.UUID
    version: int
    name: str
    kind: str
    roots: list[str]
    replicas: dict[str, str]
    options: dict[str, Any]
    running: bool = False
    suspended: set[str] = field(default_factory=set)
    state: str = "Stopped"
    removed: bool = False
    points: list[tuple[str, int, str]] = field(default_factory=list)
    rewound: set[str] = field(default_factory=set)
    pending_rewinds: dict[str, tuple[int, int]] = field(default_factory=dict)
    standing_alerts: dict[str, set[str]] = field(default_factory=dict)
    """Alert code -> the replicas it stands for: raised, not cleared since (see
    :data:`STANDING_ALERTS`)."""
    left_out: dict[str, set[str]] = field(default_factory=dict)
    """Replica -> the attribute names an AW0003 alert said it left out."""
    created: int = 0
    """The position of its ScenarioCreated: the name's events before it are another
    scenario's (one removed), which its replicas never held."""

    def standing(self, code: str) -> set[str]:
        """The replicas alert ``code`` (one of :data:`STANDING_ALERTS`) stands for."""
        return self.standing_alerts.setdefault(code, set())

    def apply(self, event: ScenarioEvent) -> None:
        self.version = event.originator_version
        if isinstance(event, AlertRaised):
            if event.code in STANDING_ALERTS and "replica" in event.details:
                # (An AW0001 of a journal before it stood per replica names none: it
                # stands for no one, and the next check says again what holds.)
                standing = self.standing(event.code)
                replica = str(event.details["replica"])
                if event.severity == "info":
                    standing.discard(replica)
                else:
                    standing.add(replica)
            elif event.code == "AW0003":
                replica = str(event.details["replica"])
                self.left_out.setdefault(replica, set()).update(event.details["names"])
        elif isinstance(event, RewindPointSet):
            self.points.append((event.name, event.position, event.kind))
        elif isinstance(event, RewindStarted):
            self.pending_rewinds[event.replica] = (event.from_position, event.to_position)
        elif isinstance(event, ReplicaRewound):
            self.pending_rewinds.pop(event.replica, None)
            self.rewound.add(event.replica)
        elif isinstance(event, ScenarioUpdated):
            self.options = {**self.options, **event.options}
        elif isinstance(event, ScenarioRemoved):
            self.removed = True
        elif isinstance(event, ReplicaAdded):
            self.replicas[event.replica] = event.path
        elif isinstance(event, ReplicaRemoved):
            self.replicas.pop(event.replica, None)
            self.suspended.discard(event.replica)
        elif isinstance(event, ScenarioStarted):
            self.running, self.state = True, "Running"
        elif isinstance(event, ScenarioStopped):
            self.running, self.state = False, "Stopped"
        elif isinstance(event, ReplicaSuspended):
            self.suspended.add(event.replica)
        elif isinstance(event, ReplicaResumed):
            self.suspended.discard(event.replica)
            self.rewound.discard(event.replica)
            # A rewind left unfinished is given up: the replica follows the master again.
            self.pending_rewinds.pop(event.replica, None)
        elif isinstance(event, ScenarioStateChanged):
            self.state = event.state


def _real(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> str:
    return os.fsdecode(os.path.realpath(os.fspath(path)))


def _is_path(value: object) -> bool:
    """A str, bytes or path-like holding no NUL (no file system name can)."""
    if not isinstance(value, str | bytes | os.PathLike):
        return False
    raw = os.fspath(value)
    return (b"\0" if isinstance(raw, bytes) else "\0") not in raw


# -- statistics -----------------------------------------------------------------------------------


# -- the scenario handle -------------------------------------------------------------------------


# -- the engine --------------------------------------------------------------------------------


_HOME_TABLE: Final = "home"
_JOURNAL_FILE: Final = b"journal-file"
"""Key of the journal's data file in :data:`_HOME_TABLE`: its inode and the state directory."""


@functools.cache
def _field_names(cls: type) -> tuple[str, ...]:
    """The dataclass fields of an event class (none for another class)."""
    return tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else ()


def _copied(made: dict[str, Any], here: dict[str, Any]) -> bool:
    """Whether the journal a home record ``made`` names is not the file ``here``.

    A copy is a new file (a new inode); a block-level copy keeps the inode but is
    another device, at another place (a remount at the same place is not a copy).
    """
    moved = made["state_dir"] != here["state_dir"]
    return bool(
        made["inode"] != here["inode"]
        or (moved and made.get("device", here["device"]) != here["device"])
    )


class Engine:
    """The xoengine engine over one state directory (journal and everything derived from it).

    Open with :meth:`open`; close with :meth:`close` or use it as a context
    manager. Durability (``sync`` by default) is that of the journal; replica
    files are fsynced unless durability is ``nosync``.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        *,
        durability: str = "sync",
        map_size: int | None = None,
        readonly: bool = False,
        adopt: bool = False,
    ) -> None:
        """Open (creating if missing, unless ``readonly``) the engine in ``state_dir``."""
        if map_size is not None and (
            not isinstance(map_size, int) or isinstance(map_size, bool) or map_size <= 0
        ):
            raise ConfigurationError(
                detail=f"map_size must be a whole number of bytes > 0, not {map_size!r}"
            )
        if not _is_path(state_dir):
            raise ConfigurationError(
                detail=f"the state directory must be a path, not {state_dir!r}"
            )
        self.state_dir = Path(os.fsdecode(state_dir)).absolute()  # cwd may change: kept whole
        self.readonly = readonly
        if adopt and not (self.state_dir / "journal" / "data.mdb").is_file():
            # Only a journal made elsewhere is adopted: nothing is made here for it.
            if (self.state_dir / "data.mdb").is_file():
                detail = (
                    f"{self.state_dir} is a journal, not a state directory: adopt the state "
                    "directory whose journal/ it is (a bare copy goes into a new state "
                    "directory's journal/ first)"
                )
            else:
                detail = f"{self.state_dir} holds no journal to adopt (no journal/data.mdb)"
            raise ConfigurationError(detail=detail + "; nothing was made")
        if not readonly:
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:  # a file there, or above it; no right to make it
                raise ConfigurationError(
                    detail=f"the state directory {os.fspath(self.state_dir)!r} cannot be a "
                    f"directory: {e.strerror}"
                ) from None
            keep_freed_memory()  # captures allocate and free LMDB pages by the GiB
        journal = self.state_dir / "journal"
        if readonly and not has_journal(journal) and has_journal(self.state_dir):
            journal = self.state_dir  # a bare journal copy (`xoengine journal copy`)
        self._journal_dir = journal
        data = journal / "data.mdb"
        if not readonly and not adopt and data.is_file() and data.stat().st_size:
            # Before the writable open, which writes its pid into writer.lock (and may
            # make a table): a copy is refused with nothing written to it. (An empty
            # data file is a journal to start: no copy of anything.)
            peek = open_store(journal, readonly=True)
            try:
                self._refuse_copy(peek, adopt=False)
            finally:
                peek.close()
        env = {
            "PERSISTENCE_MODULE": "xoengine.journal",
            "LMDB_PATH": str(journal),
            "LMDB_DURABILITY": durability,
            "LMDB_READONLY": "yes" if readonly else "no",
            # The journal's format is the engine's, not the process environment's:
            # plain msgpack, no compressor, no cipher (docs/journal-format.md).
            "TRANSCODER_TOPIC": "",
            "COMPRESSOR_TOPIC": "",
            "CIPHER_TOPIC": "",
            "CIPHER_KEY": "",
        }
        if map_size:
            env["LMDB_MAP_SIZE"] = str(map_size)
        # eventsourcing reads XOENGINE_<KEY> before <KEY>, from os.environ too.
        env |= {f"{XoApplication.name.upper()}_{key}": value for key, value in env.items()}
        self.app = XoApplication(env=env)
        recorder = self.app.recorder
        assert isinstance(recorder, LMDBApplicationRecorder)
        self.recorder: LMDBApplicationRecorder = recorder
        self.store: Store = recorder.datastore
        if not readonly:
            # The engine keeps projections of the journal in memory and applies it to
            # replicas: a second writer process would act on a journal it has not read.
            # One engine per journal in this process too: two would each hold projections
            # the other's appends do not update (a second scenario of a name, threads of
            # a dropped engine applying beside a new one).
            try:
                self.store.claim_writer(owner=self)
                self._claim_home(adopt=adopt)
                # A journal of an older xoengine: its topic index covers only what
                # was appended since (once, then the open's own scans use it).
                self.recorder.index_topics()
            except BaseException:
                self.store.release_writer(self)
                self.app.close()
                raise
        self._closed = False
        self.retention_clock = RetentionClock(
            None if readonly else self.state_dir / "retention-clock"
        )
        """What undo logs are aged by: a wall clock stepped forward does not age them."""
        self.blobs = BlobTable(self.store)
        self.fsync = durability != "nosync"
        self._definitions: dict[str, _Definition] = {}
        self._ever_named: set[str] = set()  # every scenario name the journal holds, removed too
        self._scenarios: dict[str, Scenario] = {}
        self._report_marks: dict[str, dict[str, int]] = {}
        self._lock = threading.RLock()
        # Journal bounds of finished synchronization runs, per (scenario, replica):
        # read from the journal at open, then kept as this engine (the journal's
        # one writer) appends runs.
        self._sync_runs: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self._sync_started: dict[uuid.UUID, int] = {}
        self._folded = 0  # the scenario events up to here are in the definitions
        self._ledger = Ledger(
            lambda after, upto: self._iter_events(APPLIED_EVENTS, after, upto),
            self.last_position,
            self.store,
            writable=not readonly,
        )
        try:
            self._load()
        except BaseException:
            self.store.release_writer(self)
            self.app.close()  # a failed open keeps nothing open
            raise

    @classmethod
    def open(
        cls,
        state_dir: str | os.PathLike[str],
        *,
        durability: str = "sync",
        map_size: int | None = None,
        readonly: bool = False,
        adopt: bool = False,
    ) -> Engine:
        """Open the engine in ``state_dir`` (journal in ``state_dir/journal``).

        ``readonly`` opens an existing journal (or a copy of one) for forensics:
        nothing is written, no replica is touched.

        A writable open refuses a copied state directory (``cp -a``, a restore
        from a backup, a journal copied into ``journal/``): its scenarios name
        the original's masters and replicas, and writing from the copy would
        change them behind the original's journal
        (:class:`~xoengine.errors.StateCopiedError`, E4006). ``adopt`` makes
        the copy the live state directory (the original retired); moving a
        state directory within its file system needs no adoption.
        """
        return cls(
            state_dir, durability=durability, map_size=map_size, readonly=readonly, adopt=adopt
        )

    def _claim_home(self, *, adopt: bool) -> None:
        """Record the journal's data file as this state directory's, or refuse a copy's.

        A copy of a journal is a new file (a new inode), while the one a state
        directory was made with keeps its inode for life: LMDB grows it in
        place, and a move within the file system keeps it too (and its device).
        A block-level copy (a snapshot, an image, a ``dd``) keeps the inode but
        is another device, at another place. A journal without the record
        (made by an older xoengine) is recorded as it is.
        """
        self.store.ensure(_HOME_TABLE)
        made, here = self._refuse_copy(self.store, adopt=adopt)
        if made is not None:
            if _copied(made, here) and made["state_dir"] != here["state_dir"]:
                # Adopted: not while the original lives (two would write).
                original = os.path.join(made["state_dir"], "journal")
                pid = writer_of(original)
                if pid is not None:
                    raise JournalLockedError(path=original, pid=pid)
            if made == here:
                return  # else adopted, moved or remounted: the record names the file and place
        home = codec.frame(_JOURNAL_FILE, codec.pack(here))
        self.store.write(lambda txn: txn.put(_HOME_TABLE, _JOURNAL_FILE, home))

    def _refuse_copy(
        self, store: Store, *, adopt: bool
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """E4006 if the journal in ``store`` is a copy (unless ``adopt``).

        Returns its record of its data file (None if none) and the file and place
        it is now.
        """
        data = os.stat(Path(store.path) / "data.mdb")
        here = {
            "inode": data.st_ino,
            "device": data.st_dev,
            "state_dir": os.path.realpath(self.state_dir),
        }
        made = self._home(store, adopt=adopt)
        if made is not None and not adopt and _copied(made, here):
            detail = (
                f"made in {made['state_dir']} as inode {made['inode']}"
                + (f" of device {made['device']}" if "device" in made else "")
                + f", this journal is inode {data.st_ino} of device {data.st_dev}"
            )
            raise StateCopiedError(state=str(self.state_dir), detail=detail)
        return made, here

    def _home(self, store: Store, *, adopt: bool) -> dict[str, Any] | None:
        """The journal's record of its data file; None if none (or, adopting, a damaged one)."""
        with store.read() as txn:
            value = txn.get(_HOME_TABLE, _JOURNAL_FILE)
        if value is None:
            return None
        made: Any = None
        problem = ""
        try:
            made = codec.unpack(codec.unframe(_JOURNAL_FILE, value, where=_HOME_TABLE))
        except XoError as e:
            problem = e.message
        if not problem and not (
            isinstance(made, dict)
            and isinstance(made.get("inode"), int)
            and isinstance(made.get("device", 0), int)
            and isinstance(made.get("state_dir"), str)
        ):
            problem = f"it holds {made!r}"
        if not problem:
            return dict(made)
        if adopt:
            return None  # adopting writes it anew
        raise JournalDamagedError(
            path=store.path,
            detail=f"the record of its data file (table home) is damaged: {problem}; "
            "if this is the live state directory, `xoengine adopt` writes it anew",
        )

    # -- forensics (from the journal alone) --------------------------------------------------

    def file_events(
        self,
        scenario: str,
        upto: int | None,
        *,
        after: int = 0,
        kinds: tuple[type[FileEvent], ...] = FILE_EVENTS,
    ) -> Iterator[tuple[int, int, FileEvent]]:
        """``(position, time label, event)`` of a scenario's file events in ``(after, upto]``.

        Only events of ``kinds``: the others are skipped before their state is decoded.
        A name the journal never held is refused, as by :meth:`forensics`.
        """
        self._check_open("read file events")
        self._check_reading(scenario, upto)
        topics = FILE_TOPICS if kinds == FILE_EVENTS else [get_topic(c) for c in kinds]
        return self._scenario_events(scenario, topics, after, upto)

    def _check_reading(self, scenario: str, upto: int | None) -> None:
        """Refuse a scenario name the journal never held, and a bound that is no position."""
        if scenario not in self._ever_named:
            self._refresh()
            if scenario not in self._ever_named:
                raise ScenarioNotFoundError(name=scenario)
        if upto is not None and (not isinstance(upto, int) or isinstance(upto, bool)):
            raise ConfigurationError(detail=f"upto is a position (int) or None, not {upto!r}")

    def root_events(
        self, scenario: str, upto: int | None, *, after: int = 0
    ) -> Iterator[tuple[int, int, RootChanged]]:
        """``(position, time label, event)`` of a scenario's root changes in ``(after, upto]``.

        Read through the journal's topic index: a few events, however long the journal.
        """
        self._check_open("read root events")
        self._check_reading(scenario, upto)
        return self._scenario_events(scenario, [_ROOT_TOPIC], after, upto)

    def stopped_at(self, scenario: str, at: Instant | None) -> tuple[int, int] | None:
        """``(position, time label)`` of the stop ``scenario`` stood in at ``at``; None if running.

        While a scenario is stopped nothing captures its master: what the
        journal answers for an instant then is the tree as of the stop, whatever
        the master held meanwhile. A scenario that ended without a stop (a
        crash, a kill) has none in the journal and counts as running.
        """
        self._check_open(f"read the history of scenario {scenario!r}")
        stop: tuple[int, int] | None = None
        for position, label, event in self._named_events(
            scenario, _RUN_TOPICS, self.instant(scenario, at)
        ):
            # Started, or made anew under the name (removed and created again): not stopped.
            stop = (position, label) if isinstance(event, ScenarioStopped) else None
        return stop

    def clock_behind(self, scenario: str, at: Instant | None) -> tuple[int, int] | None:
        """``(position, seconds)`` of the AW0006 alert of the flat span holding ``at``; else None.

        While the clock stood behind the journal's last time label, every commit
        got that label (labels never go back): a time in the span resolves to
        its end, and only positions tell its changes apart. The capture that
        found the clock behind alerted AW0006 with the span's label.
        """
        self._check_open(f"read the history of scenario {scenario!r}")
        position = self.instant(scenario, at)
        if not position:
            return None  # before the journal: no label
        label = self.recorder.time_of(position)
        for alerted, _, event in self._named_events(scenario, _ALERT_TOPICS, None):
            if (
                isinstance(event, AlertRaised)
                and event.code == "AW0006"
                and event.details.get("label_ns") == label
            ):
                return alerted, int(event.details.get("behind_s", 0))
        return None

    def _named_events(
        self, scenario: str, topics: Sequence[str], upto: int | None
    ) -> Iterator[tuple[int, int, Any]]:
        """``(position, time label, event)`` of the scenario events of ``topics`` up to ``upto``.

        Of every scenario that had the name (one may be removed and made again):
        ``topics`` must hold ``ScenarioCreated``'s, which says which they are
        (and is given too).
        """
        ids: set[uuid.UUID] = set()
        for record in self.recorder.records(1, stop=upto, topics=topics):
            event = self._decode(record)
            if isinstance(event, ScenarioCreated):
                if event.name == scenario:
                    ids.add(event.originator_id)
                    yield record.id, record.time_ns, event
            elif event.originator_id in ids:
                yield record.id, record.time_ns, event

    def _scenario_events(
        self, scenario: str, topics: Sequence[str], after: int, upto: int | None
    ) -> Iterator[tuple[int, int, Any]]:
        """``(position, time label, event)`` of a scenario's events of ``topics`` in a range."""
        records = self.recorder.records(after + 1, stop=upto, topics=topics, complete=True)
        for record in records:
            event = self._decode(record)
            if event.scenario == scenario:
                yield record.id, record.time_ns, event

    def file_stream(
        self, file_id: uuid.UUID, upto: int | None
    ) -> Iterator[tuple[int, int, FileEvent]]:
        """``(position, time label, event)`` of one file identity's events up to ``upto``.

        Read through the journal's stream index: the cost follows that
        identity's events, not the journal's length. An identity's versions are
        1, 2, 3 ... (capture numbers them so): one the index skips is an entry
        lost or damaged, a coded error rather than an answer without that event.
        """
        self._check_open("read a file's events")
        records = self.recorder.stream_records(file_id, stop=upto, gapless=True)
        self._check_stream_end(file_id)
        for record in records:
            yield record.id, record.time_ns, self._decode(record)

    def file_stream_newest_first(
        self, file_id: uuid.UUID, upto: int | None
    ) -> Iterator[tuple[int, int, FileEvent]]:
        """:meth:`file_stream` newest first, each event decoded as it is asked for."""
        self._check_open("read a file's events")
        records = self.recorder.stream_records_newest_first(file_id, stop=upto, gapless=True)
        self._check_stream_end(file_id)
        for record in records:
            yield record.id, record.time_ns, self._decode(record)

    def _check_stream_end(self, file_id: uuid.UUID) -> None:
        """Refuse a stream whose last entry is lost, where the master state can tell.

        A lost entry between two others is a gap in the versions; a lost *last*
        one is not, and a read through the index would answer without that
        event. The master state (folded in the append's own transaction) holds
        each live path's identity and the version of its last event: one later
        than the stream's last is that loss. Read after the stream, it may be
        newer (a capture appended meanwhile): the stream's end is read again
        before it is called damage.
        """
        last = self.recorder.stream_last(file_id)
        if last is None:
            return
        event = self._decode(last)
        if not isinstance(event, FileEvent):
            return
        path = event.new_path if isinstance(event, FileRenamed) else event.path
        with self.store.read() as txn:
            state = master_manifest(event.scenario).get(txn, path)
        if state is None or state.file_id != file_id or state.version <= last.originator_version:
            return
        again = self.recorder.stream_last(file_id)
        if again is not None and again.originator_version >= state.version:
            return
        raise FrameError(
            position=last.id,
            detail=f"the stream index of {file_id} ends at version {last.originator_version}, "
            f"but the master state of {path!r} holds version {state.version}: the entry of a "
            "later event is lost (xoengine journal verify tells which)",
        )

    def blob(self, blob_id: bytes) -> memoryview:
        """The verified bytes of a blob (a read-only view: no copy beyond LMDB's)."""
        self._check_open("read a blob")
        return self.blobs.view(blob_id)

    def last_position(self) -> int:
        """The journal's last position now (0: empty)."""
        self._check_open("read the journal")
        return self.recorder.max_notification_id() or 0

    def forensics(self, scenario: str | Scenario) -> Forensics:
        """Replay, history, diff and bisect for a scenario (by name: it may have been removed).

        A name the journal never held is refused (:class:`ScenarioNotFoundError`):
        a typo must not pass for a scenario that had no files.
        """
        name = scenario.name if isinstance(scenario, Scenario) else scenario
        self._check_open(f"read the history of scenario {name!r}")
        self._refresh()
        if name not in self._ever_named:
            raise ScenarioNotFoundError(name=name)
        return Forensics(self, name)

    def position_of(self, position: int | None = None, at: dt.datetime | None = None) -> int:
        """A position given as a position or a time (the last position labelled at or before it)."""
        self._check_open("resolve an instant")
        if at is not None:
            if not isinstance(at, dt.datetime):
                raise ConfigurationError(detail=f"a time is a datetime, not {at!r}")
            if at.utcoffset() is None:  # Python's "aware": a tzinfo that gives an offset
                raise ConfigurationError(detail="at= needs a timezone-aware datetime")
            return self.recorder.position_at(datetime_ns(at))
        top = self.last_position()
        if position is None:
            return top
        if not isinstance(position, int) or isinstance(position, bool):
            raise ConfigurationError(
                detail="an instant is a position (int), a time (aware datetime) "
                f"or a rewind point, not {position!r}"
            )
        if not 0 <= position <= top:
            raise ConfigurationError(detail=f"position {position} is outside 0..{top}")
        return position

    def check_output_place(self, path: str | os.PathLike[str], action: str) -> None:
        """Refuse (E2007) an output ``path`` inside the state directory or a scenario's tree.

        A replay's target, a scratch directory, a file written out: inside a
        master, the next capture would journal the rebuilt evidence as the
        master's own content; inside a replica, a synchronization removes it;
        inside the state directory, it lies beside the journal it came from.
        ``action`` says what was refused, as in "replay into".
        """
        if not _is_path(path):
            raise ConfigurationError(detail=f"cannot {action} {path!r}: not a path")
        there = _real(path)
        places = [("the state directory", _real(self.state_dir))]
        if self._journal_dir == self.state_dir and self.state_dir.name == "journal":
            # A state directory's journal/ opened as a bare journal: its state directory.
            places.append(("the state directory", _real(self.state_dir.parent)))
        for d in self._definitions.values():
            places += [(f"a master root of scenario {d.name}", root) for root in d.roots]
            places += [(f"replica {r!r} of scenario {d.name}", p) for r, p in d.replicas.items()]
        for what, place in places:
            if inside_dir(there, place):
                raise OutputLocationError(
                    action=action, path=os.fspath(path), detail=f"it is inside {what} ({place})"
                )
        unsafe = open_to_others(there)
        if unsafe is not None:
            raise OutputLocationError(
                action=action,
                path=os.fspath(path),
                detail=f"{unsafe}: a link put on the way while this writes would lead the "
                "writes elsewhere; write where only you (and root) may",
            )
        for above in (Path(there), *Path(there).parents):  # another journal's (a copy's)
            for journal in (above, above / "journal"):
                found = False
                with contextlib.suppress(XoError):  # one this user may not read: not seen
                    found = has_journal(journal)
                if found:
                    raise OutputLocationError(
                        action=action,
                        path=os.fspath(path),
                        detail=f"it is inside the directory of another journal ({journal})",
                    )

    def replay(
        self,
        scenario: str | Scenario,
        *,
        to: str | os.PathLike[str],
        position: int | None = None,
        at: dt.datetime | None = None,
        point: RewindPoint | str | None = None,
        path: str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> ReplayResult:
        """Rebuild a scenario's tree (or one file or subtree) as it was, from the journal alone.

        The instant is one of ``position``, ``at`` (a time) or ``point`` (a rewind
        point or its name); none of them: the end of the journal.
        ``progress(done, total)`` follows each entry written.
        """
        given = [value for value in (position, at, point) if value is not None]
        if len(given) > 1:
            raise ConfigurationError(detail="give at most one of position=, at= or point=")
        for name, value, kinds in (
            ("position", position, int),
            ("at", at, dt.datetime),
            ("point", point, RewindPoint | str),
        ):  # each keyword takes its own kind: point=17 is no point, position="17" no position
            if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
                raise ConfigurationError(detail=f"{name}= does not take {value!r}")
        instant = given[0] if given else None
        at_position = self.instant(scenario, instant)
        self.check_output_place(to, "replay into")
        to = os.fsdecode(os.fspath(to))
        return self.forensics(scenario).replay(to, at_position, path, progress)

    @contextlib.contextmanager
    def file_at(
        self,
        scenario: str | Scenario,
        path: str,
        at: Instant | None = None,
        *,
        scratch: str | os.PathLike[str] | None = None,
    ) -> Iterator[BinaryIO]:
        """The bytes a file held at an instant, as an open binary file: ``with eng.file_at(...)``.

        ``at`` is a position, a time or a rewind point (or its name); None is
        the end of the journal. The file is replayed from the journal alone into
        a temporary directory (under ``scratch``, default the system's), which
        is removed when the block ends. :class:`NoFileAtError` if the path held
        nothing, a directory or a symbolic link then.
        """
        position = self.instant(scenario, at)
        rel = normalize_relpath(path)
        if scratch is not None:
            self.check_output_place(scratch, "replay into the scratch directory")
            if not os.path.isdir(scratch):
                raise OutputLocationError(
                    action="replay into the scratch directory",
                    path=os.fspath(scratch),
                    detail="not an existing directory",
                )
        with tempfile.TemporaryDirectory(prefix="xoengine-file-at-", dir=scratch) as temporary:
            out = os.path.join(temporary, "tree")
            try:
                self.forensics(scenario).replay(out, position, rel)
            except NoFileAtError as e:  # a file's bytes were asked for: say it in those words
                raise NoFileAtError(path=rel, position=position, detail="nothing") from e
            what = fd = None
            try:  # from its parent: the scratch's path may take the whole past PATH_MAX
                with open_parent(out, rel) as (parent, leaf):
                    st = os.stat(leaf, dir_fd=parent, follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode):
                        what = "a directory"
                    elif stat.S_ISLNK(st.st_mode):
                        what = f"a symbolic link to {os.readlink(leaf, dir_fd=parent)!r}"
                    else:
                        if not st.st_mode & stat.S_IRUSR:  # chmod 200 then: our copy, read it
                            os.chmod(leaf, stat.S_IMODE(st.st_mode) | stat.S_IRUSR, dir_fd=parent)
                        fd = os.open(leaf, READ_FLAGS, dir_fd=parent)
            except FileNotFoundError:
                what = "nothing"
            if fd is None:
                raise NoFileAtError(path=rel, position=position, detail=what)
            with open(fd, "rb") as handle:
                yield handle

    def history(self, scenario: str | Scenario, path: str) -> list[HistoryEntry]:
        """Every change to a path: position, time, operation, byte ranges, sizes, renames."""
        return self.forensics(scenario).history(path)

    def held(self, scenario: str | Scenario, path: str, at: Instant | None = None) -> HeldSpan:
        """Since when, and until when, ``path`` held the bytes it held at an instant.

        The changes journaled for the path at or before the instant (``since``)
        and after it (``until``; None: unchanged to the journal's end), as
        :class:`HistoryEntry` items: what an investigator quotes beside the
        bytes :meth:`file_at` gives. :class:`NoFileAtError` if the path held
        nothing then.
        """
        return self.forensics(scenario).held(path, self.instant(scenario, at))

    def diff(
        self,
        scenario: str | Scenario,
        from_: Instant,
        to: Instant | None = None,
    ) -> DiffResult:
        """Paths added, removed, modified (with byte ranges) and renamed between two instants.

        Each instant is a position, a time, or a rewind point (or its name);
        ``to=None`` is the end of the journal. ``from_`` may be the later one:
        the result then says what leads back to ``to``.
        """
        return self.forensics(scenario).diff(
            self.instant(scenario, from_), self.instant(scenario, to)
        )

    def bisect(
        self,
        scenario: str | Scenario,
        predicate: Callable[[str], bool],
        *,
        path: str | None = None,
        between: tuple[Instant | None, Instant | None] | None = None,
        burst_threshold: int = 10,
        burst_window: float = BURST_WINDOW_S,
    ) -> BisectResult:
        """Find the last good position by binary search over replays (see ``Forensics.bisect``).

        ``predicate`` gets the replayed tree's root, or with ``path`` the
        replayed path itself (absent where the path held nothing then).

        ``between`` is (a good instant or None for position 0, the empty tree;
        a bad one or None for the end); by default the whole journal. A burst
        is ``burst_threshold`` files damaged within ``burst_window`` seconds.
        """
        if not callable(predicate):  # refused before any replay, not after the first
            raise ConfigurationError(detail=f"predicate is a callable, not {predicate!r}")
        if between is not None and (not isinstance(between, tuple | list) or len(between) != 2):
            raise ConfigurationError(detail=f"between is (good, bad), not {between!r}")
        low, high = between or (None, None)
        return self.forensics(scenario).bisect(
            predicate,
            None if path is None else normalize_relpath(path),
            (0 if low is None else self.instant(scenario, low), self.instant(scenario, high)),
            burst_threshold=burst_threshold,
            burst_window=burst_window,
        )

    def instant(self, scenario: str | Scenario, value: Instant | None) -> int:
        """The journal position of an instant: a position, a time, or a rewind point (or name).

        ``None`` is the end of the journal. A time resolves by the one rule of
        :meth:`position_of`; a rewind point name is looked up among the
        scenario's points (the newest of that name). A removed scenario's
        points count: the name resolves to the newest point of that name of
        any scenario that bore the scenario's name (so the one of the name now
        wins; an older one's point of the same name is reachable by position).
        """
        if isinstance(value, str):
            name = scenario.name if isinstance(scenario, Scenario) else scenario
            self._refresh()
            live = self._scenarios.get(name)
            with contextlib.suppress(ConfigurationError):  # not one of its points: older ones
                if live is not None:
                    return live.resolve(value)
            if name not in self._ever_named:
                raise ScenarioNotFoundError(name=name)
            found = self._removed_point(name, value)
            if found is None:
                raise ConfigurationError(detail=f"no rewind point named {value!r}")
            return found
        if isinstance(value, RewindPoint):  # checked as a position: it may be another journal's
            if value.position is None:  # not the end, as position_of reads None
                raise ConfigurationError(detail=f"rewind point {value.name!r} has no position")
            return self.position_of(value.position)
        if isinstance(value, dt.datetime):
            return self.position_of(at=value)
        return self.position_of(value)

    def rewind_points(self, scenario: str | Scenario) -> list[RewindPoint]:
        """The rewind points of a scenario, a removed one's too (read from the journal).

        A live scenario's are its :meth:`Scenario.rewind_points`. For a name
        only removed scenarios bore, every point they set, oldest first (their
        names still resolve in replay, cat, diff and bisect).
        """
        name = scenario.name if isinstance(scenario, Scenario) else scenario
        self._check_open(f"list the rewind points of scenario {name!r}")
        self._refresh()
        live = self._scenarios.get(name)
        if live is not None:
            return live.rewind_points()
        if name not in self._ever_named:
            raise ScenarioNotFoundError(name=name)
        return [
            RewindPoint(
                name=event.name,
                position=event.position,
                time_ns=self.recorder.time_of(event.position) if event.position else 0,
                kind=event.kind,
            )
            for event in self._point_events(name)
        ]

    def _point_events(self, scenario: str) -> Iterator[RewindPointSet]:
        """The points set by every scenario that bore the name ``scenario``, oldest first."""
        for _, _, event in self._named_events(scenario, _POINT_TOPICS, None):
            if isinstance(event, RewindPointSet):
                yield event

    def _removed_point(self, scenario: str, name: str) -> int | None:
        """The position of the newest point ``name`` of a removed scenario called ``scenario``."""
        found: int | None = None
        for event in self._point_events(scenario):
            if event.name == name:
                found = event.position
        return found

    def close(self) -> None:
        """Stop every scenario's threads and close the journal.

        A live watcher's last pass that failed (its changes not journaled) is
        raised once the journal is closed.
        """
        if self._closed:
            return
        failed: BaseException | None = None  # a live watcher's last pass: raised once closed
        interrupted = False
        for scenario in self._scenarios.values():
            try:
                scenario._stop_threads(drain=not interrupted)
            except Exception as e:  # noqa: BLE001 (every scenario stops first)
                failed = failed or e
            except BaseException as e:  # noqa: BLE001 (Ctrl-C: the others stop, undrained)
                failed, interrupted = e, True
            finally:
                scenario._release_replicas()
                scenario.capture_engine.release_buffers()  # a handle kept holds no 16 MiB
        self._closed = True
        self.store.release_writer(self)
        try:
            # A clean close leaves no stream entries to rebuild at the next open.
            # If it cannot write (a full disk), the next open rebuilds them: no loss.
            with contextlib.suppress(XoError):
                self.recorder.merge_stream_tail()
        finally:
            self.app.close()
        if failed is not None:
            raise failed

    def __enter__(self) -> Self:
        """Use as a context manager."""
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        """Close; when the block raised, its error wins over a watcher's (see :meth:`close`)."""
        if kind is None:
            self.close()
            return
        with contextlib.suppress(Exception):
            self.close()  # closed all the same: it raises only at its end

    def _check_open(self, action: str = "use it") -> None:
        """Refuse to ``action`` on a closed engine (one coded error for every call)."""
        if self._closed:
            raise ScenarioStateError(
                f"The engine on {os.fspath(self.state_dir)!r} is closed: cannot {action}.",
                name="*",
                state="closed",
                action=action,
            )

    # -- journal plumbing -------------------------------------------------------------------

    def _append(
        self,
        events: Sequence[DomainEvent],
        inline: Callable[[WriteTxn, list[int]], None] | None = None,
    ) -> list[int]:
        kwargs: dict[str, Any] = {} if inline is None else {"inline": inline}
        recordings = self.app.events.put(list(events), **kwargs)
        positions = [r.notification.id for r in recordings]
        for position, event in zip(positions, events, strict=True):
            if isinstance(event, SyncStarted | SyncFinished):
                self._note_sync(position, event)
        return positions

    def _note_sync(self, position: int, event: SyncStarted | SyncFinished) -> None:
        if isinstance(event, SyncStarted):
            self._sync_started[event.originator_id] = position
            return
        started = self._sync_started.pop(event.originator_id, position)
        runs = self._sync_runs.setdefault((event.scenario, event.replica), [])
        runs.append((started, position))  # one list append: safe beside a reader

    def _finished_syncs(self, scenario: str, replica: str) -> list[tuple[int, int]]:
        """``(SyncStarted, SyncFinished)`` positions of a replica's finished runs, in order."""
        return list(self._sync_runs.get((scenario, replica), ()))

    def _decode(self, notification: Any) -> Any:
        """The domain event of a record; one that does not decode is damage (E4010).

        Its frame verified, a record may still hold a state that is not its
        topic's (a writer's bug, a tool's edit): not a msgpack map, a topic
        that names no class, a field missing.
        """
        try:
            event = self.app.mapper.to_domain_event(notification)
        except Exception as e:  # whatever the mapper met: the record's fault
            raise FrameError(
                position=notification.id,
                detail=f"its state does not decode as a {notification.topic!r} event "
                f"({type(e).__name__}: {e})",
            ) from e
        held = getattr(event, "__dict__", None)
        if held is not None and len(held) < len(names := _field_names(type(event))):
            missing = [name for name in names if name not in held]
            if missing:
                raise FrameError(
                    position=notification.id,
                    detail=f"its {notification.topic!r} event lacks {', '.join(missing)}",
                )
        return event

    def _read_file_events(self, after: int, limit: int) -> list[tuple[int, Applied | None]]:
        notes = self.recorder.select_notifications(after + 1, limit)
        out: list[tuple[int, Applied | None]] = []
        for note in notes:
            event = self._decode(note) if note.topic in APPLIED_TOPICS else None
            out.append((note.id, event))
        return out

    def _iter_events(
        self,
        classes: tuple[type, ...],
        after: int = 0,
        upto: int | None = None,
        *,
        complete: bool = False,
    ) -> Iterator[tuple[int, Any]]:
        """``(position, event)`` of the events of ``classes`` in ``(after, upto]``.

        ``complete``: first check that the topic index names every position of
        the range (a lost entry would leave its event out unsaid); it reads the
        whole index, so only the open asks for it.
        """
        topics = [get_topic(c) for c in classes]
        if complete:
            for record in self.recorder.records(after + 1, stop=upto, topics=topics, complete=True):
                yield record.id, self._decode(record)
            return
        start = after + 1
        while True:
            notes = self.recorder.select_notifications(start, 1000, stop=upto, topics=topics)
            for note in notes:
                yield note.id, self._decode(note)
            if len(notes) < 1000:
                return
            start = notes[-1].id + 1

    def _iter_file_events(
        self, after: int, scenario: str | None, upto: int | None = None
    ) -> Iterator[tuple[int, FileEvent]]:
        """File events after ``after`` (up to ``upto``), of one scenario or (None) of all."""
        for position, event in self._iter_events(FILE_EVENTS, after, upto):
            if scenario is None or event.scenario == scenario:
                yield position, event

    def _fold(self, after: int, upto: int) -> tuple[set[str], set[str]]:
        """Fold the scenario and synchronization events in ``(after, upto]`` into the definitions.

        Returns the names of the scenarios created there and of those whose
        options or replicas changed.
        """
        topics = (*(_topic_class(t) for t in SCENARIO_TOPICS), SyncStarted, SyncFinished)
        created: set[str] = set()
        rewired: set[str] = set()
        # At the open, the whole journal: a lost index entry of a scenario event would
        # make a scenario, a replica or a point silently not there (E4010 instead).
        for position, event in self._iter_events(topics, after, upto, complete=after == 0):
            if isinstance(event, SyncStarted | SyncFinished):
                self._note_sync(position, event)
            elif isinstance(event, ScenarioCreated):
                self._ever_named.add(event.name)
                self._definitions[event.name] = _Definition(
                    id=event.originator_id,
                    version=event.originator_version,
                    name=event.name,
                    kind=event.kind,
                    roots=list(event.roots),
                    replicas={},
                    options=dict(event.options),
                    created=position,
                )
                self._by_id = None
                created.add(event.name)
            else:
                for definition in self._definitions.values():
                    if definition.id == event.originator_id:
                        definition.apply(event)
                        if isinstance(event, ScenarioUpdated | ReplicaAdded | ReplicaRemoved):
                            rewired.add(definition.name)
        return created, rewired - created

    def _refresh(self) -> None:
        """Take in what a writer beside this read-only engine journaled since it looked.

        Scenarios created, removed or changed, rewind points, suspensions,
        rewinds, synchronization runs: the scenario events after the last
        position folded (the writer folds its own as it appends them). Handles
        given out before stay valid and see the changes.
        """
        if not self.readonly or self._closed:
            return
        with self._lock:
            end = self.recorder.max_notification_id() or 0
            if end <= self._folded:
                return
            self._admit(*self._fold(self._folded, end))
            self._folded = end

    def _admit(self, created: set[str], rewired: set[str]) -> list[_Definition]:
        """Handles for the scenarios just folded; the removed ones dropped (and returned).

        ``created``: given a handle; ``rewired``: their handles take the new
        options or replicas (handles given out before stay valid).
        """
        for name in sorted(created | rewired):
            definition = self._definitions[name]
            if definition.removed:
                continue
            if name in created:
                self._scenarios[name] = Scenario(self, definition)
            else:
                self._scenarios[name]._wire()
        removed = [d for d in self._definitions.values() if d.removed]
        for definition in removed:
            del self._definitions[definition.name]
            self._scenarios.pop(definition.name, None)
        return removed

    def _load(self) -> None:
        self._folded = self.recorder.max_notification_id() or 0
        created, _ = self._fold(0, self._folded)
        # Replication threads do not survive a restart: a scenario that was running
        # resumes when the caller starts it again.
        removed = self._admit(created, set())
        if not self.readonly:
            for scenario in self._scenarios.values():
                scenario._complete_rewinds()
            self._forget_removed(removed)

    def _replica_states(self) -> dict[str, tuple[str, str]]:
        """The state name of every live scenario's replica -> (scenario, replica).

        Names may hold dots: scenario "a" with replica "b.c" and scenario "a.b"
        with replica "c" would keep their replicas' state in the same tables.
        """
        return {
            replica_state_name(d.name, replica): (d.name, replica)
            for d in self._definitions.values()
            for replica in d.replicas
        }

    def _forget_removed(self, removed: list[_Definition]) -> None:
        """Empty what removed scenarios' replicas left (a removal killed before it did)."""
        live = self._replica_states()
        for definition in removed:
            for replica in definition.replicas:
                tables = replica_tables(self.store, definition.name, replica)
                with self.store.read() as txn:
                    left = any(txn.count(t) for t in tables)
                if left and replica_state_name(definition.name, replica) not in live:
                    forget_replica(self.store, definition.name, replica)

    def _scenario_event(
        self,
        definition: _Definition,
        cls: type[ScenarioEvent],
        inline: Callable[[WriteTxn, list[int]], None] | None = None,
        **fields: Any,
    ) -> None:
        """Journal a scenario event; ``inline(txn, positions)`` runs in its transaction."""
        self._scenario_events_at_once(definition, [(cls, fields)], inline)

    def _scenario_events_at_once(
        self,
        definition: _Definition,
        made: Sequence[tuple[type[ScenarioEvent], dict[str, Any]]],
        inline: Callable[[WriteTxn, list[int]], None] | None = None,
    ) -> None:
        """Journal several scenario events in one commit: all of them, or none."""
        with self._lock:
            events = [
                cls(
                    originator_id=definition.id,
                    originator_version=definition.version + 1 + number,
                    timestamp=cls.create_timestamp(),
                    **fields,
                )
                for number, (cls, fields) in enumerate(made)
            ]
            self._append(events, inline)
            for event in events:
                definition.apply(event)

    # -- scenarios ----------------------------------------------------------------------------

    def create_scenario(
        self,
        name: str,
        *,
        kind: str = "file_server",
        master: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        replicas: dict[str, str | os.PathLike[str]],
        **options: Any,
    ) -> Scenario:
        """Define a scenario; nothing is half-created if the definition is refused.

        Options: ``include``/``exclude`` (glob patterns, see ``walk.PathFilter``),
        ``block_size`` (default 4096), ``spool_limit`` (bytes of backlog that put
        the scenario in Problem state and raise an alert), ``watch_delay``
        (seconds, default 1), ``databases`` (patterns of database files, for
        ``kind="database"``), ``groups`` (name -> paths, for ``storage_group``).
        """
        self._check_open(f"create scenario {name!r}")
        with self._lock:
            roots, replica_paths = self._validate(name, kind, master, replicas, options)
            scenario_id = new_id()
            created = ScenarioCreated(
                originator_id=scenario_id,
                originator_version=1,
                timestamp=ScenarioCreated.create_timestamp(),
                name=name,
                kind=kind,
                roots=roots,
                replicas={},
                options=dict(options),
            )
            added = [
                ReplicaAdded(
                    originator_id=scenario_id,
                    originator_version=2 + i,
                    timestamp=ReplicaAdded.create_timestamp(),
                    replica=r,
                    path=p,
                )
                for i, (r, p) in enumerate(sorted(replica_paths.items()))
            ]
            for replica, path in replica_paths.items():
                try:
                    Path(path).mkdir(parents=True, exist_ok=True)
                except OSError as e:
                    raise ScenarioError(
                        name=name, detail=f"replica {replica!r} at {path}: {e.strerror}"
                    ) from e
            for replica in replica_paths:  # what a removed scenario may have left: start afresh
                forget_replica(self.store, name, replica)
            first, *_ = self._append([created, *added])
            definition = _Definition(
                scenario_id, 1, name, kind, roots, {}, dict(options), created=first
            )
            for event in added:
                definition.apply(event)
            self._definitions[name] = definition
            self._ever_named.add(name)
            scenario = Scenario(self, definition)
            self._scenarios[name] = scenario
            return scenario

    def _validate(
        self, name: str, kind: str, master: Any, replicas: dict[str, Any], options: dict[str, Any]
    ) -> tuple[list[str], dict[str, str]]:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ScenarioError(name=name, detail="names are 1-64 letters, digits, '_', '.', '-'")
        if name in self._definitions:
            raise ScenarioExistsError(name=name)
        if kind not in KINDS:
            raise ScenarioError(name=name, detail=f"kind {kind!r} is not one of {KINDS}")
        masters = [master] if _is_path(master) else master
        if not isinstance(masters, list | tuple) or not masters:
            raise ScenarioError(name=name, detail="master is a directory, or a list of them")
        roots = []
        for root in masters:
            if not _is_path(root):
                raise ScenarioError(name=name, detail=f"master root {root!r} is not a path")
            real = _real(root)
            if not os.path.isdir(real):
                raise TreeRootMissingError(root=real, detail="not an existing directory")
            roots.append(real)
        try:
            Layout(tuple(roots))
        except ConfigurationError as e:
            raise ScenarioError(name=name, detail=e.message) from None
        if not isinstance(replicas, dict):
            raise ScenarioError(name=name, detail="replicas maps each replica's name to its path")
        if not replicas:
            raise ScenarioError(name=name, detail="at least one replica is needed")
        replica_paths: dict[str, str] = {}
        for replica, path in replicas.items():
            if not isinstance(replica, str) or not _NAME.match(replica):
                raise ScenarioError(name=name, detail=f"replica name {replica!r} is not valid")
            if not _is_path(path):
                raise ScenarioError(
                    name=name, detail=f"replica {replica!r}: {path!r} is not a path"
                )
            replica_paths[replica] = _real(path)
        taken = self._replica_states()
        for replica in replica_paths:
            clash = taken.get(replica_state_name(name, replica))
            if clash is not None:
                raise ScenarioError(
                    name=name,
                    detail=f"replica {replica!r} would share its state tables with replica "
                    f"{clash[1]!r} of scenario {clash[0]!r}; choose other names",
                )
        # Overlaps: within this scenario and against every other scenario.
        trees = [("master", r) for r in roots] + [("replica", p) for p in replica_paths.values()]
        for other in self._definitions.values():
            trees += [("master", r) for r in other.roots] + [
                ("replica", p) for p in other.replicas.values()
            ]
        mine = len(roots) + len(replica_paths)
        # The state directory too: a synchronization would delete the journal from a
        # replica holding it, and a master holding it would journal the journal.
        trees.append(("state directory", _real(self.state_dir)))
        for i, (kind_a, a) in enumerate(trees[:mine]):
            for j, (kind_b, b) in enumerate(trees):
                if i == j:
                    continue
                if inside_dir(a, b) or inside_dir(b, a):
                    raise OverlappingTreesError(
                        name=name, first=f"{kind_a} {a}", second=f"{kind_b} {b}"
                    )
        if "block_size" in options:
            size = options["block_size"]
            if not isinstance(size, int) or not 512 <= size <= blocks.MAX_BLOCK_SIZE:
                raise ScenarioError(
                    name=name, detail="block_size must be an int from 512 bytes to 4 MiB"
                )
        if kind == "storage_group" and not options.get("groups"):
            raise ScenarioError(
                name=name, detail="a storage_group scenario needs groups={name: [paths]}"
            )
        for key in ("include", "exclude", "databases"):
            value = options.get(key, ())
            if not isinstance(value, list | tuple) or not all(
                isinstance(p, str) and p for p in value
            ):
                raise ScenarioError(name=name, detail=f"{key} must be a list of glob patterns")
        groups = options.get("groups", {})
        if not isinstance(groups, dict) or not all(
            isinstance(group, str)
            and group
            and isinstance(paths, list | tuple)
            and all(isinstance(p, str) and p for p in paths)
            for group, paths in groups.items()
        ):
            raise ScenarioError(
                name=name, detail="groups must map each group's name to a list of its paths"
            )
        unknown = sorted(set(options) - _KNOWN_OPTIONS)
        if unknown:
            raise ScenarioError(
                name=name,
                detail=f"unknown option(s) {', '.join(unknown)}; "
                f"known: {', '.join(sorted(_KNOWN_OPTIONS))}",
            )
        for key in _NUMERIC_OPTIONS:
            value = options.get(key)
            count = key in _COUNT_OPTIONS
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int if count else int | float)
                or not 0 <= value < math.inf  # NaN too: it compares false
            ):
                whole = ", a whole one" if count else ""
                raise ScenarioError(name=name, detail=f"{key} must be a finite number >= 0{whole}")
        return roots, replica_paths

    def scenarios(self) -> list[Scenario]:
        """Every scenario, by name."""
        self._check_open("list scenarios")
        self._refresh()
        return [self._scenarios[n] for n in sorted(self._scenarios)]

    def scenario(self, name: str) -> Scenario:
        """The scenario called ``name``."""
        self._check_open(f"open scenario {name!r}")
        self._refresh()
        try:
            return self._scenarios[name]
        except KeyError:
            raise ScenarioNotFoundError(name=name) from None

    def update_scenario(self, name: str, **options: Any) -> Scenario:
        """Change options of a scenario (stopped only, so nothing runs on old settings).

        The scenario's handle is updated in place (and returned): a handle kept
        from before works on the new options.
        """
        scenario = self.scenario(name)
        definition = scenario._def
        if definition.running:
            raise ScenarioStateError(name=name, state="running", action="update it (stop it first)")
        merged = {**definition.options, **options}
        others = {n: d for n, d in self._definitions.items() if n != name}
        saved, self._definitions = self._definitions, others
        try:
            self._validate(name, definition.kind, definition.roots, definition.replicas, merged)
        finally:
            self._definitions = saved
        with scenario._capture_lock:  # no capture runs on half-rewired options
            self._scenario_event(definition, ScenarioUpdated, options=dict(options))
            scenario._wire()
        return scenario

    def remove_scenario(self, name: str) -> None:
        """Remove a scenario (its history stays in the journal; replica files stay on disk).

        What its replicas' appliers kept goes: their tracking positions and
        undo logs (with the before-images only those held), so they can no
        longer be rewound. Forensics answer from the journal as before. A
        handle of it kept by the caller refuses every use from then on.
        """
        scenario = self.scenario(name)
        with contextlib.suppress(Exception):  # its watcher's last pass: the scenario goes
            scenario._stop_threads(drain=False)  # its replicas are left as they are
        with scenario._capture_lock:  # after a capture under way; none journals after it
            self._scenario_event(scenario._def, ScenarioRemoved)
            scenario.capture_engine.removed = True
        scenario._release_replicas()  # another engine's scenario may take them now
        del self._scenarios[name]
        del self._definitions[name]
        shared = self._replica_states()  # directories from before the check may share them
        for replica in scenario._def.replicas:
            if replica_state_name(name, replica) not in shared:
                forget_replica(self.store, name, replica)


def _topic_class(topic: str) -> type:
    import xoengine.events as events_module  # noqa: PLC0415

    cls: type = getattr(events_module, topic.rpartition(":")[2])
    return cls


_ = (ClassVar,)
