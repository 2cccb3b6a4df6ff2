"""The journal on real LMDB files: sharing, subscriptions across processes, blobs, read-only copies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from eventsourcing.persistence import IntegrityError, StoredEvent

from xoengine import codec
from xoengine.datastore import open_store
from xoengine.errors import (
    ConfigurationError,
    FrameError,
    JournalMissingError,
    JournalReadOnlyError,
)
from xoengine.journal import BlobTable, LMDBApplicationRecorder, LMDBFactory, verify


def _events(n: int, oid: uuid.UUID | None = None, start: int = 1) -> list[StoredEvent]:
    oid = oid or uuid.uuid4()
    return [StoredEvent(oid, start + i, "topic", b"state-%d" % i) for i in range(n)]


def test_journal_one_environment_per_path_shared_by_factories(tmp_path: Path) -> None:
    env = {"LMDB_PATH": str(tmp_path), "PERSISTENCE_MODULE": "xoengine.journal"}
    a = LMDBFactory(env)
    b = LMDBFactory(env)
    assert a.datastore is b.datastore
    a.close()
    recorder = b.application_recorder()
    assert recorder.insert_events(_events(2)) == [1, 2]  # still open: b holds a reference
    b.close()
    assert a.datastore.closed


def test_journal_applications_are_separated_by_prefix(tmp_path: Path) -> None:
    class Orders(Application[uuid.UUID]):
        pass

    class Invoices(Application[uuid.UUID]):
        pass

    env = {"PERSISTENCE_MODULE": "xoengine.journal", "LMDB_PATH": str(tmp_path)}
    with Orders(env=env) as orders, Invoices(env=env) as invoices:
        orders.save(Aggregate())
        invoices.save(Aggregate())
        invoices.save(Aggregate())
        assert orders.recorder.max_notification_id() == 1
        assert invoices.recorder.max_notification_id() == 2


def test_journal_requires_a_path() -> None:
    with pytest.raises(ConfigurationError, match="LMDB_PATH"):
        LMDBFactory({})


def test_journal_durability_mismatch_is_refused(tmp_path: Path) -> None:
    store = open_store(tmp_path, durability="sync")
    try:
        with pytest.raises(ConfigurationError):
            open_store(tmp_path, durability="nosync")
        with pytest.raises(ConfigurationError):
            open_store(tmp_path, durability="fast")
    finally:
        store.close()


def test_journal_readonly_open_refuses_writes_and_missing_paths(tmp_path: Path) -> None:
    store = open_store(tmp_path / "j")
    recorder = LMDBApplicationRecorder(store)
    recorder.create_table()
    recorder.insert_events(_events(3))
    store.close()
    ro = open_store(tmp_path / "j", readonly=True)
    try:
        reader = LMDBApplicationRecorder(ro)
        assert [n.id for n in reader.select_notifications(None, 10)] == [1, 2, 3]
        with pytest.raises(JournalReadOnlyError):
            reader.insert_events(_events(1))
    finally:
        ro.close()
    with pytest.raises(JournalMissingError):
        open_store(tmp_path / "nothing-here", readonly=True)


def test_journal_subscription_sees_another_process_commits(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    recorder = LMDBApplicationRecorder(store)
    recorder.create_table()
    recorder.insert_events(_events(1))
    store.close()  # the writer process must own the writer lock
    reader_store = open_store(tmp_path, readonly=True)
    reader = LMDBApplicationRecorder(reader_store)
    received: list[int] = []
    writer = textwrap.dedent(f"""
        import uuid
        from eventsourcing.persistence import StoredEvent
        from xoengine.datastore import open_store
        from xoengine.journal import LMDBApplicationRecorder
        store = open_store({str(tmp_path)!r})
        rec = LMDBApplicationRecorder(store)
        oid = uuid.uuid4()
        for i in range(5):
            rec.insert_events([StoredEvent(oid, i, "topic", b"x")])
        store.close()
    """)
    try:
        with reader.subscribe(gt=0) as subscription:
            subprocess.run([sys.executable, "-c", writer], check=True, timeout=120)
            for notification in subscription:
                received.append(notification.id)
                if len(received) == 6:
                    break
    finally:
        reader_store.close()
    assert received == [1, 2, 3, 4, 5, 6]


def test_journal_close_stops_and_joins_live_subscriptions(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    recorder = LMDBApplicationRecorder(store)
    recorder.create_table()
    subscription = recorder.subscribe(gt=None)
    before = threading.active_count()
    store.close()
    assert list(subscription) == []  # stopped, nothing raised
    assert threading.active_count() <= before


def test_journal_blobs_are_stored_once_and_verified(tmp_path: Path) -> None:
    store = open_store(tmp_path, durability="nosync")
    try:
        blobs = BlobTable(store)
        a = blobs.save(b"A" * 10000)
        assert blobs.save(b"A" * 10000) == a
        b = blobs.save(b"B" * 10000)
        assert a != b
        assert blobs.get(a) == b"A" * 10000
        with store.read() as txn:
            assert txn.count("blobs") == 2
            inside = blobs.view(b, txn)
        # A view is the verified bytes, read-only, and outlives its transaction.
        assert inside == b"B" * 10000 and blobs.view(a) == b"A" * 10000
        assert inside.readonly
        with pytest.raises(TypeError):
            inside[0] = 0
    finally:
        store.close()


def test_journal_blob_hash_collision_cannot_substitute_data(tmp_path: Path) -> None:
    store = open_store(tmp_path, durability="nosync")
    try:
        blobs = BlobTable(store)
        genuine = b"the genuine block" * 10
        # An attacker's different bytes already sit under the genuine bytes' id
        # (what a crafted xxh3 collision would achieve).
        slot0 = codec.digest128(genuine) + len(genuine).to_bytes(8, "big") + b"\x00"
        forged = b"X" * len(genuine)
        store.write(lambda txn: txn.put("blobs", slot0, codec.frame(slot0, forged)))
        blob_id = blobs.save(genuine)
        assert blob_id != slot0
        assert blobs.get(blob_id) == genuine
        # Reading the forged slot is refused: its bytes do not match its content id.
        with pytest.raises(FrameError):
            blobs.get(slot0)
        with pytest.raises(FrameError):
            blobs.view(slot0)
    finally:
        store.close()


def test_journal_verify_reports_damage_by_position(tmp_path: Path) -> None:
    store = open_store(tmp_path, durability="nosync")
    recorder = LMDBApplicationRecorder(store)
    recorder.create_table()
    recorder.insert_events(_events(5))
    key = (3).to_bytes(8, "big")

    def damage(txn):  # type: ignore[no-untyped-def]
        value = bytearray(txn.get("default.events", key))
        value[-1] ^= 0x01
        txn.put("default.events", key, bytes(value))

    store.write(damage)
    try:
        report = verify(store)
        assert not report.ok
        assert [(d.table, d.position, d.code) for d in report.damage][0] == (
            "default.events",
            "3",
            "E4011",
        )
        with pytest.raises(FrameError, match="position 3"):
            recorder.select_notifications(None, 10)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("harm", "detail"),
    [
        ("drop an entry", "2 events named of 3 from 1"),
        ("move a position to another topic", "topic index and event disagree"),
        ("point past the last event", "topic index points at no event"),
        ("flip a bit", "Checksum mismatch"),
    ],
)
def test_verify_and_topic_reads_catch_a_damaged_topic_index(
    tmp_path: Path, harm: str, detail: str
) -> None:
    from xoengine.record import topic_key  # noqa: PLC0415

    store = open_store(tmp_path, durability="nosync")
    recorder = LMDBApplicationRecorder(store)
    recorder.create_table()
    oid = uuid.uuid4()
    recorder.insert_events(
        [
            StoredEvent(oid, 1, "a", b""),
            StoredEvent(oid, 2, "b", b""),
            StoredEvent(oid, 3, "a", b""),
        ]
    )
    table = "default.events.topics"

    def entry(topic: str, *positions: int) -> tuple[bytes, bytes]:
        key = topic_key(topic) + positions[0].to_bytes(8, "big")
        return key, codec.frame(key, b"".join(p.to_bytes(8, "big") for p in positions))

    def damage(txn):  # type: ignore[no-untyped-def]
        assert txn.get(table, entry("a", 1, 3)[0]) == entry("a", 1, 3)[1]  # one entry: 1 and 3
        if harm == "drop an entry":
            txn.delete(table, entry("b", 2)[0])
        elif harm == "move a position to another topic":
            txn.put(table, *entry("a", 1))
            txn.put(table, *entry("b", 3))
        elif harm == "point past the last event":
            txn.put(table, *entry("a", 1, 3, 9))
        else:
            key, value = entry("a", 1, 3)
            txn.put(table, key, value[:-1] + bytes([value[-1] ^ 1]))

    store.write(damage)
    try:
        report = verify(store)
        assert detail in " ".join(d.message for d in report.damage if d.table == table)
        if harm == "drop an entry":
            # Only verify can tell: the entry is simply not there.
            assert recorder.select_notifications(None, 10, topics=["b"]) == []
        else:
            with pytest.raises(FrameError, match=detail):
                recorder.select_notifications(None, 10, topics=["a", "b"])
        # A read of every topic does not use the index.
        assert [n.id for n in recorder.select_notifications(None, 10)] == [1, 2, 3]
    finally:
        store.close()


def test_a_journal_older_than_the_topic_index_takes_appends_without_create_table(
    tmp_path: Path,
) -> None:
    """Was a bug: with ``CREATE_TABLE=no`` the first append to such a journal failed (E4000)."""
    from xoengine.record import (  # noqa: PLC0415
        encode_events,
        encode_position,
        oid_prefixes,
        stream_key,
    )

    store = open_store(tmp_path, durability="nosync")
    # The tables an xoengine before the topic index made, and its events in them (with
    # their stream entries: every event at or below the marker has one, verify checks).
    store.ensure("default.events", "default.events.streams", "default.events.indexed")
    old = [StoredEvent(uuid.uuid4(), 1, topic, b"") for topic in ("a", "b", "a")]

    def append(txn: Any) -> None:
        txn.append_many("default.events", encode_events(1, old, oid_prefixes(old), 1))
        for position, event in enumerate(old, 1):
            key = stream_key(event.originator_id, event.originator_version)
            txn.put("default.events.streams", key, encode_position(position))

    store.write(append)
    store.close()
    env = {"LMDB_PATH": str(tmp_path), "CREATE_TABLE": "no"}
    factory = LMDBFactory(env)
    try:
        recorder = factory.application_recorder()
        assert recorder.insert_events(_events(2)) == [4, 5]  # indexed from 4; 1-3 scanned
        assert [n.id for n in recorder.select_notifications(None, 10, topics=["a"])] == [1, 3]
        assert [n.id for n in recorder.select_notifications(None, 10, topics=["topic"])] == [4, 5]
        assert isinstance(recorder, LMDBApplicationRecorder)
        assert recorder.index_topics() == 3
        assert [n.id for n in recorder.select_notifications(None, 10, topics=["a"])] == [1, 3]
        assert verify(factory.datastore).ok
    finally:
        factory.close()


def test_journal_time_labels_are_monotonic(tmp_path: Path) -> None:
    store = open_store(tmp_path, durability="nosync")
    try:
        recorder = LMDBApplicationRecorder(store)
        recorder.create_table()
        for _ in range(20):
            recorder.insert_events(_events(2))
        times = [r.time_ns for r in recorder.records()]
        assert times == sorted(times)
    finally:
        store.close()


def test_a_group_commit_leaves_out_only_the_work_that_raised(tmp_path: Path) -> None:
    # What a leader does with a gathered batch: one transaction for all; a work
    # that raises gets its error back, writes nothing, and the others commit.
    from xoengine import datastore  # noqa: PLC0415

    store = open_store(tmp_path / "j", durability="nosync")
    try:
        store.ensure("t")
        runs: list[str] = []
        committed: list[str] = []

        def put(name: str, *, fail: bool = False) -> datastore._WriteRequest:
            def work(txn: datastore.WriteTxn) -> str:
                runs.append(name)
                txn.put("t", name.encode(), b"v")
                txn.on_commit(lambda: committed.append(name))
                if fail:
                    raise ValueError(name)
                return name

            return datastore._WriteRequest(work, None)

        batch = [put("a"), put("b", fail=True), put("c"), put("d", fail=True), put("e")]
        store._commit_batch(batch)
        assert [r.result for r in batch if r.error is None] == ["a", "c", "e"]
        assert [str(r.error) for r in batch if r.error is not None] == ["b", "d"]
        assert all(r.done for r in batch)
        assert committed == ["a", "c", "e"]  # each on_commit once, only for what committed
        with store.read() as txn:
            assert [k for k, _ in txn.items("t")] == [b"a", b"c", b"e"]
        assert runs.count("a") == 3  # ran again after each failure: work may run more than once
    finally:
        store.close()


def test_requests_of_one_runner_run_together_and_alone_when_that_fails(tmp_path: Path) -> None:
    # Queued requests sharing a "together" runner run as one call of it; if that
    # call raises, each runs alone by its own work, and only the bad one fails.
    from xoengine import datastore  # noqa: PLC0415

    store = open_store(tmp_path / "j", durability="nosync")
    try:
        store.ensure("t")
        calls: list[list[str]] = []

        def runner(txn: datastore.WriteTxn, names: list[str]) -> list[str]:
            calls.append(list(names))
            for name in names:
                txn.put("t", name.encode(), b"joint")
                if name.startswith("bad"):
                    raise ValueError(name)
            return [name.upper() for name in names]

        def request(name: str) -> datastore._WriteRequest:
            def work(txn: datastore.WriteTxn) -> str:
                txn.put("t", name.encode(), b"alone")
                if name.startswith("bad"):
                    raise ValueError(name)
                return name

            return datastore._WriteRequest(work, (runner, name))

        good = [request("a"), request("b"), request("c")]
        store._commit_batch(good)
        assert calls == [["a", "b", "c"]]
        assert [r.result for r in good] == ["A", "B", "C"]
        assert all(r.error is None and r.done for r in good)

        calls.clear()
        mixed = [request("d"), request("bad"), request("e")]
        store._commit_batch(mixed)
        assert calls == [["d", "bad", "e"]]  # tried once together, then alone
        assert [r.result for r in mixed] == ["d", None, "e"]
        assert [str(r.error) for r in mixed] == ["None", "bad", "None"]
        with store.read() as txn:
            values = dict(txn.items("t"))
        assert values == {
            b"a": b"joint",
            b"b": b"joint",
            b"c": b"joint",
            b"d": b"alone",
            b"e": b"alone",
        }
    finally:
        store.close()


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[LMDBApplicationRecorder]:
    """An application recorder on a new journal (nosync), closed after the test."""
    store = open_store(tmp_path / "j", durability="nosync")
    try:
        recorder = LMDBApplicationRecorder(store)
        recorder.create_table()
        yield recorder
    finally:
        store.close()


def test_concurrent_appends_run_together_and_a_clash_fails_only_its_caller(
    recorder: LMDBApplicationRecorder,
) -> None:
    # Several threads' plain appends in one group commit: each gets its own
    # positions; a duplicate (originator, version) fails only the caller that
    # repeated it, even when it was gathered with the others.
    from xoengine import datastore  # noqa: PLC0415

    store = recorder.datastore
    oid = uuid.uuid4()
    first = [StoredEvent(oid, 1, "t", b"x")]
    recorder.insert_events(first)
    batches = [
        [StoredEvent(uuid.uuid4(), 1, "t", b"a"), StoredEvent(uuid.uuid4(), 1, "t", b"b")],
        [StoredEvent(oid, 1, "t", b"again")],  # already recorded
        [StoredEvent(uuid.uuid4(), 1, "t", b"c")],
    ]
    requests = [
        datastore._WriteRequest(
            lambda txn, b=batch: recorder._write(txn, b, None),
            (recorder._write_together, batch),
        )
        for batch in batches
    ]
    store._commit_batch(requests)
    assert isinstance(requests[1].error, IntegrityError)
    assert [r.result for r in requests] == [[2, 3], None, [4]]
    assert [n.state for n in recorder.select_notifications(1, 10)] == [b"x", b"a", b"b", b"c"]


def test_merging_the_stream_tail_leaves_a_reopened_journal_nothing_to_rebuild(
    recorder: LMDBApplicationRecorder,
) -> None:
    # A clean close merges the in-memory stream entries into the sorted index: a
    # new recorder (a reopened journal) then builds an empty tail, finds every
    # stream, and still refuses a duplicate.
    store = recorder.datastore
    oids = [uuid.uuid4() for _ in range(5)]
    recorder.insert_events([StoredEvent(o, v, "t", b"x") for o in oids for v in (1, 2)])
    with store.read() as txn:
        assert recorder._bounds(txn)[:2] == (0, 10)  # all ten above the marker
    recorder.merge_stream_tail()
    recorder.merge_stream_tail()  # nothing left: no change
    with store.read() as txn:
        assert recorder._bounds(txn) == (10, 10, True)

    again = LMDBApplicationRecorder(store)
    assert [e.originator_version for e in again.select_events(oids[0])] == [1, 2]
    with pytest.raises(IntegrityError):
        again.insert_events([StoredEvent(oids[1], 2, "t", b"again")])
    again.insert_events([StoredEvent(oids[1], 3, "t", b"y")])
    assert again._tail._base == 10 and len(again._tail._entries) == 1
    assert [e.state for e in again.select_events(oids[1])] == [b"x", b"x", b"y"]


def test_many_threads_appending_at_once_each_get_their_own_positions(
    recorder: LMDBApplicationRecorder,
) -> None:
    # Group commit under load: batches gathered by one thread and committed by
    # whichever caller completes them. Every acknowledged event is at the
    # position its caller was given, positions are gapless, and of two callers
    # racing for one (originator, version) exactly one wins.
    contested = [uuid.uuid4() for _ in range(50)]
    results: dict[int, list[tuple[int, bytes]]] = {k: [] for k in range(8)}
    refused: list[int] = []
    barrier = threading.Barrier(8)

    def run(k: int) -> None:
        barrier.wait()
        for i in range(150):
            if i < len(contested) and k < 2:  # threads 0 and 1 race for the same ids
                event = StoredEvent(contested[i], 1, "t", f"{k}:{i}".encode())
            else:
                event = StoredEvent(uuid.uuid4(), 1, "t", f"{k}:{i}".encode())
            try:
                (position,) = recorder.insert_events([event])
            except IntegrityError:
                refused.append(k)
                continue
            results[k].append((position, event.state))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acknowledged = dict(pair for pairs in results.values() for pair in pairs)
    assert len(refused) == len(contested)  # one of each racing pair lost
    assert len(acknowledged) == 8 * 150 - len(contested)
    stored = {n.id: n.state for n in recorder.select_notifications(1, 10_000)}
    assert stored == acknowledged  # gapless, and each event where its caller was told
    assert sorted(stored) == list(range(1, len(stored) + 1))
