"""Review 19 (F1): a copied state directory never writes to the original's trees.

An investigator's ``cp -a`` of a state directory holds scenarios that name the
live master and replicas. A rewind (or a rewind point, a resume, a start) run
on the copy changed the live replica behind the original's journal, even
beside the original's daemon: the copy's journal lock is its own. A writable
open of a copy is refused (E4006) until it is adopted; reading it is not.
"""

from __future__ import annotations

import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from xoengine.engine import Engine
from xoengine.errors import ReplicaInUseError, StateCopiedError
from xoengine.replica import REPLICA_LOCKS
from xoengine.testing import snapshot_contents

from scenario_kit import new_scenario, run_cli, write


@pytest.fixture
def state(tmp_path: Path) -> Path:
    """A state directory whose replica ``r1`` holds ``f`` = v2, with point ``p1`` at v1."""
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "f", b"v1")
        sc.start()
        sc.wait_replicated()
        sc.set_rewind_point("p1")
        write(master / "f", b"v2")
        sc.capture()
        sc.wait_replicated()
        sc.stop()
    finally:
        eng.close()
    return tmp_path / "state"


def _files(root: Path) -> dict[str, bytes]:
    """Every file below ``root`` and its bytes, but LMDB's readers' table (lock.mdb),
    which any read registers in."""
    return {
        str(path.relative_to(root)): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != "lock.mdb"
    }


def _copy(source: Path, target: Path) -> Path:
    subprocess.run(["cp", "-a", str(source), str(target)], check=True)
    return target


def test_writable_verbs_on_a_copy_are_refused_and_nothing_is_written(
    state: Path, tmp_path: Path
) -> None:
    copy = _copy(state, tmp_path / "copy")
    data = (copy / "journal" / "data.mdb").read_bytes()
    files = _files(copy)
    with pytest.raises(StateCopiedError) as refused:
        Engine.open(copy, durability="nosync")
    # Session 23 left: the refused open had written its pid into the copy's
    # writer.lock. Now it looks before it opens for writing.
    assert _files(copy) == files
    assert refused.value.code == "E4006"
    assert str(state) in str(refused.value) and str(copy) in str(refused.value)
    for verb in (
        ["rewind", copy, "fx", "r1", "p1"],
        ["rewind-points", copy, "fx", "--set", "mine"],
        ["resume", copy, "fx", "r1"],
        ["start", copy, "fx"],
        ["scenario", "remove", copy, "fx"],
    ):
        result = run_cli(*verb)
        assert result.returncode == 3, (verb, result.stderr)
        assert "E4006" in result.stderr and "adopt" in result.stderr, (verb, result.stderr)
    assert (tmp_path / "r1" / "f").read_bytes() == b"v2"  # the live replica untouched
    assert (copy / "journal" / "data.mdb").read_bytes() == data
    assert _files(copy) == files
    # The verbs that only look read the copy, and a dry run shows the rewind.
    result = run_cli("history", copy, "fx", "f", "--json")
    assert result.returncode == 0, result.stderr
    result = run_cli("rewind", copy, "fx", "r1", "p1", "--dry-run")
    assert result.returncode == 0, result.stderr
    result = run_cli("cat", copy, "fx", "f", "--at", "p1")
    assert (result.returncode, result.stdout) == (0, "v1"), result.stderr
    # The original writes as before.
    with Engine.open(state, durability="nosync") as eng:
        eng.scenario("fx").rewind("r1", to="p1")
    assert (tmp_path / "r1" / "f").read_bytes() == b"v1"


def test_a_journal_copied_into_a_new_state_directory_is_refused(
    state: Path, tmp_path: Path
) -> None:
    bare = tmp_path / "bare"
    result = run_cli("journal", "copy", state / "journal", bare)
    assert result.returncode == 0, result.stderr
    (tmp_path / "other").mkdir()
    _copy(bare, tmp_path / "other" / "journal")
    with pytest.raises(StateCopiedError):
        Engine.open(tmp_path / "other", durability="nosync")
    with Engine.open(bare, readonly=True) as eng:  # read as it is
        assert [p.name for p in eng.scenario("fx").rewind_points() if p.kind == "user"] == ["p1"]


def test_an_adopted_copy_writes_and_the_original_goes_on(state: Path, tmp_path: Path) -> None:
    copy = _copy(state, tmp_path / "copy")
    result = run_cli("adopt", copy, "--json")
    assert result.returncode == 0, result.stderr
    assert '"fx"' in result.stdout
    with Engine.open(copy, durability="nosync") as eng:  # adopted once: for good
        eng.scenario("fx").set_rewind_point("copy's own")
    with Engine.open(state, durability="nosync") as eng:  # its own file all along
        names = [p.name for p in eng.scenario("fx").rewind_points()]
    assert "copy's own" not in names


def test_a_moved_state_directory_needs_no_adoption_and_its_copies_name_the_new_place(
    state: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "moved"
    os.rename(state, moved)
    with Engine.open(moved, durability="nosync") as eng:
        eng.scenario("fx").set_rewind_point("after the move")
    copy = _copy(moved, tmp_path / "copy")
    with pytest.raises(StateCopiedError, match=f"made in {moved} as inode"):
        Engine.open(copy, durability="nosync")


def test_a_journal_without_the_record_is_recorded_at_its_first_writable_open(
    state: Path, tmp_path: Path
) -> None:
    """As a journal of an older xoengine: it has no record of its file until then."""
    with Engine.open(state, durability="nosync") as eng:
        eng.store.write(lambda txn: txn.delete("home", b"journal-file"))
    older = _copy(state, tmp_path / "older")
    with Engine.open(older, durability="nosync"):
        pass  # nothing to compare with: taken as it is, and recorded
    with pytest.raises(StateCopiedError, match=f"made in {older} as inode"):
        Engine.open(_copy(older, tmp_path / "copy"), durability="nosync")


def test_adopt_makes_nothing_where_there_is_no_journal(tmp_path: Path) -> None:
    result = run_cli("adopt", tmp_path / "nothing")
    assert result.returncode == 2 and "holds no journal to adopt" in result.stderr, result.stderr
    assert not (tmp_path / "nothing").exists()


def test_adopt_of_a_journal_directory_says_what_to_adopt(state: Path) -> None:
    result = run_cli("adopt", state / "journal")
    assert result.returncode == 2, result.stderr
    assert "is a journal, not a state directory" in result.stderr
    assert not (state / "journal" / "journal").exists()


def _set_home(state: Path, **record: object) -> None:
    """Write the journal's record of its data file as given (what another history left)."""
    from xoengine import codec  # noqa: PLC0415
    from xoengine.datastore import open_store  # noqa: PLC0415

    store = open_store(str(state / "journal"), durability="nosync")
    try:
        value = codec.frame(b"journal-file", codec.pack(record))
        store.write(lambda txn: txn.put("home", b"journal-file", value))
    finally:
        store.close()


def test_a_block_level_copy_is_refused_and_a_remount_is_not(state: Path, tmp_path: Path) -> None:
    """Review 20: a snapshot or image keeps the inode, on another device at another place.

    (The reviewer's run: an ext4 image copied and loop-mounted beside the original;
    the copy's rewind changed the live replica.) Here the record says so.
    """
    data = (state / "journal" / "data.mdb").stat()
    _set_home(state, inode=data.st_ino, device=data.st_dev + 1, state_dir="/mnt/original/state")
    with pytest.raises(StateCopiedError, match="of device"):
        Engine.open(state, durability="nosync")
    # The same place on another device: the volume mounted again (device numbers change).
    _set_home(state, inode=data.st_ino, device=data.st_dev + 1, state_dir=os.path.realpath(state))
    with Engine.open(state, durability="nosync"):
        pass


@pytest.mark.parametrize(
    "record",
    [
        {"x": 1},
        {"inode": 5},
        {"inode": "5", "state_dir": "/s"},
        {"inode": 5, "device": "x", "state_dir": "/s"},
    ],
)
def test_a_damaged_home_record_is_coded_and_adopting_writes_it_anew(
    state: Path, record: dict[str, object]
) -> None:
    _set_home(state, **record)
    result = run_cli("rewind-points", state, "fx", "--set", "p2")
    assert result.returncode == 4 and "E4005" in result.stderr, result.stderr
    assert "xoengine adopt" in result.stderr and "Traceback" not in result.stderr
    assert run_cli("adopt", state).returncode == 0
    with Engine.open(state, durability="nosync") as eng:
        eng.scenario("fx").set_rewind_point("p2")


def test_a_copy_is_not_adopted_while_its_original_has_a_writer(state: Path, tmp_path: Path) -> None:
    copy = _copy(state, tmp_path / "copy")
    with Engine.open(state, durability="nosync"):
        result = run_cli("adopt", copy)
        assert result.returncode == 3 and "E4002" in result.stderr, result.stderr
        assert str(os.getpid()) in result.stderr
    assert run_cli("adopt", copy).returncode == 0  # retired: taken


def test_two_state_directories_never_write_one_replica_at_once(tmp_path: Path) -> None:
    """Session 23 left: replica directories were not held across state directories.
    A second state directory whose scenario names a replica directory another open
    engine replicates to is refused (E3016) before anything is journaled or written,
    in this process and in another; once that engine closes, it may take it."""
    shared = tmp_path / "shared"
    first, second = tmp_path / "one", tmp_path / "two"
    for base in (first, second):
        (base / "master").mkdir(parents=True)
    write(first / "master" / "f", b"one's")
    write(second / "master" / "g", b"two's")
    one = Engine.open(first / "state", durability="nosync")
    try:
        sc = one.create_scenario("fx", master=str(first / "master"), replicas={"r": str(shared)})
        sc.start()
        sc.wait_replicated()
        held = snapshot_contents(shared)
        with Engine.open(second / "state", durability="nosync") as two:
            other = two.create_scenario(
                "fx", master=str(second / "master"), replicas={"r": str(shared)}
            )
            created = two.last_position()
            with pytest.raises(ReplicaInUseError) as refused:
                other.start()
            assert refused.value.code == "E3016" and str(shared) in str(refused.value)
            assert other.state == "Stopped" and two.last_position() == created  # nothing more
        result = run_cli("start", second / "state", "fx")
        assert result.returncode == 3 and "E3016" in result.stderr, result.stderr
        assert snapshot_contents(shared) == held
        write(first / "master" / "f", b"one's, again")
        sc.capture()
        sc.wait_replicated()  # its own engine goes on writing it
        assert (shared / "f").read_bytes() == b"one's, again"
    finally:
        one.close()
    with Engine.open(second / "state", durability="nosync") as two:
        two.scenario("fx").start()
        two.scenario("fx").wait_replicated()
    assert sorted(os.listdir(shared)) == ["g"]


def test_a_replica_root_is_held_once_by_its_engine_whatever_its_threads_do(
    tmp_path: Path,
) -> None:
    """Review 24 (I3, I4): two threads of one engine claiming its replica at once (the
    applier and a synchronization) could refuse it as another engine's (E3016); the
    lock files lay in a directory every user may write, under names anyone can tell,
    and a link planted there was followed."""
    master, replica = tmp_path / "m", tmp_path / "r"
    write(master / "f", b"f")
    replica.mkdir()
    st = replica.stat()
    planted = REPLICA_LOCKS + f"/{st.st_dev:x}-{st.st_ino:x}"
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("fx", master=str(master), replicas={"r": str(replica)})
        applier = sc._replica("r")
        refused = []
        for _ in range(50):
            applier.release()
            both = threading.Barrier(2)

            def claim() -> None:
                both.wait()
                try:
                    applier.claim()
                except ReplicaInUseError as e:
                    refused.append(e)

            threads = [threading.Thread(target=claim) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert refused == []
        mode = os.stat(REPLICA_LOCKS).st_mode
        assert stat.S_IMODE(mode) == 0o700 and os.stat(REPLICA_LOCKS).st_uid == os.getuid()
        applier.release()
        os.symlink(tmp_path / "made-through-a-link", planted)
        try:
            applier.claim()  # not held (nowhere safe), and nothing made through the link
            assert not (tmp_path / "made-through-a-link").exists()
        finally:
            os.unlink(planted)
