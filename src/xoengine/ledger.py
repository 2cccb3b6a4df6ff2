"""The ledger: running totals of each scenario's applied events by journal position (R31, R35).

And :func:`sync_runs`, the fold of synchronization events behind the
synchronization report (R35) and the rewind rule for targets inside a run.

Room: producers and projections. May import ``events`` (nothing that touches
the journal or a tree: the engine feeds it).

Statistics, the spool check and the replication report all ask "how many
events and bytes of this scenario lie between position *a* and position
*b*?", over and over while the journal grows (the spool check runs after
every append). Scanning the journal for each answer made a long suspension
quadratic. The ledger decodes each file event once, keeps prefix sums per
scenario and answers with two bisects. It lives in memory and is rebuilt
from the journal by the first question after an engine opens.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

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

__all__ = ["OPERATIONS", "SYNC_EVENTS", "Ledger", "Span", "operation", "sync_runs"]

OPERATIONS: Final = ("created", "written", "updated", "deleted", "renamed")


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


class _Series:
    """One scenario's positions with prefix sums (index k: totals of the first k events)."""

    def __init__(self) -> None:
        self.positions = array("q")
        self.sums = {name: array("q", [0]) for name in ("bytes", *OPERATIONS)}

    def add(self, position: int, event: FileEvent | RootChanged) -> None:
        self.positions.append(position)
        op = operation(event)
        for name, sums in self.sums.items():
            step = event_bytes(event) if name == "bytes" else int(name == op)
            sums.append(sums[-1] + step)

    def span(self, after: int, upto: int | None) -> Span:
        lo = bisect.bisect_right(self.positions, after)
        hi = len(self.positions) if upto is None else bisect.bisect_right(self.positions, upto)
        hi = max(lo, hi)
        total = {name: sums[hi] - sums[lo] for name, sums in self.sums.items()}
        return Span(
            events=hi - lo,
            bytes=total.pop("bytes"),
            first=self.positions[lo] if hi > lo else None,
            counts=total,
        )


class Ledger:
    """Prefix sums of every scenario's applied events, extended as the journal grows.

    ``source(after, upto)`` yields ``(position, event)`` for the events a
    replica applies (:data:`~xoengine.events.APPLIED_EVENTS`) in (``after``,
    ``upto``], in order; ``head()`` is the journal's last position. Before
    each answer the ledger reads what lies between the head it saw last and
    the head now, so every record is read once per ledger.
    """

    def __init__(
        self,
        source: Callable[[int, int], Iterable[tuple[int, FileEvent | RootChanged]]],
        head: Callable[[], int],
    ) -> None:
        """Follow the events that ``source`` yields up to ``head()``."""
        self._source = source
        self._head = head
        self._lock = threading.Lock()
        self._scanned = 0
        self._series: dict[str, _Series] = {}

    def span(self, scenario: str, after: int, upto: int | None = None) -> Span:
        """Totals of ``scenario``'s events at positions in (``after``, ``upto``]."""
        with self._lock:
            head = self._head()
            if head > self._scanned:
                for position, event in self._source(self._scanned, head):
                    series = self._series.get(event.scenario)
                    if series is None:  # not setdefault: a _Series per event is not free
                        series = self._series[event.scenario] = _Series()
                    series.add(position, event)
                self._scanned = head
            series = self._series.get(scenario)
            if series is None:
                return Span(0, 0, None, dict.fromkeys(OPERATIONS, 0))
            return series.span(after, upto)


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
