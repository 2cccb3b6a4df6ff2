"""Capture keeps file identities apart where the inode numbers do not tell them.

ext4 hands a freed inode number out again at once: a file deleted and made
again under its name keeps its inode number, and a move can put a file where
a directory's name was. Each test checks the history of the identities, that
the replica is the master's copy, and where a file was made again that a
rewind to before it gives the old file back.
"""

from __future__ import annotations

import os
import shutil
from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import new_scenario, write

from xoengine.testing import snapshot_contents
from xoengine.walk import birth_ns

if TYPE_CHECKING:
    from pathlib import Path

    from xoengine.engine import Engine, Scenario
    from xoengine.rewind import RewindPoint


def _past(ns: int, probe: Path) -> None:
    """Return once the file system's clock (it moves in ticks) has passed ``ns``."""
    while True:
        probe.write_bytes(b"")
        if probe.stat().st_ctime_ns > ns:
            return


def _made_again(path: Path, content: bytes | None, aside: Path) -> int:
    """Delete ``path`` and make it again (``content``, or a directory) on its old inode number.

    The new one is born after the old one's last change. ext4 hands out the
    lowest free number of the directory's group, the one just freed unless a
    lower one was free too (other tests delete files): a file given another
    is put ``aside`` (outside the master) and the path made again. Returns how
    many were put aside.
    """
    before = path.lstat()
    aside.mkdir()
    _past(before.st_ctime_ns, aside / "probe")
    if content is None:
        os.rmdir(path)
    else:
        path.unlink()
    for n in range(200):
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)
        if path.lstat().st_ino == before.st_ino:
            break
        path.rename(aside / str(n))
    else:
        pytest.skip("the file system gave no new file the old inode number")
    if birth_ns(path.parent, path.name) is None:
        pytest.skip("the file system keeps no birth time")
    return n


def _replicated_and_rewound(sc: Scenario, tmp_path: Path, before: RewindPoint, tree: Any) -> None:
    """The replica is the master's copy, and a rewind to ``before`` gives ``tree`` back."""
    sc.wait_replicated(timeout=60)
    assert snapshot_contents(tmp_path / "r1") == snapshot_contents(tmp_path / "master")
    sc.rewind("r1", before)
    assert snapshot_contents(tmp_path / "r1") == tree


def _changes(eng: Engine, path: str, after: int) -> list[tuple[str, str]]:
    """``path``'s history after position ``after``: (operation, file id)."""
    return [(e.operation, e.file_id) for e in eng.history("fx", path) if e.position > after]


def test_capture_journals_a_file_made_again_on_its_inode_number_as_a_new_one(
    tmp_path: Path,
) -> None:
    """``rm report.txt; echo forged > report.txt`` between two captures.

    Was a write of the new bytes to the old identity: no deletion in its
    history, ``diff`` said modified.
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "report.txt", b"original report\n")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        sc.wait_replicated()  # the replica's files take no inode number from here on
        (old_id,) = {e.file_id for e in eng.history("fx", "report.txt")}
        _made_again(master / "report.txt", b"forged\n", tmp_path / "aside")
        after = sc.set_rewind_point("after")
        changes = _changes(eng, "report.txt", before.position)
        assert [op for op, _ in changes] == ["deleted", "created", "written"]
        assert changes[0][1] == old_id
        assert changes[1][1] == changes[2][1] != old_id
        diff = eng.diff("fx", before.position, after.position)
        assert (diff.removed, diff.added, diff.modified) == (["report.txt"], ["report.txt"], {})
        # The replica applies the deletion and the creation; a rewind gives the old file back.
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


def test_capture_journals_a_directory_made_again_on_its_inode_number_as_a_new_one(
    tmp_path: Path,
) -> None:
    """``rm e/f; rmdir e; mkdir e`` between two captures: e and e/f deleted, e made anew."""
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "e" / "f", b"inside")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        sc.wait_replicated()
        (old_dir,) = {e.file_id for e in eng.history("fx", "e")}
        (master / "e" / "f").unlink()
        _made_again(master / "e", None, tmp_path / "aside")
        sc.capture()
        changes = _changes(eng, "e", before.position)
        assert [op for op, _ in changes] == ["deleted", "created"]
        assert changes[0][1] == old_dir
        assert changes[1][1] != old_dir
        assert [op for op, _ in _changes(eng, "e/f", before.position)] == ["deleted"]
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


def test_capture_journals_a_tree_made_again_on_other_inode_numbers_as_new_ones(
    tmp_path: Path,
) -> None:
    """``rm -r T`` and a new ``T`` between two captures (review 22 A, F4).

    ext4 hands the freed numbers out in any order: on its own number ``T`` was
    deleted and made anew, on another one (here: the old ``T`` kept outside the
    master, so its number is not free) its history went on with a change of
    times, and the files in it with writes. A directory on another inode that
    no move put there is made anew whatever its number.
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "T" / "sub" / "t2", b"t2\n")
        write(master / "T" / "t1", b"t1\n")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        sc.wait_replicated()
        (old_dir,) = {e.file_id for e in eng.history("fx", "T")}
        (tmp_path / "aside").mkdir()
        _past((master / "T").lstat().st_ctime_ns, tmp_path / "aside" / "probe")
        (master / "T").rename(tmp_path / "aside" / "T")  # out of the master: a deletion
        write(master / "T" / "sub" / "t2", b"t2\n")
        write(master / "T" / "t1", b"t1 new\n")
        if birth_ns(master, "T") is None:
            pytest.skip("the file system keeps no birth time")
        after = sc.set_rewind_point("after")
        changes = _changes(eng, "T", before.position)
        assert [op for op, _ in changes][:2] == ["deleted", "created"]
        assert changes[0][1] == old_dir != changes[1][1]
        for path in ("T/sub", "T/sub/t2", "T/t1"):
            assert [op for op, _ in _changes(eng, path, before.position)][:2] == [
                "deleted",
                "created",
            ], path
        diff = eng.diff("fx", before.position, after.position)
        assert set(diff.removed) == set(diff.added) == {"T", "T/sub", "T/sub/t2", "T/t1"}
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


def test_watch_journals_a_file_made_again_on_its_inode_number_as_a_new_one(
    tmp_path: Path,
) -> None:
    """The live watcher's scoped pass tells the new file from the old one too."""
    eng, sc, master = new_scenario(tmp_path, watch_delay=0.05)
    try:
        write(master / "report.txt", b"original report\n")
        sc.start(watch=True)
        sc.wait_captured("report.txt", timeout=60)
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        sc.wait_replicated(timeout=60)
        if _made_again(master / "report.txt", b"forged\n", tmp_path / "aside"):
            pytest.skip("the watcher may have seen a file made on another inode number first")
        write(master / "marker", b"done")
        sc.wait_captured("marker", timeout=60)
        changes = _changes(eng, "report.txt", before.position)
        assert [op for op, _ in changes] == ["deleted", "created", "written"]
        assert changes[0][1] != changes[1][1]
        sc.stop()
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_capture_journals_a_move_into_the_directory_taking_the_name_as_two_renames(
    tmp_path: Path, kind: str
) -> None:
    """``mv top D/top; mv D top`` between two captures: ``top`` renamed to ``D/top``, D to top.

    Was: D, its files and top deleted and journaled anew (all their content
    again): ``top/top`` was refused as a move "into itself", ``top/inside.txt``
    as one below what the master state still held as a file.
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "D" / "inside.txt", b"inside")
        if kind == "file":
            write(master / "top", b"the file")
        else:
            write(master / "top" / "deep.txt", b"deep in the directory")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        ids = {p: eng.history("fx", p)[0].file_id for p in ("D", "D/inside.txt", "top")}
        os.rename(master / "top", master / "D" / "top")
        os.rename(master / "D", master / "top")
        after = sc.set_rewind_point("after")
        moves = {
            p: [(e.operation, e.path, e.new_path, e.file_id) for e in eng.history("fx", p)]
            for p in ("top/inside.txt", "top/top")
        }
        assert moves["top/inside.txt"][-1] == (
            "renamed",
            "D/inside.txt",
            "top/inside.txt",
            ids["D/inside.txt"],
        )
        renames = [m for m in moves["top/top"] if m[0] == "renamed"]
        assert renames == [
            ("renamed", "top", "D/top", ids["top"]),
            ("renamed", "D/top", "top/top", ids["top"]),
        ]
        diff = eng.diff("fx", before.position, after.position)
        assert (diff.added, diff.removed, diff.modified) == ([], [], {})
        moved = {"D": "top", "D/inside.txt": "top/inside.txt", "top": "top/top"}
        if kind == "dir":
            moved["top/deep.txt"] = "top/top/deep.txt"
        assert diff.renamed == moved
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


def test_capture_journals_a_move_into_a_directory_made_anew_as_a_rename(
    tmp_path: Path,
) -> None:
    """``rm -r out; mkdir out; mv report out/`` between two captures (review 23 E, F4).

    Was: report renamed into the old ``out``, then deleted with it, and a new file
    made: the journal said the evidence was deleted. Now: the old ``out`` goes with
    what it held, the new one is made, then report moves in.
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "out" / "old", b"old build")
        write(master / "report", b"evidence")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        report = eng.history("fx", "report")[0].file_id
        shutil.rmtree(master / "out")
        (master / "out").mkdir()
        os.rename(master / "report", master / "out" / "report")
        after = sc.set_rewind_point("after")
        history = [(e.operation, e.file_id) for e in eng.history("fx", "out/report")]
        assert history[:3] == [("created", report), ("written", report), ("renamed", report)]
        assert "deleted" not in [operation for operation, _ in history]
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {"report": "out/report"}
        assert diff.removed == ["out", "out/old"] and diff.added == ["out"]
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


@pytest.mark.parametrize("directory", ["z", "0dir", "zfile"])
def test_capture_journals_a_move_onto_the_name_a_file_moved_into_a_directory_made_anew_freed(
    tmp_path: Path, directory: str
) -> None:
    """``rm -r z; mkdir z; mv a z/a; mv b a`` between two captures (review 25 J1, J2).

    Was, with ``z`` walked after ``a``: b's bytes written into a's identity, which then
    moved to ``z/a``, and ``b`` deleted: at that position ``a`` was missing and ``z/a``
    held b's bytes (a tree the master never had, in the replica, replays and rewinds).
    With ``0dir`` walked before ``a``: ``b`` deleted and ``a`` made anew (its bytes
    journaled again). Now: two renames, ``a`` to ``z/a`` once ``z`` is made, then
    ``b`` to ``a``. ``zfile``: a file where the directory is made.
    """
    eng, sc, master = new_scenario(tmp_path)
    name = directory.removesuffix("file")
    try:
        if directory.endswith("file"):
            write(master / name, b"a file")
        else:
            write(master / name / "old", b"old build")
        write(master / "a", b"AAAA" * 10)
        write(master / "b", b"bb")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        ids = {p: eng.history("fx", p)[0].file_id for p in ("a", "b")}
        if directory.endswith("file"):
            (master / name).unlink()
        else:
            shutil.rmtree(master / name)
        (master / name).mkdir()
        os.rename(master / "a", master / name / "a")
        os.rename(master / "b", master / "a")
        after = sc.set_rewind_point("after")
        at_after = snapshot_contents(master)
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {"a": f"{name}/a", "b": "a"}, diff
        later = [e for e in eng.history("fx", "b") if e.position > before.position]
        assert [e.operation for e in later if e.operation != "metadata"] == ["renamed"]
        moved = [e for e in eng.history("fx", f"{name}/a") if e.position > before.position]
        assert {e.file_id for e in moved} == {ids["a"]}
        assert not [e for e in moved if e.operation == "written"]
        eng.replay("fx", to=tmp_path / "out", point="after")
        assert snapshot_contents(tmp_path / "out") == at_after
        _replicated_and_rewound(sc, tmp_path, before, tree)
        sc.rewind("r1", after)
        assert snapshot_contents(tmp_path / "r1") == at_after
    finally:
        eng.close()


def test_capture_journals_a_file_made_where_one_moved_into_a_directory_made_anew_as_new(
    tmp_path: Path,
) -> None:
    """``rm -r x; mkdir x; mv a x/a; echo new > a`` between two captures (review 25 J1).

    Was: the new bytes written into a's identity, which then moved to ``x/a``: ``x/a``
    held them and ``a`` was missing at that position. Now: ``a`` moves into the new
    ``x`` first, then the new ``a`` is created.
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "x" / "old", b"old build")
        write(master / "a", b"evidence")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        evidence = eng.history("fx", "a")[0].file_id
        shutil.rmtree(master / "x")
        (master / "x").mkdir()
        os.rename(master / "a", master / "x" / "a")
        write(master / "a", b"a new file")
        after = sc.set_rewind_point("after")
        at_after = snapshot_contents(master)
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {"a": "x/a"}
        assert "a" in diff.added
        assert {e.file_id for e in eng.history("fx", "x/a")} == {evidence}
        with eng.file_at("fx", "x/a", after) as held:
            assert held.read() == b"evidence"
        eng.replay("fx", to=tmp_path / "out", point="after")
        assert snapshot_contents(tmp_path / "out") == at_after
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


def _moves(eng: Engine, path: str) -> list[tuple[str, str, str | None]]:
    """``path``'s renames and deletions: (operation, path, new path)."""
    return [
        (e.operation, e.path, e.new_path)
        for e in eng.history("fx", path)
        if e.operation in {"renamed", "deleted", "created"}
    ]


@pytest.mark.parametrize("how", ["renamed onto", "removed, then another renamed onto", "over"])
def test_capture_journals_a_file_rescued_out_of_a_replaced_directory_as_a_rename(
    tmp_path: Path, how: str
) -> None:
    """``mv release/config keep/; mv release-new release`` between two captures (review 23 E, F2).

    Was: config deleted with the old release and a new file made at keep/config
    (history said the evidence was deleted). Now: config renamed to keep/config
    first, then the old release deleted, release-new renamed to release. Moved
    over a kept config (``over``): that one deleted first.
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "release" / "config", b"evidence config")
        write(master / "release-new" / "app", b"new app")
        (master / "keep").mkdir()
        if how == "over":
            write(master / "keep" / "config", b"an older config")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        config = eng.history("fx", "release/config")[0].file_id
        os.rename(master / "release" / "config", master / "keep" / "config")
        if how == "removed, then another renamed onto":
            os.rmdir(master / "release")
        os.rename(master / "release-new", master / "release")
        after = sc.set_rewind_point("after")
        moves = [m for m in _moves(eng, "keep/config") if m[1] != "keep/config"]
        assert moves == [
            ("created", "release/config", None),
            ("renamed", "release/config", "keep/config"),
        ]
        assert {e.file_id for e in eng.history("fx", "release/config")} == {config}
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {
            "release/config": "keep/config",
            "release-new": "release",
            "release-new/app": "release/app",
        }
        removed = ["keep/config", "release"] if how == "over" else ["release"]
        assert (diff.removed, diff.added) == (removed, [])
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


def test_capture_keeps_a_file_moved_into_the_directory_taking_its_directory_s_name(
    tmp_path: Path,
) -> None:
    """``mv c/y b/y; rmdir c; mv b c`` between two captures (review 23 E, F2).

    c/y is the same file at the same path after. Was: c/y deleted with the old c
    and made again. Now: renamed to b/y, then back to c/y with b.
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "b" / "x", b"x" * 5000)
        write(master / "c" / "y", b"evidence y")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        y = eng.history("fx", "c/y")[0].file_id
        os.rename(master / "c" / "y", master / "b" / "y")
        os.rmdir(master / "c")
        os.rename(master / "b", master / "c")
        after = sc.set_rewind_point("after")
        assert _moves(eng, "c/y") == [
            ("created", "c/y", None),
            ("renamed", "c/y", "b/y"),
            ("renamed", "b/y", "c/y"),
        ]
        assert {e.file_id for e in eng.history("fx", "c/y")} == {y}
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {"b": "c", "b/x": "c/x"}
        assert (diff.removed, diff.added) == (["c"], [])
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


def test_capture_journals_a_directory_renamed_onto_a_file_moved_into_it_as_renames(
    tmp_path: Path,
) -> None:
    """``mv c b/a`` (over b/a), then ``mv b c``, between two captures (review 23 E, F1).

    Was: b, c and all they held deleted and journaled anew (every file's bytes
    again, no rename in history or diff). Now: b/a deleted (moved over), c
    renamed to b/a, then b to c.
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "b" / "a", b"old a")
        write(master / "b" / "x", b"x" * 5000)
        write(master / "c", b"file c")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        ids = {p: eng.history("fx", p)[0].file_id for p in ("b/a", "b/x", "c")}
        os.rename(master / "c", master / "b" / "a")
        os.rename(master / "b", master / "c")
        after = sc.set_rewind_point("after")
        assert _moves(eng, "c/x") == [("created", "b/x", None), ("renamed", "b/x", "c/x")]
        assert _moves(eng, "c/a")[-2:] == [("renamed", "c", "b/a"), ("renamed", "b/a", "c/a")]
        assert {e.file_id for e in eng.history("fx", "c/a") if e.operation == "renamed"} == {
            ids["c"]
        }
        old_a = [e.operation for e in eng.history("fx", "b/a") if e.file_id == ids["b/a"]]
        assert old_a[-1] == "deleted"
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {"b": "c", "b/x": "c/x", "c": "c/a"}
        assert (diff.removed, diff.added) == (["b/a"], [])
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_capture_journals_a_move_into_a_directory_that_replaced_a_file_as_a_rename(
    tmp_path: Path, kind: str
) -> None:
    """``rm x; mkdir x; mv f x/f`` between two captures (review 23 E, F5).

    Was: f deleted and x/f made anew (the master state still held x as a file).
    Now: the file x deleted, the directory x made, then f moved in.
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "x", b"x")
        if kind == "file":
            write(master / "f", b"evidence")
        else:
            write(master / "f" / "inside", b"evidence")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        f = eng.history("fx", "f")[0].file_id
        (master / "x").unlink()
        (master / "x").mkdir()
        os.rename(master / "f", master / "x" / "f")
        after = sc.set_rewind_point("after")
        assert _moves(eng, "x/f") == [("created", "f", None), ("renamed", "f", "x/f")]
        assert {e.file_id for e in eng.history("fx", "x/f")} == {f}
        diff = eng.diff("fx", before.position, after.position)
        moved = {"f": "x/f"} if kind == "file" else {"f": "x/f", "f/inside": "x/f/inside"}
        assert diff.renamed == moved
        assert (diff.removed, diff.added) == (["x"], ["x"])
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


def test_capture_journals_two_directories_exchanged_as_their_contents_moved(
    tmp_path: Path,
) -> None:
    """``mv A T; mv B A; mv T B`` between two captures (review 23 E, F7).

    As for two files that exchanged inodes, each name keeps its identity and
    the contents are compared: a.txt moves to B, b.txt to A. Was: A deleted and
    made anew (the inode at A born after A was last seen).
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "A" / "a.txt", b"A" * 100)
        write(master / "B" / "b.txt", b"B" * 100)
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        ids = {p: eng.history("fx", p)[0].file_id for p in ("A", "B", "A/a.txt", "B/b.txt")}
        os.rename(master / "A", master / "T")
        os.rename(master / "B", master / "A")
        os.rename(master / "T", master / "B")
        after = sc.set_rewind_point("after")
        for path, was in (("A", "A"), ("B", "B"), ("B/a.txt", "A/a.txt"), ("A/b.txt", "B/b.txt")):
            assert {e.file_id for e in eng.history("fx", path)} == {ids[was]}, path
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {"A/a.txt": "B/a.txt", "B/b.txt": "A/b.txt"}
        assert (diff.removed, diff.added, diff.modified) == ([], [], {})
        assert sc.capture().events == 0  # the master state holds the exchanged inodes
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


@pytest.mark.parametrize("shared_names", [True, False])
def test_capture_journals_three_directories_rotated_as_their_contents_moved(
    tmp_path: Path, shared_names: bool
) -> None:
    """``mv E t; mv c E; mv G/D c; mv t G/D`` between two captures (review 25 J1).

    Each directory holds what the one before it held, round: as for two that
    exchanged, each name keeps its identity and what they hold moves. Was (E made
    after G/D): G/D taken as made anew, E's files written with c's bytes and moved
    to G/D, E left empty: at that position the journal held a tree the master never
    had (E/a, E/b missing, G/D/a and G/D/b with c's bytes).
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "G" / "D" / "x", b"GDx")
        sc.start()
        write(master / "c" / "a", b"ca" * 35)
        write(master / "c" / ("b" if shared_names else "cb"), b"cb" * 10)
        sc.capture()
        write(master / "E" / "a", b"Ea" * 50)
        write(master / "E" / "b", b"Eb" * 50)
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        os.rename(master / "E", master / "t")
        os.rename(master / "c", master / "E")
        os.rename(master / "G" / "D", master / "c")
        os.rename(master / "t", master / "G" / "D")
        after = sc.set_rewind_point("after")
        at_after = snapshot_contents(master)
        diff = eng.diff("fx", before.position, after.position)
        moved = {"G/D/x": "c/x", "E/a": "G/D/a", "E/b": "G/D/b", "c/a": "E/a"}
        moved["c/b" if shared_names else "c/cb"] = "E/b" if shared_names else "E/cb"
        assert diff.renamed == moved
        assert (diff.removed, diff.added, diff.modified) == ([], [], {})
        assert sc.capture().events == 0  # the master state holds the rotated inodes
        eng.replay("fx", to=tmp_path / "out", point="after")
        assert snapshot_contents(tmp_path / "out") == at_after
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


@pytest.mark.parametrize("nested", [False, True])
def test_capture_journals_a_move_into_a_directory_that_moves_over_a_file_as_renames(
    tmp_path: Path, nested: bool
) -> None:
    """``mv a x/z; mv b a; mv x b`` between two captures (review 25 M1).

    Was: b's bytes written into a's identity, which then moved to ``b/z``: at that
    position ``a`` was missing and ``b/z`` held b's bytes. Now: ``a`` into ``x`` where
    it still is, ``b`` to ``a``, then ``x`` (with it) to ``b``.
    """
    eng, sc, master = new_scenario(tmp_path)
    inner = "x/y" if nested else "x"
    try:
        write(master / "a", b"A-evidence" * 20)
        write(master / "b", b"B-bytes" * 10)
        write(master / inner / "f", b"inside")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        os.rename(master / "a", master / inner / "z")
        os.rename(master / "b", master / "a")
        os.rename(master / "x", master / "b")
        after = sc.set_rewind_point("after")
        at_after = snapshot_contents(master)
        diff = eng.diff("fx", before.position, after.position)
        moved = "b/y/z" if nested else "b/z"
        assert diff.renamed["a"] == moved and diff.renamed["b"] == "a" and diff.renamed["x"] == "b"
        assert (diff.removed, diff.added, diff.modified) == ([], [], {})
        eng.replay("fx", to=tmp_path / "out", point="after")
        assert snapshot_contents(tmp_path / "out") == at_after
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


def test_capture_journals_a_move_into_a_moving_directory_over_a_removed_one_as_renames(
    tmp_path: Path,
) -> None:
    """``rm -r x/z; mv a x/z; mv b a; mv x b`` between two captures (review 26 N B3).

    Was review 25 M1 again: the move of ``a`` into ``x/z`` waited for a name that a
    directory holding entries kept, so b's bytes were journaled as written into a's
    identity, and ``b/z`` as created. What lives on nowhere (``x/z`` and what it
    held) is deleted first; then the three renames.
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "a", b"A-evidence" * 20)
        write(master / "b", b"B-bytes" * 10)
        write(master / "x" / "f", b"inside")
        write(master / "x" / "z" / "in", b"Z" * 30)
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        shutil.rmtree(master / "x" / "z")
        os.rename(master / "a", master / "x" / "z")
        os.rename(master / "b", master / "a")
        os.rename(master / "x", master / "b")
        after = sc.set_rewind_point("after")
        at_after = snapshot_contents(master)
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed["a"] == "b/z" and diff.renamed["b"] == "a" and diff.renamed["x"] == "b"
        assert diff.removed == ["x/z", "x/z/in"] and diff.modified == {}, diff
        eng.replay("fx", to=tmp_path / "out", point="after")
        assert snapshot_contents(tmp_path / "out") == at_after
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


@pytest.mark.parametrize("source", ["a", "z"])
def test_capture_journals_a_move_between_two_directories_made_anew_as_a_rename(
    tmp_path: Path, source: str
) -> None:
    """``rm -r b; mkdir b; mv SRC/f b/g; rmdir SRC; mkdir SRC`` between two captures (26 N B2).

    Was: with ``SRC`` walked before ``b`` (``a``), ``a`` made anew was deleted with
    ``f`` before ``b/g``'s move (waiting for ``b``) ran: ``a/f`` deleted and ``b/g``
    created, where ``z`` (walked after ``b``) gave the rename. Now the moves out of a
    directory made anew go before it does, in either order of names.
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / source / "f", b"F-evidence" * 4)
        write(master / "b" / "old", b"old")
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        shutil.rmtree(master / "b")
        (master / "b").mkdir()
        os.rename(master / source / "f", master / "b" / "g")
        os.rmdir(master / source)
        (master / source).mkdir()
        after = sc.set_rewind_point("after")
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {f"{source}/f": "b/g"}, diff
        assert diff.removed == sorted([source, "b", "b/old"]), diff
        assert diff.added == sorted([source, "b"]) and diff.modified == {}, diff
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()


def test_capture_journals_a_move_into_a_moving_directory_over_a_file_moved_deeper_as_renames(
    tmp_path: Path,
) -> None:
    """``mv x/z d/e/q; mv a x/z; mv b a; mv x b`` between two captures (review 26 N B3's variant).

    Was: the moves were tried in two rounds; ``x/z``'s move (deeper) freed its name in
    the second only, ``a``'s move into it came then, and ``b -> a`` and ``x -> b``
    were never tried again: a, b, x and what x held were journaled as deleted and
    made anew. Now the rounds go on while one moves something.
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "a", b"A-evidence" * 5)
        write(master / "b", b"B-bytes" * 3)
        write(master / "x" / "f", b"f")
        write(master / "x" / "z", b"Z" * 30)
        (master / "d" / "e").mkdir(parents=True)
        sc.start()
        before = sc.set_rewind_point("before")
        tree = snapshot_contents(master)
        os.rename(master / "x" / "z", master / "d" / "e" / "q")
        os.rename(master / "a", master / "x" / "z")
        os.rename(master / "b", master / "a")
        os.rename(master / "x", master / "b")
        after = sc.set_rewind_point("after")
        diff = eng.diff("fx", before.position, after.position)
        assert diff.renamed == {"a": "b/z", "b": "a", "x": "b", "x/f": "b/f", "x/z": "d/e/q"}
        assert diff.added == diff.removed == [] and diff.modified == {}, diff
        _replicated_and_rewound(sc, tmp_path, before, tree)
    finally:
        eng.close()
