"""Live capture: changes made while the scenario watches reach the replicas without a capture call.

No sleeps: each burst of changes ends with a marker file, and the test waits
until the marker is journaled (the kernel reports changes in order).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from xoengine.engine import Engine
from xoengine.errors import TreeRootMissingError
from xoengine.events import AlertRaised
from xoengine.testing import compare_trees
from xoengine.worker import ApplierThread

if TYPE_CHECKING:
    from collections.abc import Callable


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
            sc = eng.create_scenario(
                "s", master=str(master), replicas={"r": str(replica)}, watch_delay=0.2
            )
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


def _until(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    """Wait for ``condition`` (a state the watcher's thread reaches), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        pause.wait(0.02)


def test_a_failing_live_capture_is_told_retried_and_loses_nothing(tmp_path: Path) -> None:
    """The master root goes away under the watcher, then comes back.

    Was a bug (review 17): the failure went into a private list only (state
    Running, no alert), and the paths of the failed pass were forgotten until
    the next full scan.
    """
    master, away, r1 = tmp_path / "m", tmp_path / "away", tmp_path / "r1"
    master.mkdir()
    (master / "a").write_bytes(b"a")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("w", master=str(master), replicas={"r1": str(r1)}, watch_delay=0.1)
        sc.start(watch=True)
        os.rename(master, away)  # the watches follow the directory: its events still come
        (away / "during").write_bytes(b"written while the root was gone")
        _until(lambda: isinstance(sc.watch_error, TreeRootMissingError))
        first = sc.watch_error
        _until(lambda: len(sc._watcher.errors) >= 2)  # a retry failed too
        assert sc.watch_error is first  # one outage, one error: said once (start --watch)
        assert sc.state == "Problem"
        alerts = [e for _, e in eng._iter_events((AlertRaised,)) if e.details.get("watcher")]
        assert [(a.code, a.severity) for a in alerts] == [("E2005", "error")]
        os.rename(away, master)
        (master / "after").write_bytes(b"after")
        sc.wait_captured("after", timeout=60)  # a retry: a full pass
        sc.wait_captured("during", timeout=60)  # what the failed pass missed
        _until(lambda: sc.watch_error is None)
        sc.wait_replicated(timeout=60)
        assert compare_trees(master, r1) == []
        assert sc.state == "Running"
        alerts = [e for _, e in eng._iter_events((AlertRaised,)) if e.details.get("watcher")]
        assert [(a.code, a.severity) for a in alerts] == [("E2005", "error"), ("E2005", "info")]
        sc.stop()


def test_stop_raises_when_the_watchers_last_pass_fails(tmp_path: Path) -> None:
    """``stop`` promises every change made before it is journaled: when it cannot, it says so."""
    master, away = tmp_path / "m", tmp_path / "away"
    master.mkdir()
    (master / "a").write_bytes(b"a")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("w", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start(watch=True)
        os.rename(master, away)
        with pytest.raises(TreeRootMissingError):
            sc.stop()
        assert sc.state == "Stopped" and sc.watch_error is None  # the watcher is gone
        assert sc._threads == {}  # the appliers ended too
        os.rename(away, master)
        # Started again, it is Running: no live capture failed since (review 17: the
        # handle kept the old error and the scenario stayed in Problem).
        sc.start(watch=True)
        sc.capture()
        assert sc.state == "Running"
        sc.stop()
        alerts = [(e.code, e.severity) for _, e in eng._iter_events((AlertRaised,))]
        assert alerts[-1] == ("E2005", "info")  # the error alert was cleared


def test_close_raises_a_failed_last_pass_unless_the_with_block_raised(tmp_path: Path) -> None:
    """``close()`` raises a failed last pass; leaving a ``with`` on an error, that error wins."""

    class BoomError(Exception):
        pass

    for n, body in enumerate((None, BoomError)):
        master, away = tmp_path / f"m{n}", tmp_path / f"away{n}"
        master.mkdir()
        with (
            pytest.raises(TreeRootMissingError if body is None else BoomError),
            Engine.open(tmp_path / f"state{n}", durability="nosync") as eng,
        ):
            replicas = {"r1": str(tmp_path / f"r{n}")}
            eng.create_scenario("w", master=str(master), replicas=replicas).start(watch=True)
            os.rename(master, away)
            if body is not None:
                raise body
        assert eng._closed  # closed all the same


def test_stop_and_close_apply_the_last_pass_to_the_replicas(tmp_path: Path) -> None:
    """What the watcher's last pass journals is on the running replicas when stop/close return.

    Review 18: the appliers were told to end just as that pass committed, so
    the replica lacked the last change whenever its thread woke too late (7 of
    16 shutdowns of ``xoengine start --watch``). The watch delay here is
    longer than the test, so only the last pass sees each change, and the
    appliers are still busy with the wake-up of ``wait_replicated`` when it
    commits.
    """
    master, r1, r2 = tmp_path / "m", tmp_path / "r1", tmp_path / "r2"
    master.mkdir()
    (master / "a.txt").write_text("v0\n")
    replicas = {"r1": str(r1), "r2": str(r2)}
    with Engine.open(tmp_path / "state") as eng:
        sc = eng.create_scenario("w", master=str(master), replicas=replicas, watch_delay=3600)
        for n in range(1, 9):
            sc.start(watch=True)
            (master / "a.txt").write_text(f"v{n}\n")
            (master / f"new-{n}").write_bytes(os.urandom(5000))
            sc.wait_replicated()  # as ``start --watch`` does: it wakes the appliers
            sc.stop()
            assert compare_trees(master, r1) == [], n
            assert compare_trees(master, r2) == [], n
            assert sc.statistics().replicas["r1"].backlog_events == 0
    for n in range(9, 13):  # and close(), as ``start --watch`` ends
        with Engine.open(tmp_path / "state") as eng:
            sc = eng.scenario("w")
            sc.start(watch=True)
            (master / "a.txt").write_text(f"v{n}\n")
            sc.wait_replicated()
        assert compare_trees(master, r1) == [], n


def test_a_change_through_one_hard_link_is_journaled_for_every_name(tmp_path: Path) -> None:
    """The kernel names the path a program opened; the other names of the inode changed too.

    Review 18: ``ln notes.txt link; echo x >> link`` under the watcher left
    ``notes.txt`` with its old bytes (and a chmod, its old mode) on every
    replica and in the journal until a full pass, while ``difference`` said
    nothing was pending. A scoped capture of one name now captures them all.
    """
    master, r1 = tmp_path / "m", tmp_path / "r1"
    (master / "sub").mkdir(parents=True)
    (master / "notes.txt").write_text("first line\n")
    os.link(master / "notes.txt", master / "sub" / "link.txt")
    os.link(master / "notes.txt", master / "third.txt")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("w", master=str(master), replicas={"r1": str(r1)})
        sc.start()
        with (master / "sub" / "link.txt").open("a") as f:
            f.write("appended through the link\n")
        os.chmod(master / "sub" / "link.txt", 0o600)
        sc.capture(["sub/link.txt"])  # as the watcher does: the name it was told about
        sc.wait_replicated()
        assert compare_trees(master, r1) == []
        assert not sc.difference_report("r1", verify=True)["differences"]
        for name in ("notes.txt", "third.txt"):
            assert eng.history("w", name)[-1].operation == "written"
            with eng.file_at("w", name, eng.last_position()) as f:  # what ``cat`` answers
                assert f.read() == (master / name).read_bytes()
        # Under the live watcher, likewise.
        sc.start(watch=True)
        with (master / "third.txt").open("a") as f:
            f.write("and through the third name\n")
        (master / "marker").write_text("done")
        sc.wait_captured("marker", timeout=60)
        sc.wait_replicated(timeout=60)
        assert compare_trees(master, r1) == []
        sc.stop()


def test_ctrl_c_in_the_drain_still_ends_every_thread_and_frees_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt while close() drains: no applier is left writing a closed journal.

    Review 18: the threads kept applying after the scenario was stopped, and one
    took the writer lock again on the closed journal, so this process could not
    open it again (E4002 naming its own pid). The interrupt is raised where the
    drain begins, the moment a Ctrl-C lands in a long one.
    """
    master = tmp_path / "m"
    master.mkdir()
    (master / "a").write_bytes(b"a")
    replicas = {"r1": str(tmp_path / "r1"), "r2": str(tmp_path / "r2")}
    eng = Engine.open(tmp_path / "state", durability="nosync")
    sc = eng.create_scenario("w", master=str(master), replicas=replicas)
    sc.start()
    threads = list(sc._threads.values())

    def interrupted(self: ApplierThread) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ApplierThread, "drain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        eng.close()
    assert not any(t._thread.is_alive() for t in threads)
    monkeypatch.undo()
    (master / "b").write_bytes(b"b")
    with Engine.open(tmp_path / "state", durability="nosync") as again:  # the journal is free
        again.scenario("w").start()
        again.scenario("w").stop()
    assert (tmp_path / "r1" / "b").read_bytes() == b"b"


def test_linked_names_are_found_through_an_excluded_name_and_without_rereading_the_tree(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write through an excluded name reaches the included ones; a second pass reads no tree.

    Review 18 (second reading): a write through an ``exclude``d name of a
    linked file was dropped with that name; and every pass over a linked file
    read the whole master state (1.1 s a pass at 100,000 files).
    """
    master, r1 = tmp_path / "m", tmp_path / "r1"
    master.mkdir()
    for n in range(50):
        (master / f"other-{n}").write_text("x")
    (master / "data.txt").write_text("one\n")
    os.link(master / "data.txt", master / "data.tmp")  # excluded below
    os.link(master / "data.txt", master / "copy.txt")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        replicas = {"r1": str(r1)}
        sc = eng.create_scenario("w", master=str(master), replicas=replicas, exclude=["*.tmp"])
        sc.start()
        manifest = sc.capture_engine.state.manifest
        reads: list[str] = []
        whole = manifest.items

        def counted(*args: object, **kwargs: object) -> object:
            if len(args) + len(kwargs) == 1:  # the whole state, not a directory's entries
                reads.append("items")
            return whole(*args, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(manifest, "items", counted)
        for n in range(3):
            with (master / "data.tmp").open("a") as f:
                f.write(f"through the excluded name {n}\n")
            sc.capture(["data.tmp"])
            sc.wait_replicated()
            assert (r1 / "data.txt").read_bytes() == (master / "data.txt").read_bytes()
            assert (r1 / "copy.txt").read_bytes() == (master / "data.txt").read_bytes()
            assert not (r1 / "data.tmp").exists()
        assert reads == []  # the full walk of start() named the links already
        os.link(master / "data.txt", master / "third.txt")  # a link made since: searched
        sc.capture(["third.txt"])
        searched = len(reads)
        with (master / "copy.txt").open("a") as f:
            f.write("through copy\n")
        sc.capture(["copy.txt"])
        sc.wait_replicated()
        assert compare_trees(master, r1, ignore=["data.tmp"]) == []
        assert len(reads) == searched  # once per link made, not per pass


def test_an_applier_told_to_stop_ends_after_its_group_not_its_backlog(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop (a second Ctrl-C in a drain) waits for one group of events, not the whole backlog.

    Review 18 (second reading): with a slow replica, ``start --watch`` ignored
    every further Ctrl-C and SIGTERM for two minutes: the applier went through
    all it could read before it looked at its stop. The first group is held
    at a gate until the stop is asked for.
    """
    from xoengine.replica import ReplicaApplier  # noqa: PLC0415

    master = tmp_path / "m"
    master.mkdir()
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("w", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        thread = sc._threads["r1"]
        gate, entered = threading.Event(), threading.Event()
        original = ReplicaApplier._apply_group

        def gated(self: ReplicaApplier, group: Any) -> None:
            entered.set()
            gate.wait()
            original(self, group)

        monkeypatch.setattr(ReplicaApplier, "_apply_group", gated)
        for n in range(20):
            (master / f"f{n}").write_bytes(b"x" * n)
        sc.capture()  # 20 creations and writes: a group per file
        entered.wait()
        stopper = threading.Thread(target=thread.stop)
        stopper.start()
        _until(thread._stop.is_set)
        gate.set()
        stopper.join()
        held = thread.applier.position()
        assert held < eng.last_position()  # the rest waits in the journal
        monkeypatch.undo()
        sc._threads.pop("r1")
        sc.stop()
        sc.start()  # a new thread takes it up
        sc.wait_replicated()
        assert compare_trees(master, tmp_path / "r1") == []


@pytest.mark.parametrize(
    ("steps", "moved"),
    [
        (["mkdir a/a", "mv a/a a/c", "mkdir a/a"], "a/c"),  # the directory moved
        (["mkdir a/x", "mv a b", "mkdir a", "mkdir a/x"], "b/x"),  # its parent moved
    ],
)
def test_watch_journals_changes_in_a_directory_moved_before_its_creation_was_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, steps: list[str], moved: str
) -> None:
    """A directory made, then moved (or its parent), read by watchdog only after the last step.

    Review 23 E, F9: watchdog watches a directory it is told was created by
    its path, when it reads the event; the path then held another directory,
    so the one made (now at ``moved``) was never watched and the watch of the
    other was filed under ``moved``. What was made there later was never
    journaled nor replicated, until a full pass. The watchdog thread is held
    at a gate here while the directories move, as a busy machine holds it.
    """
    from watchdog.observers.inotify_c import InotifyFD  # noqa: PLC0415

    master, r1 = tmp_path / "m", tmp_path / "r1"
    (master / "a").mkdir(parents=True)
    gate = threading.Event()
    gate.set()
    original = InotifyFD.handle_event

    def gated(self: InotifyFD, event: Any) -> None:
        gate.wait()
        original(self, event)

    monkeypatch.setattr(InotifyFD, "handle_event", gated)
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("w", master=str(master), replicas={"r1": str(r1)}, watch_delay=0.1)
        sc.start(watch=True)
        try:
            (master / "marker-0").write_text("watching")
            sc.wait_captured("marker-0", timeout=60)
            gate.clear()
            try:
                for step in steps:
                    verb, *names = step.split()
                    if verb == "mkdir":
                        (master / names[0]).mkdir()
                    else:
                        (master / names[0]).rename(master / names[1])
                (master / "marker-1").write_text("moved")
            finally:
                gate.set()  # watchdog reads them all now
            sc.wait_captured("marker-1", timeout=60)
            (master / moved / "new").write_text("made in the moved directory")
            (master / steps[-1].split()[-1] / "other").write_text("made in the second one")
            (master / "marker-2").write_text("made")
            sc.wait_captured("marker-2", timeout=60)
            sc.wait_replicated(timeout=60)
            assert compare_trees(master, r1) == []
        finally:
            sc.stop()
