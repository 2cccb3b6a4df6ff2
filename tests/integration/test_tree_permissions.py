"""Replica trees run by a user (not root): unreadable and read-only directories.

A user's process cannot open a directory of mode 000, nor add or remove names
in a directory of mode 0555, though it owns both. Every failure of the tree
layer is a coded error (never a bare ``OSError``, never "absent"), and a
read-only directory (or file) of the user's is written the way ``rsync -a``
writes it for a user: ``u+w`` for the moment of the write, the mode put back.

The user part of each test runs in a subprocess as ``nobody`` (``setpriv``),
in a directory outside pytest's temporary one (root's alone).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from xoengine.errors import ReplicaWriteError
from xoengine.tree import ReplicaTree

if TYPE_CHECKING:
    from collections.abc import Iterator

NOBODY = 65534
SETPRIV = shutil.which("setpriv")

as_user = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv to run as a user"
)


@pytest.fixture
def user_dir() -> Iterator[Path]:
    """An empty directory of nobody's, removed with everything in it afterwards."""
    base = Path(tempfile.mkdtemp(prefix="xoengine-nobody-"))
    os.chown(base, NOBODY, NOBODY)
    try:
        yield base
    finally:
        for path in base.rglob("*"):
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(base)


def run_as_user(base: Path, script: str) -> Any:
    """Run ``script`` as nobody in ``base``; return the JSON its last line printed."""
    assert SETPRIV is not None
    user = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    done = subprocess.run(
        [*user, sys.executable, "-c", textwrap.dedent(script)],
        cwd=base,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@as_user
def test_tree_every_method_raises_coded_under_an_unreadable_directory(user_dir: Path) -> None:
    # Each public method on a path under a directory of mode 000: E3010, never a
    # PermissionError, and never an answer of "absent" or b"" (a rewind would take
    # the file for gone, a sync its bytes for empty). No mode is left changed.
    result = run_as_user(
        user_dir,
        """
        import json, os
        from xoengine.blocks import Literal
        from xoengine.errors import XoError
        from xoengine.tree import ReplicaTree

        tree = ReplicaTree("r")
        synced = ReplicaTree("r", fsync=True)
        tree.write_new("d/x", [(0, b"x" * 100)], 100, 0o644, 0)
        tree.create("d/l", "symlink", 0, "x")
        with open("src", "wb") as f:
            f.write(b"s")
        os.chmod("r/d", 0)
        calls = {
            "lstat": lambda: tree.lstat("d/x"),
            "read": lambda: tree.read("d/x"),
            "read_ranges": lambda: tree.read_ranges("d/x", [(0, 1)]),
            "digest128": lambda: tree.digest128("d/x"),
            "block_map": lambda: tree.block_map("d/x", 4096),
            "readlink": lambda: tree.readlink("d/l"),
            "get_xattrs": lambda: tree.get_xattrs("d/x"),
            "meta": lambda: tree.meta("d/x", os.stat("src")),
            "root_meta": lambda: ReplicaTree("r/d", create=False).root_meta(""),
            "write_ranges": lambda: tree.write_ranges("d/x", [(0, b"y")], 100),
            "truncate": lambda: tree.truncate("d/x", 1),
            "write_new": lambda: tree.write_new("d/x", [(0, b"y")], 1, 0o644, 0),
            "copy_new": lambda: tree.copy_new("d/n", "src", 0o644),
            "replace": lambda: tree.replace("d/x", [b"y"]),
            "rebuild": lambda: tree.rebuild(
                "d/x", [Literal(0, 1)], lambda o, n: b"y", base=None, result=None
            ),
            "restore_bytes": lambda: tree.restore_bytes("d/x", [(0, b"y")], 100, None, None),
            "create": lambda: tree.create("d/n", "file", 0o644, None),
            "delete": lambda: tree.delete("d/x"),
            "rename": lambda: tree.rename("d/x", "y"),
            "set_meta": lambda: tree.set_meta("d/x", 0o600, None),
            "set_xattrs": lambda: tree.set_xattrs("d/x", {"user.a": b"1"}),
            "flush": lambda: synced.flush(["d/x"]),
        }
        out = {}
        for name, call in calls.items():
            try:
                call()
                out[name] = "no error"
            except XoError as e:
                out[name] = e.code
            except OSError as e:
                out[name] = f"uncoded {type(e).__name__}"
        out["mode"] = oct(os.stat("r/d").st_mode & 0o7777)
        print(json.dumps(out))
        """,
    )
    mode = result.pop("mode")
    assert result == dict.fromkeys(result, "E3010")
    assert mode == "0o0"


@as_user
def test_rewind_into_an_unreadable_directory_is_coded_and_the_engine_still_opens(
    user_dir: Path,
) -> None:
    # The rewind stops with E3010; the engine opens while the directory is still
    # unreadable (the pending rewind is completed at open, where a coded error is
    # kept for later), and completes it once the mode is mended.
    result = run_as_user(
        user_dir,
        """
        import json, os
        from pathlib import Path
        from xoengine.engine import Engine
        from xoengine.errors import XoError
        from xoengine.testing import compare_trees

        Path("m/d").mkdir(parents=True)
        Path("m/d/x").write_bytes(b"x" * 4096)
        Path("m/y").write_bytes(b"y" * 100)
        out = {}
        with Engine.open("state", durability="nosync") as eng:
            sc = eng.create_scenario("s", master="m", replicas={"r1": "r1"})
            sc.start()
            point = sc.set_rewind_point("P")
            with sc.open("d/x", "r+b") as f:
                f.write(b"NEW")
            os.rename("m/y", "m/y2")
            sc.capture()
            sc.wait_replicated()
            sc.stop()
            os.chmod("r1/d", 0)
            try:
                sc.rewind("r1", point)
                out["rewind"] = "no error"
            except XoError as e:
                out["rewind"] = e.code
        try:
            Engine.open("state", durability="nosync").close()
            out["open"] = "opened"
        except Exception as e:
            out["open"] = repr(e)
        os.chmod("r1/d", 0o755)
        Engine.open("state", durability="nosync").close()
        with Engine.open("state", readonly=True) as eng:
            eng.replay("s", to="at-P", position=point.position)
        out["differences"] = [str(d) for d in compare_trees("at-P", "r1")]
        print(json.dumps(out))
        """,
    )
    assert result == {"rewind": "E3010", "open": "opened", "differences": []}


@as_user
def test_apply_into_an_unreadable_directory_is_coded(user_dir: Path) -> None:
    result = run_as_user(
        user_dir,
        """
        import json, os
        from pathlib import Path
        from xoengine.engine import Engine
        from xoengine.errors import XoError

        Path("m/d").mkdir(parents=True)
        Path("m/d/x").write_bytes(b"x" * 4096)
        out = {}
        with Engine.open("state", durability="nosync") as eng:
            sc = eng.create_scenario("s", master="m", replicas={"r1": "r1"})
            sc.start()
            sc.stop()
            os.chmod("r1/d", 0)
            with sc.open("d/x", "r+b") as f:
                f.write(b"NEW")
            try:
                sc.wait_replicated()
                out["apply"] = "no error"
            except XoError as e:
                out["apply"] = e.code
        print(json.dumps(out))
        """,
    )
    assert result == {"apply": "E3010"}


@as_user
def test_verify_says_a_directory_it_cannot_list_is_unreadable(user_dir: Path) -> None:
    # Was "missing on the replica" for each file under a replica directory of mode 000
    # (and "only on the replica" under such a master directory).
    result = run_as_user(
        user_dir,
        """
        import json, os
        from pathlib import Path
        from xoengine.engine import Engine

        Path("m/d").mkdir(parents=True)
        Path("m/d/x").write_text("x")
        Path("m/y").write_text("y")
        out = {}
        with Engine.open("state", durability="nosync") as eng:
            sc = eng.create_scenario("s", master="m", replicas={"r1": "r1"})
            sc.start()
            sc.stop()
            for side in ("r1", "m"):
                os.chmod(f"{side}/d", 0)
                out[side] = sc.difference_report("r1", verify=True)["differences"]
                os.chmod(f"{side}/d", 0o755)
        print(json.dumps(out))
        """,
    )
    assert result == {
        "r1": {"d": "unreadable on the replica"},
        "m": {"d": "unreadable on the master"},
    }


@as_user
def test_resume_lists_a_replica_directory_made_unreadable_by_hand_once_its_mode_is_back(
    user_dir: Path,
) -> None:
    # Review 25 (L4): the resync took what it could not list as unknown, set the master's
    # mode on it and went back into replication, leaving a file the master deleted.
    result = run_as_user(
        user_dir,
        """
        import json, os
        from pathlib import Path
        from xoengine.engine import Engine

        Path("m/b").mkdir(parents=True)
        Path("m/b/keep").write_text("keep")
        Path("m/b/gone").write_text("gone")
        with Engine.open("state", durability="nosync") as eng:
            sc = eng.create_scenario("s", master="m", replicas={"r1": "r1"})
            sc.start()
            p1 = sc.set_rewind_point("p1")
            os.unlink("m/b/gone")
            sc.capture()
            sc.wait_replicated()
            sc.rewind("r1", p1)
            os.chmod("r1/b", 0)
            sc.resume("r1")
            sc.wait_replicated()
            out = {
                "listed": sorted(os.listdir("r1/b")),
                "verify": sc.difference_report("r1", verify=True)["differences"],
                "actions": [
                    [f["path"], f["action"]] for f in sc.sync_report("r1")["runs"][-1]["files"]
                ],
            }
            sc.stop()
        print(json.dumps(out))
        """,
    )
    assert result["listed"] == ["keep"]
    assert result["verify"] == {}
    # Review 25 (M5): listed before the comparison, what it held is compared, not copied anew.
    assert ["b/gone", "deleted"] in result["actions"]
    assert ["b/keep", "created"] not in result["actions"], result["actions"]


@as_user
def test_resume_deletes_a_replica_directory_made_unreadable_whose_master_is_gone(
    user_dir: Path,
) -> None:
    # Review 26 (N B5): only a directory the master still had was given a mode it could
    # be listed with; one the master deleted stopped the resume (E3010, Permission
    # denied), and the replica stayed out of replication.
    result = run_as_user(
        user_dir,
        """
        import json, os, shutil
        from pathlib import Path
        from xoengine.engine import Engine

        Path("m/b").mkdir(parents=True)
        Path("m/b/keep").write_text("keep")
        with Engine.open("state", durability="nosync") as eng:
            sc = eng.create_scenario("s", master="m", replicas={"r1": "r1"})
            sc.start()
            p1 = sc.set_rewind_point("p1")
            shutil.rmtree("m/b")
            sc.capture()
            sc.wait_replicated()
            sc.rewind("r1", p1)
            os.chmod("r1/b", 0)
            sc.resume("r1")
            sc.wait_replicated()
            out = {
                "r1": sorted(os.listdir("r1")),
                "verify": sc.difference_report("r1", verify=True)["differences"],
            }
            sc.stop()
        print(json.dumps(out))
        """,
    )
    assert result["r1"] == []
    assert result["verify"] == {}


@as_user
def test_a_user_replicates_rewinds_and_replays_read_only_directories(user_dir: Path) -> None:
    # Directories of mode 0555 holding files, one holding another, and a read-only
    # file: synchronized, applied (names added, removed, a directory moved from one
    # to another, the read-only file written), rewound and replayed, each tree equal
    # to what it stands for, modes included.
    result = run_as_user(
        user_dir,
        """
        import json, os
        from pathlib import Path
        from xoengine.engine import Engine
        from xoengine.testing import compare_trees

        def differences(left, right):
            return [str(d) for d in compare_trees(left, right)]

        Path("m/ro/sub").mkdir(parents=True)
        Path("m/ro2").mkdir()
        Path("m/ro/a").write_bytes(b"A" * 5000)
        Path("m/ro/b").write_bytes(b"B")
        Path("m/ro/sub/c").write_bytes(b"C")
        os.chmod("m/ro/a", 0o444)
        for d in ("m/ro/sub", "m/ro", "m/ro2"):
            os.chmod(d, 0o555)
        out = {}
        with Engine.open("state", durability="nosync") as eng:
            sc = eng.create_scenario("s", master="m", replicas={"r1": "r1"})
            sc.start()
            out["synchronized"] = differences("m", "r1")
            point = sc.set_rewind_point("P")
            for d in ("m/ro", "m/ro2", "m/ro/sub"):
                os.chmod(d, 0o755)
            os.remove("m/ro/b")
            Path("m/ro/new").write_bytes(b"N")
            os.rename("m/ro/sub", "m/ro2/sub")
            os.chmod("m/ro/a", 0o644)
            with open("m/ro/a", "r+b") as f:
                f.write(b"NEW")
            os.chmod("m/ro/a", 0o444)
            for d in ("m/ro2/sub", "m/ro", "m/ro2"):
                os.chmod(d, 0o555)
            sc.capture()
            sc.wait_replicated()
            out["applied"] = differences("m", "r1")
            sc.rewind("r1", point)
            sc.stop()
        with Engine.open("state", readonly=True) as eng:
            eng.replay("s", to="at-P", position=point.position)
            eng.replay("s", to="now")
        out["rewound"] = differences("at-P", "r1")
        out["replayed"] = differences("m", "now")
        out["modes"] = [
            oct(os.stat(p).st_mode & 0o777) for p in ("r1/ro", "r1/ro/sub", "r1/ro/a", "now/ro2/sub")
        ]
        print(json.dumps(out))
        """,
    )
    assert result == {
        "synchronized": [],
        "applied": [],
        "rewound": [],
        "replayed": [],
        "modes": ["0o555", "0o555", "0o444", "0o555"],
    }


@as_user
def test_tree_writes_in_a_read_only_directory_from_several_threads(user_dir: Path) -> None:
    # Threads adding names to one read-only directory at once: none finds the mode
    # put back under it, and the mode is the directory's own at the end. Removing a
    # read-only directory holding another one, and a directory of another user's
    # (no u+w can be given): coded.
    (user_dir / "theirs").mkdir(mode=0o555)  # root's
    result = run_as_user(
        user_dir,
        """
        import json, os
        from xoengine.errors import XoError
        from xoengine.tree import ReplicaTree

        tree = ReplicaTree("r", fsync=True)
        tree.create("ro", "dir", 0o555, None)
        names = [f"ro/{i}" for i in range(64)]
        tree.for_each(lambda p: tree.write_new(p, [(0, p.encode())], len(p), 0o444, 0), names)
        tree.flush(names)
        out = {"written": sorted(os.listdir("r/ro")) == sorted(n[3:] for n in names)}
        out["mode"] = oct(os.stat("r/ro").st_mode & 0o777)
        tree.create("ro2", "dir", 0o755, None)
        tree.create("ro2/inner", "dir", 0o555, None)
        tree.write_new("ro2/inner/f", [(0, b"f")], 1, 0o444, 0)
        os.chmod("r/ro2", 0o555)
        tree.rename("ro2/inner", "ro/inner")
        out["moved"] = os.listdir("r/ro/inner")
        tree.write_new("ro/made/f", [(0, b"f")], 1, 0o644, 0)  # a missing parent made in ro
        out["made"] = os.listdir("r/ro/made")
        tree.delete("ro")
        out["deleted"] = sorted(os.listdir("r"))
        try:
            ReplicaTree("theirs", create=False).write_new("x", [], 0, 0o644, 0)
            out["other's"] = "no error"
        except XoError as e:
            out["other's"] = e.code
        print(json.dumps(out))
        """,
    )
    assert result == {
        "written": True,
        "mode": "0o555",
        "moved": ["f"],
        "made": ["f"],
        "deleted": ["ro2"],
        "other's": "E3010",
    }


@as_user
def test_a_mode_left_writable_by_a_kill_is_reported_by_verify_and_mended_by_sync(
    user_dir: Path,
) -> None:
    # A kill between giving a read-only directory u+w and putting its mode back
    # leaves it 0755: the verification names it, the next synchronization mends it.
    result = run_as_user(
        user_dir,
        """
        import json, os
        from pathlib import Path
        from xoengine.engine import Engine

        Path("m/ro").mkdir(parents=True)
        Path("m/ro/a").write_bytes(b"A")
        os.chmod("m/ro", 0o555)
        out = {}
        with Engine.open("state", durability="nosync") as eng:
            sc = eng.create_scenario("s", master="m", replicas={"r1": "r1"})
            sc.start()
            sc.stop()
            os.chmod("r1/ro", 0o755)  # as the kill leaves it
            out["verify"] = sc.difference_report("r1", verify=True)["differences"]
            sc.synchronize(replica="r1")
            out["mode"] = oct(os.stat("r1/ro").st_mode & 0o777)
        print(json.dumps(out))
        """,
    )
    assert result == {"verify": {"ro": "mode 0o555 vs 0o755"}, "mode": "0o555"}


def test_tree_error_names_a_replay_target_the_tree(tmp_path: Path) -> None:
    # A replay's target is no replica: its errors name "the tree at".
    (tmp_path / "d").mkdir()
    with pytest.raises(ReplicaWriteError, match="on the replica at") as replica:
        ReplicaTree(str(tmp_path)).read("d")  # a directory: EISDIR
    with pytest.raises(ReplicaWriteError, match="in the tree at") as target:
        ReplicaTree(str(tmp_path), replica=False).read("d")
    assert replica.value.code == target.value.code == "E3010"
    assert "replica" not in target.value.message
