"""Review 19: a root replaced by a symbolic link after the scenario was made is never followed.

Roots are kept resolved when a scenario is created, and overlaps are refused
then. A replica directory replaced later by a link (to the state directory, into
the master, anywhere) had the next synchronization copy the master into the
link's target and delete what it held there (the journal, with ``nosync``); a
master root replaced by a link to the state directory had captures journal the
journal's own files.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from xoengine.errors import NoFileAtError, TreeRootMissingError
from xoengine.testing import compare_trees

from scenario_kit import new_scenario, write


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("target", ["state", "inside-master", "foreign"])
def test_a_replica_root_replaced_by_a_link_is_refused_before_anything_is_written(
    tmp_path: Path, target: str
) -> None:
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "d0" / "precious", b"keep me")
        write(master / "top", b"top")
        sc.start()
        sc.wait_replicated()
        sc.stop()
        write(tmp_path / "foreign" / "theirs", b"someone else's")
        place = {
            "state": tmp_path / "state",
            "inside-master": master / "d0",
            "foreign": tmp_path / "foreign",
        }[target]
        before = {p: _files(p) for p in (tmp_path / "state", master, tmp_path / "foreign")}
        shutil.rmtree(tmp_path / "r1")
        (tmp_path / "r1").symlink_to(place)
        with pytest.raises(TreeRootMissingError, match="through a symbolic link"):
            sc.start()
        with pytest.raises(TreeRootMissingError, match="through a symbolic link"):
            sc.synchronize(replica="r1")
        for path, files in before.items():
            if path != tmp_path / "state":
                assert _files(path) == files, path
        assert (tmp_path / "state" / "journal" / "data.mdb").is_file()
        # Put back as a directory: synchronized again, exact.
        (tmp_path / "r1").unlink()
        (tmp_path / "r1").mkdir()
        sc.synchronize(replica="r1")
        assert compare_trees(master, tmp_path / "r1") == []
    finally:
        eng.close()


def test_a_master_root_replaced_by_a_link_to_the_state_directory_journals_nothing(
    tmp_path: Path,
) -> None:
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "f", b"mine")
        sc.start()
        sc.wait_replicated()
        sc.stop()
        moved = tmp_path / "master.moved"
        master.rename(moved)
        master.symlink_to(tmp_path / "state")
        with pytest.raises(TreeRootMissingError, match="master root leads to"):
            sc.capture()
        with pytest.raises(TreeRootMissingError):
            sc.start()
        with pytest.raises(NoFileAtError):  # the journal's own files were never journaled
            eng.history(sc, "journal/data.mdb")
        assert os.listdir(tmp_path / "r1") == ["f"]
    finally:
        eng.close()
