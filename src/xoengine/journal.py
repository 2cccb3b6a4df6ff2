"""The journal: an LMDB persistence module for eventsourcing 9.5.

Room: record. May import ``errors``, ``codec``, ``datastore``, ``record``,
``blobtable``, ``streamindex`` and eventsourcing.

Select it for any eventsourcing application with::

    PERSISTENCE_MODULE=xoengine.journal
    LMDB_PATH=/var/lib/app/state          # required
    LMDB_MAP_SIZE=67108864                # optional initial map size; grows on demand
    LMDB_DURABILITY=sync                  # sync | metasync-off | nosync

plus the library's usual keys (``TRANSCODER_TOPIC``, ``COMPRESSOR_TOPIC``,
``CIPHER_TOPIC``/``CIPHER_KEY``, ``CREATE_TABLE``, per-application prefixes such
as ``MYAPP_LMDB_PATH``). Without ``TRANSCODER_TOPIC`` events are msgpack
(:class:`~xoengine.codec.MsgpackTranscoder`).

Layout (see docs/journal-format.md): per application prefix ``P`` the
sub-databases ``P.events`` (position -> frame), ``P.events.streams``
((originator, version) -> position), ``P.events.topics`` ((topic key, position),
for reads of some topics), ``P.snapshots`` and ``P.snapshots.streams``
for the snapshot store, ``P.tracking`` (upstream name -> last position), and
one shared ``blobs`` table (content id -> frame). Positions are gapless and in
commit order because they are assigned inside LMDB's single write transaction.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ListenNotifySubscription,
    Notification,
    ProcessRecorder,
    StoredEvent,
    Subscription,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.utils import resolve_topic, strtobool

from xoengine import codec
from xoengine.blobtable import BLOB_SUFFIX, BLOB_TABLE, BlobTable
from xoengine.codec import MsgpackTranscoder
from xoengine.datastore import (
    CATALOG_TABLE,
    DEFAULT_MAP_SIZE,
    Durability,
    ReadTxn,
    Store,
    WriteTxn,
    open_store,
)
from xoengine.errors import (
    ConfigurationError,
    FrameError,
    IntegrityViolationError,
)
from xoengine.record import (
    POS,
    VERSION_OFFSET,
    datetime_ns,
    decode_event,
    decode_event_of,
    decode_position,
    decode_topic,
    decode_topic_entry,
    encode_events,
    encode_position,
    encode_topic_entries,
    iso_time,
    oid_prefix,
    oid_prefixes,
    read_iso_time,
    stream_key,
    topic_key,
)
from xoengine.streamindex import MARKER_KEY, MERGE_AT, StreamEntries, StreamTail, frame_marker

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from eventsourcing.persistence import Transcoder
    from eventsourcing.utils import Environment, EnvType

__all__ = [
    "BLOB_TABLE",
    "BlobTable",
    "Factory",
    "JournalRecord",
    "LMDBAggregateRecorder",
    "LMDBApplicationRecorder",
    "LMDBFactory",
    "LMDBProcessRecorder",
    "LMDBSubscription",
    "LMDBTrackingRecorder",
    "MsgpackTranscoder",
    "datetime_ns",
    "decode_position",
    "encode_position",
    "iso_time",
    "read_iso_time",
]

META_TABLE: Final = "meta"
TOPICS_KEY: Final = b"topics"
"""The key, in ``P.events.indexed``, of the first position the topic index holds."""
TOPICS_CHUNK: Final = 50_000
"""Events indexed per transaction when :meth:`LMDBApplicationRecorder.index_topics` catches up."""
RECORDS_CHUNK: Final = 1024
"""How many records :meth:`LMDBApplicationRecorder.records` reads in one read transaction."""


@dataclass(frozen=True)
class JournalRecord(Notification):
    """A notification plus the journal's own commit time (UTC, ns, monotonic)."""

    time_ns: int = 0


class _Clock:
    """Monotonic UTC labels for one journal: a clock that goes back reorders nothing."""

    _clocks: ClassVar[dict[str, _Clock]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self) -> None:
        self.last = 0
        self.behind = 0  # how far the clock stood behind the last label when it was given
        self.seen: set[str] = set()  # tables whose last label has been taken as a floor

    @classmethod
    def of(cls, store: Store) -> _Clock:
        with cls._lock:
            return cls._clocks.setdefault(store.path, cls())

    def now(self, floor: int) -> int:
        wall = time.time_ns()
        t = max(wall, self.last, floor)
        self.last, self.behind = t, t - wall
        return t


def _decode_tracking(key: bytes, value: bytes, table: str) -> int:
    body = codec.unframe(key, value, where=table, position=key.decode(errors="replace"))
    return decode_position(bytes(body))


class _LMDBRecorder:
    """Shared plumbing: a store reference and table names under one prefix."""

    def __init__(self, datastore: Store, *, prefix: str = "default") -> None:
        self.datastore = datastore
        self.prefix = prefix

    def table(self, name: str) -> str:
        """Name of this recorder's sub-database ``name``."""
        return f"{self.prefix}.{name}"

    def create_table(self) -> None:
        """Create this recorder's sub-databases (no-op on a read-only journal)."""
        self.datastore.ensure(*self._tables())

    def _tables(self) -> tuple[str, ...]:
        return ()


class LMDBAggregateRecorder(_LMDBRecorder, AggregateRecorder):
    """Stores aggregate events: ``<prefix>.<purpose>`` keyed by position, plus a stream index."""

    def __init__(
        self,
        datastore: Store,
        *,
        prefix: str = "default",
        purpose: str = "events",
        merge_at: int = MERGE_AT,
    ) -> None:
        """Record into ``datastore`` under ``prefix`` (the application name) and ``purpose``.

        ``merge_at``: unmerged events after which their stream entries are put
        into the sorted index (1: at every append, as a plain B-tree index).
        """
        super().__init__(datastore, prefix=prefix)
        self.events_table = self.table(purpose)
        self.streams_table = self.events_table + ".streams"
        self.marker_table = self.events_table + ".indexed"
        self.merge_at = max(1, merge_at)
        self._tail = StreamTail(self.events_table)
        self._clock = _Clock.of(datastore)

    def _tables(self) -> tuple[str, ...]:
        return (self.events_table, self.streams_table, self.marker_table)

    def _bounds(self, txn: ReadTxn) -> tuple[int, int, bool]:
        """(merge marker, last position, whether the marker is stored) in ``txn``.

        A journal written before the marker existed has every event indexed:
        its marker is its last position.
        """
        # The marker first: a table opened after this read began renews its snapshot.
        marker = _read_marker(txn, self.marker_table, MARKER_KEY, "marker")
        last_record = txn.last(self.events_table)
        last = decode_position(last_record[0]) if last_record else 0
        if marker is None:
            return last, last, False
        return marker, last, True

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Append ``stored_events`` atomically; None (aggregate recorders report no ids).

        Keyword arguments: ``tracking`` (process recorders) and ``inline``, a
        function ``(txn, positions)`` run in the same transaction after the
        events are placed: an inline projection (e.g. the master state) that is
        exactly as current as the journal.
        """
        self._insert(stored_events, **kwargs)
        return None

    def _insert(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        tracking: Tracking | None = kwargs.get("tracking")
        inline: Callable[[WriteTxn, list[int]], None] | None = kwargs.get("inline")
        if not stored_events and tracking is None and inline is None:
            return []
        if stored_events and not self._tail.built:
            # Build the stream tail from the last commit once; after that this
            # recorder's own commits keep it current, and a write scans only what
            # others committed since (usually nothing).
            with self.datastore.read() as txn:
                self._tail.follow(txn, *self._bounds(txn)[:2])
        if tracking is None and inline is None:
            # Plain appends of several threads' group commit run as one batch.
            return self.datastore.write(
                lambda txn: self._write(txn, stored_events, None),
                together=(self._write_together, stored_events),
            )
        return self.datastore.write(lambda txn: self._write(txn, stored_events, tracking, inline))

    def _write_together(
        self, txn: WriteTxn, batches: list[Sequence[StoredEvent]]
    ) -> list[list[int]]:
        """Several callers' plain appends placed as one batch; each caller's positions."""
        placed = iter(self._write(txn, [event for batch in batches for event in batch], None))
        return [list(itertools.islice(placed, len(batch))) for batch in batches]

    def _write(
        self,
        txn: WriteTxn,
        stored_events: Sequence[StoredEvent],
        tracking: Tracking | None,
        inline: Callable[[WriteTxn, list[int]], None] | None = None,
    ) -> list[int]:
        # 1. Check everything before the first put: a refused batch writes nothing.
        prefixes = oid_prefixes(stored_events)
        versions = [e.originator_version for e in stored_events]
        keys = [p + POS.pack(v + VERSION_OFFSET) for p, v in zip(prefixes, versions, strict=True)]
        if len(set(keys)) != len(keys):
            raise IntegrityViolationError(detail="the batch repeats an (originator, version)")
        marker, top, stored = self._bounds(txn)
        # Merged entries are in the sorted index; newer ones in the stream tail.
        merged = txn.found(self.streams_table, keys)
        clash = next((i for i, k in enumerate(keys) if k in merged), None) if merged else None
        if clash is None and keys:
            clash = self._tail.recorded(txn, marker, top, keys)
        if clash is not None:
            event = stored_events[clash]
            detail = f"event {event.originator_id} v{event.originator_version} already recorded"
            raise IntegrityViolationError(detail=detail)
        if tracking is not None:
            self._check_tracking(txn, tracking)
        # 2. Positions follow the last one, inside the single write transaction.
        floor = 0
        if top and self.events_table not in self._clock.seen:
            # First append in this process: never label below what the journal holds
            # (a clock stepped back across a restart must not make labels go back).
            last = txn.last(self.events_table)
            assert last is not None
            floor = decode_event(last[0], last[1], self.events_table)[1]
            self._clock.seen.add(self.events_table)
        time_ns = self._clock.now(floor)
        placed = range(top + 1, top + 1 + len(stored_events))
        positions = list(placed)
        encoded = encode_events(top + 1, stored_events, prefixes, time_ns)
        txn.append_many(self.events_table, encoded)
        if stored_events:
            self._placed(txn, top + 1, stored_events)
            pkeys = [pkey for pkey, _ in encoded]
            # The tail keeps the range: the list goes back to the caller, who may change it.
            batch = StreamEntries(keys, pkeys, prefixes, versions, placed)
            self._index(txn, marker, top, stored, batch)
        if tracking is not None:
            self._put_tracking(txn, tracking)
        if inline is not None:
            inline(txn, positions)
        return positions

    def _placed(self, txn: WriteTxn, first: int, stored_events: Sequence[StoredEvent]) -> None:
        """Hook: index ``stored_events``, placed from position ``first``, in the same write."""

    def _index(
        self,
        txn: WriteTxn,
        marker: int,
        top: int,
        stored: bool,
        batch: StreamEntries,
    ) -> None:
        """The batch's stream entries: kept in the tail, or merged with it into the index."""
        last = batch.positions[-1]
        if last - marker < self.merge_at:
            if not stored:  # first append since the marker exists: all below is indexed
                txn.put(self.marker_table, MARKER_KEY, frame_marker(marker))
            txn.on_commit(lambda: self._tail.appended(batch))
            return
        self._merge(txn, marker, top, dict(zip(batch.keys, batch.pkeys, strict=True)), last)

    def _merge(
        self, txn: WriteTxn, marker: int, top: int, adding: dict[bytes, bytes], last: int
    ) -> None:
        """Entries above the marker and ``adding`` into the sorted index; marker to ``last``."""
        merging = self._tail.everything(txn, marker, top)
        merging.update(adding)
        # In key order: neighbours share pages.
        txn.put_many(self.streams_table, [(key, merging[key]) for key in sorted(merging)])
        txn.put(self.marker_table, MARKER_KEY, frame_marker(last))
        txn.on_commit(lambda: self._tail.merged(last))

    def merge_stream_tail(self) -> None:
        """Put the stream entries above the merge marker into the sorted index now.

        Appends keep their newest stream entries in memory and merge them every
        :data:`MERGE_AT` events; a reopened journal's first append rebuilds them
        by reading every event above the marker. A clean shutdown calls this
        (:meth:`xoengine.Engine.close` does), so the next open reads none.
        Nothing to do on a read-only journal or when all is merged.
        """
        if self.datastore.readonly or self.datastore.closed:
            return

        def work(txn: WriteTxn) -> None:
            marker, top, _ = self._bounds(txn)
            if top > marker:
                self._merge(txn, marker, top, {}, top)

        self.datastore.write(work)

    def _check_tracking(self, txn: WriteTxn, tracking: Tracking) -> None:
        raise NotImplementedError  # pragma: no cover (process recorders only)

    def _put_tracking(self, txn: WriteTxn, tracking: Tracking) -> None:
        raise NotImplementedError  # pragma: no cover (process recorders only)

    def select_events(
        self,
        originator_id: uuid.UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> Sequence[StoredEvent]:
        """Events of one aggregate, by version, optionally bounded and reversed."""
        if limit is not None and limit <= 0:
            return []
        prefix = oid_prefix(originator_id)
        with self.datastore.read() as txn:
            return [
                self._indexed(txn, prefix, version, position)[0]
                for version, position in self._stream(
                    txn, originator_id, gt=gt, lte=lte, desc=desc, limit=limit
                )
            ]

    def stream_records(
        self, originator_id: uuid.UUID | str, *, stop: int | None = None, gapless: bool = False
    ) -> list[JournalRecord]:
        """One aggregate's records up to position ``stop``, by version, with positions and times.

        What :meth:`select_events` gives, read through the stream index too: the
        cost follows the aggregate's events, not the journal's. ``gapless``: the
        aggregate's versions are 1, 2, 3 ... (an xoengine file identity's are):
        an index that skips one, before ``stop`` or after it, has an entry lost
        or damaged (coded), which would otherwise leave that event out unsaid.
        """
        with self.datastore.read() as txn:
            found = self._stream_upto(txn, originator_id, stop, gapless=gapless)
            return [self._record_at(txn, originator_id, *pair) for pair in found]

    def stream_records_newest_first(
        self, originator_id: uuid.UUID | str, *, stop: int | None = None, gapless: bool = False
    ) -> Iterator[JournalRecord]:
        """:meth:`stream_records` newest first, each decoded when the caller asks for it.

        For a caller that wants the last events before ``stop`` only (the size a
        file had then): a stream of many events is not decoded whole. The index
        is read (and checked) whole first; each record in a read of its own.
        """
        with self.datastore.read() as txn:
            found = self._stream_upto(txn, originator_id, stop, gapless=gapless)
        for pair in reversed(found):
            with self.datastore.read() as txn:
                record = self._record_at(txn, originator_id, *pair)
            yield record

    def stream_last(self, originator_id: uuid.UUID | str) -> JournalRecord | None:
        """The last record of one aggregate's stream index (None: it has none)."""
        with self.datastore.read() as txn:
            for pair in self._stream(txn, originator_id, desc=True, limit=1):
                return self._record_at(txn, originator_id, *pair)
        return None

    def _stream_upto(
        self, txn: ReadTxn, originator_id: uuid.UUID | str, stop: int | None, *, gapless: bool
    ) -> list[tuple[int, int]]:
        """``(version, position)`` of one aggregate's events up to ``stop`` (see stream_records)."""
        found = []
        for expected, (version, position) in enumerate(self._stream(txn, originator_id), 1):
            if gapless and version != expected:
                raise FrameError(
                    position=position,
                    detail=f"the stream index of {originator_id} goes from version "
                    f"{expected - 1} to {version}: an entry is lost or damaged "
                    "(xoengine journal verify tells which)",
                )
            if stop is None or position <= stop:  # past it: not decoded (versions need
                found.append((version, position))  # not follow positions)
        return found

    def _record_at(
        self, txn: ReadTxn, originator_id: uuid.UUID | str, version: int, position: int
    ) -> JournalRecord:
        event, time_ns = self._indexed(txn, oid_prefix(originator_id), version, position)
        return JournalRecord(
            id=position,
            originator_id=event.originator_id,
            originator_version=version,
            topic=event.topic,
            state=event.state,
            time_ns=time_ns,
        )

    def _stream(
        self,
        txn: ReadTxn,
        originator_id: uuid.UUID | str,
        *,
        gt: int | None = None,
        lte: int | None = None,
        desc: bool = False,
        limit: int | None = None,
    ) -> list[tuple[int, int]]:
        """``(version, position)`` of one aggregate's events from the stream index, bounded."""
        prefix = oid_prefix(originator_id)
        marker, last, _ = self._bounds(txn)
        # Versions above the merge marker (in memory), then the sorted index.
        found = [
            (version, position)
            for version, position in self._tail.read(txn, marker, last, prefix).items()
            if (gt is None or version > gt) and (lte is None or version <= lte)
        ]
        if desc:
            start = stream_key(originator_id, lte) if lte is not None else prefix + b"\xff" * 8
            items = txn.items(self.streams_table, start, reverse=True, prefix=prefix)
        else:
            start = stream_key(originator_id, gt + 1) if gt is not None else prefix
            items = txn.items(self.streams_table, start, prefix=prefix)
        for indexed, (key, pkey) in enumerate(items, 1):
            version = POS.unpack_from(key, len(prefix))[0] - VERSION_OFFSET
            if gt is not None and version <= gt:
                break  # only reached when walking down
            if lte is not None and version > lte:
                break  # only reached when walking up
            found.append((version, decode_position(pkey)))
            if limit is not None and indexed >= limit:
                break
        found.sort(reverse=desc)
        return found[:limit]

    def _indexed(
        self, txn: ReadTxn, prefix: bytes, version: int, position: int
    ) -> tuple[StoredEvent, int]:
        """The event (and time label) the stream index puts at ``position``, checked against it."""
        pkey = encode_position(position)
        value = txn.get(self.events_table, pkey)
        if value is None:
            raise FrameError(position=position, detail="stream index points nowhere")
        event, time_ns = decode_event(pkey, value, self.events_table)
        if event.originator_version != version or oid_prefix(event.originator_id) != prefix:
            raise FrameError(position=position, detail="stream index and event disagree")
        return event, time_ns


class LMDBApplicationRecorder(LMDBAggregateRecorder, ApplicationRecorder):
    """Aggregate recorder whose positions are the application's notification ids.

    Beside the stream index it keeps a topic index, ``P.events.topics``, written
    with each append: per topic key (:func:`~xoengine.record.topic_key`), the
    positions of its events in that append. A read of some topics
    (``select_notifications``, :meth:`records`) walks their entries and reads
    only their events.
    """

    def __init__(self, datastore: Store, **kwargs: Any) -> None:
        """As :class:`LMDBAggregateRecorder`; the topic index is ``<events table>.topics``."""
        super().__init__(datastore, **kwargs)
        self.topics_table = self.events_table + ".topics"
        self._topics_marked = False  # the first indexed position is stored (it never goes)
        self._topics_made = False  # its tables exist (ensured once)
        # The positions whose topic index entries were counted whole (_check_topics):
        # what is written never changes, so a range checked once stays checked.
        self._topics_checked: tuple[int, int] | None = None

    def _tables(self) -> tuple[str, ...]:
        return (*super()._tables(), self.topics_table)

    def _insert(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> list[int]:
        if stored_events:
            self._make_topic_tables()
        return super()._insert(stored_events, **kwargs)

    def _make_topic_tables(self) -> None:
        """Make the topic index's tables if they are missing.

        Whatever ``CREATE_TABLE`` says: a journal of an older xoengine, appended
        to by an application that creates no tables, has none for the index.
        """
        if not self._topics_made:
            self.datastore.ensure(self.topics_table, self.marker_table)
            self._topics_made = True

    def _placed(self, txn: WriteTxn, first: int, stored_events: Sequence[StoredEvent]) -> None:
        if not self._topics_marked:
            if self._topics_from(txn) is None:
                # A new journal indexes from its first event; an older one from its first
                # append since (index_topics() catches up with the events before it).
                txn.put(self.marker_table, TOPICS_KEY, frame_marker(first, TOPICS_KEY))
            txn.on_commit(self._topics_stored)
        entries = encode_topic_entries(first, [event.topic for event in stored_events])
        if len(entries) == 1:
            txn.put(self.topics_table, *entries[0])
        else:
            txn.put_many(self.topics_table, entries)

    def _topics_stored(self) -> None:
        self._topics_marked = True

    def _check_topics(self, first: int, stop: int) -> None:
        """Refuse a topic index that leaves out a position of ``[first, stop]`` (coded).

        A lost entry, or one whose key was damaged so that it sorts under
        another topic, is never read by a reader of its own topic: the events
        it names would be missing from the answer with nothing said. Every
        entry that may name a position of the range is read (its frame
        verified: the key is checksummed too), and the positions it names in
        the range counted; fewer or more than the range holds is damage.
        """
        checked = self._topics_checked
        if checked is not None and checked[0] <= first and stop <= checked[1]:
            return
        table = self.topics_table
        with self.datastore.read() as txn:
            indexed = self._topics_from(txn)
            if indexed is None or max(first, indexed) > stop:
                return
            low = max(first, indexed)
            named = 0
            for key, value in txn.items(table):
                if len(key) == 16:  # its first position, and its last (unverified yet)
                    begin = POS.unpack_from(key, 8)[0]
                    end = (
                        POS.unpack_from(value, len(value) - POS.size)[0]
                        if len(value) >= codec.FRAME_HEADER.size + POS.size
                        else None
                    )
                    if begin > stop or (end is not None and end < low):
                        continue  # names none of the range (damaged: another range's)
                    size = codec.verified_size(key, value)
                    whole = end is not None and low <= begin and end <= stop
                    if whole and size and not size % POS.size:  # its size counts them
                        named += size // POS.size
                        continue
                positions = decode_topic_entry(key, value, table)[1]  # coded if damaged
                named += bisect.bisect_right(positions, stop) - bisect.bisect_left(positions, low)
        if named != stop - low + 1:
            raise FrameError(
                position=f"{low}..{stop}",
                detail=f"the topic index names {named} of the {stop - low + 1} positions "
                "there: an entry is lost or damaged (xoengine journal verify tells which)",
            )
        if checked is not None and checked[0] <= stop + 1 and low <= checked[1] + 1:
            low, stop = min(low, checked[0]), max(stop, checked[1])  # one range, both checked
        self._topics_checked = (low, stop)

    def _topics_from(self, txn: ReadTxn) -> int | None:
        """The first position the topic index holds in ``txn`` (None: it holds none)."""
        # The index first: a table opened after this read began renews its snapshot.
        txn.count(self.topics_table)
        return _read_marker(txn, self.marker_table, TOPICS_KEY, "topics")

    def index_topics(self) -> int:
        """Index the topics of the events written before the topic index existed.

        A journal written by an older xoengine has its topic index begin at its
        first append since. This walks back from there, :data:`TOPICS_CHUNK`
        events per transaction (each moves the first indexed position down, so
        an interrupted run goes on where it stopped), and returns how many
        events it indexed. :class:`xoengine.Engine` calls it when it opens a
        journal writable. Nothing to do on a read-only journal: readers scan the
        events below the index.
        """
        if self.datastore.readonly or self.datastore.closed:
            return 0
        self._make_topic_tables()
        indexed = 0
        while step := self.datastore.write(self._index_older):
            indexed += step
        return indexed

    def _index_older(self, txn: WriteTxn) -> int:
        """Index up to :data:`TOPICS_CHUNK` events below the topic index's first position."""
        start = self._topics_from(txn)
        if start is None:
            last = txn.last(self.events_table)
            start = decode_position(last[0]) + 1 if last else 1
        low = max(1, start - TOPICS_CHUNK)
        if low >= start:
            return 0
        topics = []
        for key, value in txn.items(self.events_table, POS.pack(low)):
            if decode_position(key) >= start:
                break
            topics.append(decode_topic(key, value, self.events_table))
        if len(topics) != start - low:
            raise FrameError(position=low, detail="positions below the topic index have gaps")
        txn.put_many(self.topics_table, encode_topic_entries(low, topics))
        txn.put(self.marker_table, TOPICS_KEY, frame_marker(low, TOPICS_KEY))
        return len(topics)

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Append atomically and return the new positions (gapless, commit order)."""
        return self._insert(stored_events, **kwargs)

    def select_notifications(
        self,
        start: int | None,
        limit: int,
        stop: int | None = None,
        topics: Sequence[str] = (),
        *,
        inclusive_of_start: bool = True,
    ) -> Sequence[Notification]:
        """Notifications from ``start`` up to ``stop`` (inclusive), at most ``limit``."""
        first = 1 if start is None else start + (0 if inclusive_of_start else 1)
        return list(self._scan(max(first, 1), stop, topics, limit, timed=False))

    def records(
        self,
        first: int = 1,
        *,
        stop: int | None = None,
        topics: Sequence[str] = (),
        limit: int | None = None,
        complete: bool = False,
    ) -> Iterator[JournalRecord]:
        """Verified records from position ``first`` up to ``stop``, with their times.

        ``complete`` (with ``topics``): first check that the topic index names
        every position of the range (:meth:`_check_topics`), so that no event
        of those topics is left out unseen; forensic answers ask for it.

        ``stop=None``: up to the journal's last position when the first record is
        read (records appended later are not given). The records are read
        :data:`RECORDS_CHUNK` at a time, each chunk in a read transaction of its
        own, so the iterator holds no read while its consumer works (or leaves it
        unfinished): a write that must grow the map never waits for it. Records
        below the journal's end never change, so the chunks make one answer.
        """
        if stop is None or (complete and topics):
            with self.datastore.read() as txn:
                last = txn.last(self.events_table)
            # A last key of another shape is damage, which the scan reports where it is.
            end = decode_position(last[0]) if last and len(last[0]) == 8 else None
            # A stop past the end counts no position that is not there yet as lost.
            stop = end if stop is None or end is None else min(stop, end)
        first, left = max(first, 1), limit
        if complete and topics and stop is not None:
            self._check_topics(first, stop)
        while left is None or left > 0:
            wanted = RECORDS_CHUNK if left is None else min(left, RECORDS_CHUNK)
            chunk: list[JournalRecord] = []
            try:
                for record in self._scan(first, stop, topics, wanted, timed=True):
                    assert isinstance(record, JournalRecord)
                    chunk.append(record)
            except Exception:
                yield from chunk  # the good records before the damage, then its error
                raise
            yield from chunk
            if len(chunk) < wanted:
                return
            first = chunk[-1].id + 1
            if left is not None:
                left -= len(chunk)

    def _scan(
        self, first: int, stop: int | None, topics: Sequence[str], limit: int | None, *, timed: bool
    ) -> Iterator[Notification]:
        if limit is not None and limit <= 0:
            return
        count = 0
        with self.datastore.read() as txn:
            for position, event, time_ns in self._events(txn, first, stop, set(topics)):
                if timed:
                    yield JournalRecord(
                        id=position,
                        originator_id=event.originator_id,
                        originator_version=event.originator_version,
                        topic=event.topic,
                        state=event.state,
                        time_ns=time_ns,
                    )
                else:
                    yield Notification(
                        id=position,
                        originator_id=event.originator_id,
                        originator_version=event.originator_version,
                        topic=event.topic,
                        state=event.state,
                    )
                count += 1
                if limit is not None and count >= limit:
                    return

    def _events(
        self, txn: ReadTxn, first: int, stop: int | None, wanted: set[str]
    ) -> Iterator[tuple[int, StoredEvent, int]]:
        """``(position, event, time label)`` from ``first`` up to ``stop``, of ``wanted`` topics.

        Every topic (``wanted`` empty): every frame. Some: the frames below the
        topic index, then the index's entries of those topics.
        """
        indexed = self._topics_from(txn) if wanted else None
        if indexed is None:
            yield from self._frames(txn, first, stop, wanted)
            return
        if first < indexed:
            below = indexed - 1 if stop is None else min(stop, indexed - 1)
            yield from self._frames(txn, first, below, wanted)
        yield from self._by_topic(txn, max(first, indexed), stop, wanted)

    def _frames(
        self, txn: ReadTxn, first: int, stop: int | None, wanted: set[str]
    ) -> Iterator[tuple[int, StoredEvent, int]]:
        """Every frame from ``first`` up to ``stop`` verified; the events of ``wanted`` made."""
        expected = first
        for key, value in txn.items(self.events_table, encode_position(first)):
            # Positions are gapless: anything but the next one is damage, never
            # a silent jump over missing records.
            if key != encode_position(expected):
                raise FrameError(
                    position=expected,
                    detail=f"expected position {expected}, found key {bytes(key).hex()}",
                )
            position = expected
            expected += 1
            if stop is not None and position > stop:
                return
            if wanted:
                decoded = decode_event_of(key, value, self.events_table, wanted)
                if decoded is None:
                    continue  # another topic: verified, not made
                yield position, *decoded
            else:
                yield position, *decode_event(key, value, self.events_table)

    def _by_topic(
        self, txn: ReadTxn, first: int, stop: int | None, wanted: set[str]
    ) -> Iterator[tuple[int, StoredEvent, int]]:
        """The events of ``wanted`` topics from ``first`` up to ``stop``, by the topic index."""
        walks = [
            self._topic_walk(txn, tkey, first, stop) for tkey in {topic_key(t) for t in wanted}
        ]
        for position, tkey in heapq.merge(*walks):
            event, time_ns = _named_event(txn, self.events_table, tkey, position)
            if event.topic in wanted:  # else another topic with the same key
                yield position, event, time_ns

    def _topic_walk(
        self, txn: ReadTxn, tkey: bytes, first: int, stop: int | None
    ) -> Iterator[tuple[int, bytes]]:
        """``(position, topic key)`` of one topic key's events from ``first`` up to ``stop``."""
        start = tkey + POS.pack(first)
        # The entry that holds ``first`` may begin below it.
        for key, _ in txn.items(self.topics_table, start, reverse=True, prefix=tkey):
            start = key
            break
        for key, value in txn.items(self.topics_table, start, prefix=tkey):
            for position in decode_topic_entry(key, value, self.topics_table)[1]:
                if stop is not None and position > stop:
                    return
                if position >= first:
                    yield position, tkey

    def clock_lag(self) -> tuple[int, int]:
        """``(label, ns)``: the last label this process gave, and how far the clock stood behind it.

        0 ns when the clock gave the label itself; the label is 0 before this
        process's first append. While the clock is behind, every commit gets
        the journal's last label: labels never go back.
        """
        return self._clock.last, self._clock.behind

    def time_of(self, position: int) -> int:
        """The time label (UTC ns) of ``position`` (KeyError if there is no such position)."""
        return self.times_of([position])[0]

    def times_of(self, positions: Iterable[int]) -> list[int]:
        """The time labels of ``positions``, in one read (KeyError for one there is not)."""
        labels: list[int] = []
        with self.datastore.read() as txn:
            for position in positions:
                key = encode_position(position)
                value = txn.get(self.events_table, key)
                if value is None:
                    raise KeyError(position)
                labels.append(decode_event(key, value, self.events_table)[1])
        return labels

    def position_at(self, time_ns: int) -> int:
        """The last position whose time label is at or before ``time_ns`` (0 if none).

        This is the one rule that turns a time into a position. Labels never go
        back (a clock that jumps back leaves them flat until it catches up), so
        a binary search over positions is exact. A ``datetime`` holds only
        microseconds: :func:`datetime_ns` maps it to the last nanosecond of that
        microsecond, so the time printed for a position resolves to it.
        """
        low, high = 0, self.max_notification_id() or 0
        while low < high:
            middle = (low + high + 1) // 2
            if self.time_of(middle) <= time_ns:
                low = middle
            else:
                high = middle - 1
        return low

    def max_notification_id(self) -> int | None:
        """The last position, or None for an empty journal (checked against the entry count)."""
        with self.datastore.read() as txn:
            last = txn.last(self.events_table)
            count = txn.count(self.events_table)
        if not last:
            return None
        if len(last[0]) != 8 or decode_position(last[0]) != count:
            raise FrameError(
                position=count,
                detail=f"the last key {bytes(last[0]).hex()} does not match {count} records",
            )
        return decode_position(last[0])

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        """Follow the journal after position ``gt``, live, in this and other processes."""
        return LMDBSubscription(self, gt=gt, topics=topics)


class LMDBSubscription(ListenNotifySubscription[LMDBApplicationRecorder]):
    """A subscription woken by commits in this process and (by polling) in others.

    It is stopped and its thread joined before the environment closes.
    """

    def __init__(
        self, recorder: LMDBApplicationRecorder, gt: int | None = None, topics: Sequence[str] = ()
    ) -> None:
        """Start following ``recorder`` after ``gt``."""
        super().__init__(recorder=recorder, gt=gt, topics=topics)
        recorder.datastore.listen(self._has_been_notified, on_close=self._close_for_store)

    def stop(self) -> None:
        """Stop following; the pull thread ends."""
        super().stop()
        self._recorder.datastore.unlisten(self._has_been_notified)

    def _close_for_store(self) -> None:
        ListenNotifySubscription.stop(self)
        if self._pull_thread is not threading.current_thread():
            self._pull_thread.join()


class LMDBTrackingRecorder(_LMDBRecorder, TrackingRecorder):
    """Tracking records (upstream name -> last processed position) under ``<prefix>.tracking``.

    Views (materialised projections) subclass this and call :meth:`record` so
    that their own writes and the tracking record commit in one transaction:
    each upstream event is applied exactly once.
    """

    def __init__(self, datastore: Store, *, prefix: str = "default", **kwargs: Any) -> None:
        """Track into ``datastore`` under ``prefix`` (the projection or application name)."""
        super().__init__(datastore, prefix=prefix, **kwargs)
        self.tracking_table = self.table("tracking")

    def _tables(self) -> tuple[str, ...]:
        return (*super()._tables(), self.tracking_table)

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking``; IntegrityError unless its id is above the last one."""
        self.record(tracking)

    def record(self, tracking: Tracking, work: Callable[[WriteTxn], None] | None = None) -> None:
        """Commit ``work`` (the view's writes) and ``tracking`` atomically."""

        def write(txn: WriteTxn) -> None:
            self._check_tracking(txn, tracking)
            if work is not None:
                work(txn)
            self._put_tracking(txn, tracking)

        self.datastore.write(write)

    def _check_tracking(self, txn: WriteTxn, tracking: Tracking) -> None:
        current = self._read_tracking(txn, tracking.application_name)
        if current is not None and current >= tracking.notification_id:
            raise IntegrityViolationError(
                detail=f"tracking id {tracking.notification_id} for "
                f"{tracking.application_name!r} is not above {current}"
            )

    def _put_tracking(self, txn: WriteTxn, tracking: Tracking) -> None:
        key = tracking.application_name.encode("utf-8", "surrogateescape")
        txn.put(
            self.tracking_table, key, codec.frame(key, encode_position(tracking.notification_id))
        )

    def _read_tracking(self, txn: ReadTxn, application_name: str) -> int | None:
        key = application_name.encode("utf-8", "surrogateescape")
        value = txn.get(self.tracking_table, key)
        return None if value is None else _decode_tracking(key, value, self.tracking_table)

    def max_tracking_id(self, application_name: str) -> int | None:
        """Last position recorded for ``application_name``, or None."""
        with self.datastore.read() as txn:
            return self._read_tracking(txn, application_name)


class LMDBProcessRecorder(LMDBTrackingRecorder, LMDBApplicationRecorder, ProcessRecorder):
    """Application recorder that writes events and tracking in one transaction."""

    def __init__(
        self,
        datastore: Store,
        *,
        prefix: str = "default",
        purpose: str = "events",
        merge_at: int = MERGE_AT,
    ) -> None:
        """Record events and tracking into ``datastore`` under ``prefix``."""
        super().__init__(datastore, prefix=prefix, purpose=purpose, merge_at=merge_at)


class LMDBFactory(InfrastructureFactory[LMDBTrackingRecorder]):
    """eventsourcing infrastructure factory for the LMDB journal.

    Reads ``LMDB_PATH`` (required), ``LMDB_MAP_SIZE`` (initial bytes, default
    64 MiB, doubles when full), ``LMDB_DURABILITY`` (``sync`` default: an
    acknowledged append survives kill -9 and power loss; ``metasync-off``;
    ``nosync`` for tests and benchmarks only), ``LMDB_READONLY`` (open an
    existing journal for reading only, e.g. a forensic copy) and
    ``CREATE_TABLE``. Every factory for one path in a process shares one
    environment; :meth:`close` releases this factory's reference.
    """

    LMDB_PATH = "LMDB_PATH"
    LMDB_MAP_SIZE = "LMDB_MAP_SIZE"
    LMDB_DURABILITY = "LMDB_DURABILITY"
    LMDB_READONLY = "LMDB_READONLY"
    CREATE_TABLE = "CREATE_TABLE"

    aggregate_recorder_class: ClassVar[type[LMDBAggregateRecorder]] = LMDBAggregateRecorder
    application_recorder_class: ClassVar[type[LMDBApplicationRecorder]] = LMDBApplicationRecorder
    tracking_recorder_class: ClassVar[type[LMDBTrackingRecorder]] = LMDBTrackingRecorder
    process_recorder_class: ClassVar[type[LMDBProcessRecorder]] = LMDBProcessRecorder

    def __init__(self, env: Environment | EnvType | None) -> None:
        """Open (or share) the environment named by ``LMDB_PATH``."""
        super().__init__(env)
        path = self.env.get(self.LMDB_PATH)
        if not path:
            keys = ", ".join(self.env.create_keys(self.LMDB_PATH))
            raise ConfigurationError(detail=f"no journal path: set one of {keys}")
        map_size_text = self.env.get(self.LMDB_MAP_SIZE)
        try:
            map_size = int(map_size_text) if map_size_text else DEFAULT_MAP_SIZE
        except ValueError:
            raise ConfigurationError(
                detail=f"LMDB_MAP_SIZE {map_size_text!r} is not a number"
            ) from None
        if map_size <= 0:
            raise ConfigurationError(detail="LMDB_MAP_SIZE must be positive")
        durability = Durability.parse(self.env.get(self.LMDB_DURABILITY))
        readonly = strtobool(self.env.get(self.LMDB_READONLY, "no") or "no")
        self.datastore: Store = open_store(
            path, map_size=map_size, durability=durability, readonly=bool(readonly)
        )
        self._closed = False
        self.prefix = (self.env.name or "default").lower()

    def transcoder(self) -> Transcoder:
        """The transcoder named by TRANSCODER_TOPIC, else msgpack."""
        topic = self.env.get(self.TRANSCODER_TOPIC)
        if topic:
            transcoder_class: type[Transcoder] = resolve_topic(topic)
            return transcoder_class()
        return MsgpackTranscoder()

    def _create(self, recorder: _LMDBRecorder) -> None:
        if strtobool(self.env.get(self.CREATE_TABLE, "yes") or "yes"):
            recorder.create_table()

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        """Recorder for ``purpose`` (``events`` or ``snapshots``)."""
        recorder = self.aggregate_recorder_class(
            self.datastore, prefix=self.prefix, purpose=purpose
        )
        self._create(recorder)
        return recorder

    def application_recorder(self) -> ApplicationRecorder:
        """The application's recorder (APPLICATION_RECORDER_TOPIC may name a subclass)."""
        cls = self._resolve(self.APPLICATION_RECORDER_TOPIC, self.application_recorder_class)
        recorder: LMDBApplicationRecorder = cls(self.datastore, prefix=self.prefix)
        self._create(recorder)
        return recorder

    def tracking_recorder(
        self, tracking_recorder_class: type[LMDBTrackingRecorder] | None = None
    ) -> LMDBTrackingRecorder:
        """A tracking recorder or view (TRACKING_RECORDER_TOPIC may name a subclass)."""
        cls = tracking_recorder_class or self._resolve(
            self.TRACKING_RECORDER_TOPIC, self.tracking_recorder_class
        )
        if not issubclass(cls, LMDBTrackingRecorder):
            raise ConfigurationError(detail=f"{cls!r} is not an LMDBTrackingRecorder")
        recorder = cls(self.datastore, prefix=self.prefix)
        self._create(recorder)
        return recorder

    def process_recorder(self) -> ProcessRecorder:
        """A process recorder (PROCESS_RECORDER_TOPIC may name a subclass)."""
        cls = self._resolve(self.PROCESS_RECORDER_TOPIC, self.process_recorder_class)
        recorder: LMDBProcessRecorder = cls(self.datastore, prefix=self.prefix)
        self._create(recorder)
        return recorder

    def _resolve(self, key: str, default: type[Any]) -> type[Any]:
        topic = self.env.get(key)
        if not topic:
            return default
        cls = resolve_topic(topic)
        if not (isinstance(cls, type) and issubclass(cls, default)):
            raise ConfigurationError(detail=f"{key}={topic} is not a {default.__name__}")
        return cls

    def blobs(self) -> BlobTable:
        """The journal's content-addressed blob table."""
        return BlobTable(self.datastore)

    def close(self) -> None:
        """Release this factory's reference to the environment (idempotent)."""
        if not self._closed:
            self._closed = True
            self.datastore.close()


Factory = LMDBFactory


# -- integrity ------------------------------------------------------------------------


@dataclass(frozen=True)
class Damage:
    """One damaged record found by :func:`verify`."""

    table: str
    position: str
    code: str
    message: str


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify` read and what it found damaged."""

    tables: dict[str, int]
    records: int
    damage: tuple[Damage, ...]

    @property
    def ok(self) -> bool:
        """True when nothing is damaged."""
        return not self.damage


def _table_kind(name: str) -> str:
    if name == CATALOG_TABLE:
        return "catalog"  # checked by the datastore when it opens
    if name == BLOB_TABLE or name.endswith(BLOB_SUFFIX):
        return "blobs"
    if name.endswith(".streams"):
        return "streams"
    if name.endswith(".indexed"):
        return "marker"
    if name.endswith(".topics"):
        return "topics"
    if name.endswith(".tracking"):
        return "tracking"
    if name.endswith((".events", ".snapshots")):
        return "events"
    return "other"


def verify(store: Store) -> VerifyReport:
    """Read and check every record of every table of the journal in ``store``.

    Checks: each frame's checksum and format version; each event body decodes;
    positions in an events table are gapless from 1; each stream index entry
    points at an event with the same originator and version; each topic index
    entry at an event of its topic, and the index holds every event from its
    first position; a marker is not beyond the last event; each blob's bytes
    match its content id. Damage is collected (never raised) so one bad record
    does not hide the others.
    """
    damage: list[Damage] = []
    counts: dict[str, int] = {}
    total = 0

    def note(table: str, position: object, error: Exception) -> None:
        code = getattr(error, "code", type(error).__name__)
        damage.append(Damage(table, str(position), code, str(error)))

    with store.read() as txn:
        tables = txn.tables()
        for name in tables:
            kind = _table_kind(name)
            if kind == "catalog":
                continue
            count = named = 0  # named: the events the topic index's entries name
            latest = 0  # the newest time label so far: labels never go back
            streams = _stream_bound(txn, name, tables) if kind == "events" else None
            for key, value in txn.items(name):
                count += 1
                try:
                    if kind == "topics":
                        named += _verify_topic_entry(txn, name, key, value)
                        continue
                    label = _verify_record(
                        store, txn, kind, name, key, value, count, latest, streams
                    )
                    latest = max(latest, label or 0)
                except (FrameError, KeyError, ValueError) as e:
                    where = (
                        decode_position(key) if kind == "events" and len(key) == 8 else key.hex()
                    )
                    note(name, where, e)
            counts[name] = count
            total += count
            if kind == "topics" and (why := _topics_missing(txn, name, named)) is not None:
                note(name, "count", FrameError(position="topics", detail=why))
    return VerifyReport(tables=counts, records=total, damage=tuple(damage))


def _stream_bound(txn: ReadTxn, name: str, tables: list[str]) -> tuple[str, int] | None:
    """The stream index of events table ``name`` and the last position it must hold.

    Events above the merge marker have their entries in the tail (rebuilt from
    the events by each reader), not in the index yet. None: no stream index.
    """
    streams = name + ".streams"
    if streams not in tables:
        return None
    marker = _read_marker(txn, name + ".indexed", MARKER_KEY, "marker")
    if marker is None:  # written before the marker existed: every event is indexed
        last = txn.last(name)
        marker = decode_position(last[0]) if last else 0
    return streams, marker


def _verify_record(
    store: Store,
    txn: ReadTxn,
    kind: str,
    name: str,
    key: bytes,
    value: bytes,
    ordinal: int,
    latest: int,
    streams: tuple[str, int] | None = None,
) -> int | None:
    """Check one record of a table of ``kind``; an event's time label (else None).

    ``latest``: the newest label before it, which an event's may not be before.
    ``streams``: an event's stream index, and the last position it holds: an event
    up to there without its entry would be left out of its aggregate's reads.
    """
    if kind == "events":
        if decode_position(key) != ordinal:  # the n-th record of a gapless table is position n
            raise FrameError(position=decode_position(key), detail=f"gap: expected {ordinal}")
        event, label = decode_event(key, value, name)
        if label < latest:
            raise FrameError(
                position=ordinal,
                detail=f"its time label {label} is before the one before it, {latest}",
            )
        if streams is not None and ordinal <= streams[1]:
            entry = stream_key(event.originator_id, event.originator_version)
            if txn.get(streams[0], entry) != key:
                raise FrameError(
                    position=ordinal,
                    detail=f"the stream index ({streams[0]}) has no entry for it "
                    f"(version {event.originator_version} of {event.originator_id})",
                )
        if event.topic in _CONTENT_TOPICS:
            _verify_blob_refs(txn, ordinal, event.state)
        return label
    if kind == "streams":
        _verify_stream_entry(txn, name, key, value)
    elif kind == "marker":
        body = codec.unframe(key, value, where=name, position="marker")
        events_table = name.removesuffix(".indexed")
        last = txn.last(events_table)
        if decode_position(bytes(body)) > (decode_position(last[0]) if last else 0):
            raise FrameError(position="marker", detail=f"marker {key!r} beyond the last event")
    elif kind == "tracking":
        _decode_tracking(key, value, name)
    elif kind == "blobs":
        BlobTable(store, name).get(key, txn)
    else:
        codec.unframe(key, value, where=name)
    return None


_CONTENT_TOPICS: Final = frozenset(
    {"xoengine.events:BytesWritten", "xoengine.events:ContentReplaced"}
)
"""The events whose bytes are blobs: ``ranges`` ``[offset, length, id]``, ``ops`` ``["data", id,
length]`` (journal-format.md)."""


def _verify_blob_refs(txn: ReadTxn, position: int, state: bytes) -> None:
    """Check that each blob an event's state names is in the blob table, as long as named.

    A blob lost (a damaged page, a table edited) otherwise verifies as a
    journal whose replay then fails; a length that is not the blob's would
    replay wrong bytes.
    """
    body = codec.unpack(state, position=position)
    refs = [(r[2], r[1]) for r in body.get("ranges") or ()] if isinstance(body, dict) else []
    if isinstance(body, dict):
        refs += [(op[1], op[2]) for op in body.get("ops") or () if op[0] == "data"]
    for blob_id, length in refs:
        if not isinstance(blob_id, bytes) or len(blob_id) != BlobTable.ID_SIZE:
            raise FrameError(position=position, detail=f"names no blob id: {blob_id!r}")
        if txn.get(BLOB_TABLE, blob_id) is None:
            raise FrameError(
                position=position, detail=f"names blob {blob_id.hex()}, which is not stored"
            )
        if length != (held := BlobTable.size_of(blob_id)):
            raise FrameError(
                position=position,
                detail=f"takes {length!r} bytes of blob {blob_id.hex()}, which holds {held}",
            )


def _verify_stream_entry(txn: ReadTxn, name: str, key: bytes, value: bytes) -> None:
    events_table = name.removesuffix(".streams")
    event_value = txn.get(events_table, value)
    if len(value) != 8 or event_value is None:
        raise FrameError(position=key.hex(), detail="stream index points at no event")
    event, _ = decode_event(value, event_value, events_table)
    if stream_key(event.originator_id, event.originator_version) != key:
        raise FrameError(position=decode_position(value), detail="stream index and event disagree")


def _read_marker(txn: ReadTxn, table: str, key: bytes, label: str) -> int | None:
    """The position a marker of ``table`` holds under ``key`` (None: no such marker).

    ``label`` names it in a damage report, where a record's position would be.
    """
    value = txn.get(table, key)
    if value is None:
        return None
    return decode_position(bytes(codec.unframe(key, value, where=table, position=label)))


def _named_event(
    txn: ReadTxn, events_table: str, tkey: bytes, position: int
) -> tuple[StoredEvent, int]:
    """The event (and time label) a topic index entry of ``tkey`` names at ``position``, checked."""
    pkey = encode_position(position)
    value = txn.get(events_table, pkey)
    if value is None:
        raise FrameError(position=position, detail="topic index points at no event")
    event, time_ns = decode_event(pkey, value, events_table)
    if topic_key(event.topic) != tkey:
        raise FrameError(position=position, detail="topic index and event disagree")
    return event, time_ns


def _verify_topic_entry(txn: ReadTxn, name: str, key: bytes, value: bytes) -> int:
    """Check one topic index entry; the number of events it names."""
    events_table = name.removesuffix(".topics")
    tkey, positions = decode_topic_entry(key, value, name)
    for position in positions:
        _named_event(txn, events_table, tkey, position)
    return len(positions)


def _topics_missing(txn: ReadTxn, name: str, named: int) -> str | None:
    """Why the topic index ``name``, whose entries name ``named`` events, misses some.

    None when it misses none: each entry was checked to name events of its own
    topic key, and an event has one topic, so an index that holds every event
    from its first position names as many as there are from there.
    """
    events_table = name.removesuffix(".topics")
    try:
        start = _read_marker(txn, events_table + ".indexed", TOPICS_KEY, "topics")
    except FrameError as e:
        return str(e)
    if start is None:
        return None if named == 0 else f"{named} events named but no first position"
    last = txn.last(events_table)
    end = decode_position(last[0]) if last else 0
    expected = max(0, end - start + 1)
    return None if named == expected else f"{named} events named of {expected} from {start}"


def applications(store: Store) -> list[str]:
    """Prefixes (application names) that have an events table in ``store``."""
    with store.read() as txn:
        return sorted(n.removesuffix(".events") for n in txn.tables() if n.endswith(".events"))
