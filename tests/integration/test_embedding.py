"""The engine as an embedding program holds it: its state directory, its handles, its threads.

Each test was a finding of a review that embedded the library: a journal
deleted by its own replica, two engines of one journal in one process, two
points of one name, handles that outlived their scenario.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import run_python

from xoengine.datastore import open_store
from xoengine.engine import Engine
from xoengine.errors import (
    ConfigurationError,
    JournalLockedError,
    JournalReadOnlyError,
    OverlappingTreesError,
    ScenarioError,
    ScenarioStateError,
    StorageError,
    XoError,
)
from xoengine.testing import snapshot_contents

if TYPE_CHECKING:
    from collections.abc import Callable


def _master(base: Path) -> Path:
    master = base / "m"
    master.mkdir(exist_ok=True)
    (master / "a").write_text("a")
    return master


@pytest.mark.parametrize(
    ("state", "master", "replica"),
    [
        ("r1/state", "m", "r1"),  # a synchronization would delete the journal
        ("r1", "m", "r1"),
        ("m/.state", "m", "r1"),  # every capture would journal the journal
        ("state", "state/m", "r1"),
        ("state", "m", "state/r1"),
    ],
)
def test_the_state_directory_may_not_overlap_a_tree(
    tmp_path: Path, state: str, master: str, replica: str
) -> None:
    (tmp_path / master).mkdir(parents=True, exist_ok=True)
    with Engine.open(tmp_path / state, durability="nosync") as eng:
        with pytest.raises(OverlappingTreesError, match="state directory"):
            eng.create_scenario(
                "s", master=str(tmp_path / master), replicas={"r1": str(tmp_path / replica)}
            )
        assert eng.scenarios() == []
        assert eng.last_position() == 0  # nothing half-created


def test_a_relative_state_directory_is_checked_where_it_was_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Was: checked against the current directory, so a replica holding it was accepted
    # after a chdir, and start() deleted the journal.
    master = _master(tmp_path)
    monkeypatch.chdir(tmp_path)
    with Engine.open("r1/state", durability="nosync") as eng:
        monkeypatch.chdir(master)
        with pytest.raises(OverlappingTreesError, match="state directory"):
            eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})


def test_an_engine_opens_when_a_new_replicas_directory_cannot_be_made(tmp_path: Path) -> None:
    # Was a bare NotADirectoryError from every writable open, until fixed by hand.
    master = _master(tmp_path)
    replica = tmp_path / "place" / "r1"
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        eng.create_scenario("s", master=str(master), replicas={"r1": str(replica)})
    replica.rmdir()
    (tmp_path / "place").rmdir()
    (tmp_path / "place").write_text("a file where the replica's parent was")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.scenario("s")
        with pytest.raises(XoError) as failed:
            sc.start()
        assert failed.value.code.startswith("E"), failed.value
        with pytest.raises(ScenarioError, match="'r2'"):  # and at creation, coded too
            other = tmp_path / "other"
            other.mkdir()
            eng.create_scenario(
                "t", master=str(_master(other)), replicas={"r2": str(replica.parent / "r2")}
            )


def test_a_waiter_and_a_capture_go_on_across_an_update(tmp_path: Path) -> None:
    # Was: the update replaced the condition wait_captured() sleeps on (a hang) and
    # the capture lock (overlapping captures failed with E4020).
    master = _master(tmp_path)
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        waiting = threading.Event()
        seen: list[str] = []

        def wait() -> None:
            waiting.set()
            sc.wait_captured("late")
            seen.append("late")

        waiter = threading.Thread(target=wait)
        waiter.start()
        waiting.wait()
        lock = sc.capture_engine.lock
        eng.update_scenario("s", exclude=["*.tmp"])
        assert sc.capture_engine.lock is lock
        (master / "late").write_text("x")
        sc.capture()
        waiter.join(timeout=60)  # a hang guard only: the capture above wakes it
        assert seen == ["late"]


def test_one_writable_engine_per_journal_in_a_process(tmp_path: Path) -> None:
    master = _master(tmp_path)
    first = Engine.open(tmp_path / "state", durability="nosync")
    try:
        first.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        # Another path to the same directory is the same journal.
        (tmp_path / "alias").symlink_to(tmp_path / "state")
        for path in (tmp_path / "state", tmp_path / "alias"):
            with pytest.raises(JournalLockedError, match="this process"):
                Engine.open(path, durability="nosync")
        # Review 22 (C, F5): with another durability it was E1001, "change a setting".
        with pytest.raises(JournalLockedError, match="this process"):
            Engine.open(tmp_path / "state", durability="sync")
        with Engine.open(tmp_path / "state", readonly=True) as reader:  # readers are welcome
            assert [s.name for s in reader.scenarios()] == ["s"]
        assert [s.name for s in first.scenarios()] == ["s"]  # the refused open took nothing
    finally:
        first.close()
    with Engine.open(tmp_path / "state", durability="nosync") as second:
        assert [s.name for s in second.scenarios()] == ["s"]


def test_a_read_only_engine_beside_the_writer_of_its_process_writes_nothing(
    tmp_path: Path,
) -> None:
    """Review 24 (G2): a read-only engine opened in the writer's process was given the
    writer's store, and its rewind, rewind point, suspension and removal of a scenario
    were journaled behind the writer's back (whose projections then refused its own
    next point, E4020, and whose journal lost its scenario). It also kept the process
    the journal's writer after the writable engine closed. It writes nothing now,
    as in another process, and the writer's close lets the journal go."""
    master = _master(tmp_path)
    writer = Engine.open(tmp_path / "state", durability="nosync")
    sc = writer.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
    sc.start()
    sc.set_rewind_point("p1")
    (master / "a").write_text("a2")
    sc.capture()
    sc.wait_replicated()
    reader = Engine.open(tmp_path / "state", readonly=True)
    try:
        mine = reader.scenario("s")
        last = writer.last_position()
        for write in (
            lambda: mine.rewind("r1", to="p1"),
            lambda: mine.set_rewind_point("p2"),
            lambda: mine.suspend("r1"),
            lambda: reader.remove_scenario("s"),
        ):
            with pytest.raises(JournalReadOnlyError):
                write()
        assert writer.last_position() == last
        assert (tmp_path / "r1" / "a").read_text() == "a2"
        assert [p.name for p in sc.rewind_points() if p.kind == "user"] == ["p1"]
        sc.set_rewind_point("p2")  # the writer's projections are the journal's
        assert reader.history("s", "a")[-1].operation == "written"  # it reads
        sc.stop()
        writer.close()
        other = run_python(_SET_POINT, tmp_path / "state")  # another process's to write now
        assert other.returncode == 0, other.stderr
        with pytest.raises(JournalReadOnlyError):
            mine.set_rewind_point("p4")
        names = [p.name for p in reader.scenario("s").rewind_points() if p.kind == "user"]
        assert names == ["p1", "p2", "p3"]  # and the reader reads what it wrote
    finally:
        writer.close()
        reader.close()


_SET_POINT = """
import sys
from xoengine.engine import Engine
with Engine.open(sys.argv[1], durability="nosync") as eng:
    eng.scenario("s").set_rewind_point("p3")
"""


def test_a_refused_open_leaves_the_journal_to_its_holder(tmp_path: Path) -> None:
    master = _master(tmp_path)
    with Engine.open(tmp_path / "state", durability="nosync") as first:
        sc = first.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        with pytest.raises(JournalLockedError):
            Engine.open(tmp_path / "state", durability="nosync")
        sc.start()  # the holder's store was not closed by the refused open
        (master / "b").write_text("b")
        sc.capture()
        sc.wait_replicated()
        assert snapshot_contents(tmp_path / "r1") == snapshot_contents(master)
        sc.stop()


def test_two_threads_setting_one_point_name_make_one_point(tmp_path: Path) -> None:
    master = _master(tmp_path)
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        for round_ in range(10):
            name = f"p{round_}"
            ready = threading.Barrier(2)
            outcomes: list[str] = []

            def set_point(name: str = name, ready: threading.Barrier = ready) -> None:
                ready.wait()
                try:
                    sc.set_rewind_point(name)
                    outcomes.append("set")
                except ConfigurationError:
                    outcomes.append("refused")

            threads = [threading.Thread(target=set_point) for _ in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert sorted(outcomes) == ["refused", "set"]
            assert [p.name for p in sc.rewind_points()].count(name) == 1
        sc.stop()


def _uses(sc: Any) -> dict[str, Callable[[], object]]:
    """Every public use of a scenario handle, by name."""
    return {
        "start": sc.start,
        "stop": sc.stop,
        "capture": sc.capture,
        "open": lambda: sc.open("a"),
        "synchronize": sc.synchronize,
        "suspend": lambda: sc.suspend("r1"),
        "resume": lambda: sc.resume("r1"),
        "wait_replicated": sc.wait_replicated,
        "wait_captured": lambda: sc.wait_captured("a"),
        "set_rewind_point": lambda: sc.set_rewind_point("late"),
        "rewind": lambda: sc.rewind("r1", 1),
        "rewind_preview": lambda: sc.rewind_preview("r1", 1),
        "trim_undo": sc.trim_undo,
        "difference_report": lambda: sc.difference_report("r1"),
        "statistics": sc.statistics,
        "sync_report": sc.sync_report,
        "replication_report": sc.replication_report,
        "rebuild_master_state": sc.rebuild_master_state,
        "rewind_points": sc.rewind_points,
        "resolve": lambda: sc.resolve(1),
        "entities": sc.entities,
        "master_state_snapshot": sc.master_state_snapshot,
    }


def test_a_removed_scenarios_handle_refuses_every_use(tmp_path: Path) -> None:
    # Was: it captured, set points and replicated, as history of the name's next
    # scenario, and its applier thread outlived the engine.
    master = _master(tmp_path)
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        before = set(threading.enumerate())
        sc.start()
        eng.remove_scenario("s")
        end = eng.last_position()
        for use, call in _uses(sc).items():
            with pytest.raises(ScenarioStateError, match="'s' is removed") as refused:
                call()
            assert refused.value.code == "AE0465", use
        assert eng.last_position() == end  # nothing journaled
        assert [t.name for t in set(threading.enumerate()) - before] == []  # no thread left


def test_a_closed_engines_handles_refuse_every_use_alike(tmp_path: Path) -> None:
    master = _master(tmp_path)
    eng = Engine.open(tmp_path / "state", durability="nosync")
    sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
    sc.start()
    eng.close()
    engine_uses: dict[str, Callable[[], object]] = {
        "scenarios": eng.scenarios,
        "scenario": lambda: eng.scenario("s"),
        "last_position": eng.last_position,
        "history": lambda: eng.history("s", "a"),
        "replay": lambda: eng.replay("s", to=tmp_path / "out"),
        "create_scenario": lambda: eng.create_scenario("t", master=str(master), replicas={}),
        "update_scenario": lambda: eng.update_scenario("s", watch_delay=2),
        "remove_scenario": lambda: eng.remove_scenario("s"),
    }
    for use, call in {**_uses(sc), **engine_uses}.items():
        with pytest.raises(ScenarioStateError, match="is closed: cannot") as refused:
            call()
        assert refused.value.code == "AE0465", use
    assert not (tmp_path / "out").exists()


def test_a_handle_kept_across_an_update_follows_it(tmp_path: Path) -> None:
    # Was: the old handle kept the old options and could start a second applier.
    master = _master(tmp_path)
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        sc.stop()
        assert eng.update_scenario("s", exclude=["*.tmp"]) is sc
        before = set(threading.enumerate())
        sc.start()
        (master / "scratch.tmp").write_text("left out")
        (master / "b").write_text("b")
        sc.capture()
        sc.wait_replicated()
        assert sorted(snapshot_contents(tmp_path / "r1")) == [b"a", b"b"]
        started = set(threading.enumerate()) - before
        assert [t.name for t in started if t.name.startswith("xoengine-apply")] == [
            "xoengine-apply:s:r1"
        ]
        sc.stop()


def test_the_process_environment_does_not_change_the_journals_format(tmp_path: Path) -> None:
    # eventsourcing takes COMPRESSOR_TOPIC, CIPHER_KEY ... from os.environ: an engine
    # opened in such a process wrote a journal other readers could not decode.
    master = _master(tmp_path)
    script = textwrap.dedent(
        """
        import sys
        from xoengine.engine import Engine
        with Engine.open(sys.argv[1], durability="nosync") as eng:
            eng.create_scenario("s", master=sys.argv[2], replicas={"r1": sys.argv[3]}).start()
        """
    )
    odd = {
        **os.environ,
        "COMPRESSOR_TOPIC": "eventsourcing.compressor:ZlibCompressor",
        "XOENGINE_CIPHER_KEY": "a" * 44,
        "XOENGINE_PERSISTENCE_MODULE": "eventsourcing.popo",
        "LMDB_PATH": str(tmp_path / "elsewhere"),
    }
    args = [str(tmp_path / "state"), str(master), str(tmp_path / "r1")]
    done = subprocess.run(
        [sys.executable, "-c", script, *args], env=odd, capture_output=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "elsewhere").exists()
    with Engine.open(tmp_path / "state", readonly=True) as eng:
        assert [e.operation for e in eng.history("s", "a")] == ["created", "written"]


_FORK_SCRIPT = """
import os, sys
from xoengine.engine import Engine
from xoengine.errors import XoError

eng = Engine.open(sys.argv[1], durability="nosync")
master = os.path.join(os.path.dirname(sys.argv[1]), "m")
os.mkdir(master)
sc = eng.create_scenario("s", master=master, replicas={"r1": master + "-r1"})
sc.start()
child = os.fork()
if child == 0:
    codes = []
    for use in (
        lambda: Engine.open(sys.argv[1], durability="nosync"),
        lambda: sc.set_rewind_point("from the child"),  # the parent's handle, inherited
        eng.last_position,
    ):
        try:
            use()
            codes.append("done")
        except XoError as e:
            codes.append(e.code)
    print(*codes, flush=True)
    os._exit(0)
os.waitpid(child, 0)
print(sc.set_rewind_point("p").name, len(sc.rewind_points()), flush=True)
eng.close()
"""


def test_a_forked_child_is_refused_the_journal_its_parent_writes(tmp_path: Path) -> None:
    # Was E4000 "already open in this process" (py-lmdb's registry, which the child inherits).
    done = run_python(_FORK_SCRIPT, tmp_path / "state")
    assert done.returncode == 0, done.stderr
    # Review 24 (G3): the handles the child inherited wrote the journal (LMDB used
    # after fork), and the parent's next point failed (E4020) until it reopened.
    assert done.stdout.splitlines() == ["E4002 E4000 E4000", "p 2"]  # its sync's and p


def test_a_write_asked_from_inside_a_writes_work_is_refused(tmp_path: Path) -> None:
    """It would wait for its own commit for ever: a coded error instead, and nothing lost."""
    store = open_store(tmp_path / "store", durability="nosync")
    store.ensure("t")

    def outer(txn: Any) -> str:
        txn.put("t", b"outer", b"1")
        try:
            store.write(lambda inner: inner.put("t", b"inner", b"2"))
        except StorageError as e:
            return e.code
        return "written"

    assert store.write(outer) == "E4000"
    with store.read() as txn:
        assert (txn.get("t", b"outer"), txn.get("t", b"inner")) == (b"1", None)
    store.write(lambda txn: txn.put("t", b"after", b"3"))  # the store goes on
    store.close()


class _WatchedLock:
    """The scenario's capture lock, telling when a caller has to wait for it."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.waited = threading.Event()

    def __enter__(self) -> None:
        if not self._lock.acquire(blocking=False):
            self.waited.set()
            self._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class _Gate:
    """A scan progress that holds the scan after its walk until released."""

    def __init__(self) -> None:
        self.walked_tree, self.go = threading.Event(), threading.Event()

    def walked(self, entries: object) -> None:
        self.walked_tree.set()
        self.go.wait()

    def read(self, path: str) -> None:
        pass


def test_a_removal_waits_for_the_capture_under_way_and_none_journals_after_it(
    tmp_path: Path,
) -> None:
    """Review 24 (G8): remove_scenario did not wait for a capture running on another
    thread, which then journaled the removed scenario's changes after ScenarioRemoved
    (a scenario made again under the name inherited them)."""
    master = _master(tmp_path)
    eng = Engine.open(tmp_path / "state", durability="nosync")
    try:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        for i in range(20):
            (master / f"n{i}").write_text(str(i))
        lock, gate = _WatchedLock(), _Gate()
        sc._capture_lock = sc.capture_engine.lock = lock  # type: ignore[assignment]
        outcome: dict[str, object] = {}

        def capture() -> None:
            with lock:
                outcome["capture"] = sc.capture_engine.scan(None, progress=gate).events

        capturing = threading.Thread(target=capture)
        capturing.start()
        gate.walked_tree.wait()

        def remove() -> None:
            try:
                eng.remove_scenario("s")
            finally:
                lock.waited.set()  # done without waiting for the capture (as it was)

        removing = threading.Thread(target=remove)
        removing.start()
        lock.waited.wait()  # the removal waits for the capture's lock
        gate.go.set()
        capturing.join()
        removing.join()
        assert outcome["capture"] >= 20  # its 20 new files, journaled
        with pytest.raises(ScenarioStateError, match="removed"):
            sc.capture_engine.scan(None)  # a pass that waited for the removal: refused
        removed = eng.last_position()
        positions = [p for p, _, _ in eng.file_events("s", None)]
        assert positions and max(positions) < removed
    finally:
        eng.close()


def test_a_suspension_beside_a_start_waits_for_its_applier_to_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 24 (G6): start() published a replica's applier thread before starting
    it; a suspend() on another thread in between stopped the unstarted thread (an
    uncoded RuntimeError) and left the replica unsuspended with no applier."""
    from xoengine.worker import ApplierThread  # noqa: PLC0415

    master = _master(tmp_path)
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        control = _WatchedLock()
        sc._appliers["r1"].control = control  # type: ignore[assignment]
        starting, go = threading.Event(), threading.Event()
        real_start = ApplierThread.start

        def gated_start(thread: ApplierThread) -> None:
            starting.set()
            go.wait()
            real_start(thread)

        monkeypatch.setattr(ApplierThread, "start", gated_start)
        outcome: dict[str, object] = {}

        def suspend() -> None:
            try:
                sc.suspend("r1")
                outcome["suspend"] = "done"
            except Exception as e:  # noqa: BLE001 (the test reports what it was)
                outcome["suspend"] = repr(e)
            finally:
                control.waited.set()  # done without waiting for the start (as it was)

        starter = threading.Thread(target=sc.start)
        starter.start()
        starting.wait()
        suspender = threading.Thread(target=suspend)
        suspender.start()
        control.waited.wait()  # the suspension waits for the applier's start
        go.set()
        starter.join()
        suspender.join()
        monkeypatch.setattr(ApplierThread, "start", real_start)
        assert outcome["suspend"] == "done"
        assert sc.suspended == {"r1"}
        assert not [t for t in threading.enumerate() if t.name == "xoengine-apply:s:r1"]
        sc.resume("r1")  # and it follows again
        (master / "b").write_text("b")
        sc.capture()
        sc.wait_replicated()
        assert (tmp_path / "r1" / "b").read_text() == "b"
        sc.stop()


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("watch_delay", "abc", "watch_delay must be a finite number"),
        ("watch_delay", -1, "watch_delay must be a finite number"),
        ("watch_delay", float("nan"), "watch_delay must be a finite number"),
        ("groups", "x", "groups must map"),
        ("groups", {"g": "one/path"}, "groups must map"),
        ("databases", "*.mdf", "databases must be a list"),
        ("exclude", 5, "exclude must be a list"),
    ],
)
def test_a_scenario_option_of_the_wrong_kind_is_refused_at_creation(
    tmp_path: Path, option: str, value: object, says: str
) -> None:
    """Review 24 (G4): ``watch_delay="abc"`` was journaled, and ``start(watch=True)``
    then synchronized, journaled ScenarioStarted and died with an uncoded ValueError,
    leaving it Running with no watcher; ``groups="x"`` broke ``entities()`` later."""
    master = _master(tmp_path)
    kind = "storage_group" if option == "groups" else "file_server"
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        with pytest.raises(ScenarioError, match=says):
            eng.create_scenario(
                "s",
                kind=kind,
                master=str(master),
                replicas={"r1": str(tmp_path / "r1")},
                **{option: value},
            )
        assert eng.scenarios() == [] and eng.last_position() == 0


def test_bad_arguments_at_the_api_are_coded_errors(tmp_path: Path) -> None:
    """Review 24 (G5): each of these raised a bare Python exception (ValueError,
    AttributeError, FileExistsError, OverflowError, TypeError, OSError) or was
    accepted (a point name of 100,000 characters, a position past the journal)."""
    master = _master(tmp_path)
    (tmp_path / "a-file").write_text("x")
    (master / "dir").mkdir()
    os.symlink("a", master / "link")
    os.mkfifo(master / "fifo")
    with pytest.raises(XoError):
        Engine.open(tmp_path / "a-file")
    with pytest.raises(XoError):
        Engine.open(tmp_path / "a-file" / "below")
    with pytest.raises(XoError):
        Engine.open(None)  # type: ignore[arg-type]
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        for bad in (
            {"master": str(master) + "\0x", "replicas": {"r1": str(tmp_path / "r1")}},
            {"master": str(master), "replicas": [str(tmp_path / "r1")]},
            {"master": str(master), "replicas": {"r1": str(tmp_path / "r1\0")}},
        ):
            with pytest.raises(XoError):
                eng.create_scenario("s", **bad)  # type: ignore[arg-type]
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        calls: dict[str, Callable[[], object]] = {
            "timeout inf": lambda: sc.wait_replicated(timeout=float("inf")),
        }
        assert calls["timeout inf"]() == eng.last_position()  # no deadline: it waits
        refused: dict[str, Callable[[], object]] = {
            "timeout text": lambda: sc.wait_replicated(timeout="1"),  # type: ignore[arg-type]
            "timeout nan": lambda: sc.wait_replicated(timeout=float("nan")),
            "mode": lambda: sc.open("a", "zz"),
            "text mode": lambda: sc.open("a", "rt"),
            "a link": lambda: sc.open("link"),
            "a directory": lambda: sc.open("dir"),
            "a fifo": lambda: sc.open("fifo"),
            "a name too long": lambda: sc.open("a" * 300, "wb"),
            "replay into a name too long": lambda: eng.replay("s", to=tmp_path / ("o" * 300)),
            "a missing scratch": lambda: eng.file_at(
                "s", "a", scratch=tmp_path / "no" / "dir"
            ).__enter__(),
            "no predicate": lambda: eng.bisect("s", None),  # type: ignore[arg-type]
            "a scenario never held": lambda: eng.file_events("typo", None),
            "a bound that is no position": lambda: eng.file_events("s", "x"),  # type: ignore[arg-type]
            "a position past the journal": lambda: sc.reachable_by(10**30),
            "a point name too long": lambda: sc.set_rewind_point("p" * 100_000),
        }
        for what, call in refused.items():
            with pytest.raises(XoError):
                call()
            assert what  # (named in the failure's traceback)
        assert sc.capture([("a" * 300)]).events == 0  # a name no file system holds: nothing
        assert [p.name for p in sc.rewind_points() if p.kind == "user"] == []
        sc.stop()


_VIEW_BESIDE_A_COMMIT = """
import sys, threading
from xoengine.engine import Engine
writer = Engine(sys.argv[1], durability="nosync")
reader = Engine(sys.argv[1], readonly=True)
inside, never = threading.Event(), threading.Event()

def work(txn):
    inside.set()
    # A write transaction under way, its thread off the GIL for a while: the view's
    # read below waits for it (it cannot open a table's handle beside a commit), and
    # must not hold the GIL while it waits, or this thread could never go on.
    never.wait(0.5)

thread = threading.Thread(target=lambda: writer.store.write(work))
thread.start()
inside.wait()
with reader.store.read() as txn:  # a table not opened yet: its handle is opened now
    print("absent:", txn.get("no-such-table", b"k"), flush=True)
thread.join()
reader.close()
writer.close()
again = Engine(sys.argv[1], durability="nosync")  # the view closed last: writable again
again.close()
print("done", flush=True)
"""


def test_a_read_only_view_opens_a_table_beside_a_commit_and_the_writer_reopens(
    tmp_path: Path,
) -> None:
    """Review 24 (I2, I1): the read-only view opened a table's handle as a read-only
    store does, which in the writer's writable environment is a write transaction begun
    with the GIL held: it deadlocked against the commit under way. And with a view
    still open, the writable engine could not be opened again once closed (E1001)."""
    done = run_python(_VIEW_BESIDE_A_COMMIT, tmp_path / "state")  # a deadlock: fails, no hang
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[:2] == ["absent: None", "done"]
    master = _master(tmp_path)
    writer = Engine.open(tmp_path / "state", durability="nosync")
    writer.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
    reader = Engine.open(tmp_path / "state", readonly=True)
    try:
        writer.close()
        with Engine.open(tmp_path / "state", durability="nosync") as again:
            again.scenario("s").set_rewind_point("p")
        assert [p.name for p in reader.scenario("s").rewind_points()][-1:] == ["p"]
        with pytest.raises(JournalReadOnlyError):
            reader.scenario("s").set_rewind_point("q")
    finally:
        reader.close()
