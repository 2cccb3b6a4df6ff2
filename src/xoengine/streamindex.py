"""The stream index's unmerged part: entries above the merge marker, held in memory.

Room: record. May import ``codec`` and ``record`` (the journal's recorders
use it; the layout and rules are in docs/journal-format.md, "Stream index and
merge marker").
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Final

from xoengine import codec
from xoengine.record import decode_event, decode_position, encode_position, oid_prefix

if TYPE_CHECKING:
    from collections.abc import Iterator

    from xoengine.datastore import ReadTxn

__all__ = ["MARKER_KEY", "MERGE_AT", "StreamTail", "frame_marker"]

MERGE_AT: Final = 16384
"""Unmerged events after which the writer merges their stream entries into the sorted index."""
MARKER_KEY: Final = b"upto"


class StreamTail:
    """Stream-index entries of the events above the merge marker, held in memory.

    With random originator ids (uuid4, eventsourcing's default) every put into
    the sorted stream index lands on its own B-tree page: at batch 100 that
    was two thirds of a commit's pages. So an append only appends the event;
    its ``(originator, version) -> position`` entry lives here, and every
    :data:`MERGE_AT` events the writer puts them all into the sorted index in
    key order (a few pages per hundred entries) and moves the marker
    (``P.events.indexed``), in one transaction. What is above the marker is
    found by scanning the events table, so this is only ever a cache of
    committed records: another process, or a reopened journal, builds its own.

    Only committed snapshots change it (read transactions and the writer's
    on-commit callback); a write transaction takes a private view (its own
    uncommitted events, an uncommitted merge) and never changes it.
    """

    def __init__(self, events_table: str) -> None:
        self._events_table = events_table
        self._lock = threading.Lock()
        self._base = -1  # the marker these entries are above (-1: not built)
        self._upto = 0  # the last position they cover
        self._entries: dict[bytes, dict[int, int]] = {}  # oid prefix -> version -> position

    def _scan(self, txn: ReadTxn, after: int, last: int) -> Iterator[tuple[bytes, int, int]]:
        """(oid prefix, version, position) of the events in (after, last], checksums verified."""
        if last <= after:
            return
        for key, value in txn.items(self._events_table, encode_position(after + 1)):
            position = decode_position(key)
            if position > last:
                return
            event, _ = decode_event(key, value, self._events_table)
            yield oid_prefix(event.originator_id), event.originator_version, position

    def _add(self, prefix: bytes, version: int, position: int) -> None:
        self._entries.setdefault(prefix, {})[version] = position

    def _follow(self, txn: ReadTxn, marker: int, last: int) -> bool:
        """Bring the shared entries to a committed snapshot; False if it is older than them."""
        if marker < self._base:
            return False  # a merge committed since this snapshot began
        if marker > self._base:
            self._advance(marker)
        if self._upto < last:
            for prefix, version, position in self._scan(txn, self._upto, last):
                self._add(prefix, version, position)
            self._upto = last
        return True

    def _advance(self, marker: int) -> None:
        """Forget the entries at or below ``marker``: a merge put them in the sorted index."""
        if self._base < 0 or self._upto <= marker:
            self._entries, self._upto = {}, marker
        else:
            for versions in self._entries.values():
                for version in [v for v, p in versions.items() if p <= marker]:
                    del versions[version]
            self._entries = {k: v for k, v in self._entries.items() if v}
        self._base = marker

    @property
    def built(self) -> bool:
        """Whether the shared entries were built (else a write would scan all above the marker)."""
        return self._base >= 0

    def follow(self, txn: ReadTxn, marker: int, last: int) -> None:
        """Bring the shared entries up to the committed snapshot ``txn``."""
        with self._lock:
            self._follow(txn, marker, last)

    def read(self, txn: ReadTxn, marker: int, last: int, prefix: bytes) -> dict[int, int]:
        """``version -> position`` of one stream above ``marker`` in a committed snapshot."""
        with self._lock:
            if self._follow(txn, marker, last):
                return {v: p for v, p in self._entries.get(prefix, {}).items() if p <= last}
        return {v: p for k, v, p in self._scan(txn, marker, last) if k == prefix}

    def _private(self, txn: ReadTxn, marker: int, last: int) -> tuple[int, list[Any]]:
        """What a write transaction sees beyond the shared entries: (their end, a scan)."""
        upto = max(self._upto, marker) if marker >= self._base >= 0 else marker
        return upto, list(self._scan(txn, upto, last)) if upto < last else []

    def recorded(
        self, txn: ReadTxn, marker: int, last: int, wanted: list[tuple[bytes, int]]
    ) -> tuple[bytes, int] | None:
        """The first of ``wanted`` (prefix, version) already above ``marker``, or None."""
        with self._lock:
            upto, scanned = self._private(txn, marker, last)
            shared = upto > marker
            for prefix, version in wanted:
                position = self._entries.get(prefix, {}).get(version) if shared else None
                if position is not None and marker < position <= upto:
                    return prefix, version
        extra = {(prefix, version) for prefix, version, _ in scanned}
        return next((w for w in wanted if w in extra), None)

    def everything(self, txn: ReadTxn, marker: int, last: int) -> list[tuple[bytes, int, int]]:
        """Every (prefix, version, position) above ``marker`` up to ``last`` (for a merge)."""
        with self._lock:
            upto, scanned = self._private(txn, marker, last)
            shared = [
                (prefix, version, position)
                for prefix, versions in self._entries.items()
                for version, position in versions.items()
                if marker < position <= upto
            ]
        return shared + scanned

    def appended(self, added: list[tuple[bytes, int, int]], first: int, last: int) -> None:
        """The writer's callback: its batch ``first..last`` committed (ignored on a gap)."""
        with self._lock:
            if self._base >= 0 and self._upto == first - 1:
                for prefix, version, position in added:
                    self._add(prefix, version, position)
                self._upto = last

    def merged(self, marker: int) -> None:
        """The writer's callback: every entry up to ``marker`` is in the sorted index now."""
        with self._lock:
            if marker > self._base:
                self._advance(marker)


def frame_marker(position: int) -> bytes:
    """The frame of a merge marker at ``position``."""
    return codec.frame(MARKER_KEY, encode_position(position))
