"""Behaviour of the recent changes that no other test pinned (review 26n).

Each test closes a gap found by mutation testing: a hand-made change to
``capture.py``, ``scenario.py``, ``rewind.py``, ``worker.py``, ``sync.py``,
``record.py`` or the command line that the rest of the suite let through.
The mutant each one kills is named in its first comment (see
/work/notes/review26n.md).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from scenario_kit import new_scenario, write
from test_tree_permissions import as_user, run_as_user, user_dir  # noqa: F401 (fixture)

from xoengine import tree as tree_module
from xoengine.cli import main
from xoengine.engine import Engine
from xoengine.errors import (
    ConfigurationError,
    ReplicaDivergedError,
    RewindUnreachableError,
    XoError,
)
from xoengine.rewind import RetentionPolicy, RewindPoint, UndoUsage, retention
from xoengine.testing import snapshot_contents

if TYPE_CHECKING:
    from pathlib import Path


# -- capture: moves between two walks -------------------------------------------------------------


def test_capture_journals_a_directory_moved_onto_the_name_a_file_freed_with_what_it_holds(
    tmp_path: Path,
) -> None:
    """``rm -r z; mkdir z; mv a z/a; mv D a`` with D a directory holding a file.

    D's move onto ``a`` waits for ``a`` to move into the new ``z``; what D holds
    waits with it, or ``a/x`` is journaled as made under the file ``a``.
    """
    # C01: `_diff` takes a blocked path's children in the first loop (`or parent in last` dropped).
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "z" / "old", b"old build")
        write(master / "a", b"A" * 40)
        write(master / "D" / "x", b"xx" * 30)
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        shutil.rmtree(master / "z")
        (master / "z").mkdir()
        os.rename(master / "a", master / "z" / "a")
        os.rename(master / "D", master / "a")
        after = sc.set_rewind_point("after")
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {"D": "a", "D/x": "a/x", "a": "z/a"}
        assert (diff.added, diff.removed) == (["z"], ["z", "z/old"])
        later = [e.operation for e in eng.history("fx", "a/x") if e.position > before.position]
        assert later == ["renamed"]
        sc.wait_replicated(timeout=60)
        assert snapshot_contents(tmp_path / "r1") == snapshot_contents(master)
        sc.rewind("r1", before)
        assert snapshot_contents(tmp_path / "r1") == tree
    finally:
        eng.close()


def test_capture_journals_a_file_moved_out_of_a_renamed_directory_as_a_rename(
    tmp_path: Path,
) -> None:
    """``mv D E; mv E/x F``: D renamed to E, then D/x (at E/x by then) renamed to F."""
    # C15: `_move_into` leaves `gone` unchanged after a rename (`_moved_on` not called).
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "D" / "x", b"X" * 40)
        write(master / "D" / "k", b"k")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        x = eng.history("fx", "D/x")[0].file_id
        os.rename(master / "D", master / "E")
        os.rename(master / "E" / "x", master / "F")
        after = sc.set_rewind_point("after")
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {"D": "E", "D/k": "E/k", "D/x": "F"}
        assert (diff.added, diff.removed) == ([], [])
        assert {e.file_id for e in eng.history("fx", "F")} == {x}
        sc.wait_replicated(timeout=60)
        assert snapshot_contents(tmp_path / "r1") == snapshot_contents(master)
        sc.rewind("r1", before)
        assert snapshot_contents(tmp_path / "r1") == tree
    finally:
        eng.close()


def test_capture_follows_a_file_moved_on_out_of_the_directory_taking_its_name(
    tmp_path: Path,
) -> None:
    """``mv top D/top; mv D top; mv top/top/deep.txt top/deep2``: deep.txt keeps its identity."""
    # C18: `_move_inside` leaves `gone` naming top/... after moving top into D.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "top" / "deep.txt", b"deep" * 10)
        write(master / "D" / "inside.txt", b"in")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        deep = eng.history("fx", "top/deep.txt")[0].file_id
        os.rename(master / "top", master / "D" / "top")
        os.rename(master / "D", master / "top")
        os.rename(master / "top" / "top" / "deep.txt", master / "top" / "deep2")
        after = sc.set_rewind_point("after")
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {
            "D": "top",
            "D/inside.txt": "top/inside.txt",
            "top": "top/top",
            "top/deep.txt": "top/deep2",
        }
        assert (diff.added, diff.removed) == ([], [])
        assert {e.file_id for e in eng.history("fx", "top/deep2")} == {deep}
        sc.wait_replicated(timeout=60)
        assert snapshot_contents(tmp_path / "r1") == snapshot_contents(master)
        sc.rewind("r1", before)
        assert snapshot_contents(tmp_path / "r1") == tree
    finally:
        eng.close()


def test_a_move_into_a_moving_directory_over_a_deleted_subdirectory_replicates(
    tmp_path: Path,
) -> None:
    """``rm -r x/z; mv a x/z; mv b a; mv x b``: the replica, a replay and a rewind hold the trees.

    (The journal's identities here are not yet right: see the review's bug B3.)
    """
    # C20: `_free` lets a move go over a known directory that still holds entries.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "a", b"A" * 50)
        write(master / "b", b"B" * 20)
        write(master / "x" / "z" / "in", b"Z" * 30)
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        shutil.rmtree(master / "x" / "z")
        os.rename(master / "a", master / "x" / "z")
        os.rename(master / "b", master / "a")
        os.rename(master / "x", master / "b")
        sc.set_rewind_point("after")
        at_after = snapshot_contents(master)
        sc.wait_replicated(timeout=60)
        assert snapshot_contents(tmp_path / "r1") == at_after
        eng.replay("fx", to=tmp_path / "out", point="after")
        assert snapshot_contents(tmp_path / "out") == at_after
        sc.rewind("r1", before)
        assert snapshot_contents(tmp_path / "r1") == tree
        assert sc.capture().events == 0
    finally:
        eng.close()


def test_capture_on_a_file_system_without_birth_times_moves_a_file_into_a_directory_that_replaced_a_file(
    coarse_fs: Path,
) -> None:
    """``rm x; mkdir x; mv f x/f`` where no birth time tells x made anew: the kind change does."""
    # C28: `_made_anew_above` leaves out `state.kind != entry.kind` (a file made a directory).
    master = coarse_fs / "master"
    master.mkdir()
    eng = Engine.open(coarse_fs / "state", durability="nosync")
    try:
        sc = eng.create_scenario("fx", master=str(master), replicas={"r1": str(coarse_fs / "r1")})
        write(master / "x", b"x")
        write(master / "f", b"evidence")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        f = eng.history("fx", "f")[0].file_id
        (master / "x").unlink()
        (master / "x").mkdir()
        os.rename(master / "f", master / "x" / "f")
        after = sc.set_rewind_point("after")
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {"f": "x/f"}
        assert (diff.removed, diff.added) == (["x"], ["x"])
        assert {e.file_id for e in eng.history("fx", "x/f")} == {f}
        sc.wait_replicated(timeout=60)
        assert snapshot_contents(coarse_fs / "r1") == snapshot_contents(master)
        sc.rewind("r1", before)
        assert snapshot_contents(coarse_fs / "r1") == tree
    finally:
        eng.close()


def test_capture_rescues_a_subdirectory_of_a_replaced_directory_with_what_it_holds(
    tmp_path: Path,
) -> None:
    """``mv r/c keep/c; mv n r``: the directory c moves out of r (with y) before r is replaced."""
    # C32: `_rescue` takes the children of the replaced directory deepest first.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "r" / "c" / "y", b"Y" * 40)
        write(master / "n" / "k", b"k")
        (master / "keep").mkdir()
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        c = eng.history("fx", "r/c")[0].file_id
        os.rename(master / "r" / "c", master / "keep" / "c")
        os.rename(master / "n", master / "r")
        after = sc.set_rewind_point("after")
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {
            "n": "r",
            "n/k": "r/k",
            "r/c": "keep/c",
            "r/c/y": "keep/c/y",
        }
        assert (diff.added, diff.removed) == ([], ["r"])
        assert {e.file_id for e in eng.history("fx", "keep/c")} == {c}
        sc.wait_replicated(timeout=60)
        assert snapshot_contents(tmp_path / "r1") == snapshot_contents(master)
        sc.rewind("r1", before)
        assert snapshot_contents(tmp_path / "r1") == tree
    finally:
        eng.close()


# -- scenario: resume after a rewind ---------------------------------------------------------------

_RESUME_KILLED = """
import os, sys
import xoengine.tree as tree
from xoengine.engine import Engine
from xoengine import tree as tree_module
from xoengine.errors import (
    ConfigurationError,
    ReplicaDivergedError,
    RewindUnreachableError,
    XoError,
)
from xoengine.rewind import RetentionPolicy, RewindPoint, UndoUsage, retention
def killed(*_args, **_kwargs):
    os.kill(os.getpid(), 9)  # inside the resync, before its first new file is made
tree.ReplicaTree.copy_new = killed
with Engine.open(sys.argv[1], durability="nosync") as eng:
    eng.scenario("cx").resume("r1")
"""


@pytest.mark.parametrize("edit", ["touch", "chmod", "resize"])
def test_a_replica_touched_chmodded_or_resized_by_hand_after_its_resync_was_killed_is_not_rewound(
    tmp_path: Path, edit: str
) -> None:
    """The content print a killed resync leaves holds each file's mtime, mode and size: a
    ``touch``, a ``chmod`` or a truncation (its mtime put back) made by hand before the next
    open is a use of the replica (E3011)."""
    # S12: `_content_print` leaves out the mtime. S14: `_content_print` leaves out the mode.
    # S15: `_content_print` leaves out the size (resize: the mtime put back by hand).
    master, r1, state = tmp_path / "master", tmp_path / "r1", tmp_path / "state"
    master.mkdir()
    (master / "a.txt").write_bytes(b"a0")
    (master / "b.txt").write_bytes(b"b0")
    with Engine.open(state, durability="nosync") as eng:
        sc = eng.create_scenario("cx", master=str(master), replicas={"r1": str(r1)})
        sc.start()
        p1 = sc.set_rewind_point("p1")
        (master / "a.txt").write_bytes(b"a1")
        sc.capture()
        p2 = sc.set_rewind_point("p2")
        (master / "a.txt").write_bytes(b"a2")
        (master / "new.bin").write_bytes(b"n" * 5000)
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", p2)
        sc.stop()
    done = subprocess.run(
        [sys.executable, "-c", _RESUME_KILLED, str(state)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == -9, done.stderr
    before = (r1 / "b.txt").stat()
    if edit == "touch":
        os.utime(r1 / "b.txt", ns=(before.st_atime_ns, before.st_mtime_ns - 7 * 10**9))
    elif edit == "chmod":
        os.chmod(r1 / "b.txt", (before.st_mode & 0o777) ^ 0o100)
    else:
        os.truncate(r1 / "b.txt", 1)
        os.utime(r1 / "b.txt", ns=(before.st_atime_ns, before.st_mtime_ns))
    with Engine.open(state, durability="nosync") as eng:
        sc = eng.scenario("cx")
        assert not sc.rewindable("r1")
        with pytest.raises(ReplicaDivergedError):
            sc.rewind("r1", p1)
        sc.resume("r1")
        sc.wait_replicated()
        assert snapshot_contents(r1) == snapshot_contents(master)


# -- verify: mtimes ---------------------------------------------------------------------------------

S = 10**9


@pytest.mark.parametrize(
    ("master_ns", "replica_ns", "same"),
    [
        (1_000 * S + S // 2, 1_002 * S, True),  # FAT: rounded up to its 2-second tick
        (1_000 * S + S // 2, 1_000 * S, True),  # whole seconds: truncated
        (1_000 * S + S // 2, 1_003 * S, False),  # whole seconds, but 2.5 s off
        (1_000 * S + S // 2, 1_100 * S, False),  # far ahead
        (1_000 * S, 1_001 * S, False),  # both whole seconds: compared exactly
    ],
)
def test_verify_compares_mtimes_to_what_the_replicas_file_system_keeps(
    tmp_path: Path, master_ns: int, replica_ns: int, same: bool
) -> None:
    """A replica mtime in whole seconds matches a master's within 2 s (FAT's tick); else exactly."""
    # V01: `< 2 * 10**9` -> `< 10**9`. V02: a whole-second master also given the 2 s.
    # V03: no abs(): a replica ahead by any amount matches.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "f", b"bytes")
        sc.start()
        sc.wait_replicated()
        os.utime(master / "f", ns=(master_ns, master_ns))
        sc.capture()
        sc.wait_replicated()
        assert sc.difference_report("r1", verify=True)["differences"] == {}
        os.utime(tmp_path / "r1" / "f", ns=(replica_ns, replica_ns))
        differences = sc.difference_report("r1", verify=True)["differences"]
        assert differences == ({} if same else {"f": differences.get("f", "<none>")})
        assert same or differences["f"].startswith("mtime ")
    finally:
        eng.close()


def test_a_replica_chmodded_while_rewound_is_rewound_no_further_back_than_its_resume(
    tmp_path: Path,
) -> None:
    """A mode changed by hand on a rewound replica makes it used: after the resume a rewind
    reaches the resync and later only (the resync's metadata changes alone say nothing)."""
    # S05: `_resume` synchronizes a used replica with `foreign=False`.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "a", b"a0")
        write(master / "b", b"b0")
        os.chmod(master / "b", 0o644)
        sc.start()
        p0 = sc.set_rewind_point("p0")
        write(master / "a", b"a1")
        sc.capture()
        p1 = sc.set_rewind_point("p1")
        write(master / "a", b"a2")
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", p1)
        os.chmod(tmp_path / "r1" / "b", 0o600)  # used by hand while rewound
        assert not sc.rewindable("r1")
        sc.resume("r1")
        sc.wait_replicated()
        assert snapshot_contents(tmp_path / "r1") == snapshot_contents(master)
        assert sc.rewind_floor("r1") > p1.position
        with pytest.raises(RewindUnreachableError):
            sc.rewind("r1", p0)
    finally:
        eng.close()


# -- synchronization: replica directories it could not list ------------------------------------------


@as_user
def test_resume_stops_on_a_replica_directory_still_unreadable_below_one_listed_again(
    user_dir: Path,  # noqa: F811 (the fixture imported above)
) -> None:
    """``r1/b`` and ``r1/b/c`` made unreadable by hand: b is given its mode and listed again, c
    still cannot be: the run stops (E3010), never says done over a file the master deleted."""
    # Y04: `_list_again` takes a listing that left a directory unlisted as complete.
    result = run_as_user(
        user_dir,
        """
        import json, os
        from pathlib import Path
        from xoengine.engine import Engine
        from xoengine.errors import XoError

        Path("m/b/c").mkdir(parents=True)
        Path("m/b/c/gone").write_text("gone")
        with Engine.open("state", durability="nosync") as eng:
            sc = eng.create_scenario("s", master="m", replicas={"r1": "r1"})
            sc.start()
            p1 = sc.set_rewind_point("p1")
            os.unlink("m/b/c/gone")
            sc.capture()
            sc.wait_replicated()
            sc.rewind("r1", p1)
            os.chmod("r1/b/c", 0)
            os.chmod("r1/b", 0)
            try:
                sc.resume("r1")
                sc.wait_replicated()
                out = {"error": None}
            except XoError as e:
                out = {"error": e.code, "said": str(e)}
            sc.stop()
        print(json.dumps(out))
        """,
    )
    assert result["error"] == "E3010", result
    assert "'b/c' cannot be listed" in result["said"]


def test_a_resync_gives_a_link_it_points_elsewhere_the_masters_mtime(tmp_path: Path) -> None:
    """A link whose target changed while the replica was rewound: the resume's resync makes it
    again with the master's mtime (verify compares links' mtimes)."""
    # Y06: `_bring` makes a changed link again without the master's mtime.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "t1", b"one")
        write(master / "t2", b"two")
        os.symlink("t1", master / "link")
        sc.start()
        p1 = sc.set_rewind_point("p1")
        os.unlink(master / "link")
        os.symlink("t2", master / "link")
        os.utime(master / "link", ns=(1_000 * S + 5, 1_000 * S + 5), follow_symlinks=False)
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", p1)
        assert os.readlink(tmp_path / "r1" / "link") == "t1"
        sc.resume("r1")
        sc.wait_replicated()
        assert os.readlink(tmp_path / "r1" / "link") == "t2"
        assert (tmp_path / "r1" / "link").lstat().st_mtime_ns == 1_000 * S + 5
        assert sc.difference_report("r1", verify=True)["differences"] == {}
    finally:
        eng.close()


# -- names kept for temporary files ------------------------------------------------------------------


def test_names_kept_for_temporary_files_are_left_out_below_other_directories_and_by_path(
    tmp_path: Path,
) -> None:
    """A ``.xoengine-tmp-`` name below another directory is not replicated either: not by the
    walk, not by a capture of its path (or of a path below it), not through ``sc.open``."""
    # W05: the walk tests the relative path, not each name, against the prefix.
    # W03: a scoped capture takes a reserved path. W01: `reserved_name` tests the last part only.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "d" / "plain", b"plain")
        write(master / "d" / ".xoengine-tmp-notes", b"user data")
        sc.start()
        sc.wait_replicated()
        assert sorted(os.listdir(tmp_path / "r1" / "d")) == ["plain"]
        write(master / ".xoengine-tmp-dir" / "f", b"below a reserved name")
        write(master / "d" / ".xoengine-tmp-new", b"new")
        sc.capture([".xoengine-tmp-dir/f", "d/.xoengine-tmp-new"])
        sc.capture([".xoengine-tmp-dir"])
        sc.wait_replicated()
        assert {e.path for _, _, e in eng.file_events("fx", None)} == {"d", "d/plain"}
        assert sorted(os.listdir(tmp_path / "r1")) == ["d"]
        with pytest.raises(ConfigurationError, match="kept for xoengine's temporary files"):
            sc.open(".xoengine-tmp-dir/f")
        assert sc.difference_report("r1", verify=True)["differences"] == {}
    finally:
        eng.close()


# -- times on the command line -----------------------------------------------------------------------


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_journal_log_refuses_a_time_finer_than_a_microsecond(
    tmp_path: Path, option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """``journal log --since/--until`` with nanoseconds is refused (E1001), never cut."""
    # P07: `parse_time` leaves out `refuse_finer_than_microseconds`.
    eng, sc, master = new_scenario(tmp_path)
    write(master / "f", b"x")
    sc.start()
    eng.close()
    state = str(tmp_path / "state")
    assert main(["journal", "log", state, option, "2020-01-01T00:00:00.000001Z"]) == 0
    capsys.readouterr()
    assert main(["journal", "log", state, option, "2020-01-01T00:00:00.000000001Z"]) == 2
    assert "is finer than a microsecond" in capsys.readouterr().err


def test_cli_bisect_takes_exit_status_126_as_no_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A probe that exits 126 (the command found but not executable) gives no verdict (E1001)."""
    # B07: `status >= _NO_VERDICT` -> `status > _NO_VERDICT`: 126 taken for "bad".
    eng, sc, master = new_scenario(tmp_path)
    write(master / "f", b"one")
    sc.start()
    write(master / "f", b"two")
    sc.capture()
    eng.close()
    assert main(["bisect", str(tmp_path / "state"), "fx", "exit 126"]) == 2
    assert "gave no verdict: exit status 126" in capsys.readouterr().err


# -- retention ---------------------------------------------------------------------------------------


def test_a_trim_keeps_what_a_resync_that_stopped_left_above_the_position_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The before-images a resume's resync recorded before it stopped (a full volume, injected
    as test_rewind_edges does) lie above the position held: a trim never takes them, and a
    rewind to that position undoes the resync's writes first."""
    # R03: `trim_undo` offers the records above the applied position to `retention`.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "a.txt", b"a0" * 100)
        sc.start()
        write(master / "a.txt", b"a1" * 100)
        sc.capture()
        p2 = sc.set_rewind_point("p2")
        want = snapshot_contents(master)
        write(master / "a.txt", b"a2" * 100)
        write(master / "new.bin", b"n" * 5000)
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", p2)

        def full(self: tree_module.ReplicaTree, *_: object, **__: object) -> None:
            raise tree_module.DiskFullError(path=self.root, detail="could not copy")

        monkeypatch.setattr(tree_module.ReplicaTree, "copy_new", full)
        with pytest.raises(XoError):
            sc.resume("r1")
        monkeypatch.undo()
        assert (tmp_path / "r1" / "a.txt").read_bytes() == b"a2" * 100  # the resync's write
        sc.trim_undo(RetentionPolicy(max_bytes=0, min_points=0))
        assert sc.rewind("r1", p2) == p2.position
        assert snapshot_contents(tmp_path / "r1") == want
    finally:
        eng.close()


def test_a_budget_met_exactly_after_keeping_the_points_raises_no_alert() -> None:
    """Aged out to the newest point, what is kept fills the budget exactly: within it, no alert."""
    # R08: the min_points alert at `kept >= max_bytes` (not `>`).
    now = 10_000 * S
    usage = [UndoUsage(p, now - 5_000 * S, 100) for p in range(1, 5)]
    point = RewindPoint(name="p2", position=2, time_ns=0)
    policy = RetentionPolicy(max_age_s=60, max_bytes=200, min_points=1)
    decision = retention(usage, [point], policy, now)
    assert decision.trim_upto == 2
    assert decision.reasons == ("age", "held back: rewind points")
    assert decision.alert is None
    over = retention(usage, [point], dataclasses.replace(policy, max_bytes=199), now)
    assert over.alert is not None and "holds 200 bytes" in over.alert


def test_a_rewind_that_finds_the_replica_changed_by_hand_journals_the_divergence(
    tmp_path: Path,
) -> None:
    """A rewind whose undo finds a file deleted by hand raises E3011 and journals it standing:
    the replica is then not rewindable until a synchronization makes it exact again."""
    # S17: `_finishing` re-raises ReplicaDivergedError without `_diverged`.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "g", b"0123456789" * 100)
        sc.start()
        point = sc.set_rewind_point("p")
        with sc.open("g", "r+b") as f:
            f.seek(10)
            f.write(b"XY")
        sc.wait_replicated()
        (tmp_path / "r1" / "g").unlink()  # by hand: the undo has nothing to write into
        with pytest.raises(ReplicaDivergedError):
            sc.rewind("r1", point)
        assert "E3011" in sc.statistics().replicas["r1"].standing_alerts
        assert not sc.rewindable("r1")
    finally:
        eng.close()


def test_resume_compares_the_bytes_of_a_file_moved_in_with_its_directory(tmp_path: Path) -> None:
    """``rm -r D; mv E D`` while r1 stands rewound, E/f and D/f of one size and mtime: the
    resync compares D/f's bytes (its directory moved since), not its size and time only."""
    # S23: `_moved_since` leaves out what is below a directory moved since.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "D" / "f", b"aaaa")
        write(master / "E" / "f", b"bbbb")
        for f in (master / "D" / "f", master / "E" / "f"):
            os.utime(f, ns=(1_000 * S, 1_000 * S))
        sc.start()
        p1 = sc.set_rewind_point("p1")
        write(master / "other", b"later")
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", p1)
        shutil.rmtree(master / "D")
        os.rename(master / "E", master / "D")
        sc.capture()
        sc.resume("r1")
        sc.wait_replicated()
        assert (tmp_path / "r1" / "D" / "f").read_bytes() == b"bbbb"
        assert snapshot_contents(tmp_path / "r1") == snapshot_contents(master)
    finally:
        eng.close()
