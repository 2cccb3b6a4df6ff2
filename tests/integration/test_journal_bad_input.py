"""Review 14: journals cut short or damaged, full volumes, bare copies, bad output paths.

Real journals, real subprocesses (a journal LMDB reads past its end kills the
process with SIGBUS, so every open of a damaged file runs in a child). The
full-volume tests loop-mount a small ext4 (root only; skipped, saying why,
where that cannot be done).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from eventsourcing.persistence import StoredEvent
from scenario_kit import run_cli, run_python

from xoengine.datastore import open_store
from xoengine.engine import Engine
from xoengine.errors import (
    ChecksumMismatchError,
    DiskFullError,
    JournalInsideJournalError,
)
from xoengine.journal import LMDBApplicationRecorder, encode_position

if TYPE_CHECKING:
    from collections.abc import Iterator

SCENARIO = "s"


def _state(where: Path, files: dict[str, bytes]) -> Path:
    """A state directory with scenario ``s`` replicated once; the master at ``where/m``."""
    master = where / "m"
    for name, data in files.items():
        (master / name).parent.mkdir(parents=True, exist_ok=True)
        (master / name).write_bytes(data)
    state = where / "state"
    with Engine.open(state, durability="nosync") as eng:
        sc = eng.create_scenario(SCENARIO, master=str(master), replicas={"r1": str(where / "r1")})
        sc.start()
        sc.wait_replicated()
        sc.stop()
    return state


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A bare journal copy (``xoengine journal copy``) of a small scenario."""
    state = _state(tmp_path, {"f.txt": b"hi\n", "d/g.txt": b"g" * 3000})
    made = run_cli("journal", "copy", state, tmp_path / "copy")
    assert made.returncode == 0, made.stderr
    return tmp_path / "copy"


# -- a data file cut short ---------------------------------------------------------------

_OPEN = """
import sys
from xoengine.engine import Engine
from xoengine.errors import XoError
try:
    with Engine.open(sys.argv[1], readonly=sys.argv[2] == "readonly") as eng:
        eng.scenarios()
except XoError as e:
    print(e.code, e.exit_code)
else:
    print("opened")
"""


@pytest.mark.parametrize("cut", [0, 4097, 5000, 8191])
def test_journal_cut_inside_its_second_meta_page_is_damage_on_every_open(
    copy: Path, tmp_path: Path, cut: int
) -> None:
    """Was SIGBUS: a data file cut inside its second meta page was mapped and read past its end.

    Cut to nothing (review 19): a writable open made a new empty journal in it (E3002
    "no scenario", and ``verify`` then said OK); read-only opens said E4000.
    """
    os.truncate(copy / "data.mdb", cut)
    for verb in (
        ["journal", "verify", copy],
        ["journal", "log", copy],
        ["history", copy, SCENARIO, "f.txt"],
        ["replay", copy, SCENARIO, "--to", tmp_path / "out"],
    ):
        result = run_cli(*verb)
        assert result.returncode == 4, (verb, result.returncode, result.stderr)
        assert "E4005" in result.stderr and "cut short" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
    # Opened as a state directory (its journal in journal/), read-only and writable.
    state = tmp_path / "cut-state"
    state.mkdir()
    shutil.copytree(copy, state / "journal")
    for mode in ("readonly", "writable"):
        result = run_python(_OPEN, state, mode)
        assert result.stdout.split() == ["E4005", "4"], (mode, result.returncode, result.stderr)
    assert (state / "journal" / "data.mdb").stat().st_size == cut  # nothing written to it


@pytest.mark.parametrize("name", ["lock.mdb", "data.mdb"])
def test_a_journal_file_that_is_a_link_is_refused_and_its_target_left_alone(
    copy: Path, tmp_path: Path, name: str
) -> None:
    """Review 19: a copy whose lock.mdb was a symbolic link had LMDB write its reader
    table through it (a read-only ``history`` turned a 32-byte file into 65,664 bytes).
    Review 22 (A, F6): refused as a setup to change (E1001, exit 2), not as damage."""
    decoy = tmp_path / "decoy"
    decoy.write_bytes(b"an investigator's own file\n")
    moved = tmp_path / f"{name}.real"
    (copy / name).rename(moved)
    if name == "data.mdb":  # the link names the real data: still refused, never read through
        (copy / name).symlink_to(moved)
    else:
        (copy / name).symlink_to(decoy)
    for verb in (["history", copy, SCENARIO, "f.txt"], ["journal", "verify", copy]):
        result = run_cli(*verb)
        assert result.returncode == 2, (verb, result.stderr)
        assert "E1001" in result.stderr and f"{name} is a symbolic link" in result.stderr
    state = tmp_path / "linked-state"
    (state / "journal").mkdir(parents=True)
    for entry in copy.iterdir():
        (state / "journal" / entry.name).symlink_to(entry) if entry.is_symlink() else shutil.copy(
            entry, state / "journal" / entry.name
        )
    for mode in ("readonly", "writable"):
        result = run_python(_OPEN, state, mode)
        assert result.stdout.split() == ["E1001", "2"], (mode, result.returncode, result.stderr)
    assert decoy.read_bytes() == b"an investigator's own file\n"


def test_structural_damage_exits_4_like_any_damage(copy: Path) -> None:
    """Was exit 3 (E4000, a failed store): a root page beyond the file's end is damage."""
    os.truncate(copy / "data.mdb", 8192)  # both meta pages, none of the tables
    result = run_cli("journal", "verify", copy)
    assert result.returncode == 4, result.stderr
    assert "E4005" in result.stderr and "LMDB page structure damaged" in result.stderr
    assert run_cli("history", copy, SCENARIO, "f.txt").returncode == 4


_ADD_TABLE = """
import sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=100)
notes = env.open_db(b"investigator.notes")
with env.begin(write=True) as txn:
    txn.put(b"k", b"v", db=notes)
env.close()
"""


_LOSE_TOPIC_ENTRY = """
import sys, lmdb
from xoengine.record import topic_key
env = lmdb.open(sys.argv[1], max_dbs=100)
topics = env.open_db(b"xoengine.events.topics")
tkey = topic_key("xoengine.events:" + (sys.argv[3] if len(sys.argv) > 3 else "FileDeleted"))
with env.begin(write=True) as txn:
    key, value = next((k, v) for k, v in txn.cursor(db=topics) if k.startswith(tkey))
    txn.delete(key, db=topics)
    if sys.argv[2] == "moved":  # a bit flipped in its topic half: under another topic
        txn.put(bytes([key[0] ^ 0x10]) + key[1:], value, db=topics)
env.close()
"""


@pytest.mark.parametrize("damage", ["lost", "moved"])
def test_a_topic_index_entry_lost_or_moved_is_damage_not_a_wrong_tree(
    tmp_path: Path, damage: str
) -> None:
    """Review 23 (F, H1): replay and diff read file events through the topic index.
    An entry lost, or moved under another topic by a flipped key bit, was never read:
    deleted files came back in the replay, with exit 0."""
    state = _state(tmp_path, {"keep.txt": b"k", "gone/a.txt": b"a", "gone/b.txt": b"b"})
    with Engine.open(state, durability="nosync") as eng:
        sc = eng.scenario(SCENARIO)
        shutil.rmtree(tmp_path / "m" / "gone")
        sc.capture()
        sc.stop()
    assert run_cli("journal", "copy", state, tmp_path / "copy").returncode == 0
    damaged = run_python(_LOSE_TOPIC_ENTRY, tmp_path / "copy", damage)
    assert damaged.returncode == 0, damaged.stderr
    replay = run_cli("replay", tmp_path / "copy", SCENARIO, "--to", tmp_path / "out")
    assert replay.returncode == 4, replay.stderr
    if damage == "lost":
        assert "E4010" in replay.stderr and "topic index names" in replay.stderr
    else:  # found by its checksum, which covers its key
        assert "E4011" in replay.stderr and "xoengine.events.topics" in replay.stderr
    assert not (tmp_path / "out" / "gone").exists()
    assert run_cli("diff", tmp_path / "copy", SCENARIO, "1").returncode == 4
    assert run_cli("journal", "verify", tmp_path / "copy").returncode == 4


def test_a_lost_index_entry_of_a_scenario_event_is_damage_not_no_scenario(
    tmp_path: Path,
) -> None:
    """Review 26 (O F9): the open reads the scenario events through the topic index
    without counting it. With the entry of the ScenarioCreated lost, the journal read
    as one with no scenario: `scenario list` printed [] (exit 0), and every verb said
    "No scenario named 's'" (E3002, exit 2: the user's typo)."""
    state = _state(tmp_path, {"keep.txt": b"k"})
    assert run_cli("journal", "copy", state, tmp_path / "copy").returncode == 0
    damaged = run_python(_LOSE_TOPIC_ENTRY, tmp_path / "copy", "lost", "ScenarioCreated")
    assert damaged.returncode == 0, damaged.stderr
    for verb in (
        ["scenario", "list", tmp_path / "copy"],
        ["rewind-points", tmp_path / "copy", SCENARIO],
    ):
        result = run_cli(*verb)
        assert result.returncode == 4, (verb, result.stdout, result.stderr)
        assert "E4010" in result.stderr and "topic index names" in result.stderr, result.stderr
    assert run_cli("scenario", "list", state).returncode == 0


_LOSE_STREAM_ENTRY = """
import sys, lmdb
from xoengine.record import stream_key
from xoengine.journal import decode_event
env = lmdb.open(sys.argv[1], max_dbs=100)
events = env.open_db(b"xoengine.events")
streams = env.open_db(b"xoengine.events.streams")
with env.begin(write=True) as txn:
    writes = []
    for key, value in txn.cursor(db=events):
        event, _ = decode_event(key, value, "xoengine.events")
        if event.topic.endswith(":BytesWritten"):
            writes.append(event)
    first, second, third = writes  # v1 (its creation's bytes), v2, v3
    lost = {"middle": second, "last": third}[sys.argv[2]]
    txn.delete(stream_key(lost.originator_id, lost.originator_version), db=streams)
env.close()
"""


@pytest.mark.parametrize("lost", ["middle", "last"])
def test_a_stream_index_entry_lost_is_damage_not_an_older_file(tmp_path: Path, lost: str) -> None:
    """Review 24 (H2): a read of one file follows its stream index, whose values are
    raw positions. With the entry of a write lost, `cat` gave the file's bytes from
    before that write, `history` left the write out, and `journal verify` said OK,
    all with exit 0. Review 26 (P2): the same with the stream's last entry lost,
    which leaves no gap in its versions (the master state names a later one)."""
    state = _state(tmp_path, {"f.txt": b"v1"})
    with Engine.open(state, durability="nosync") as eng:
        sc = eng.scenario(SCENARIO)
        for data in (b"v2", b"v3"):
            (tmp_path / "m" / "f.txt").write_bytes(data)
            sc.capture()
            sc.set_rewind_point(data.decode())
        sc.stop()
    assert run_cli("journal", "copy", state, tmp_path / "copy").returncode == 0
    damaged = run_python(_LOSE_STREAM_ENTRY, tmp_path / "copy", lost)
    assert damaged.returncode == 0, damaged.stderr
    for verb in (
        ["cat", tmp_path / "copy", SCENARIO, "f.txt", "--at", "v3"],
        ["history", tmp_path / "copy", SCENARIO, "f.txt"],
        ["journal", "verify", tmp_path / "copy"],
    ):
        result = run_cli(*verb)
        assert result.returncode == 4, (verb, result.stdout, result.stderr)
        assert "E4010" in result.stderr + result.stdout, (verb, result.stderr)
        assert "stream index" in result.stderr + result.stdout, (verb, result.stderr)
    intact = run_cli("cat", state, SCENARIO, "f.txt", "--at", "v2")
    assert (intact.returncode, intact.stdout) == (0, "v2"), intact.stderr


_CRAFT = """
import struct, sys, zlib, lmdb, msgpack, xxhash
env = lmdb.open(sys.argv[1], max_dbs=100)
events = env.open_db(b"xoengine.events")
key = struct.pack(">Q", int(sys.argv[2]))
keep = {"ext_hook": msgpack.ExtType, "raw": False, "strict_map_key": False}
with env.begin(write=True) as txn:
    record = msgpack.unpackb(txn.get(key, db=events)[9:], **keep)
    state = msgpack.unpackb(record[4], **keep)
    if sys.argv[3] == "copy":
        copy = [op for op in state["ops"] if op[0] == "copy"][-1]
        copy[1] -= 8  # a delta that copies the wrong bytes; its digests left as they were
    elif sys.argv[3] == "length":
        state["ranges"][0][1] -= 5  # a write that takes less than its blob
    elif sys.argv[3] == "no ranges":
        del state["ranges"]
    elif sys.argv[3] == "oid kind":
        record[0] = 2  # neither a UUID (0) nor a str (1) originator
    elif sys.argv[3] == "label back":
        record[5] = 1  # a time label before the one before it
    record[4] = msgpack.packb(state, use_bin_type=True)
    if sys.argv[3] == "compressed":
        record[4] = zlib.compress(record[4])
    body = msgpack.packb(record, use_bin_type=True)
    checksum = struct.pack(">Q", xxhash.xxh3_64_intdigest(key + body))
    txn.put(key, b"\x01" + checksum + body, db=events)  # a frame that verifies
env.close()
"""


def test_a_delta_whose_bytes_miss_its_result_digest_is_damage_not_a_wrong_file(
    tmp_path: Path,
) -> None:
    """Review 23 (F, H3): replay applied a ContentReplaced without checking its
    `result` digest (nor `base`): a delta that copied the wrong bytes, in a frame
    whose checksum holds, made a wrong file with exit 0."""
    data = random.Random(23).randbytes(200_000)  # no repeats: each copy from its own offset
    state = _state(tmp_path, {"big.bin": data})
    with Engine.open(state, durability="nosync") as eng:
        sc = eng.scenario(SCENARIO)
        shifted = data[:100_000] + b"0123456789" + data[100_000:]  # journaled as a delta
        (tmp_path / "m" / "big.bin").write_bytes(shifted)
        sc.capture()
        sc.stop()
        replaced = [h.position for h in eng.history(SCENARIO, "big.bin")]
    assert run_cli("journal", "copy", state, tmp_path / "copy").returncode == 0
    crafted = run_python(_CRAFT, tmp_path / "copy", replaced[-1], "copy")
    assert crafted.returncode == 0, crafted.stderr
    replay = run_cli("replay", tmp_path / "copy", SCENARIO, "--to", tmp_path / "out")
    assert replay.returncode == 4, replay.stderr
    assert "E4010" in replay.stderr and "digests" in replay.stderr


def test_a_write_that_takes_another_length_than_its_blob_is_damage(tmp_path: Path) -> None:
    """Review 23 (F, M7): a BytesWritten range whose length is not its blob's (a frame
    that verifies) replayed a wrong file with exit 0; verify said OK."""
    state = _state(tmp_path, {"f.bin": b"0123456789" * 100})
    with Engine.open(state, readonly=True) as eng:
        written = [h.position for h in eng.history(SCENARIO, "f.bin")][-1]
    assert run_cli("journal", "copy", state, tmp_path / "copy").returncode == 0
    crafted = run_python(_CRAFT, tmp_path / "copy", written, "length")
    assert crafted.returncode == 0, crafted.stderr
    replay = run_cli("replay", tmp_path / "copy", SCENARIO, "--to", tmp_path / "out")
    assert replay.returncode == 4 and "E4010" in replay.stderr, replay.stderr
    verified = run_cli("journal", "verify", tmp_path / "copy")
    assert verified.returncode == 4 and "holds 1000" in verified.stdout, verified.stdout


@pytest.mark.parametrize("craft", ["no ranges", "compressed", "oid kind"])
def test_an_event_state_that_does_not_decode_is_damage_not_a_traceback(
    tmp_path: Path, craft: str
) -> None:
    """Review 23 (F, M6): a frame that verifies but whose state is not its topic's (a
    field missing, a compressed state) ended replay in a Python traceback, exit 1."""
    state = _state(tmp_path, {"f.bin": b"0123456789" * 100})
    with Engine.open(state, readonly=True) as eng:
        written = [h.position for h in eng.history(SCENARIO, "f.bin")][-1]
    assert run_cli("journal", "copy", state, tmp_path / "copy").returncode == 0
    crafted = run_python(_CRAFT, tmp_path / "copy", written, craft)
    assert crafted.returncode == 0, crafted.stderr
    for verb in (["replay", "--to", str(tmp_path / "out")], ["cat", "f.bin"]):
        done = run_cli(verb[0], tmp_path / "copy", SCENARIO, *verb[1:])
        assert done.returncode == 4, done.stderr
        assert "E4010" in done.stderr and "Traceback" not in done.stderr


def test_verify_finds_a_time_label_that_goes_back(tmp_path: Path) -> None:
    """Review 23 (F, M7): labels never go back (journal-format.md); one that did, in a
    frame that verifies, passed `journal verify`."""
    state = _state(tmp_path, {"f.bin": b"f"})
    with Engine.open(state, readonly=True) as eng:
        written = [h.position for h in eng.history(SCENARIO, "f.bin")][-1]
    assert run_cli("journal", "copy", state, tmp_path / "copy").returncode == 0
    crafted = run_python(_CRAFT, tmp_path / "copy", written, "label back")
    assert crafted.returncode == 0, crafted.stderr
    verified = run_cli("journal", "verify", tmp_path / "copy")
    assert verified.returncode == 4 and "is before the one before it" in verified.stdout


_LOSE_A_BLOB = """
import sys, lmdb
env = lmdb.open(sys.argv[1], max_dbs=100)
blobs = env.open_db(b"blobs")
with env.begin(write=True) as txn:
    key = max((k for k, _ in txn.cursor(db=blobs)), key=lambda k: int.from_bytes(k[16:24], "big"))
    txn.delete(key, db=blobs)  # the largest: the 4 MiB one, as a lost overflow page would
env.close()
"""


def test_verify_finds_a_blob_an_event_names_gone(tmp_path: Path) -> None:
    """Review 23 (F, H2): `journal verify` checked the blobs there, not that the events'
    blobs are: a journal that lost a blob verified OK, and its replay failed later."""
    state = _state(tmp_path, {"big.bin": random.Random(7).randbytes(5 << 20), "f.txt": b"f"})
    assert run_cli("journal", "copy", state, tmp_path / "copy").returncode == 0
    lost = run_python(_LOSE_A_BLOB, tmp_path / "copy")
    assert lost.returncode == 0, lost.stderr
    verified = run_cli("journal", "verify", tmp_path / "copy")
    assert verified.returncode == 4, verified.stdout
    assert "which is not stored" in verified.stdout + verified.stderr


def test_a_table_another_program_added_is_named_as_such(copy: Path) -> None:
    # Refused (the journal is no longer what xoengine wrote), but not called a
    # damaged table directory with "missing []".
    assert run_python(_ADD_TABLE, copy).returncode == 0
    result = run_cli("journal", "verify", copy)
    assert result.returncode == 4, result.stderr
    assert "E4005" in result.stderr
    assert "tables xoengine did not make: [b'investigator.notes']" in result.stderr


def test_empty_data_file_is_still_a_new_journal(tmp_path: Path) -> None:
    """Only a file shorter than its meta pages is damage: an empty one is a journal to start.

    Not for a read (review 22 A, F5): it cannot start one; an empty data file is a
    copy cut to nothing. It said E4000 "Bad file descriptor" and made lock.mdb, then
    E4005 on the next read.
    """
    (tmp_path / "state" / "journal").mkdir(parents=True)
    (tmp_path / "state" / "journal" / "data.mdb").touch()
    for _ in range(2):
        result = run_cli("history", tmp_path / "state", SCENARIO, "f.txt")
        assert result.returncode == 4, result.stderr
        assert "E4005" in result.stderr and "empty" in result.stderr
    assert os.listdir(tmp_path / "state" / "journal") == ["data.mdb"]
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        assert eng.scenarios() == []


# -- a bare copy opened writable by mistake ----------------------------------------------


def test_writable_verb_on_a_bare_copy_creates_nothing_and_hides_nothing(copy: Path) -> None:
    """Was: E3002 after making an empty COPY/journal, which every later read then read."""
    before = sorted(os.listdir(copy))
    result = run_cli("rewind-points", copy, SCENARIO, "--set", "oops")
    assert result.returncode == 2, result.stderr
    assert "E1002" in result.stderr and "bare journal copy" in result.stderr
    assert sorted(os.listdir(copy)) == before
    history = run_cli("history", copy, SCENARIO, "f.txt")
    assert history.returncode == 0, history.stderr
    assert "f.txt" in history.stdout
    with pytest.raises(JournalInsideJournalError):
        Engine.open(copy, durability="nosync")
    assert sorted(os.listdir(copy)) == before


# -- output paths ------------------------------------------------------------------------


def test_bad_output_paths_are_coded_usage_errors(copy: Path, tmp_path: Path) -> None:
    """Were raw NotADirectoryError / FileNotFoundError tracebacks (exit 1)."""
    (tmp_path / "afile").touch()
    for args in (
        ["replay", copy, SCENARIO, "--to", tmp_path / "afile" / "x"],
        ["replay", copy, SCENARIO, "--to", "/proc/xoengine-no-such"],
        ["replay", copy, SCENARIO, "--to", copy / "replayed"],
        ["cat", copy, SCENARIO, "f.txt", "--out", tmp_path / "nodir" / "x"],
        ["cat", copy, SCENARIO, "f.txt", "--out", copy / "f.out"],
        ["cat", copy, SCENARIO, "f.txt", "--scratch", tmp_path / "nonexistent"],
    ):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("error E2007:"), (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert sorted(os.listdir(copy)) == ["data.mdb", "lock.mdb"]
    assert not (tmp_path / "nodir").exists()


def test_replay_into_the_state_directory_is_refused(tmp_path: Path) -> None:
    state = _state(tmp_path, {"f.txt": b"hi\n"})
    result = run_cli("replay", state, SCENARIO, "--to", state / "journal" / "replayed")
    assert result.returncode == 2, result.stderr
    assert "E2007" in result.stderr and "inside the state directory" in result.stderr
    assert not (state / "journal" / "replayed").exists()


def test_failed_replay_removes_the_directories_it_made(tmp_path: Path) -> None:
    """Was: new/deep stayed behind a replay into new/deep/target that failed (a damaged blob)."""
    secret = os.urandom(3000)
    state = _state(tmp_path, {"d/victim.bin": secret, "ok.txt": b"ok"})
    assert run_cli("journal", "copy", state, tmp_path / "copy").returncode == 0
    data = tmp_path / "copy" / "data.mdb"  # compacted: the blob's one copy
    raw = bytearray(data.read_bytes())
    at = raw.find(secret[100:200])
    assert at > 0
    raw[at + 50] ^= 0x01
    data.write_bytes(raw)
    result = run_cli("replay", "copy", SCENARIO, "--to", "new/deep/target", cwd=tmp_path)
    assert result.returncode == 4, result.stderr
    assert not (tmp_path / "new").exists()
    # E4011 names the blob by its key, not as a journal position.
    assert "E4011" in result.stderr
    assert "at key " in result.stderr and "at position" not in result.stderr


# -- messages and exit codes -------------------------------------------------------------


def test_path_errors_exit_2_and_the_scenario_hint_names_a_real_command(copy: Path) -> None:
    escapes = run_cli("history", copy, SCENARIO, "../x")
    assert escapes.returncode == 2, escapes.stderr
    assert "E2001" in escapes.stderr
    missing = run_cli("history", copy, "nosuch", "x")
    assert missing.returncode == 2
    assert "`xoengine scenario list STATE`" in missing.stderr
    assert run_cli("scenario", "list", copy).returncode == 0


def test_damage_messages_name_what_they_name() -> None:
    blob = ChecksumMismatchError(position="9f" * 16, table="xoengine.blobs")
    assert "at key " + "9f" * 16 in blob.message and "position" not in blob.message
    event = ChecksumMismatchError(position=17, table="default.events")
    assert "at position 17 in default.events" in event.message
    full = DiskFullError(path="/mnt/replica")
    assert "/mnt/replica" in full.message and "journal" not in full.message
    assert "state directory" not in full.hint


# -- full volumes ------------------------------------------------------------------------


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB ext4 loop-mounted for the test (root only), always unmounted."""
    image, mount_point = tmp_path / "small.img", tmp_path / "vol"
    mount_point.mkdir()
    with image.open("wb") as f:
        f.truncate(8 * 1024 * 1024)
    made = subprocess.run(
        ["mkfs.ext4", "-q", "-m", "0", "-F", str(image)],
        capture_output=True,
        text=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot make an ext4 image: {made.stderr.strip()}")
    mounted = subprocess.run(
        ["mount", "-o", "loop", str(image), str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _fill(volume: Path, leave: int) -> Path:
    """Fill ``volume`` up to about ``leave`` free bytes; the filler file."""
    filler = volume / "filler"
    with filler.open("wb", buffering=0) as f:
        while True:
            stat = os.statvfs(volume)
            if stat.f_bavail * stat.f_frsize <= leave + 64 * 1024:
                break
            try:
                f.write(bytes(64 * 1024))
            except OSError:
                break
    return filler


def test_journal_copy_onto_a_full_volume_leaves_nothing_and_can_be_retried(
    tmp_path: Path, small_volume: Path
) -> None:
    """Was: a partial data.mdb stayed, and the retry said E1001 "already holds a journal"."""
    files = {f"f{i}": os.urandom(400 * 1024) for i in range(10)}
    state = _state(tmp_path, files)
    filler = _fill(small_volume, leave=1024 * 1024)
    destination = small_volume / "deep" / "copy"
    result = run_cli("journal", "copy", state, destination)
    assert result.returncode == 3, result.stderr
    assert "E4004" in result.stderr and str(destination) in result.stderr
    assert "the copy was not made" in result.stderr
    assert sorted(os.listdir(small_volume)) == ["filler", "lost+found"]
    filler.unlink()
    again = run_cli("journal", "copy", state, destination)
    assert again.returncode == 0, again.stderr
    assert "verified OK" in again.stdout


def test_replay_onto_a_full_volume_names_that_volume(tmp_path: Path, small_volume: Path) -> None:
    """Was: "No space left for the journal", hinting at the state directory's volume."""
    files = {f"d/f{i}": os.urandom(512 * 1024) for i in range(8)}
    state = _state(tmp_path, files)
    _fill(small_volume, leave=1024 * 1024)
    target = small_volume / "new" / "target"
    with Engine.open(state, readonly=True) as eng, pytest.raises(DiskFullError) as caught:
        eng.replay(SCENARIO, to=str(target))
    assert str(target) in caught.value.message
    assert "journal" not in caught.value.message
    assert sorted(os.listdir(small_volume)) == ["filler", "lost+found"]


@pytest.mark.parametrize("pages_cut", [1, 37])
def test_a_state_directory_journal_cut_among_its_data_pages_is_damage(
    tmp_path: Path, pages_cut: int
) -> None:
    """Was SIGBUS: pages the newest commit uses, cut from the end of a live journal."""
    state = _state(tmp_path, {f"f{i}.bin": os.urandom(40_000) for i in range(40)})
    data = state / "journal" / "data.mdb"
    os.truncate(data, data.stat().st_size - pages_cut * 4096)
    for verb in (
        ["journal", "verify", state],
        ["replay", state, SCENARIO, "--to", tmp_path / "out"],
        ["history", state, SCENARIO, "f1.bin"],
    ):
        result = run_cli(*verb)
        assert result.returncode == 4, (verb, result.returncode, result.stderr)
        assert "E4005" in result.stderr and "cut short" in result.stderr, result.stderr
    for mode in ("readonly", "writable"):
        result = run_python(_OPEN, state, mode)
        assert result.stdout.split() == ["E4005", "4"], (mode, result.returncode, result.stderr)


def test_a_damaged_record_still_lets_every_record_before_it_be_read(tmp_path: Path) -> None:
    """``records()`` reads in chunks: the good records before the damage come out first.

    The damage is in the middle of a chunk (position 1,500; chunks of 1,024), so
    a chunk read whole before it is given out would drop 1..1,024 good records.
    """
    store = open_store(tmp_path / "journal", durability="nosync")
    recorder = LMDBApplicationRecorder(store)
    recorder.create_table()
    origin = uuid.uuid4()
    recorder.insert_events(
        [StoredEvent(origin, version, "t", b"state") for version in range(1, 3001)]
    )
    table = recorder.events_table

    def damage(txn: Any) -> None:
        key = encode_position(1500)
        value = bytearray(txn.get(table, key))
        value[-1] ^= 1
        txn.put(table, key, bytes(value))

    store.write(damage)
    seen = []
    with pytest.raises(ChecksumMismatchError):
        seen.extend(record.id for record in recorder.records())
    assert seen == list(range(1, 1500))
    store.close()
    listed = run_cli("journal", "log", tmp_path / "journal")
    assert listed.returncode == 4, listed.stderr
    assert len(listed.stdout.splitlines()) == 1499


def test_a_state_directory_whose_name_is_not_utf8_works(tmp_path: Path) -> None:
    """Review 20: LMDB was given the path as text and failed (UnicodeEncodeError, uncoded)."""
    base = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    (base / "m").mkdir(parents=True)
    (base / "m" / "f").write_bytes(b"x")
    with Engine.open(base / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(base / "m"), replicas={"r1": str(base / "r1")})
        sc.start()
        sc.wait_replicated()
        sc.stop()
    result = run_cli("journal", "copy", base / "state" / "journal", base / "copy")
    assert result.returncode == 0, result.stderr
    for state in (base / "state", base / "copy"):
        with Engine.open(state, readonly=True) as eng:
            assert [e.operation for e in eng.history("s", "f")] == ["created", "written"]


def test_a_journal_copy_goes_into_an_empty_directory_outside_its_journal(tmp_path: Path) -> None:
    """Review 24 (L7): ``journal copy`` wrote beside unrelated files, and into a
    directory inside the source's own journal directory (a journal nested in a live one)."""
    state = _state(tmp_path, {"f.txt": b"hi\n"})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    for target in (tmp_path / "busy", state / "journal" / "sub"):
        refused = run_cli("journal", "copy", state, target)
        assert refused.returncode == 2 and "E2007" in refused.stderr, refused.stderr
    assert sorted(os.listdir(tmp_path / "busy")) == ["notes.txt"]
    assert not (state / "journal" / "sub").exists()
    (tmp_path / "empty").mkdir()
    assert run_cli("journal", "copy", state, tmp_path / "empty").returncode == 0


def test_journal_log_refuses_bounds_and_applications_it_cannot_have(copy: Path) -> None:
    """Review 24 (L5): ``journal log --from 500`` (past the end), ``--from 5 --to 3``
    and ``--app nosuch`` printed nothing with exit 0, where every other verb refuses
    a position outside the journal (E1001): a typo passed for "nothing there"."""
    for argv in (["--from", "500"], ["--from", "5", "--to", "3"], ["--app", "nosuch"]):
        done = run_cli("journal", "log", copy, *argv)
        assert done.returncode == 2 and "E1001" in done.stderr, (argv, done.stderr)
    assert run_cli("journal", "log", copy, "--from", "2", "--to", "3").stdout.count("\n") == 2


def test_journal_log_json_gives_each_events_fields_whole(tmp_path: Path) -> None:
    """Review 24 (L6): ``journal log --json`` had only a summary cut at 100 characters."""
    name = "d" * 60 + "/" + "f" * 80 + ".txt"
    state = _state(tmp_path, {name: b"x"})
    done = run_cli("journal", "log", state, "--json", "--topic", "FileCreated")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert name in [row["state"]["path"] for row in rows]


_ABORT_IN_THE_CHECK = """
import os
if os.environ.get("XOENGINE_VERIFY_HERE") == "1":  # as LMDB's assertions do on torn pages
    import xoengine.journal
    def aborted(*args, **kwargs):
        os.abort()
    xoengine.journal.verify = aborted
"""


@pytest.mark.parametrize("json_out", [False, True])
def test_journal_verify_says_damaged_when_lmdb_stops_the_check(
    tmp_path: Path, json_out: bool
) -> None:
    """Review 26 (O F7): on a torn copy's B-tree pages (cp of a journal being written)
    LMDB stops the process with an assertion: `journal verify`, the tool whose job is
    to say "damaged", died with exit 134, no code and no JSON. (The abort is made here
    by a sitecustomize hook in the child: a torn page that makes LMDB assert cannot be
    made to order.)"""
    state = _state(tmp_path, {"a.txt": b"a"})
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_ABORT_IN_THE_CHECK)
    paths = [str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]
    result = subprocess.run(
        [sys.executable, "-m", "xoengine", "journal", "verify", str(state)]
        + (["--json"] if json_out else []),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
    )
    assert result.returncode == 4, result.stderr
    assert "E4005" in result.stderr and "SIGABRT" in result.stderr, result.stderr
    assert run_cli("journal", "verify", state).returncode == 0
