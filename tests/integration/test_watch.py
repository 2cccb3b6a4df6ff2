"""Live capture: changes made while the scenario watches reach the replicas without a capture call.

No sleeps: each burst of changes ends with a marker file, and the test waits
until the marker is journaled (the kernel reports changes in order).
"""

from __future__ import annotations

import os
from pathlib import Path

from xoengine.engine import Engine
from xoengine.testing import compare_trees


def _burst(master: Path, n: int) -> None:
    (master / f"dir{n}" / "deep").mkdir(parents=True)
    (master / f"dir{n}" / "deep" / "new.bin").write_bytes(os.urandom(20_000))
    (master / "a.txt").write_text(f"version {n}\n" * 50)
    with (master / "big.bin").open("r+b") as f:
        f.seek(5000 * n)
        f.write(b"W" * 777)
    if n:
        (master / f"dir{n - 1}" / "deep" / "new.bin").rename(master / f"dir{n}" / "moved.bin")
        (master / f"dir{n - 1}").rename(master / f"renamed{n - 1}")
    link = master / "latest"
    if link.is_symlink():
        link.unlink()
    link.symlink_to(f"dir{n}")
    with open(os.fsencode(master) + b"/caf\xe9-%d.txt" % n, "wb") as f:
        f.write(b"non-UTF-8 name\n")
    (master / f"marker-{n}").write_text("done")


def test_watch_replicates_bursts_without_capture_calls(tmp_path: Path) -> None:
    master, r1, r2 = tmp_path / "m", tmp_path / "r1", tmp_path / "r2"
    master.mkdir()
    (master / "a.txt").write_text("initial\n")
    (master / "big.bin").write_bytes(os.urandom(300_000))
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario(
            "live", master=str(master), replicas={"r1": str(r1), "r2": str(r2)}, watch_delay=0.2
        )
        sc.start(watch=True)
        try:
            for n in range(4):
                _burst(master, n)
                sc.wait_captured(f"marker-{n}", timeout=60)
                sc.wait_replicated(timeout=60)
                assert compare_trees(master, r1) == []
                assert compare_trees(master, r2) == []
            # An editor's save: a temporary file moved over the one it replaces.
            (master / ".a.txt.tmp").write_text("saved\n")
            (master / "marker-save-1").write_text("written")
            sc.wait_captured("marker-save-1", timeout=60)
            (master / ".a.txt.tmp").rename(master / "a.txt")
            (master / "marker-save-2").write_text("moved")
            sc.wait_captured("marker-save-2", timeout=60)
            sc.wait_replicated(timeout=60)
            assert compare_trees(master, r1) == []
        finally:
            sc.stop()
        history = eng.history("live", "renamed0")
        assert [h.operation for h in history][:1] == ["created"]
        assert any(h.operation == "renamed" for h in history)
        saved = [(h.operation, h.path, h.new_path) for h in eng.history("live", "a.txt")]
        assert saved[-3:-1] == [("deleted", "a.txt", None), ("renamed", ".a.txt.tmp", "a.txt")]


def test_watch_and_scan_journal_the_same_tree(tmp_path: Path) -> None:
    # The same burst captured live and by a scan ends in the same replica state.
    results = []
    for mode in ("watch", "scan"):
        master, replica = tmp_path / mode / "m", tmp_path / mode / "r"
        master.mkdir(parents=True)
        (master / "a.txt").write_text("initial\n")
        (master / "big.bin").write_bytes(b"\x01" * 300_000)
        with Engine.open(tmp_path / mode / "state", durability="nosync") as eng:
            sc = eng.create_scenario("s", master=str(master), replicas={"r": str(replica)}, watch_delay=0.2)
            sc.start(watch=mode == "watch")
            try:
                _burst(master, 0)
                if mode == "watch":
                    sc.wait_captured("marker-0", timeout=60)
                else:
                    sc.capture()
                sc.wait_replicated(timeout=60)
            finally:
                sc.stop()
        assert compare_trees(master, replica) == []
        results.append(sorted(p.relative_to(replica).as_posix() for p in replica.rglob("*")))
    assert results[0] == results[1]
