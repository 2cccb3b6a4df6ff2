"""The ledger: running totals of each scenario's applied events by journal position (R31, R35).

And :func:`sync_runs`, the fold of synchronization events behind the
synchronization report (R35) and the rewind rule for targets inside a run.

Room: producers and projections. May import ``events``, ``codec`` and
``datastore`` (nothing that reads the journal or a tree: the engine feeds it).

Statistics, the spool check and the replication report all ask "how many
events and bytes of this scenario lie between position *a* and position
*b*?", over and over while the journal grows (the spool check runs after
every append). Scanning the journal for each answer made a long suspension
quadratic. The ledger decodes each file event once and keeps each
scenario's running totals by position: a question is two lookups.

The totals are a projection kept in the state directory (table
:data:`LEDGER_TABLE`), written by the questions themselves every
:data:`FLUSH_EVENTS` events they read: so each event is decoded once for the
life of the state directory, not once per process, and memory holds only the
events read since the last write. An engine opened read-only answers from the
table and reads the rest of the journal into memory.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from xoengine import codec
from xoengine.errors import XoError
from xoengine.events import (
    BytesWritten,
    ContentReplaced,
    FileCreated,
    FileDeleted,
    FileEvent,
    FileRenamed,
    FileSynced,
    RootChanged,
    SyncFinished,
    SyncStarted,
    event_bytes,
)

if TYPE_CHECKING:
    import uuid
    from collections.abc import Callable, Iterable
    from typing import Any

    from xoengine.datastore import Store, WriteTxn

__all__ = [
    "FLUSH_EVENTS",
    "LEDGER_TABLE",
    "OPERATIONS",
    "SYNC_EVENTS",
    "Ledger",
    "Span",
    "operation",
    "sync_runs",
]

OPERATIONS: Final = ("created", "written", "updated", "deleted", "renamed")
LEDGER_TABLE: Final = "ledger"
"""Key: ``len(name)`` (1 byte) ‖ scenario name (UTF-8) ‖ position (8 bytes BE); value: frame
of ``[events, bytes, *OPERATIONS counts]``, the scenario's totals up to and including that
position (an applied event of it). Key ``0x00``: frame of the position read up to."""
FLUSH_EVENTS: Final = 8192
"""Events read into memory before they are written to the table (a writable engine)."""
_READ_UPTO: Final = b"\x00"  # no scenario's key starts with it: names are 1-64 bytes
# (first, not last: a scenario's new totals then go at the end of the table, where
# LMDB fills pages whole instead of splitting them in half: half the room)
_FIELDS: Final = ("events", "bytes", *OPERATIONS)


def operation(event: FileEvent | RootChanged) -> str:
    """What an event did, as the replication report counts it (one of :data:`OPERATIONS`).

    A root's own change is ``root``: an event of the backlog, not a file
    operation (the first of each root is journaled when a capture first sees it).
    """
    if isinstance(event, RootChanged):
        return "root"
    if isinstance(event, FileCreated):
        return "created"
    if isinstance(event, FileDeleted):
        return "deleted"
    if isinstance(event, FileRenamed):
        return "renamed"
    if isinstance(event, (BytesWritten, ContentReplaced)) and event.originator_version == 2:
        # A file's stream starts with FileCreated and its first content: that is the
        # creation, already counted, not an update.
        return "written"
    return "updated"


@dataclass(frozen=True)
class Span:
    """What one scenario journaled in a range of positions."""

    events: int
    bytes: int
    first: int | None
    """Position of the first event in the range (None if it holds none)."""
    counts: dict[str, int]
    """Events per operation (:data:`OPERATIONS`)."""


def _key(scenario: str, position: int) -> bytes:
    name = scenario.encode()
    return bytes([len(name)]) + name + position.to_bytes(8, "big")


class _Series:
    """One scenario's events read since the table's last write, with running totals.

    ``base``: the scenario's totals before them (:data:`_FIELDS` order);
    ``totals[i]``: the totals up to and including ``positions[i]``.
    """

    def __init__(self, base: list[int]) -> None:
        self.base = base
        self.last = list(base)  # the totals up to the last event read
        self.positions = array("q")
        self.totals = [array("q") for _ in _FIELDS]

    def add(self, position: int, event: FileEvent | RootChanged) -> None:
        op = operation(event)
        last = self.last
        last[0] += 1
        last[1] += event_bytes(event)
        if op in OPERATIONS:  # a root's own change counts as an event of no operation
            last[2 + OPERATIONS.index(op)] += 1
        self.positions.append(position)
        for column, total in zip(self.totals, last, strict=True):
            column.append(total)

    def at(self, position: int) -> list[int]:
        """The totals up to and including ``position``."""
        k = bisect.bisect_right(self.positions, position)
        return self.base if k == 0 else [column[k - 1] for column in self.totals]

    def first_after(self, position: int) -> int | None:
        k = bisect.bisect_right(self.positions, position)
        return self.positions[k] if k < len(self.positions) else None

    def rows(self, scenario: str) -> Iterable[tuple[bytes, list[int]]]:
        for i, position in enumerate(self.positions):
            yield _key(scenario, position), [column[i] for column in self.totals]


class Ledger:
    """Running totals of every scenario's applied events, extended as the journal grows.

    ``source(after, upto)`` yields ``(position, event)`` for the events a
    replica applies (:data:`~xoengine.events.APPLIED_EVENTS`) in (``after``,
    ``upto``], in order; ``head()`` is the journal's last position. Before
    each answer the ledger reads what lies between the position it read up to
    and the head now. With ``store`` it keeps the totals in
    :data:`LEDGER_TABLE` (written only if ``writable``): it starts from there.
    """

    def __init__(
        self,
        source: Callable[[int, int], Iterable[tuple[int, FileEvent | RootChanged]]],
        head: Callable[[], int],
        store: Store | None = None,
        *,
        writable: bool = False,
    ) -> None:
        """Follow the events that ``source`` yields up to ``head()``."""
        self._source = source
        self._head = head
        self._store = store
        self._writable = store is not None and writable
        self._lock = threading.Lock()
        self._stored = 0  # the table holds every event up to here
        self._scanned = 0  # the events up to here are read (in the table or in _series)
        self._series: dict[str, _Series] = {}  # events after _stored
        self._pending = 0  # events in _series
        self._flush_at = FLUSH_EVENTS  # write when _pending reaches it
        if store is None:
            return
        if self._writable:
            store.ensure(LEDGER_TABLE)
        with store.read() as txn:
            value = txn.get(LEDGER_TABLE, _READ_UPTO)
            stored = 0 if value is None else int(codec.unpack(codec.unframe(_READ_UPTO, value)))
        if stored > head():
            # Totals of a longer journal than this one: not its own. Read again.
            if self._writable:
                store.write(lambda txn: txn.drop(LEDGER_TABLE))
            else:
                self._store = None
            stored = 0
        self._stored = self._scanned = stored

    def span(self, scenario: str, after: int, upto: int | None = None) -> Span:
        """Totals of ``scenario``'s events at positions in (``after``, ``upto``]."""
        with self._lock:
            head = self._head()
            if head > self._scanned:
                self._read(head)
            end = self._totals(scenario, head if upto is None else upto)
            start = self._totals(scenario, after)
            delta = [max(0, b - a) for a, b in zip(start, end, strict=True)]
            first = None
            if delta[0]:
                first = self._first_after(scenario, after)
            return Span(
                events=delta[0],
                bytes=delta[1],
                first=first,
                counts=dict(zip(OPERATIONS, delta[2:], strict=True)),
            )

    # -- reading the journal, writing the table ------------------------------------------------

    def _read(self, head: int) -> None:
        for position, event in self._source(self._scanned, head):
            series = self._series.get(event.scenario)
            if series is None:
                series = self._series[event.scenario] = _Series(
                    self._stored_totals(event.scenario, self._stored)
                )
            series.add(position, event)
            self._scanned = position
            self._pending += 1
            if self._writable and self._pending >= self._flush_at:
                self._flush(position)
        self._scanned = head

    def _flush(self, upto: int) -> None:
        """Write the events read (all at or below ``upto``) and forget them.

        A write that fails (a full disk, say) keeps them in memory, answers
        stay right, and the next try comes :data:`FLUSH_EVENTS` events later:
        the table only saves work.
        """
        series = self._series

        def work(txn: WriteTxn) -> None:
            for scenario, one in series.items():
                for key, totals in one.rows(scenario):
                    txn.put(LEDGER_TABLE, key, codec.frame(key, codec.pack(totals)))
            txn.put(LEDGER_TABLE, _READ_UPTO, codec.frame(_READ_UPTO, codec.pack(upto)))

        assert self._store is not None
        try:
            self._store.write(work)
        except XoError:
            self._flush_at = self._pending + FLUSH_EVENTS
            return
        self._series, self._pending, self._flush_at = {}, 0, FLUSH_EVENTS
        self._stored = upto

    # -- answering -----------------------------------------------------------------------------

    def _stored_totals(self, scenario: str, position: int) -> list[int]:
        """The table's totals of ``scenario`` up to ``position`` (zeros: none)."""
        if self._store is None or self._stored == 0:
            return [0] * len(_FIELDS)
        key = _key(scenario, position)
        with self._store.read() as txn:
            for found, value in txn.items(LEDGER_TABLE, key, reverse=True, prefix=key[:-8]):
                return list(codec.unpack(codec.unframe(found, value, where=LEDGER_TABLE)))
        return [0] * len(_FIELDS)

    def _totals(self, scenario: str, position: int) -> list[int]:
        if position < self._stored:
            return self._stored_totals(scenario, position)
        series = self._series.get(scenario)
        if series is None:
            return self._stored_totals(scenario, self._stored)
        return series.at(position)

    def _first_after(self, scenario: str, position: int) -> int | None:
        if position < self._stored and self._store is not None:
            key = _key(scenario, position + 1)
            with self._store.read() as txn:
                for found, _ in txn.items(LEDGER_TABLE, key, prefix=key[:-8]):
                    return int.from_bytes(found[-8:], "big")
        series = self._series.get(scenario)
        return None if series is None else series.first_after(position)


SYNC_EVENTS: Final = (SyncStarted, FileSynced, SyncFinished)
"""The events :func:`sync_runs` folds."""


def sync_runs(
    events: Iterable[tuple[int, SyncStarted | FileSynced | SyncFinished]],
    scenario: str,
    replica: str | None = None,
) -> list[dict[str, Any]]:
    """The finished synchronization runs of a scenario (one replica, or all), in order.

    Each run: replica, level, start and finish times, ``started_at`` and
    ``finished_at`` (the journal positions of its SyncStarted and
    SyncFinished), ``position`` (the master state the replica then holds),
    counts, bytes, warnings, and the files sent with paths and sizes.
    """
    runs: dict[uuid.UUID, dict[str, Any]] = {}
    for position, event in events:
        if event.scenario != scenario or (replica and event.replica != replica):
            continue
        run = runs.setdefault(event.originator_id, {"replica": event.replica, "files": []})
        if isinstance(event, SyncStarted):
            run.update(
                level=event.level,
                started=event.timestamp.isoformat(),
                position=event.position,
                started_at=position,
            )
        elif isinstance(event, FileSynced):
            run["files"].append(
                {
                    "path": event.path,
                    "action": event.action,
                    "size": event.size,
                    "bytes_sent": event.bytes_sent,
                }
            )
        else:
            run.update(
                finished=event.timestamp.isoformat(),
                finished_at=position,
                position=event.position,  # the master state the replica now holds
                files_checked=event.files_checked,
                files_changed=event.files_changed,
                files_deleted=event.files_deleted,
                bytes_sent=event.bytes_sent,
                warnings=event.warnings,
            )
    return [r for r in runs.values() if "finished" in r]
