"""The stream index: unmerged events held in memory, merged into the sorted index in batches.

Appends only append; an event's ``(originator, version) -> position`` entry is
found by scanning the events above the merge marker until the writer merges a
batch of them into the sorted index. These tests cover what the recorder
suites and the POPO model property cannot reach: a read snapshot older than a
merge, a journal written before the marker existed, another process reading,
and reader slots under many failed appends.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING

import pytest
from eventsourcing.persistence import IntegrityError, StoredEvent

from xoengine.datastore import open_store
from xoengine.journal import LMDBApplicationRecorder

if TYPE_CHECKING:
    from pathlib import Path


def _event(oid: uuid.UUID, version: int) -> StoredEvent:
    return StoredEvent(oid, version, "t", f"{oid}:{version}".encode())


def _versions(recorder: LMDBApplicationRecorder, oid: uuid.UUID) -> list[int]:
    return [e.originator_version for e in recorder.select_events(oid)]


def test_a_snapshot_older_than_a_merge_still_finds_its_unmerged_events(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "j"), durability="nosync")
    try:
        recorder = LMDBApplicationRecorder(store, merge_at=4)
        recorder.create_table()
        oid = uuid.uuid4()
        recorder.insert_events([_event(oid, 1), _event(oid, 2)])
        with store.read() as old:
            marker, last, _ = recorder._bounds(old)
            assert (marker, last) == (0, 2)
            recorder.insert_events([_event(oid, 3), _event(oid, 4)])  # the 4th: a merge
            with store.read() as new:
                assert recorder._bounds(new)[:2] == (4, 4)
            assert _versions(recorder, oid) == [1, 2, 3, 4]
            # The shared entries moved on past the old snapshot: it scans for itself.
            prefix = b"\x00" + oid.bytes
            assert recorder._tail.read(old, marker, last, prefix) == {1: 1, 2: 2}
    finally:
        store.close()


def test_a_journal_without_a_marker_counts_as_all_indexed(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    store = open_store(path, durability="nosync")
    try:
        plain = LMDBApplicationRecorder(store, merge_at=1)  # every append merged
        plain.create_table()
        oids = [uuid.uuid4() for _ in range(3)]
        for version in (1, 2):
            plain.insert_events([_event(o, version) for o in oids])
        # What a journal written before the marker existed looks like.
        store.write(lambda txn: txn.delete(plain.marker_table, b"upto"))
        batched = LMDBApplicationRecorder(store, merge_at=100)
        batched.insert_events([_event(o, 3) for o in oids])
        with pytest.raises(IntegrityError):
            batched.insert_events([_event(oids[0], 2)])  # indexed before the marker
        fresh = LMDBApplicationRecorder(store)  # builds its view by scanning
        assert all(_versions(fresh, o) == [1, 2, 3] for o in oids)
        assert all(_versions(batched, o) == [1, 2, 3] for o in oids)
    finally:
        store.close()


_CHILD = """
import json, sys, uuid
from xoengine.datastore import open_store
from xoengine.journal import LMDBApplicationRecorder
store = open_store(sys.argv[1], readonly=True)
recorder = LMDBApplicationRecorder(store)
oids = [uuid.UUID(o) for o in json.loads(sys.argv[2])]
print(json.dumps([[e.originator_version for e in recorder.select_events(o)] for o in oids]))
store.close()
"""


def test_another_process_reads_unmerged_and_merged_streams(tmp_path: Path) -> None:
    path = str(tmp_path / "j")
    store = open_store(path, durability="sync")
    try:
        recorder = LMDBApplicationRecorder(store, merge_at=7)
        recorder.create_table()
        oids = [uuid.uuid4() for _ in range(4)]
        for version in range(1, 6):  # 20 events: two merges, six above the marker
            recorder.insert_events([_event(o, version) for o in oids])
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, path, json.dumps([str(o) for o in oids])],
            capture_output=True,
            text=True,
            check=True,
        )
        assert json.loads(child.stdout) == [[1, 2, 3, 4, 5]] * 4
    finally:
        store.close()


def test_failed_appends_do_not_hold_reader_slots(tmp_path: Path) -> None:
    # Each IntegrityError's traceback is a reference cycle; with the collector off,
    # anything it keeps alive stays. A read transaction kept alive held its reader
    # slot, and LMDB has 1,024 of them.
    store = open_store(str(tmp_path / "j"), durability="nosync")
    gc.disable()
    try:
        recorder = LMDBApplicationRecorder(store)
        recorder.create_table()
        oid = uuid.uuid4()
        recorder.insert_events([_event(oid, 1)])
        for _ in range(1100):
            with pytest.raises(IntegrityError):
                recorder.insert_events([_event(oid, 1)])
        assert _versions(recorder, oid) == [1]
    finally:
        gc.enable()
        store.close()
