"""A user who may write in a tree, or above it, racing the engine that runs as root.

Review 27 (R): such a user swapped a directory for a symbolic link between the
engine's check and its use, and led root's reads (a file only root may read, into
the journal and the replica) and writes (a replay, a synchronization) elsewhere.
Each test puts the link where the race would, at the moment it would win, so the
outcome does not depend on timing: nothing outside the trees is read or changed.
"""

from __future__ import annotations

import os
import shutil
import stat
from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import new_scenario, write

from xoengine import journaledfile, walk
from xoengine.errors import (
    OutputLocationError,
    ReplicaWriteError,
    TreeRootMissingError,
    XoError,
)
from xoengine.sync import Synchronizer
from xoengine.tree import ReplicaTree
from xoengine.walk import open_below, read_xattrs, stat_entry

if TYPE_CHECKING:
    from pathlib import Path

SECRET = b"root-only secret bytes"


def _outside(tmp_path: Path) -> Path:
    """A directory outside every tree, holding a file only root may read."""
    outside = tmp_path / "outside"
    write(outside / "f", SECRET)
    os.chmod(outside / "f", 0o600)
    os.setxattr(outside / "f", "user.mark", b"outside")
    return outside


def _swap_for_link(directory: Path, to: Path) -> None:
    """What the racing user does: move ``directory`` aside, and a link in its place."""
    directory.rename(directory.with_name(directory.name + ".aside"))
    directory.symlink_to(to)


def test_a_read_through_a_directory_swapped_for_a_link_finds_nothing(tmp_path: Path) -> None:
    outside = _outside(tmp_path)
    write(tmp_path / "master" / "d" / "f", b"the user's own file")
    _swap_for_link(tmp_path / "master" / "d", outside)
    with pytest.raises(FileNotFoundError):
        open_below(str(tmp_path / "master"), "d/f")
    with pytest.raises(FileNotFoundError):
        walk.xattrs_below(str(tmp_path / "master"), "d/f")
    with pytest.raises(FileNotFoundError):  # by its whole path: the same, from /
        read_xattrs(str(tmp_path / "master" / "d" / "f"))


@pytest.mark.timeout(60)  # a regression waits forever: not the suite's 600 s
def test_a_fifo_swapped_in_for_a_file_is_opened_without_waiting(tmp_path: Path) -> None:
    """M1: the open of a FIFO for reading waited for a writer that never came (forever)."""
    os.mkfifo(tmp_path / "f")
    fd = open_below(str(tmp_path), "f")  # returns at once (no writer will ever come)
    try:
        assert stat.S_ISFIFO(os.fstat(fd).st_mode)
    finally:
        os.close(fd)


def test_a_tree_whose_root_is_swapped_for_a_link_is_never_written_through_it(
    tmp_path: Path,
) -> None:
    """H0b: the root was opened by name, following links, for every write and chown."""
    victim = tmp_path / "victim"
    write(victim / "a", b"victim's")
    before = {p.name: p.read_bytes() for p in victim.iterdir()}
    owner = victim.stat()
    home = tmp_path / "home"
    tree = ReplicaTree(str(home / "r1"), fsync=False)
    tree.write_new("a", [(0, b"replica")], 7, 0o644, 0)
    _swap_for_link(home / "r1", victim)
    with pytest.raises(TreeRootMissingError, match="symbolic link"):
        tree.write_new("b", [(0, b"elsewhere")], 9, 0o644, 0)
    with pytest.raises((TreeRootMissingError, ReplicaWriteError)):
        tree.set_root("", 0o777, (65534, 65534), {})
    with pytest.raises(TreeRootMissingError):
        tree.delete("a")
    assert {p.name: p.read_bytes() for p in victim.iterdir()} == before
    assert (victim.stat().st_uid, victim.stat().st_mode) == (owner.st_uid, owner.st_mode)


def test_a_capture_does_not_read_a_file_through_a_directory_swapped_after_the_walk(
    tmp_path: Path,
) -> None:
    """H1: the walk listed d/f; d became a link to a root-only place before the read."""
    outside = _outside(tmp_path)
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "d" / "f", b"mine")
        sc.start()
        walked: dict[str, object] = {}
        capture = sc.capture_engine  # the moment between the walk and the reads:
        collect = capture._collect

        def collect_then_swap(scopes: Any) -> Any:
            found = collect(scopes)
            walked.update(found[0])
            _swap_for_link(master / "d", outside)
            return found

        write(master / "d" / "f", b"mine, changed")
        capture._collect = collect_then_swap  # type: ignore[method-assign]
        try:
            sc.capture()
        finally:
            del capture._collect
        assert "d/f" in walked
        sc.wait_replicated()
        eng.replay("fx", to=tmp_path / "out")
        for tree in (tmp_path / "out", tmp_path / "r1"):
            for path in tree.rglob("*"):
                if path.is_file() and not path.is_symlink():
                    assert path.read_bytes() != SECRET, path
    finally:
        eng.close()


@pytest.mark.parametrize("how", ["writable by all", "another user's"])
def test_a_replay_or_output_where_another_user_may_swap_a_directory_is_refused(
    tmp_path: Path, how: str
) -> None:
    """H0, H3: replays and written-out files under a directory another user may write.

    The user moved the target aside once it was made, put a link to a root-owned
    tree in its place, and the replay's cleanup deleted that tree. No check of names
    can close that window: such a place is refused before anything is written.
    """
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "f", b"evidence")
        sc.start()
        shared = tmp_path / "shared"
        shared.mkdir()
        if how == "writable by all":
            os.chmod(shared, 0o777)
        else:
            os.chown(shared, 65534, 65534)
        with pytest.raises(OutputLocationError, match=r"another user|other users") as refused:
            eng.replay("fx", to=shared / "out")
        assert refused.value.code == "E2007"
        assert not (shared / "out").exists()
        os.chown(shared, 0, 65534)
        os.chmod(shared, 0o770)  # a group's with other members: still theirs to swap in
        with pytest.raises(OutputLocationError):
            eng.replay("fx", to=shared / "out")
        os.chown(shared, 0, os.getegid())
        eng.replay("fx", to=shared / "own group")  # this process's group (umask 002)
        os.chmod(shared, 0o1777)  # sticky (as /tmp): no one renames what is not theirs
        os.chown(shared, 0, 0)
        eng.replay("fx", to=shared / "out")
        assert (shared / "out" / "f").read_bytes() == b"evidence"
    finally:
        eng.close()


def test_synchronization_does_not_copy_another_file_renamed_over_the_one_it_walked(
    tmp_path: Path,
) -> None:
    """H2: the sync read what was at the name, and gave it the walked file's owner and mode."""
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "d" / "mine", b"the user's file")
        write(master / "d" / "roots", SECRET)
        os.chmod(master / "d" / "roots", 0o600)
        walked = stat_entry(str(master), "d/mine")
        assert walked is not None
        os.replace(master / "d" / "roots", master / "d" / "mine")  # after the walk
        applier = sc._appliers["r1"]
        synchronizer = Synchronizer(
            sc.name,
            "r1",
            sc.layout,
            applier.tree,
            applier.undo,
            eng.store,
            eng._append,
        )
        with pytest.raises(FileNotFoundError):
            synchronizer._open_master("d/mine", walked)
    finally:
        eng.close()
        shutil.rmtree(tmp_path / "master", ignore_errors=True)


def test_a_journaled_file_opened_through_a_directory_swapped_after_its_check_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """H5: ``sc.open`` checked the path, then opened it again by its whole path (truncating)."""
    victim = tmp_path / "victim"
    write(victim / "f", b"victim's")
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "d" / "f", b"mine")
        sc.start()
        checked = journaledfile.resolve_under

        def check_then_swap(root: str, rel: str) -> Any:
            found = checked(root, rel)
            _swap_for_link(master / "d", victim)
            return found

        monkeypatch.setattr(journaledfile, "resolve_under", check_then_swap)
        with pytest.raises(XoError) as refused, sc.open("d/f", "wb") as f:
            f.write(b"APPLICATION DATA")
        assert refused.value.code in {"E2003", "E2000"}
        assert (victim / "f").read_bytes() == b"victim's"
    finally:
        eng.close()


def test_attributes_are_read_from_the_file_the_walk_found(tmp_path: Path) -> None:
    """H4: a capture read the attributes by name again: another file renamed over the
    walked one between its stat and the read gave its set (a file capability, as the
    reviewer's was) to the walked file's identity, and the replica gave it to a copy of
    the user's own bytes."""
    write(tmp_path / "d" / "mine", b"the user's program")
    write(tmp_path / "d" / "privileged", b"root's program")
    os.setxattr(tmp_path / "d" / "privileged", "user.capability-like", b"granted")
    walked = stat_entry(str(tmp_path), "d/mine")
    assert walked is not None
    assert walk.xattrs_below(str(tmp_path), "d/mine", inode=(walked.dev, walked.inode)) == {}
    os.replace(tmp_path / "d" / "privileged", tmp_path / "d" / "mine")  # after the walk
    with pytest.raises(FileNotFoundError):
        walk.xattrs_below(str(tmp_path), "d/mine", inode=(walked.dev, walked.inode))
