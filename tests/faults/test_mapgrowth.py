"""The map grows under a live reader process; a second writer process is locked out.

1. A journal opened with a 1 MiB map takes ~40 MiB of events while a follower
   process (``follower.py``) reads it from two threads: a subscription from
   position 1 and a tail poller (``max_notification_id`` plus the last records).
   The writer's map must grow transparently (MapFullError from put or commit
   never reaches the caller); the reader must adopt each new size
   (MapResizedError never reaches it) and see a gapless, verified sequence. The
   writer waits at checkpoints until the reader has caught up, so that the
   reader is reading while each doubling happens.
2. A second process opening the same journal writable gets the coded
   JournalLockedError on its first write while the first writer keeps working;
   once the first closes, a new process may write.
3. A reader process killed inside a read leaves its LMDB reader slot behind;
   the running writer clears it, so the pages it frees are reused again.
"""

from __future__ import annotations

import os
import random
import subprocess
import uuid
from typing import TYPE_CHECKING

from journal_probe import (
    END_TOPIC,
    HERE,
    PYTHON,
    LineReader,
    check_records,
    make_event,
    read_all,
    run_killed,
)

from xoengine.datastore import open_store
from xoengine.journal import LMDBApplicationRecorder

if TYPE_CHECKING:
    from pathlib import Path

MIB = 1024 * 1024
TARGET_BYTES = 40 * MIB
CHECKPOINT_BYTES = 3 * MIB
FOLLOWER = os.path.join(HERE, "follower.py")
HANG_GUARD_S = 300  # only ends a stuck child so the failure is reported


def test_mapgrowth_under_live_reader_process(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    path = tmp_path / "journal"
    store = open_store(path, map_size=MIB, durability="sync")
    recorder = LMDBApplicationRecorder(store)
    recorder.create_table()
    oids = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(8)]
    versions = dict.fromkeys(oids, 0)

    def append(count: int) -> tuple[list[int], int]:
        batch = []
        for _ in range(count):
            oid = rng.choice(oids)
            versions[oid] += 1
            batch.append(make_event(oid, versions[oid], "bulky"))
        positions = recorder.insert_events(batch)
        assert positions is not None
        return list(positions), sum(len(e.state) for e in batch)

    errors = tmp_path / "follower-stderr.txt"
    follower: subprocess.Popen[bytes] | None = None
    try:
        append(1)
        start_map = store.info().map_size
        with errors.open("wb") as stderr:
            follower = subprocess.Popen(
                [PYTHON, FOLLOWER, str(path)], stdout=subprocess.PIPE, stderr=stderr, bufsize=0
            )
        assert follower.stdout is not None
        lines = LineReader(follower.stdout.fileno())
        seen = 0

        def wait_seen(position: int) -> None:
            nonlocal seen
            while seen < position:
                got = lines.read_some()
                assert got or not lines.eof, f"follower died:\n{errors.read_text()}"
                for line in got:
                    if line.startswith("SEEN "):
                        seen = int(line.split()[1])

        ready: list[str] = []
        while not ready and not lines.eof:
            ready = lines.read_some()
        # The follower may have read position 1 already: "SEEN 1" can come in the same read.
        assert ready[:1] == ["READY"], f"follower did not start:\n{errors.read_text()}"
        for line in ready[1:]:
            if line.startswith("SEEN "):
                seen = int(line.split()[1])
        written = 0
        checkpoints = 0
        next_checkpoint = CHECKPOINT_BYTES
        map_sizes = [start_map]
        last = 1
        # Append until ~40 MiB; at each checkpoint wait for the reader to catch up.
        while written < TARGET_BYTES:
            positions, size = append(rng.randint(1, 20))
            assert positions[0] == last + 1
            last = positions[-1]
            written += size
            current = store.info().map_size
            if current != map_sizes[-1]:
                map_sizes.append(current)
            if written >= next_checkpoint:
                wait_seen(last)
                checkpoints += 1
                next_checkpoint += CHECKPOINT_BYTES
        end = recorder.insert_events(
            [make_event(uuid.UUID(int=rng.getrandbits(128)), 1, topic=END_TOPIC)]
        )
        assert end is not None
        last = end[0]
        rest = lines.drain()
        returncode = follower.wait(timeout=HANG_GUARD_S)
        stderr_text = errors.read_text()
        assert returncode == 0, f"follower failed ({returncode}):\n{stderr_text}"
        done = [line for line in rest if line.startswith("DONE ")]
        assert done, f"follower ended without a report:\n{rest[-5:]}\n{stderr_text}"
        _, events, tail_reads, sizes = done[0].split()
        reader_maps = [int(s) for s in sizes.split(",")]
        # The writer's own view: gapless and verified after all the growing.
        check = check_records(read_all(recorder, page=500), kind="bulky")
        assert not check.problems, check.problems[:10]
        assert check.count == last
    finally:
        if follower is not None:
            if follower.poll() is None:
                follower.kill()
            follower.wait()
            assert follower.stdout is not None
            follower.stdout.close()
        store.close()
    print(
        f"\nmapgrowth: seed {seed}, {last} events, {written / MIB:.1f} MiB of state, "
        f"writer map {start_map // 1024} KiB -> {map_sizes[-1] // MIB} MiB "
        f"({len(map_sizes) - 1} growths), checkpoints {checkpoints}"
    )
    print(
        f"mapgrowth: reader saw {events} events gapless and verified, {tail_reads} tail reads, "
        f"map sizes adopted {[s // 1024 for s in reader_maps]} KiB, errors 0"
    )
    assert int(events) == last
    assert map_sizes[0] == MIB and map_sizes[-1] >= 32 * MIB
    assert len(reader_maps) >= 2, "the reader never saw the map grow"


_SECOND_WRITER = """
import sys
from eventsourcing.persistence import StoredEvent
from xoengine.datastore import open_store
from xoengine.errors import JournalLockedError, XoError
from xoengine.journal import LMDBApplicationRecorder
import uuid
store = open_store(sys.argv[1], durability="sync")
recorder = LMDBApplicationRecorder(store)
event = StoredEvent(originator_id=uuid.uuid4(), originator_version=1, topic="t", state=b"x")
try:
    positions = recorder.insert_events([event])
except JournalLockedError as e:
    print("LOCKED", e.code, e.fields.get("pid"))
else:
    print("WROTE", positions[0])
# Reading is still allowed.
print("MAX", recorder.max_notification_id())
store.close()
"""


def _second_writer(path: Path) -> list[str]:
    result = subprocess.run(
        [PYTHON, "-c", _SECOND_WRITER, str(path)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")


def test_mapgrowth_second_writer_process_is_locked_out(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    store = open_store(path, map_size=MIB, durability="sync")
    oid = uuid.uuid4()
    try:
        recorder = LMDBApplicationRecorder(store)
        recorder.create_table()
        recorder.insert_events([make_event(oid, v, "bulky") for v in range(1, 6)])
        # 1. The second writer is refused with the coded error naming this process.
        lines = _second_writer(path)
        assert lines[0] == f"LOCKED E4002 {os.getpid()}", lines
        assert lines[1] == "MAX 5", lines
        # 2. The first keeps working, map growth included.
        for v in range(6, 400, 20):
            recorder.insert_events([make_event(oid, x, "bulky") for x in range(v, v + 20)])
        lines_again = _second_writer(path)
        assert lines_again[0] == f"LOCKED E4002 {os.getpid()}", lines_again
        check = check_records(read_all(recorder), kind="bulky")
        grown = store.info().map_size
    finally:
        store.close()
    assert not check.problems, check.problems[:10]
    assert check.count == 405
    # 3. Once the first writer has closed, another process may write.
    lines_after = _second_writer(path)
    assert lines_after[0] == "WROTE 406", lines_after
    print(
        f"\nmapgrowth: second writer refused twice with {lines[0].split()[1]} (pid of the first), "
        f"first writer appended 400 more events (map {MIB // 1024} KiB -> {grown // MIB} MiB), "
        f"after close a new writer appended at position 406"
    )


_PINNING_READER = """
import signal, sys
from xoengine.datastore import open_store
store = open_store(sys.argv[1], readonly=True)
with store.read():
    print("READING", flush=True)
    signal.pause()
"""


def test_a_reader_killed_inside_a_read_pins_no_snapshot(tmp_path: Path) -> None:
    # Review 26 F1: the writer cleared dead readers' slots only when it opened. A
    # reader killed with -9 (timeout -s KILL, the OOM killer) kept its snapshot
    # pinned, so no page freed since was reused and the file grew for as long as
    # the writer ran (a daemon runs for weeks).
    path = tmp_path / "journal"
    store = open_store(path, durability="nosync")
    value = os.urandom(64 * 4096)
    try:
        store.ensure("t")
        store.write(lambda txn: txn.put("t", b"k", value))
        lines, errors = run_killed(
            [PYTHON, "-c", _PINNING_READER, str(path)], lambda line: line == "READING"
        )
        assert lines == ["READING"], errors
        start = store.info().used_bytes
        for _ in range(40):  # each overwrite frees the 65 pages of the one before
            store.write(lambda txn: txn.put("t", b"k", os.urandom(len(value))))
        grown = store.info().used_bytes - start
    finally:
        store.close()
    # Pinned, none of the freed pages is reused: 40 values' worth (10 MiB).
    assert grown <= 4 * len(value), f"the file grew by {grown} bytes"


_THROUGH_A_LINK = """
import sys
from xoengine.datastore import open_store
from xoengine.errors import XoError
from xoengine.journal import LMDBApplicationRecorder
try:
    store = open_store(sys.argv[1], readonly=sys.argv[2] == "read")
    print("MAX", LMDBApplicationRecorder(store).max_notification_id())
    store.close()
except XoError as e:
    print("REFUSED", e.code)
"""


def _open_through(path: Path, mode: str) -> subprocess.CompletedProcess[str]:
    """Open the journal at ``path`` in a child, to ``mode`` ("write" or "read")."""
    return subprocess.run(
        [PYTHON, "-c", _THROUGH_A_LINK, str(path), mode],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )


def test_a_hard_link_of_a_live_journal_is_neither_written_nor_read_unseen(tmp_path: Path) -> None:
    # Review 26 (O F2, F3): a hard link of a live journal's data.mdb in another
    # directory has a writer.lock and an LMDB lock table of its own. A writer
    # through it was let in beside the live one (which then aborted inside LMDB),
    # and a reader through it went unseen by the live writer (aborts, damage
    # reported where there was none).
    path = tmp_path / "journal"
    store = open_store(path, map_size=MIB, durability="sync")
    link = tmp_path / "evidence" / "journal"
    link.mkdir(parents=True)
    try:
        recorder = LMDBApplicationRecorder(store)
        recorder.create_table()
        recorder.insert_events([make_event(uuid.uuid4(), v, "bulky") for v in range(1, 6)])
        os.link(path / "data.mdb", link / "data.mdb")
        for mode, code in (("write", "E4002"), ("read", "E4007")):
            result = _open_through(link, mode)
            assert result.stdout.split("\n")[0] == f"REFUSED {code}", (mode, result)
        recorder.insert_events([make_event(uuid.uuid4(), 1, "bulky")])  # the writer goes on
    finally:
        store.close()
    # With no writer left, the link reads as a copy does.
    result = _open_through(link, "read")
    assert result.stdout.split("\n")[0] == "MAX 6", result


def test_a_reader_that_opens_clears_the_slots_of_readers_killed_inside_a_read(
    tmp_path: Path,
) -> None:
    # Review 26 (O F8): only a writable open cleared the slots of readers that died.
    # While any process keeps the journal open (a daemon, a monitoring job) LMDB keeps
    # its table of readers, so killed readers added up until, at 1,024, every read
    # failed (MDB_READERS_FULL).
    path = tmp_path / "journal"
    store = open_store(path, durability="nosync")
    store.ensure("t")
    store.write(lambda txn: txn.put("t", b"k", b"v"))
    store.close()
    held = open_store(path, readonly=True)  # keeps the table of readers alive
    try:
        lines, errors = run_killed(
            [PYTHON, "-c", _PINNING_READER, str(path)], lambda line: line == "READING"
        )
        assert lines == ["READING"], errors
        assert "no active readers" not in held._env.readers()  # the dead one's slot
        opener = _open_through(path, "read")
        assert opener.stdout.startswith("MAX "), opener
        assert "no active readers" in held._env.readers()
    finally:
        held.close()
