"""A master root's own mode, owner and extended attributes: replicated, rewound, replayed.

A file server's share is its root: its permission bits and ACL are what users
see first. Each capture pass compares every root with what the journal holds
(``RootChanged``); a synchronization brings the replica's own directory to the
master root's; a rewind puts it back; a replay gives it to the directory it
writes into; ``diff`` and the difference report name a root that differs as
``.`` (the one root) or by its name (a root of several).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from xoengine.engine import Engine
from xoengine.testing import compare_trees, root_node
from xoengine.watch import Watcher

ROOT = os.geteuid() == 0


def own(path: Path) -> tuple[Any, ...]:
    node = root_node(path)
    return node.mode, node.owner, dict(node.xattrs)


def test_one_root_is_synchronized_captured_rewound_and_replayed(tmp_path: Path) -> None:
    master, replica = tmp_path / "m", tmp_path / "r"
    master.mkdir()
    (master / "f").write_bytes(b"data")
    os.chmod(master, 0o750)
    os.setxattr(master, "user.share", b"docs")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r": str(replica)})
        sc.start()
        sc.wait_replicated()
        assert compare_trees(master, replica, root=True) == []  # the sync gave it
        before = own(master)
        p1 = sc.set_rewind_point("p1")
        os.chmod(master, 0o700)
        os.setxattr(master, "user.owner", b"finance")
        os.removexattr(master, "user.share")
        if ROOT:
            os.chown(master, 65534, 65534)
        result = sc.capture()
        assert (result.events, result.metadata) == (1, 1)
        sc.wait_replicated()
        after = own(master)
        assert own(replica) == after
        assert sc.difference_report("r", verify=True)["differences"] == {}
        os.chmod(replica, 0o755)  # behind the engine's back
        assert sc.difference_report("r", verify=True)["differences"] == {".": "mode 0o700 vs 0o755"}
        os.chmod(replica, 0o700)
        sc.suspend("r")  # a root's change waits in the spool like a path's
        os.chmod(master, 0o711)
        sc.capture()
        pending = sc.difference_report("r")
        assert (pending["pending"], pending["pending_files"]) == (
            {".": {"events": 1, "bytes": 0}},
            1,
        )
        sc.resume("r")
        sc.wait_replicated()
        assert sc.difference_report("r")["pending"] == {}
        os.chmod(master, 0o700)
        sc.capture()
        sc.wait_replicated()
        end = eng.last_position()
        assert eng.diff("s", p1.position, end).roots == ["."]
        assert eng.diff("s", end, p1.position).roots == ["."]
        assert eng.diff("s", p1.position, p1.position).roots == []
        for position, want in ((p1.position, before), (end, after)):
            out = tmp_path / f"replay-{position}"
            eng.replay("s", to=out, position=position)
            assert own(out) == want
        sc.rewind("r", p1)
        assert own(replica) == before
        sc.resume("r")
        sc.wait_replicated()
        assert own(replica) == after
        journaled = [event for _, _, event in eng.root_events("s", None)]
        assert [(e.root, e.originator_version) for e in journaled] == [
            ("", v) for v in (1, 2, 3, 4)
        ]
        history = eng.history("s", ".")
        assert [(h.operation, h.path, h.mode) for h in history] == [
            ("root", ".", 0o750),
            ("root", ".", 0o700),
            ("root", ".", 0o711),
            ("root", ".", 0o700),
        ]
        assert history[-1].xattrs == {"user.owner": b"finance".hex()}
        assert eng.history("s", "") == history
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        assert eng.scenario("s").capture().events == 0  # known from the journal


def test_roots_of_several_are_the_replicas_directories(tmp_path: Path) -> None:
    alpha, beta = tmp_path / "m1" / "alpha", tmp_path / "m2" / "beta"
    alpha.mkdir(parents=True)
    beta.mkdir(parents=True)  # stays empty: no event makes its directory
    (alpha / "f").write_bytes(b"x")
    os.chmod(beta, 0o711)
    replica = tmp_path / "r"
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario(
            "multi", master=[str(alpha), str(beta)], replicas={"r": str(replica)}
        )
        sc.start()
        sc.wait_replicated()
        os.chmod(alpha, 0o700)
        os.setxattr(alpha, "user.tag", b"a")
        assert sc.capture().metadata == 1
        sc.wait_replicated()
        assert own(replica / "alpha") == own(alpha)
        assert own(replica / "beta") == own(beta)
        assert sc.difference_report("r", verify=True)["differences"] == {}
        os.setxattr(replica / "beta", "user.stray", b"1")
        assert sc.difference_report("r", verify=True)["differences"] == {
            "beta": "extended attributes user.stray"
        }
        history = eng.history("multi", "alpha")
        assert [(h.operation, h.path, h.mode) for h in history][-1] == ("root", "alpha", 0o700)
        out = tmp_path / "out"
        eng.replay("multi", to=out)
        assert own(out / "alpha") == own(alpha)
        assert own(out / "beta") == own(beta)  # made, though no file is in it


class _Recorder:
    """A scenario for the watcher: it records what it is asked to capture."""

    def __init__(self, layout: Any) -> None:
        self.layout = layout
        self.calls: list[list[str] | None] = []
        self.called = threading.Event()

    def capture(self, paths: Any = None) -> None:
        self.calls.append(None if paths is None else list(paths))
        self.called.set()


@pytest.mark.skipif(not hasattr(os, "setxattr"), reason="no extended attributes")
def test_the_watcher_captures_a_root_whose_own_metadata_changed(tmp_path: Path) -> None:
    from xoengine.layout import Layout  # noqa: PLC0415

    master = tmp_path / "m"
    master.mkdir()
    scenario = _Recorder(Layout((str(master),)))
    watcher = Watcher(scenario, delay=0.05)
    watcher.start()
    try:
        os.chmod(master, 0o700)  # nothing under the root changes: no path to name
        assert scenario.called.wait(timeout=60)
    finally:
        watcher.stop()
    assert scenario.calls[0] == []  # a pass over no path: it checks the roots
