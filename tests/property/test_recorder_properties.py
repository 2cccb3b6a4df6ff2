"""The LMDB recorders behave exactly like eventsourcing's in-memory POPO recorders.

Hypothesis generates batches of events (with deliberate duplicates) and queries;
both recorders get the same calls and must give the same answers and errors.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from unittest import mock

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent, Tracking
from eventsourcing.popo import POPOProcessRecorder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xoengine import journal, record
from xoengine.datastore import open_store
from xoengine.errors import FrameError
from xoengine.journal import LMDBProcessRecorder, verify

ORIGINATORS = [uuid.UUID(int=i + 1) for i in range(3)] + ["name-a", "name-b\udce9"]
TOPICS = ["t1", "t2", "t3"]

events = st.builds(
    StoredEvent,
    originator_id=st.sampled_from(ORIGINATORS),
    originator_version=st.integers(min_value=0, max_value=6),
    topic=st.sampled_from(TOPICS),
    state=st.binary(max_size=30),
)
batches = st.lists(
    st.tuples(st.lists(events, max_size=5), st.none() | st.integers(min_value=1, max_value=12)),
    max_size=12,
)
queries = st.tuples(
    st.sampled_from(ORIGINATORS),
    st.none() | st.integers(min_value=-1, max_value=7),
    st.none() | st.integers(min_value=-1, max_value=7),
    st.booleans(),
    st.none() | st.integers(min_value=0, max_value=5),
)
note_queries = st.tuples(
    st.none() | st.integers(min_value=0, max_value=40),
    st.integers(min_value=1, max_value=10),
    st.none() | st.integers(min_value=0, max_value=40),
    st.lists(st.sampled_from(TOPICS), max_size=2),
    st.booleans(),
)


def _note(n):  # type: ignore[no-untyped-def]
    """A notification's fields (a journal record's without its time)."""
    return (n.id, n.originator_id, n.originator_version, n.topic, n.state)


def _outcome(fn):  # type: ignore[no-untyped-def]
    try:
        return ("ok", fn())
    except IntegrityError:
        return ("integrity", None)


_topic_key = record.topic_key


def _collide(topic: str) -> bytes:
    """A topic key under which t1 and t2 share their entries (a hash collision)."""
    return _topic_key("t1" if topic == "t2" else topic)


def _forget_topic_index(store, recorder) -> None:  # type: ignore[no-untyped-def]
    """Make the journal look written by an xoengine older than the topic index."""

    def work(txn) -> None:  # type: ignore[no-untyped-def]
        txn.drop(recorder.topics_table)
        txn.delete(recorder.marker_table, journal.TOPICS_KEY)

    store.write(work)


@given(
    batches,
    st.lists(queries, max_size=8),
    st.lists(note_queries, max_size=8),
    st.sampled_from([1, 2, 3, 7, 10**6]),
    st.booleans(),
    st.none() | st.integers(min_value=0, max_value=12),
    st.sampled_from(["leave", "catch up", "catch up in steps"]),
    st.booleans(),
    st.sampled_from([1, 2, 5, journal.RECORDS_CHUNK]),
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_recorder_matches_popo(  # type: ignore[no-untyped-def]
    batch_list,
    event_queries,
    notification_queries,
    merge_at,
    second,
    older,
    upgrade,
    collide,
    records_chunk,
) -> None:
    # merge_at: how many events wait above the merge marker (in memory) before their
    # stream entries go into the sorted index; 1 is a plain index. With ``second``
    # the queries go through another recorder on the same store, which builds its
    # view of the unmerged events by scanning the journal instead of being told.
    # ``older``: the first batches were written before the topic index existed (it
    # begins at the next append), then ``upgrade`` leaves the events before it to
    # scans or indexes them (in steps: TOPICS_CHUNK 2 events per step, and two
    # positions per entry at most, for the appends too). ``collide``: two
    # topics share a topic key. ``records_chunk``: records() reads that many records
    # per read transaction.
    path = tempfile.mkdtemp(prefix="xo-prop-")
    store = open_store(path, durability="nosync")
    patches = contextlib.ExitStack()
    if collide:
        patches.enter_context(mock.patch.object(journal, "topic_key", _collide))
        patches.enter_context(mock.patch.object(record, "topic_key", _collide))
    if upgrade == "catch up in steps":
        patches.enter_context(mock.patch.object(journal, "TOPICS_CHUNK", 2))
        patches.enter_context(mock.patch.object(record, "TOPIC_RUN_MAX", 2))
    patches.enter_context(mock.patch.object(journal, "RECORDS_CHUNK", records_chunk))
    try:
        patches.__enter__()
        ours = LMDBProcessRecorder(store, merge_at=merge_at)
        ours.create_table()
        reader = LMDBProcessRecorder(store) if second else ours
        model = POPOProcessRecorder()
        unindexed = 0  # events written "before the topic index existed"
        for i, (batch, tracking_id) in enumerate(batch_list):
            if i == older:
                unindexed = ours.max_notification_id() or 0
                _forget_topic_index(store, ours)
                ours = LMDBProcessRecorder(store, merge_at=merge_at)  # as a new process
                reader = LMDBProcessRecorder(store) if second else ours
            tracking = Tracking("up", tracking_id) if tracking_id is not None else None
            got = _outcome(lambda: ours.insert_events(batch, tracking=tracking))
            want = _outcome(lambda: model.insert_events(batch, tracking=tracking))
            assert got == want, (batch, tracking)
            assert ours.max_tracking_id("up") == model.max_tracking_id("up")
        assert ours.max_notification_id() == model.max_notification_id()
        if older is not None and upgrade != "leave":
            assert ours.index_topics() == unindexed
            assert ours.index_topics() == 0  # caught up
        report = verify(store)
        assert report.ok, report.damage
        for oid, gt, lte, desc, limit in event_queries:
            # POPO keeps insertion order within a stream; the contract (and SQLite) is
            # version order, so the reference is derived from POPO's full stream.
            want_e = sorted(model.select_events(oid), key=lambda e: e.originator_version)
            want_e = [
                e
                for e in want_e
                if (gt is None or e.originator_version > gt)
                and (lte is None or e.originator_version <= lte)
            ]
            if desc:
                want_e.reverse()
            if limit is not None:
                want_e = want_e[:limit]
            assert reader.select_events(oid, gt=gt, lte=lte, desc=desc, limit=limit) == want_e
        for start, limit, stop, topics, inclusive in notification_queries:
            got_n = ours.select_notifications(
                start, limit, stop, topics, inclusive_of_start=inclusive
            )
            want_n = model.select_notifications(
                start, limit, stop, topics, inclusive_of_start=inclusive
            )
            assert got_n == list(want_n)
            # The same range by records(), read in chunks: the same notifications.
            first = 1 if start is None else max(start + (0 if inclusive else 1), 1)
            got_r = list(ours.records(first, stop=stop, topics=topics, limit=limit))
            assert [_note(r) for r in got_r] == [_note(n) for n in want_n]
        # One aggregate's records by the stream index: those of a scan, by version.
        scanned = list(ours.records())
        for oid in ORIGINATORS:
            for stop in (None, 0, 3, 10):
                want_r = sorted(
                    (
                        r
                        for r in scanned
                        if r.originator_id == oid and (stop is None or r.id <= stop)
                    ),
                    key=lambda r: r.originator_version,
                )
                assert reader.stream_records(oid, stop=stop) == want_r, (oid, stop)
        # Positions are gapless from 1.
        everything = ours.select_notifications(None, 10_000)
        assert [n.id for n in everything] == list(range(1, len(everything) + 1))
    finally:
        patches.close()
        store.close()
        shutil.rmtree(path, ignore_errors=True)


@given(
    st.lists(st.lists(st.sampled_from(TOPICS), min_size=1, max_size=6), min_size=1, max_size=10),
    st.sampled_from([2, record.TOPIC_RUN_MAX]),
    st.lists(st.tuples(st.integers(1, 60), st.integers(0, 60)), min_size=1, max_size=6),
    st.integers(min_value=0),
)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_topic_index_count_finds_exactly_the_ranges_an_entry_lost_leaves_short(  # type: ignore[no-untyped-def]
    appends, run_max, ranges, lost
) -> None:
    """Forensic reads count the positions the topic index names in their range
    (``_check_topics``); session 24 counts an entry whole in the range by its size,
    and remembers a range once counted. Ranges are cut anywhere, through entries
    of appends of mixed topics (their positions not contiguous): a range passes
    exactly when no position of a lost entry lies in it (a recorder does not count
    again the range it counted last: what is written never changes)."""
    path = tempfile.mkdtemp(prefix="xo-prop-")
    store = open_store(path, durability="nosync")
    try:
        with mock.patch.object(record, "TOPIC_RUN_MAX", run_max):
            writer = LMDBProcessRecorder(store)
            writer.create_table()
            for topics in appends:
                writer.insert_events([StoredEvent(uuid.uuid4(), 1, topic, b"") for topic in topics])
        last = writer.max_notification_id()
        ranges = [(first, min(stop, last)) for first, stop in ranges if first <= min(stop, last)]
        remembering = LMDBProcessRecorder(store)
        for first, stop in ranges:
            LMDBProcessRecorder(store)._check_topics(first, stop)
            remembering._check_topics(first, stop)
        with store.read() as txn:
            entries = list(txn.items(writer.topics_table))
        key, value = entries[lost % len(entries)]
        gone = set(record.decode_topic_entry(key, value, writer.topics_table)[1])
        store.write(lambda txn: txn.delete(writer.topics_table, key))
        for first, stop in [*ranges, (1, last)]:
            short = any(first <= p <= stop for p in gone)
            fresh = LMDBProcessRecorder(store)
            if short:
                with pytest.raises(FrameError, match="topic index names"):
                    fresh._check_topics(first, stop)
            else:
                fresh._check_topics(first, stop)
        if ranges:  # the range it counted last, before the loss: not counted again
            remembering._check_topics(*ranges[-1])
    finally:
        store.close()
        shutil.rmtree(path, ignore_errors=True)
