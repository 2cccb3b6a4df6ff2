"""Scenarios end to end on real trees and a real LMDB journal.

Suspend and resume without resynchronization, replicas at different journal
positions, engine restarts, scenario validation, entities, filters,
synchronization levels, statistics and reports, and hostile paths. Trees are
built with ``xoengine.testing`` and compared byte for byte with it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import uuid
from typing import TYPE_CHECKING, Any

import pytest

from xoengine import scenario as scenario_module
from xoengine.engine import Engine, Scenario
from xoengine.errors import (
    ConfigurationError,
    OverlappingTreesError,
    PathError,
    PathEscapesRootError,
    ReplicaNotFoundError,
    ReplicaVolumeChangedError,
    RewindUnreachableError,
    ScenarioError,
    ScenarioExistsError,
    SymlinkedParentError,
    TreeRootMissingError,
    XoError,
)
from xoengine.events import (
    AlertRaised,
    BytesWritten,
    ContentReplaced,
    FileCreated,
    ScenarioStateChanged,
    SyncStarted,
    event_bytes,
)
from xoengine.record import encode_position
from xoengine.replica import ReplicaApplier
from xoengine.rewind import rewind_back
from xoengine.testing import (
    Append,
    Chmod,
    CreateFile,
    Delete,
    Insert,
    MakeDir,
    Operation,
    Rename,
    SetXattr,
    Symlink,
    TreeBuilder,
    Truncate,
    WriteAt,
    assert_trees_equal,
    compare_trees,
    snapshot_contents,
    snapshot_tree,
    temporary_engine,
)
from xoengine.tree import ReplicaTree
from xoengine.worker import ScanFollower

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def _random(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


# Three scripts that, one after the other, touch every kind of change.
SCRIPT_A: list[Operation] = [
    CreateFile("a.txt", b"hello " * 200),
    MakeDir("docs/old", 0o750),
    CreateFile("docs/old/big.bin", _random(40_000, 1)),
    CreateFile(b"caf\xe9", b"non-UTF-8 name"),
    Symlink("link-to-a", "a.txt"),
    Symlink("docs/dangling", "../nowhere"),
    Symlink("abs", "/nonexistent/absolute\xe9"),
    CreateFile("empty", b""),
]
SCRIPT_B: list[Operation] = [
    WriteAt("a.txt", 10, b"WORLD"),
    Append("a.txt", b"tail"),
    Insert("docs/old/big.bin", 20_000, b"inserted in the middle"),
    Rename("docs/old", "docs/new"),
    Rename(b"caf\xe9", b"docs/caf\xe9-moved"),
    Chmod("a.txt", 0o600),
    Truncate("empty", 3000),
    Symlink("docs/new/up", ".."),
]
SCRIPT_C: list[Operation] = [
    Truncate("docs/new/big.bin", 1000),
    Delete("link-to-a"),
    CreateFile("link-to-a", b"now a file"),
    Delete("docs/new"),
    MakeDir("docs/new"),
    CreateFile("docs/new/x", b"x"),
    Chmod("docs", 0o700),
]


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    with temporary_engine(tmp_path) as eng:
        yield eng


def _scenario(engine: Engine, tmp_path: Path, *replicas: str, **options: Any) -> Scenario:
    master = tmp_path / "master"
    master.mkdir(exist_ok=True)
    names = replicas or ("r1",)
    return engine.create_scenario(
        "fs", master=master, replicas={r: tmp_path / r for r in names}, **options
    )


def _positions(engine: Engine) -> list[int]:
    top = engine.recorder.max_notification_id() or 0
    return [n.id for n in engine.recorder.select_notifications(1, top + 10)]


def _sync_runs(sc: Scenario, replica: str) -> int:
    return len(sc.sync_report(replica, last_only=False)["runs"])


# -- suspend, resume, positions ------------------------------------------------------------


def test_scenario_resume_applies_backlog_without_resync(engine: Engine, tmp_path: Path) -> None:
    sc = _scenario(engine, tmp_path, "r1", "r2")
    master = TreeBuilder(tmp_path / "master")
    master.apply_all(SCRIPT_A)
    sc.start()
    runs = _sync_runs(sc, "r2")
    sc.suspend("r2")
    assert sc.statistics().replicas["r2"].suspended
    for script in (SCRIPT_B, SCRIPT_C):
        master.apply_all(script)
        sc.capture()
        sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)
    assert compare_trees(tmp_path / "master", tmp_path / "r2")  # still the old copy
    waiting = sc.statistics().replicas["r2"]
    assert waiting.backlog_events > 0
    assert waiting.backlog_bytes > 0
    assert waiting.applied_position < sc.statistics().journal_position

    sc.resume("r2")
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r2", mtimes=True)
    caught_up = sc.statistics().replicas["r2"]
    assert (caught_up.backlog_events, caught_up.backlog_bytes) == (0, 0)
    assert not caught_up.suspended
    assert _sync_runs(sc, "r2") == runs  # the backlog was applied, nothing resynchronized


def test_a_suspended_replica_stays_out_of_replication_across_starts_and_restarts(
    tmp_path: Path,
) -> None:
    # Was a bug: start() followed every replica, suspended ones too. A second
    # start, or the first after a restart, put a suspended (or rewound) replica
    # back into replication behind the operator's back.
    master = TreeBuilder(tmp_path / "master")
    master.apply(CreateFile("f", b"0"))
    with Engine.open(tmp_path / "state", durability="nosync") as engine:
        sc = _scenario(engine, tmp_path, "r1", "r2")
        sc.start()
        sc.suspend("r2")
        held = sc.statistics().replicas["r2"].applied_position
        sc.start()
        assert sorted(sc._threads) == ["r1"]
        master.apply(Append("f", b"1"))
        sc.capture()
        sc.wait_replicated(timeout=30)
    with Engine.open(tmp_path / "state", durability="nosync") as engine:
        sc = engine.scenario("fs")
        sc.start()
        assert sorted(sc._threads) == ["r1"]
        master.apply(Append("f", b"2"))
        sc.capture()
        sc.wait_replicated(timeout=30)
        sc.stop()  # joins the applier threads: whatever they did is done
        assert (tmp_path / "r2" / "f").read_bytes() == b"0"
        assert sc.statistics().replicas["r2"].applied_position == held
        assert sc.suspended == {"r2"}
        sc.resume("r2")  # after a restart too, the backlog is applied
        sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r2", mtimes=True)


def test_scenario_replicas_at_different_positions_each_converge(
    engine: Engine, tmp_path: Path
) -> None:
    sc = _scenario(engine, tmp_path, "r1", "r2")
    master = TreeBuilder(tmp_path / "master")
    sc.start()
    master.apply_all(SCRIPT_A)
    sc.capture()
    sc.wait_replicated(timeout=30)
    sc.suspend("r2")
    after_a = tmp_path / "after-a"
    shutil.copytree(tmp_path / "master", after_a, symlinks=True)
    master.apply_all(SCRIPT_B)
    sc.capture()
    sc.wait_replicated(timeout=30)
    after_b = tmp_path / "after-b"
    shutil.copytree(tmp_path / "master", after_b, symlinks=True)
    sc.suspend("r1")
    master.apply_all(SCRIPT_C)
    sc.capture()
    # r1 holds the master after B, r2 after A: each exactly, at its own position.
    assert_trees_equal(after_b, tmp_path / "r1", mtimes=True)
    assert_trees_equal(after_a, tmp_path / "r2", mtimes=True)
    stats = sc.statistics().replicas
    assert stats["r2"].applied_position < stats["r1"].applied_position
    assert stats["r1"].applied_position < sc.statistics().journal_position
    # r2 overtakes r1, then both converge on the master.
    sc.resume("r2")
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r2", mtimes=True)
    assert_trees_equal(after_b, tmp_path / "r1", mtimes=True)
    sc.resume("r1")
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)


def test_engine_restart_resumes_where_it_stopped(tmp_path: Path) -> None:
    master = TreeBuilder(tmp_path / "master")
    master.apply_all(SCRIPT_A)
    with temporary_engine(tmp_path) as engine:
        sc = _scenario(engine, tmp_path, "r1", "r2")
        sc.start()
        sc.suspend("r2")
        master.apply_all(SCRIPT_B)
        sc.capture()
        sc.wait_replicated(timeout=30)
        stopped_at = engine.recorder.max_notification_id()
        r2_at = sc.statistics().replicas["r2"].applied_position
        assert r2_at < (stopped_at or 0)
    # Closed before r2 applied anything of B; reopened on the same state directory.
    with Engine.open(tmp_path / "state", durability="nosync") as engine:
        sc = engine.scenario("fs")
        assert (sc.state, sc.suspended) == ("Running", {"r2"})
        assert sc.statistics().replicas["r2"].applied_position == r2_at
        summaries = sc.start()
        assert [s.replica for s in summaries] == ["r1"]
        assert summaries[0].files_changed == summaries[0].files_deleted == 0
        master.apply_all(SCRIPT_C)
        result = sc.capture()
        assert result.positions[0] > (stopped_at or 0)
        sc.resume("r2")
        sc.wait_replicated(timeout=30)
        assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)
        assert_trees_equal(tmp_path / "master", tmp_path / "r2", mtimes=True)
        positions = _positions(engine)
        assert positions == list(range(1, len(positions) + 1))  # gapless across the restart


# -- scenario validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "error"),
    [
        ("overlapping roots", OverlappingTreesError),
        ("replica inside its master", OverlappingTreesError),
        ("replica inside another replica", OverlappingTreesError),
        ("replica inside another scenario's replica", OverlappingTreesError),
        ("master inside another scenario's master", OverlappingTreesError),
        ("replica reached through a symlink into the master", OverlappingTreesError),
        ("master root missing", TreeRootMissingError),
        ("duplicate name", ScenarioExistsError),
        ("bad kind", ScenarioError),
        ("storage group without groups", ScenarioError),
        ("bad name", ScenarioError),
        ("no replica", ScenarioError),
        ("bad block size", ScenarioError),
    ],
)
def test_create_scenario_refuses_bad_definitions_and_creates_nothing(
    engine: Engine, tmp_path: Path, case: str, error: type[XoError]
) -> None:
    m = tmp_path / "m"
    (m / "sub").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    engine.create_scenario("taken", master=tmp_path / "other", replicas={"r": tmp_path / "or"})
    (tmp_path / "into-master").symlink_to(m)
    args: dict[str, Any] = {"master": m, "replicas": {"r1": tmp_path / "fresh"}}
    name = "new"
    if case == "overlapping roots":
        args["master"] = [m, m / "sub"]
    elif case == "replica inside its master":
        args["replicas"] = {"r1": m / "sub" / "rep"}
    elif case == "replica inside another replica":
        args["replicas"] = {"r1": tmp_path / "fresh", "r2": tmp_path / "fresh" / "r2"}
    elif case == "replica inside another scenario's replica":
        args["replicas"] = {"r1": tmp_path / "or" / "nested"}
    elif case == "master inside another scenario's master":
        args["master"] = tmp_path / "other"
    elif case == "replica reached through a symlink into the master":
        args["replicas"] = {"r1": tmp_path / "into-master" / "rep"}
    elif case == "master root missing":
        args["master"] = tmp_path / "absent"
    elif case == "duplicate name":
        name = "taken"
    elif case == "bad kind":
        args["kind"] = "exchange"
    elif case == "storage group without groups":
        args["kind"] = "storage_group"
    elif case == "bad name":
        name = "../escape"
    elif case == "no replica":
        args["replicas"] = {}
    elif case == "bad block size":
        args["block_size"] = 100
    before = ([s.name for s in engine.scenarios()], engine.recorder.max_notification_id())
    with pytest.raises(error) as raised:
        engine.create_scenario(name, **args)
    assert raised.value.code  # a coded error, for operators and the CLI
    after = ([s.name for s in engine.scenarios()], engine.recorder.max_notification_id())
    assert after == before  # nothing half-created: no scenario, no event
    assert not (tmp_path / "fresh").exists()  # and no replica directory
    assert not (m / "sub" / "rep").exists()


# -- entities (R10) -----------------------------------------------------------------------------


def test_scenario_file_server_entity_per_root_and_replica_holds_root_names(
    engine: Engine, tmp_path: Path
) -> None:
    alpha, beta = tmp_path / "hosts" / "alpha", tmp_path / "vols" / "beta"
    TreeBuilder(alpha).apply_all([CreateFile("a.txt", b"A"), MakeDir("d")])
    TreeBuilder(beta).apply_all([CreateFile("d/b.txt", b"B"), Symlink("l", "d/b.txt")])
    sc = engine.create_scenario("multi", master=[alpha, beta], replicas={"r": tmp_path / "r"})
    assert [(e["entity"], e["paths"]) for e in sc.entities()] == [
        ("alpha", ["alpha/"]),
        ("beta", ["beta/"]),
    ]
    sc.start()
    assert sorted(os.listdir(tmp_path / "r")) == ["alpha", "beta"]
    TreeBuilder(beta).apply_all([Append("d/b.txt", b"more"), Rename("d", "e")])
    TreeBuilder(alpha).apply_all([Delete("a.txt"), CreateFile("d/new", b"n")])
    sc.capture()
    sc.wait_replicated(timeout=30)
    assert_trees_equal(alpha, tmp_path / "r" / "alpha", mtimes=True)
    assert_trees_equal(beta, tmp_path / "r" / "beta", mtimes=True)
    with sc.open("beta/e/journaled.bin", "wb") as f:
        f.write(b"through the journaled file")
    sc.wait_replicated(timeout=30)
    assert_trees_equal(beta, tmp_path / "r" / "beta", mtimes=True)


def test_scenario_database_entity_per_database_file_set(engine: Engine, tmp_path: Path) -> None:
    master = tmp_path / "master"
    (master / "data").mkdir(parents=True)
    conns = []
    for name in ("sales.db", "data/hr.db"):
        conn = sqlite3.connect(master / name)
        conn.execute("pragma journal_mode=wal")
        conn.execute("create table t (x)")
        conn.execute("insert into t values (1)")
        conn.commit()
        conns.append(conn)  # kept open: the -wal and -shm files stay
    (master / "notes.txt").write_text("not a database")
    (master / "data" / "archive.sqlite").write_bytes(b"")
    try:
        sc = engine.create_scenario(
            "db", kind="database", master=master, replicas={"r": tmp_path / "r"}
        )
        sc.start()
        entities = {e["entity"]: e["paths"] for e in sc.entities()}
        assert entities == {
            "data/archive.sqlite": ["data/archive.sqlite"],
            "data/hr.db": ["data/hr.db", "data/hr.db-wal", "data/hr.db-shm"],
            "sales.db": ["sales.db", "sales.db-wal", "sales.db-shm"],
        }
        sqlite3.connect(master / "new.db").close()  # auto-discovered at the next capture (R42)
        sc.capture()
        assert "new.db" in {e["entity"] for e in sc.entities()}
    finally:
        for conn in conns:
            conn.close()


def test_scenario_storage_group_entities_are_the_configured_groups(
    engine: Engine, tmp_path: Path
) -> None:
    master = tmp_path / "master"
    TreeBuilder(master).apply_all([CreateFile("sg1/mail.edb", b"e"), CreateFile("sg2/x", b"x")])
    sc = engine.create_scenario(
        "sg",
        kind="storage_group",
        master=master,
        replicas={"r": tmp_path / "r"},
        groups={"second": ["sg2"], "first": ["sg1/mail.edb", "sg1/logs"]},
    )
    assert sc.entities() == [
        {"entity": "first", "paths": ["sg1/mail.edb", "sg1/logs"]},
        {"entity": "second", "paths": ["sg2"]},
    ]


# -- filters and synchronization levels -----------------------------------------------------


def test_scenario_excluded_paths_never_reach_the_replica(engine: Engine, tmp_path: Path) -> None:
    master = TreeBuilder(tmp_path / "master")
    master.apply_all(
        [CreateFile("keep.txt", b"k"), CreateFile("skip.tmp", b"s"), CreateFile("cache/c", b"c")]
    )
    sc = _scenario(engine, tmp_path, exclude=["*.tmp", "cache/"])
    sc.start()
    master.apply_all(
        [
            CreateFile("sub/more.tmp", b"m"),
            CreateFile("cache/d", b"d"),
            Rename("keep.txt", "kept.tmp"),  # renamed out of the selection: gone from replicas
            CreateFile("sub/real", b"r"),
        ]
    )
    sc.capture()
    with sc.open("sub/opened.tmp", "wb") as f:  # the journaled file honours the filter too
        f.write(b"never journaled")
    with sc.open("sub/opened.txt", "wb") as f:
        f.write(b"journaled")
    sc.wait_replicated(timeout=30)
    assert sorted(snapshot_tree(tmp_path / "r1")) == [b"sub", b"sub/opened.txt", b"sub/real"]
    assert_trees_equal(
        tmp_path / "master",
        tmp_path / "r1",
        ignore=["cache", "skip.tmp", "kept.tmp", "sub/more.tmp", "sub/opened.tmp"],
    )


def test_synchronize_block_level_sends_only_changed_blocks(engine: Engine, tmp_path: Path) -> None:
    big = _random(512 * 1024, 7)
    script: list[Operation] = [CreateFile("db/big.mdf", big), CreateFile("small.txt", b"s" * 100)]
    changes: list[Operation] = [
        WriteAt("db/big.mdf", 4096 * 3, b"X" * 100),
        WriteAt("db/big.mdf", 4096 * 90, b"Y" * 4096),
        Insert("db/big.mdf", 300_000, b"shifted"),  # a delta finds the moved blocks
        Append("small.txt", b"!"),
    ]
    sent = {}
    for level in ("file", "block"):
        master, replica = tmp_path / f"m-{level}", tmp_path / f"r-{level}"
        TreeBuilder(master).apply_all(script)
        shutil.copytree(master, replica, symlinks=True)  # the replica holds an older copy
        TreeBuilder(master).apply_all(changes)
        sc = engine.create_scenario(level, master=master, replicas={"r": replica})
        (summary,) = sc.start(level=level)
        assert_trees_equal(master, replica, mtimes=True)
        (run,) = sc.sync_report("r")["runs"]
        assert (run["level"], run["bytes_sent"]) == (level, summary.bytes_sent)
        assert {f["path"] for f in run["files"]} == {"db/big.mdf", "small.txt"}
        sent[level] = run["bytes_sent"]
    assert sent["file"] >= len(big)
    assert sent["block"] < 4 * 4096 + 200  # three changed regions, about a block each
    assert sent["block"] * 20 < sent["file"]


@pytest.fixture(params=["copies beside the scan", "copies after the scan"])
def copy_timing(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a sync beside a scan copies: interleaved (large files) or after it (small)."""
    from xoengine import sync  # noqa: PLC0415

    beside = request.param == "copies beside the scan"
    monkeypatch.setattr(sync, "_SMALL_AVERAGE", 0 if beside else 1 << 62)
    return str(request.param)


def test_synchronize_beside_the_scan_copies_after_it_and_finishes_after_its_events(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, copy_timing: str
) -> None:
    from xoengine import capture  # noqa: PLC0415

    sc = _scenario(engine, tmp_path, "r1", "r2")
    TreeBuilder(tmp_path / "master").apply_all(
        [CreateFile(f"d{i % 3}/f{i:03d}", _random(1000 + 97 * i, i)) for i in range(60)]
    )
    # The scan commits in small batches, so the synchronizer runs while it is journaling.
    monkeypatch.setattr(capture, "FLUSH_EVENTS", 7)
    order: list[tuple[str, str]] = []
    real_read, real_copy = capture.Capture._stream_changes, ReplicaTree.copy_new

    def read(self: capture.Capture, path: str, *args: Any) -> Any:
        order.append(("read", path))
        return real_read(self, path, *args)

    def copy_new(self: ReplicaTree, path: str, source: str, mode: int, owner: Any = None) -> int:
        order.append(("copy", path))
        return real_copy(self, path, source, mode, owner)

    monkeypatch.setattr(capture.Capture, "_stream_changes", read)
    monkeypatch.setattr(ReplicaTree, "copy_new", copy_new)
    summaries = sc.start()
    for replica in ("r1", "r2"):
        assert_trees_equal(tmp_path / "master", tmp_path / replica, mtimes=True)
    # Every copy comes after the scan read that file.
    for index, (kind, path) in enumerate(order):
        if kind == "copy":
            assert ("read", path) in order[:index]
    # SyncFinished lies after the scan's last event: the appliers apply nothing of it again.
    files = [p for p, e in engine._iter_events((FileCreated,))]
    for summary in summaries:
        assert summary.position >= max(files)
        assert sc._appliers[summary.replica].position() > max(files)
    assert [r["position"] for r in sc.sync_report(last_only=False)["runs"]] == [
        s.position for s in summaries
    ]


def test_a_new_file_gone_or_made_a_directory_before_its_copy_does_not_stop_the_sync(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was a bug (review 21 C, F2): one master file deleted, or replaced by a directory,
    between the walk and its copy (temporary files on a busy share) stopped the first
    synchronization with E3010, the replica half made; a file the engine may not read
    likewise. It is left to the journal's state at the run's end, with a warning."""
    sc = _scenario(engine, tmp_path, "r1")
    master = tmp_path / "master"
    for name in ("a", "gone", "now-dir", "z"):
        (master / name).write_bytes(_random(5000, len(name)))
    real_copy = ReplicaTree.copy_new

    def copy_new(self: ReplicaTree, path: str, source: Any, *args: Any) -> int | None:
        if isinstance(source, str):  # the settling copy, from the journal
            pass
        elif path == "gone":
            os.unlink(master / path)
        elif path == "now-dir":
            os.unlink(master / path)
            os.mkdir(master / path)
        return real_copy(self, path, source, *args)

    monkeypatch.setattr(ReplicaTree, "copy_new", copy_new)
    (summary,) = sc.start()
    assert sorted((w.code, w.fields["path"]) for w in summary.warnings) == [
        ("W2001", "gone"),
        ("W2001", "now-dir"),
    ]
    # What the journal held when the run ended (the scan read both files first).
    position = sc.applied_position("r1")
    for name in ("gone", "now-dir"):
        with engine.file_at("fs", name, position) as f:
            assert (tmp_path / "r1" / name).read_bytes() == f.read()
    monkeypatch.undo()
    sc.capture()
    sc.wait_replicated()
    assert_trees_equal(master, tmp_path / "r1", mtimes=True)


def test_a_file_written_between_the_syncs_listing_and_its_copy_has_the_journals_time(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Was a bug (review 21 C, F6): the copy was stamped with the time the sync's listing
    saw, older than the bytes it copied (and than the journal's): the replica held a
    modification time the journal never held, for good (verify compares no times)."""
    import threading  # noqa: PLC0415

    from xoengine import capture as capture_module  # noqa: PLC0415
    from xoengine import masterstate  # noqa: PLC0415
    from xoengine import sync as sync_module  # noqa: PLC0415

    # The write long before the scan's stat (a large tree between): no racy re-read.
    monkeypatch.setattr(masterstate, "RACY_WINDOW_NS", 0)
    sc = _scenario(engine, tmp_path, "r1")
    master = tmp_path / "master"
    (master / "f").write_bytes(b"listed")
    listed = threading.Event()
    walk, read = sync_module.Synchronizer._walk_master, capture_module.Capture._stream_changes

    def walk_master(self: Any, summary: Any) -> Any:
        found = walk(self, summary)
        listed.set()
        return found

    def write_then_read(self: Any, path: str, *args: Any) -> Any:
        if path == "f" and not listed.is_set():
            assert listed.wait(60)  # the sync has listed f: now it changes, then is read
            before = (master / "f").stat().st_mtime_ns
            while (master / "f").stat().st_mtime_ns == before:  # a later time, whatever the tick
                (master / "f").write_bytes(b"written after the listing")
        return read(self, path, *args)

    monkeypatch.setattr(sync_module.Synchronizer, "_walk_master", walk_master)
    monkeypatch.setattr(capture_module.Capture, "_stream_changes", write_then_read)
    sc.start()
    assert (tmp_path / "r1" / "f").read_bytes() == b"written after the listing"
    assert (tmp_path / "r1" / "f").stat().st_mtime_ns == (master / "f").stat().st_mtime_ns
    assert_trees_equal(master, tmp_path / "r1", mtimes=True)


@pytest.mark.parametrize("again", [False, True], ids=["first", "resync"])
def test_a_master_moved_between_the_scans_walk_and_the_syncs_holds_the_journals_state(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, again: bool
) -> None:
    """Was a bug (review 21 C, t21): a synchronization beside a scan made the replica
    what its own walk found, after the scan's walk. Directories swapped, a file made a
    directory, a directory made a file, a file gone or new between the two walks left
    the replica at SyncFinished unlike the journal's state, and the applier then
    stopped on the next change there (E3011) until a resync."""
    from xoengine import sync as sync_module  # noqa: PLC0415

    sc = _scenario(engine, tmp_path, "r1")
    master, replica = tmp_path / "master", tmp_path / "r1"
    TreeBuilder(master).apply_all(
        [
            *(
                CreateFile(f"d{d}/f{d}_{i}", _random(3000 + i, 10 * d + i))
                for d in (0, 1)
                for i in (0, 1)
            ),
            CreateFile("f", b"a file"),
            CreateFile("g/inside", b"in a directory"),
            CreateFile("gone", b"goes"),
        ]
    )
    if again:
        sc.start()
        sc.stop()
        before = sc.rewind_points()[-1], snapshot_contents(master)
    walk = sync_module.Synchronizer._walk_master
    moved = []

    def walk_master(self: Any, summary: Any) -> Any:
        if not moved:  # after the scan's walk (the sync waits for it), before this one
            moved.append(True)
            (master / "d0").rename(master / "tmp")
            (master / "d1").rename(master / "d0")
            (master / "tmp").rename(master / "d1")
            (master / "f").unlink()
            (master / "f").mkdir()
            (master / "f" / "x").write_bytes(b"x")
            shutil.rmtree(master / "g")
            (master / "g").write_bytes(b"now a file")
            (master / "gone").unlink()
            (master / "new").write_bytes(b"the scan never saw it")
        return walk(self, summary)

    monkeypatch.setattr(sync_module.Synchronizer, "_walk_master", walk_master)
    if again:
        sc.synchronize()
    else:
        sc.start()
    assert moved
    held = sc.applied_position("r1")
    engine.replay(sc, to=tmp_path / "journal", position=held)
    assert snapshot_contents(replica) == snapshot_contents(tmp_path / "journal")
    if again:
        sc.start()
    # The next capture brings the rest; the applier finds what the journal says.
    sc.capture()
    sc.wait_replicated()
    assert sc.state == "Running"
    assert_trees_equal(master, replica)
    if again:  # the undo log kept what the settle wrote over: back across the sync
        point, tree = before
        sc.rewind("r1", point)
        assert snapshot_contents(replica) == tree


@pytest.mark.parametrize("each_max", [0, 2048])
def test_synchronize_flushes_new_paths_one_by_one_or_with_one_syncfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, each_max: int
) -> None:
    from xoengine import tree  # noqa: PLC0415

    monkeypatch.setattr(tree, "_FSYNC_EACH_MAX", each_max)
    flushed: list[str] = []
    real_fsync = tree.ReplicaTree._fsync_path

    def fsync_path(self: ReplicaTree, rel: str) -> None:
        flushed.append(rel)
        real_fsync(self, rel)

    monkeypatch.setattr(tree.ReplicaTree, "_fsync_path", fsync_path)
    with temporary_engine(tmp_path, durability="sync") as engine:
        sc = _scenario(engine, tmp_path)
        TreeBuilder(tmp_path / "master").apply_all(
            [*SCRIPT_A, *(CreateFile(f"many/f{i:02d}", _random(3000, i)) for i in range(20))]
        )
        sc.start()
        assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)
    if each_max:  # every new file and directory, and each parent directory (the root too)
        assert {"a.txt", "docs/old/big.bin", "many/f19", "many", "docs/old", ""} <= set(flushed)
    else:
        assert flushed == []


def test_synchronize_journals_no_sync_finished_when_the_scan_fails(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xoengine import capture  # noqa: PLC0415

    sc = _scenario(engine, tmp_path)
    TreeBuilder(tmp_path / "master").apply_all(
        [CreateFile(f"f{i:02d}", _random(500, i)) for i in range(20)]
    )
    real_read = capture.Capture._stream_changes

    def failing_read(self: capture.Capture, path: str, *args: Any) -> Any:
        if path == "f10":
            raise XoError(detail="injected")
        return real_read(self, path, *args)

    monkeypatch.setattr(capture.Capture, "_stream_changes", failing_read)
    with pytest.raises(XoError, match="injected"):
        sc.synchronize()
    assert sc._appliers["r1"].position() == 0
    assert not any(run.get("finished") for run in sc.sync_report(last_only=False)["runs"])
    # The next synchronization completes the replica.
    monkeypatch.setattr(capture.Capture, "_stream_changes", real_read)
    sc.synchronize()
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)


# -- statistics, reports, alerts --------------------------------------------------------------


def test_replication_report_counts_operations(engine: Engine, tmp_path: Path) -> None:
    sc = _scenario(engine, tmp_path)
    sc.start()
    master = TreeBuilder(tmp_path / "master")
    master.apply_all([CreateFile("a", b"1" * 1000), CreateFile("b", b"2"), CreateFile("c", b"")])
    sc.capture()
    sc.wait_replicated(timeout=30)
    first = sc.replication_report()["replicas"]["r1"]
    assert (first["created"], first["updated"], first["deleted"], first["renamed"]) == (3, 0, 0, 0)
    assert first["bytes"] == first["bytes_since_last_report"] == 1001
    master.apply_all([WriteAt("a", 0, b"x"), Rename("b", "b2"), Delete("c")])
    sc.capture()
    sc.wait_replicated(timeout=30)
    report = sc.replication_report(detail=True)["replicas"]["r1"]
    assert (report["created"], report["deleted"], report["renamed"]) == (3, 1, 1)
    # "a" was written; "b2" too counts as updated: a rename moves the ctime, so the
    # capture re-reads it and journals its new stat (MetadataChanged).
    assert report["updated"] == 2
    assert report["bytes_since_last_report"] == 1000  # the block of "a" that changed
    assert report["errors"] == []
    assert {(f["path"], f["operation"]) for f in report["files"]} >= {
        ("a", "updated"),
        ("b", "renamed"),
        ("c", "deleted"),
    }
    # Review 22 (C, F7): a replica name the scenario does not have was an empty report.
    for report in (sc.replication_report, sc.sync_report):
        with pytest.raises(ReplicaNotFoundError):
            report("r9")
    assert [run["replica"] for run in sc.sync_report("r1")["runs"]] == ["r1"]


def test_scenario_spool_limit_puts_it_in_problem_until_caught_up(
    engine: Engine, tmp_path: Path
) -> None:
    sc = _scenario(engine, tmp_path, "r1", "r2", spool_limit=10_000)
    sc.start()
    assert sc.state == "Running"
    sc.suspend("r2")
    master = TreeBuilder(tmp_path / "master")
    master.apply(CreateFile("small", b"s" * 1000))
    sc.capture()
    assert sc.state == "Running"  # under the limit
    master.apply(CreateFile("large", _random(20_000)))
    sc.capture()
    assert sc.state == "Problem"
    alerts = [e for _, e in engine._iter_events((AlertRaised,))]
    assert [(a.code, a.details["backlog_bytes"]) for a in alerts] == [("AW0001", 21_000)]
    sc.resume("r2")
    sc.wait_replicated(timeout=30)
    assert sc.state == "Running"
    states = [e.state for _, e in engine._iter_events((ScenarioStateChanged,))]
    assert states == ["Problem", "Running"]
    assert_trees_equal(tmp_path / "master", tmp_path / "r2", mtimes=True)


def test_the_spool_alert_stands_once_per_replica_across_opens_until_cleared(
    tmp_path: Path,
) -> None:
    """Was a bug (review 17): every open while the backlog stayed over raised AW0001 again
    (a capture from cron every minute: one warning a minute), and none ever cleared it."""

    def spool_alerts(engine: Engine) -> list[tuple[str, str, bool]]:
        alerts = [e for _, e in engine._iter_events((AlertRaised,)) if e.code == "AW0001"]
        return [(a.details["replica"], a.severity, "cleared" in a.details) for a in alerts]

    master = TreeBuilder(tmp_path / "master")
    master.apply(CreateFile("seed", b"0"))
    with Engine.open(tmp_path / "state", durability="nosync") as engine:
        sc = _scenario(engine, tmp_path, "r1", "r2", spool_limit=10_000)
        sc.start()
        sc.suspend("r2")
    for i in range(3):  # three command line captures, each its own engine
        master.apply(CreateFile(f"f{i}", _random(8_000, i)))
        with Engine.open(tmp_path / "state", durability="nosync") as engine:
            engine.scenario("fs").capture()
    with Engine.open(tmp_path / "state", durability="nosync") as engine:
        assert spool_alerts(engine) == [("r2", "warning", False)]
        sc = engine.scenario("fs")
        assert sc.state == "Problem"
        sc.resume("r2")
        sc.wait_replicated(timeout=30)
        assert sc.state == "Running"
        assert spool_alerts(engine) == [("r2", "warning", False), ("r2", "info", True)]


def test_statistics_follow_a_long_suspension_across_a_restart(tmp_path: Path) -> None:
    # The backlog figures come from the ledger (running totals kept in the state
    # directory); here they are checked against a plain scan of the journal, before
    # and after a restart (the ledger starts from its table), and once the replica
    # resumes.
    def scanned(engine: Engine, after: int) -> tuple[int, int]:
        events = [e for p, _, e in engine.file_events("fs", None) if p > after]
        roots = sum(1 for p, _, _ in engine.root_events("fs", None) if p > after)
        return len(events) + roots, sum(event_bytes(e) for e in events)

    master = TreeBuilder(tmp_path / "master")
    master.apply(CreateFile("seed", b"0"))
    with Engine.open(tmp_path / "state", durability="nosync") as engine:
        sc = _scenario(engine, tmp_path, "r1", "r2")
        sc.start()
        sc.suspend("r2")
        for i in range(30):
            master.apply_all([CreateFile(f"f{i}", _random(100 + 37 * i, i)), Append("seed", b"+")])
            if i % 10 == 5:  # the root's own change waits too
                os.chmod(tmp_path / "master", 0o700 + i)
            sc.capture()
            stats = sc.statistics().replicas["r2"]
            assert (stats.backlog_events, stats.backlog_bytes) == scanned(
                engine, stats.applied_position
            )
        assert stats.backlog_bytes > 30 * 100
        assert stats.oldest_unapplied_age_s is not None
    with Engine.open(tmp_path / "state", durability="nosync") as engine:
        sc = engine.scenario("fs")
        stats = sc.statistics().replicas["r2"]
        assert (stats.backlog_events, stats.backlog_bytes) == scanned(
            engine, stats.applied_position
        )
        sc.resume("r2")
        sc.wait_replicated(timeout=30)
        after = sc.statistics().replicas
        assert (after["r2"].backlog_events, after["r2"].backlog_bytes) == (0, 0)
        assert after["r2"].oldest_unapplied_age_s is None
        assert after["r2"].bytes_replicated == after["r1"].bytes_replicated == scanned(engine, 0)[1]
    assert_trees_equal(tmp_path / "master", tmp_path / "r2", mtimes=True)


def test_a_scenario_under_a_removed_ones_name_counts_only_its_own_events(
    tmp_path: Path,
) -> None:
    # A review finding (older than the ledger's table): the backlog, the spool
    # check and the reports of a new scenario counted the removed namesake's
    # events; with a spool limit it went to Problem at its first capture.
    master = TreeBuilder(tmp_path / "old")
    master.apply(CreateFile("big", _random(100_000, 1)))
    with Engine.open(tmp_path / "state", durability="nosync") as engine:
        old = engine.create_scenario("fs", master=tmp_path / "old", replicas={"r": tmp_path / "r"})
        old.start()
        old.wait_replicated(timeout=30)
        old.stop()
        engine.remove_scenario("fs")
        (tmp_path / "new").mkdir()
        sc = engine.create_scenario(
            "fs", master=tmp_path / "new", replicas={"r": tmp_path / "r2"}, spool_limit=1000
        )
        fresh = sc.statistics().replicas["r"]
        assert (fresh.backlog_events, fresh.backlog_bytes, fresh.bytes_replicated) == (0, 0, 0)
        assert sc.difference_report("r")["pending_files"] == 0
        sc.capture()  # journals the end of "big" (the name's history goes on): 0 bytes
        assert sc.state == "Stopped"  # not Problem: 100,000 bytes of another's do not wait
        sc.start()
        sc.wait_replicated(timeout=30)
        report = sc.replication_report(detail=True)["replicas"]["r"]
        assert report["bytes"] == 0
        assert all(f["path"] != "big" or f["operation"] == "deleted" for f in report["files"])
        assert not os.listdir(tmp_path / "r2")


def test_failed_applier_puts_scenario_in_problem_and_resume_retries(
    engine: Engine, tmp_path: Path
) -> None:
    sc = _scenario(engine, tmp_path)
    master = TreeBuilder(tmp_path / "master")
    master.apply_all([MakeDir("d"), CreateFile("a", b"a")])
    sc.start()
    # Someone puts a file where the replica holds the directory "d".
    shutil.rmtree(tmp_path / "r1" / "d")
    (tmp_path / "r1" / "d").write_bytes(b"in the way")
    master.apply(CreateFile("d/x", b"new file"))
    sc.capture()
    with pytest.raises(XoError) as failed:
        sc.wait_replicated(timeout=30)
    assert sc.state == "Problem"
    alerts = [e for _, e in engine._iter_events((AlertRaised,))]
    assert [(a.code, a.details["replica"]) for a in alerts] == [(failed.value.code, "r1")]
    assert sc.replication_report()["replicas"]["r1"]["errors"] == [str(failed.value)]
    # The operator clears the obstacle and resumes: the applier retries from its position.
    (tmp_path / "r1" / "d").unlink()
    (tmp_path / "r1" / "d").mkdir()
    sc.resume("r1")
    sc.wait_replicated(timeout=30)
    assert sc.state == "Running"
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=False)
    states = [(e.state, e.reason) for _, e in engine._iter_events((ScenarioStateChanged,))]
    assert states == [("Problem", "replica r1 stopped on an error"), ("Running", "problem cleared")]


def test_a_failed_apply_without_applier_threads_is_journaled_too(tmp_path: Path) -> None:
    """An engine opened on a running scenario applies in ``wait_replicated`` (as the CLI does).

    Was: the error reached the caller, but no alert was journaled and the
    scenario stayed Running (``xoengine capture`` with the replica gone).
    """
    master = TreeBuilder(tmp_path / "master")
    master.apply_all([MakeDir("d"), CreateFile("a", b"a")])
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        _scenario(eng, tmp_path).start()  # stays Running when this process closes it
    shutil.rmtree(tmp_path / "r1" / "d")
    (tmp_path / "r1" / "d").write_bytes(b"in the way")
    master.apply(CreateFile("d/x", b"new file"))
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.scenario("fs")
        sc.capture()
        with pytest.raises(XoError) as failed:
            sc.wait_replicated()
        assert sc.state == "Problem"
        alerts = [e for _, e in eng._iter_events((AlertRaised,))]
        assert [(a.code, a.details["replica"]) for a in alerts] == [(failed.value.code, "r1")]
    (tmp_path / "r1" / "d").unlink()
    (tmp_path / "r1" / "d").mkdir()
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.scenario("fs")
        sc.resume("r1")
        sc.wait_replicated()
        assert sc.state == "Running"
        assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=False)


def test_a_replica_whose_root_vanished_stops_instead_of_starting_over_empty(
    tmp_path: Path,
) -> None:
    """Deleted (or an unmounted volume's empty place gone): no silent new, empty replica.

    The root was made again at every engine open: the next changes went into
    an empty replica that the scenario called Running, and a rewind "rewound"
    nothing and reported success.
    """
    master = TreeBuilder(tmp_path / "master")
    master.apply_all([CreateFile("a", b"a"), CreateFile("b", b"b")])
    with temporary_engine(tmp_path) as engine:
        sc = _scenario(engine, tmp_path)
        sc.start()
        point = sc.set_rewind_point("one")
    shutil.rmtree(tmp_path / "r1")
    with temporary_engine(tmp_path) as engine:  # a new process: the root is not made again
        sc = engine.scenario("fs")
        assert not (tmp_path / "r1").exists()
        master.apply(CreateFile("c", b"c"))
        sc.capture()  # as `xoengine capture` does: journal, then apply in this thread
        with pytest.raises(TreeRootMissingError):
            sc.wait_replicated(timeout=30)
        assert not (tmp_path / "r1").exists()
        # Review 24 (G, note): the failure stands for the replica while the scenario
        # is in Problem; standing_alerts said nothing of it.
        assert sc.state == "Problem"
        assert sc.statistics().replicas["r1"].standing_alerts == ["E2005"]
        top = engine.recorder.max_notification_id()
        with pytest.raises(TreeRootMissingError, match="synchronize the replica"):
            sc.rewind("r1", point)
        assert engine.recorder.max_notification_id() == top  # refused before journaling
        # A synchronization builds the replica again, root and all.
        sc.synchronize(replica="r1")
        sc.wait_replicated(timeout=30)
        assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=False)
        assert sc.statistics().replicas["r1"].standing_alerts == []


@pytest.mark.parametrize("replica_had", ["nothing", "older files"])
def test_initial_sync_holds_what_the_journal_holds_when_the_master_moves_mid_copy(
    engine: Engine,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    replica_had: str,
    copy_timing: str,
) -> None:
    # The replica is copied beside the scan that journals the baseline, each file
    # after the scan read it. A file written between that read and the copy must
    # not reach the replica early: the replica holds what the journal holds at
    # SyncFinished, and the write arrives through the next capture like any other.
    master = tmp_path / "master"
    master.mkdir()
    for i in range(5):
        (master / f"f{i}").write_bytes(_random(5000, i))
    original = (master / "f2").read_bytes()
    if replica_had == "older files":
        # Same sizes, other bytes and mtimes: updated in place, block by block.
        (tmp_path / "r1").mkdir()
        for i in range(5):
            (tmp_path / "r1" / f"f{i}").write_bytes(_random(5000, 100 + i))
            os.utime(tmp_path / "r1" / f"f{i}", ns=(1_000_000_000, 1_000_000_000))
    before = snapshot_tree(tmp_path / "r1") if replica_had != "nothing" else None

    class MovingFollower(ScanFollower):
        def read(self, path: str) -> None:
            super().read(path)
            if path == "f2":  # read by the scan, not yet copied: write to it now
                with (master / "f2").open("r+b") as f:
                    f.write(b"X" * 100)

    monkeypatch.setattr(scenario_module, "ScanFollower", MovingFollower)
    sc = _scenario(engine, tmp_path)
    (summary,) = sc.start()
    assert (tmp_path / "r1" / "f2").read_bytes() == original
    engine.replay("fs", to=tmp_path / "replayed", position=summary.position)
    assert_trees_equal(tmp_path / "replayed", tmp_path / "r1", mtimes=True)
    sc.capture()
    sc.wait_replicated(timeout=30)
    assert_trees_equal(master, tmp_path / "r1", mtimes=True)
    if before is not None:
        # The replica held files the journal never named: no rewind reaches before
        # this first sync. The undo log kept what it wrote over all the same, settle's
        # rewrite included: undone by hand, it gives the old files back.
        (started, _), *_ = engine._iter_events((SyncStarted,))
        with pytest.raises(RewindUnreachableError):
            sc.rewind("r1", position=started - 1)
        applier = sc._appliers["r1"]
        sc.stop()
        rewind_back(
            engine.store,
            applier.tree,
            applier.undo,
            applier.position(),
            started - 1,
            lambda txn, p: applier.set_position(txn, p, force=True),
        )
        assert snapshot_tree(tmp_path / "r1") == before


def test_replica_on_another_filesystem_is_synchronized_and_follows(
    engine: Engine, tmp_path: Path, coarse_fs: Path
) -> None:
    # copy_file_range cannot cross between two ext4 file systems (EXDEV): the
    # initial synchronization copied nothing to a replica on another disk.
    master = TreeBuilder(tmp_path / "master")
    master.apply_all(SCRIPT_A)
    (tmp_path / "master" / "big").write_bytes(_random(3 * 1024 * 1024, 7))
    with open(tmp_path / "master" / "thin", "wb") as f:  # holes: copied segment by segment
        f.write(b"head")
        f.seek(5 * 1024 * 1024)
        f.write(b"tail")
    sc = engine.create_scenario("fs", master=tmp_path / "master", replicas={"r1": coarse_fs / "r1"})
    sc.start()
    # (That file system keeps whole seconds: mtimes cannot match to the nanosecond.)
    assert_trees_equal(tmp_path / "master", coarse_fs / "r1", mtimes=False)
    master.apply_all(SCRIPT_B)
    sc.capture()
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", coarse_fs / "r1", mtimes=False)
    # ... and verify compares mtimes there in the seconds it keeps.
    assert sc.difference_report("r1", verify=True)["differences"] == {}


def test_synchronize_warns_of_the_special_files_it_skips(engine: Engine, tmp_path: Path) -> None:
    master = TreeBuilder(tmp_path / "master")
    master.apply_all([CreateFile("a.txt", b"a"), MakeDir("run")])
    os.mkfifo(tmp_path / "master" / "run" / "pipe")
    sc = _scenario(engine, tmp_path)
    (summary,) = sc.synchronize()
    assert [(w.code, w.fields["path"], str(w)) for w in summary.warnings] == [
        (
            "W2003",
            "run/pipe",
            "W2003: 'run/pipe' is a fifo: only files, directories and symlinks are replicated.",
        )
    ]
    assert sorted(os.listdir(tmp_path / "r1" / "run")) == []
    assert (tmp_path / "r1" / "a.txt").read_bytes() == b"a"
    # Review 21 (F04): verify listed it "missing on the replica", which no sync could clear.
    assert sc.difference_report("r1", verify=True)["differences"] == {}
    os.mkfifo(tmp_path / "r1" / "run" / "stray")  # one on the replica is a difference
    assert sc.difference_report("r1", verify=True)["differences"] == {
        "run/stray": "only on the replica"
    }


def test_names_kept_for_temporary_files_are_not_replicated_and_said_so(
    engine: Engine, tmp_path: Path
) -> None:
    """Review 25 (L3): a master file or directory named ``.xoengine-tmp-*`` was journaled and
    synchronized, then swept from the replica by every apply, rewind and sync (what a
    killed write leaves is named so); verify listed only what was below the directory."""
    master = TreeBuilder(tmp_path / "master")
    master.apply_all(
        [
            CreateFile("plain.txt", b"plain"),
            CreateFile(".xoengine-tmp-notes.txt", b"user data"),
            MakeDir(".xoengine-tmp-cache"),
            CreateFile(".xoengine-tmp-cache/important.db", b"precious"),
        ]
    )
    sc = _scenario(engine, tmp_path)
    (summary,) = sc.synchronize()
    skipped = sorted(w.fields["path"] for w in summary.warnings if w.code == "W2004")
    assert skipped == [".xoengine-tmp-cache", ".xoengine-tmp-notes.txt"]
    assert sorted(os.listdir(tmp_path / "r1")) == ["plain.txt"]
    assert {e.path for _, _, e in engine.file_events("fs", None)} == {"plain.txt"}
    assert sc.difference_report("r1", verify=True)["differences"] == {}
    with pytest.raises(ConfigurationError, match="kept for xoengine's temporary files"):
        sc.open(".xoengine-tmp-notes.txt")


def test_verify_lists_a_file_or_link_whose_mtime_differs(engine: Engine, tmp_path: Path) -> None:
    """Review 25 (K5): mtimes are replicated, and verify did not compare them (an investigator
    reads them; backup tools copy again what they see changed). A synchronization gave links
    no mtime of their own: it gives the master's now."""
    master = TreeBuilder(tmp_path / "master")
    master.apply_all([CreateFile("a.txt", b"a"), MakeDir("d"), CreateFile("d/b", b"b")])
    os.symlink("a.txt", tmp_path / "master" / "l")
    os.utime(tmp_path / "master" / "l", ns=(10**18, 10**18), follow_symlinks=False)
    sc = _scenario(engine, tmp_path)
    sc.synchronize()
    assert sc.difference_report("r1", verify=True)["differences"] == {}
    r1 = tmp_path / "r1"
    os.utime(r1 / "a.txt", ns=(5 * 10**9, 5 * 10**9))
    os.utime(r1 / "l", ns=(10**18 + 1, 10**18 + 1), follow_symlinks=False)
    os.utime(r1 / "d", ns=(5 * 10**9, 5 * 10**9))  # a directory's moves with its entries
    found = sc.difference_report("r1", verify=True)["differences"]
    assert sorted(found) == ["a.txt", "l"], found
    assert (
        found["a.txt"].startswith("mtime ")
        and "vs 1970-01-01T00:00:05.000000+00:00" in found["a.txt"]
    )
    assert found["l"] == f"mtime {10**18} vs {10**18 + 1}"  # alike to the microsecond
    sc.synchronize()
    assert sc.difference_report("r1", verify=True)["differences"] == {}


@pytest.mark.parametrize("parts", [False, True])
def test_sparse_files_stay_sparse_on_the_replica_and_in_replays(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parts: bool
) -> None:
    """A thin image (holes) synchronized, grown with holes, replayed and rewound.

    ``parts``: the growth is journaled in parts (past ``FLUSH_BYTES``). Was a bug
    (review 21 C, F5): each part carried the final size, the replica was extended
    to it at the first, and the zeros of the later parts were written: a 512 MiB
    thin image grown on the master took 432 MiB on the replica.
    """
    from xoengine import capture as capture_module  # noqa: PLC0415

    if parts:
        monkeypatch.setattr(capture_module, "FLUSH_BYTES", 4 * 1024 * 1024)
    mib = 1024 * 1024
    thin = tmp_path / "master" / "thin.img"
    thin.parent.mkdir()
    with open(thin, "wb") as f:
        f.write(b"boot")
        f.seek(32 * mib)
        f.write(b"data")
    if thin.stat().st_blocks * 512 >= mib:
        pytest.skip("this file system does not keep holes")
    sc = _scenario(engine, tmp_path)
    sc.start()
    replica = tmp_path / "r1" / "thin.img"
    assert_trees_equal(tmp_path / "master", tmp_path / "r1")
    assert replica.stat().st_blocks * 512 < mib
    sc.set_rewind_point("small")
    with open(thin, "r+b") as f:  # grows by 64 MiB, of which 4 bytes are data
        f.seek(96 * mib)
        f.write(b"more")
    sc.capture()
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1")
    assert replica.stat().st_blocks * 512 < mib
    out = tmp_path / "replayed"
    engine.replay(sc, to=out)
    assert_trees_equal(tmp_path / "master", out)
    assert (out / "thin.img").stat().st_blocks * 512 < mib
    sc.rewind("r1", "small")
    assert replica.stat().st_size == 32 * mib + 4
    with open(replica, "rb") as f:
        f.seek(32 * mib)
        assert f.read() == b"data"


def test_a_thin_file_is_journaled_and_read_as_its_data_not_its_holes(
    engine: Engine, tmp_path: Path
) -> None:
    """Session 22 left: a new 1 GiB image holding 8 KiB was read, hashed and journaled
    whole, its holes as zeros (8.7 s); now only its data segments are. A write into
    it read all of its holes again (4 s); now its data and the chunks written."""
    mib = 1024 * 1024
    (tmp_path / "master").mkdir()
    sc = _scenario(engine, tmp_path)
    sc.start()
    image = tmp_path / "master" / "new.img"
    with open(image, "wb") as f:
        f.write(b"head")
        f.seek(128 * mib)
        f.write(b"tail")
    if image.stat().st_blocks * 512 >= mib:
        pytest.skip("this file system does not keep holes")
    assert sc.capture().bytes_changed < mib
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1")
    assert (tmp_path / "r1" / "new.img").stat().st_blocks * 512 < mib
    out = tmp_path / "replayed"
    engine.replay(sc, to=out)
    assert_trees_equal(tmp_path / "master", out)
    assert (out / "new.img").stat().st_blocks * 512 < mib
    point = sc.set_rewind_point("before the writes")
    before = snapshot_contents(tmp_path / "master")
    read: list[int] = []
    preadv = os.preadv

    def counted(fd: int, buffers: Any, offset: int) -> int:
        got = preadv(fd, buffers, offset)
        read.append(got)
        return got

    with open(image, "r+b") as f:
        f.seek(20 * mib)
        f.write(b"new data in a hole")
        f.seek(0)
        f.write(b"HEAD")  # over data
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "preadv", counted)
        assert 0 < sc.capture().bytes_changed < mib
    assert sum(read) < 64 * mib  # two chunks of 16 MiB, not the 128 MiB of the file
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1")
    assert (tmp_path / "r1" / "new.img").stat().st_blocks * 512 < mib
    sc.rewind("r1", point)
    assert snapshot_contents(tmp_path / "r1") == before


def test_capture_tells_a_new_file_on_a_reused_inode_from_a_rename(
    engine: Engine, tmp_path: Path
) -> None:
    """ext4 gives a deleted file's inode number to the next new file at once.

    "rm a; create b" between two scans was journaled as "a renamed to b", and
    the history of b began with a's creation. The birth time tells them apart.
    """
    from xoengine.walk import birth_ns  # noqa: PLC0415

    master = tmp_path / "master"
    master.mkdir()
    (master / "a").write_bytes(b"old file")
    if birth_ns(master, "a") is None:
        pytest.skip("this file system keeps no birth time")
    sc = _scenario(engine, tmp_path)
    sc.start()
    inode = (master / "a").stat().st_ino
    (master / "a").unlink()
    (master / "b").write_bytes(b"new file")
    if (master / "b").stat().st_ino != inode:
        pytest.skip("the file system did not reuse the inode number")
    result = sc.capture()
    assert (result.renamed, result.created, result.deleted) == (0, 1, 1)
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1")
    assert engine.history(sc, "b")[0].operation == "created"
    # A real rename is still a rename.
    os.rename(master / "b", master / "c")
    assert sc.capture().renamed == 1


def test_a_replica_whose_volume_is_not_mounted_is_not_written_into_its_mount_point(
    engine: Engine, tmp_path: Path, coarse_fs: Path
) -> None:
    """The replica is a whole volume; unmounted, its mount point is an empty directory.

    Written into, that directory (on the file system below) would fill up and
    pass for the replica. The file system id noted at the last synchronization
    says it is not the replica's.
    """
    master = TreeBuilder(tmp_path / "master")
    master.apply_all([CreateFile("a", b"a"), MakeDir("d")])
    sc = engine.create_scenario("fs", master=tmp_path / "master", replicas={"r1": coarse_fs})
    sc.synchronize()
    point = sc.set_rewind_point("one")
    master.apply(CreateFile("b", b"b"))
    sc.capture()
    sc.wait_replicated(timeout=30)
    assert subprocess.run(["umount", str(coarse_fs)], check=False).returncode == 0
    master.apply(CreateFile("c", b"c"))
    sc.capture()
    with pytest.raises(ReplicaVolumeChangedError):
        sc.wait_replicated(timeout=30)
    assert os.listdir(coarse_fs) == []  # nothing written into the mount point
    top = engine.recorder.max_notification_id()
    with pytest.raises(ReplicaVolumeChangedError):
        sc.rewind("r1", point)
    assert engine.recorder.max_notification_id() == top  # refused before journaling
    # Mounted again, replication goes on where it stopped.
    image = tmp_path / "coarse.img"
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(coarse_fs)], check=False)
    assert mounted.returncode == 0
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", coarse_fs, mtimes=False)


def test_a_master_whose_volume_is_not_mounted_is_not_journaled_as_emptied(
    engine: Engine, tmp_path: Path, coarse_fs: Path
) -> None:
    """The master is a whole volume; unmounted, its mount point is an empty directory.

    Was a bug (review 21 C, F3): a capture journaled the deletion of everything
    and every replica applied it, without a word. Refused (E2005), nothing journaled.
    """
    master = TreeBuilder(coarse_fs)
    master.apply_all([CreateFile("a", b"a"), MakeDir("d"), CreateFile("d/b", b"b")])
    sc = engine.create_scenario("fs", master=coarse_fs, replicas={"r1": tmp_path / "r1"})
    sc.start()
    sc.wait_replicated(timeout=30)
    assert subprocess.run(["umount", str(coarse_fs)], check=False).returncode == 0
    top = engine.recorder.max_notification_id()
    with pytest.raises(TreeRootMissingError, match="not mounted"):
        sc.capture()
    assert engine.recorder.max_notification_id() == top  # nothing journaled
    assert sorted(os.listdir(tmp_path / "r1")) == ["a", "d", "lost+found"]
    # Mounted again, capture goes on; an emptied volume (same file system) is replicated.
    image = tmp_path / "coarse.img"
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(coarse_fs)], check=False)
    assert mounted.returncode == 0
    sc.capture()
    shutil.rmtree(coarse_fs / "d")
    (coarse_fs / "a").unlink()
    sc.capture()
    sc.wait_replicated(timeout=30)
    assert os.listdir(tmp_path / "r1") == ["lost+found"]
    sc.stop()


def test_capture_journals_an_insertion_as_a_small_delta(engine: Engine, tmp_path: Path) -> None:
    sc = _scenario(engine, tmp_path, block_size=512)
    master = TreeBuilder(tmp_path / "master")
    master.apply(CreateFile("big", _random(64 * 1024, 3)))
    sc.start()
    master.apply(Insert("big", 100, b"a few inserted bytes"))
    result = sc.capture()
    assert result.bytes_journaled < 2 * 512  # not the 64 KiB after the insertion point
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)
    assert any(True for _ in engine._iter_events((ContentReplaced,)))


def _record_bytes(engine: Engine, positions: list[int]) -> int:
    with engine.store.read() as txn:
        return sum(
            len(txn.get(engine.recorder.events_table, encode_position(p)) or b"") for p in positions
        )


def test_a_shifting_delta_record_carries_no_block_map(engine: Engine, tmp_path: Path) -> None:
    # 100 bytes in front of 1 MiB shift all 2,048 blocks: their new digests
    # (24 KiB) are the master state's to keep, not the journal's to carry.
    sc = _scenario(engine, tmp_path, block_size=512)
    master = TreeBuilder(tmp_path / "master")
    master.apply(CreateFile("big", _random(1024 * 1024, 5)))
    sc.start()
    master.apply(Insert("big", 0, _random(100, 6)))
    result = sc.capture()
    assert result.bytes_journaled == 100
    assert _record_bytes(engine, result.positions) < 1024
    before = sc.master_state_snapshot()
    # The master state kept the new map: an unchanged file is not journaled again,
    # and one more insertion is again a small delta.
    assert sc.capture().events == 0
    master.apply(Insert("big", 4096, _random(50, 7)))
    again = sc.capture()
    assert again.bytes_journaled == 50
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)
    assert before != sc.master_state_snapshot()


def test_rebuilt_master_state_derives_delta_maps_from_the_journal(
    engine: Engine, tmp_path: Path
) -> None:
    sc = _scenario(engine, tmp_path, block_size=512)
    master = TreeBuilder(tmp_path / "master")
    master.apply(CreateFile("big", _random(256 * 1024, 8)))
    master.apply(CreateFile("small", b"s" * 3000))
    sc.start()
    master.apply(Insert("big", 10, _random(30, 9)))
    master.apply(WriteAt("big", 200_000, b"after the delta"))
    sc.capture()
    master.apply(WriteAt("big", 7, b"x"))
    sc.capture()
    assert any(True for _ in engine._iter_events((ContentReplaced,)))
    live = sc.master_state_snapshot()
    sc.rebuild_master_state()
    assert sc.master_state_snapshot() == live
    with engine.store.read() as txn:
        assert not sc.manifest.underived(txn)


@pytest.mark.parametrize("change", ["create", "insert", "rewrite", "append"])
def test_a_capture_holds_a_bounded_part_of_a_large_file(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    """A large new, shifted or rewritten file is read as a private mapped copy, not into memory.

    The capture used to read such a file whole (a 20 GiB file: 20 GiB of
    RAM), and a stream of its changed blocks kept them all.
    """
    import tracemalloc  # noqa: PLC0415

    from xoengine import capture as capture_module  # noqa: PLC0415
    from xoengine import tree as tree_module  # noqa: PLC0415
    from xoengine.blobtable import BLOB_MAX  # noqa: PLC0415

    monkeypatch.setattr(tree_module, "HOLD_MAX", 2 * BLOB_MAX)
    monkeypatch.setattr(capture_module, "FLUSH_BYTES", 2 * BLOB_MAX)  # batches committed
    sc = _scenario(engine, tmp_path, "r1")
    master = TreeBuilder(tmp_path / "master")
    content = _random(24 * BLOB_MAX, 31)
    if change != "create":
        master.apply(CreateFile("big", content))
    sc.start()
    sc.suspend("r1")
    step = {
        "create": CreateFile("big", content),
        "insert": Insert("big", 100, b"shifts every block"),
        "rewrite": CreateFile("big", _random(24 * BLOB_MAX, 32)),
        "append": Append("big", _random(6 * BLOB_MAX, 33)),
    }[change]
    if change in {"rewrite", "append"}:  # in place: journaled in parts as read, never copied

        def no_whole_read(*_: object) -> None:
            raise AssertionError("an in-place change was read whole")

        monkeypatch.setattr(capture_module, "read_whole", no_whole_read)
    master.apply(step)
    del content
    tracemalloc.start()
    try:
        result = sc.capture()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.events >= 1
    # The read buffer, the blocks held (HOLD_MAX) and batches being committed
    # (FLUSH_BYTES, two at most), the delta's scratch: the same for any size of
    # file. Not the file's 24 chunks.
    assert peak < 16 * BLOB_MAX, f"{peak / BLOB_MAX:.1f} chunks held at once"
    if change == "insert":
        assert result.bytes_journaled < BLOB_MAX  # a delta still, from the mapped copy
    if change == "append":
        assert result.bytes_journaled == 6 * BLOB_MAX  # the appended bytes only
    sc.resume("r1")
    sc.wait_replicated(timeout=60)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)


def test_a_file_changed_while_read_keeps_nothing_of_the_first_read(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read spilled bytes the file held only while it was read; the second read
    finds them back as they were: the journal must hold what the file holds.

    Was a bug (review 17, older than it): the parts the first read journaled
    stayed, and the second read, comparing with the old content, did not write
    those blocks again. A real write to the file during the capture's real read
    (between two of its chunks) makes it happen.
    """
    from xoengine import capture as capture_module  # noqa: PLC0415

    monkeypatch.setattr(capture_module, "_CHUNK", 64 * 1024)  # four reads of the file
    monkeypatch.setattr(capture_module, "FLUSH_BYTES", 16 * 1024)  # spilled after the first
    sc = _scenario(engine, tmp_path, "r1")
    old = _random(256 * 1024, 41)
    master = tmp_path / "master"
    (master / "f").write_bytes(old)
    sc.start()
    with (master / "f").open("r+b") as f:
        f.write(_random(64 * 1024, 42))  # what the first read sees in its first chunk
    reads = capture_module.Capture._changed_runs
    first = [True]

    def read_then_restore(self: Any, *args: Any) -> int:
        got = reads(self, *args)
        if first[0]:
            first[0] = False
            with (master / "f").open("r+b") as f:
                f.write(old[: 64 * 1024])  # back as it was, while the read goes on
        return got

    monkeypatch.setattr(capture_module.Capture, "_changed_runs", read_then_restore)
    sc.capture()
    assert not first[0]  # the premise: the file changed during the read
    with engine.file_at("fs", "f") as f:
        assert f.read() == old
    sc.wait_replicated(timeout=30)
    assert (tmp_path / "r1" / "f").read_bytes() == old


@pytest.mark.parametrize("read", ["streamed", "whole"])
def test_a_file_that_moved_under_both_reads_is_read_again_by_the_next_pass(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """A writer keeps writing to a file through both reads of a capture, then stops.

    Was a bug (review 21, F1): the bytes read were recorded with the stat the
    read ended with, which showed writes the bytes did not hold; every later
    pass trusted that stat, and the journal and replicas kept the old bytes for
    good (only ``verify`` saw it). A real write after each read's first chunk
    (in a region it has read) makes it happen.
    """
    from xoengine import capture as capture_module  # noqa: PLC0415
    from xoengine import masterstate  # noqa: PLC0415
    from xoengine import tree as trees  # noqa: PLC0415

    monkeypatch.setattr(capture_module, "_CHUNK", 64 * 1024)
    # A change that shifts more than this is read whole, for a delta.
    monkeypatch.setattr(trees, "HOLD_MAX", 64 * 1024)
    # A read of a large file ends long after its last write, past the racy window,
    # where no re-read covers for the stat: a window of 0 makes this small one so.
    monkeypatch.setattr(masterstate, "RACY_WINDOW_NS", 0)
    sc = _scenario(engine, tmp_path, "r1")
    master = tmp_path / "master"
    name = "f"
    (master / name).write_bytes(_random(256 * 1024, 51))
    sc.start()
    if read == "streamed":  # rewritten in place: read a chunk at a time
        (master / name).write_bytes(_random(256 * 1024, 52))
    else:  # shifted: read whole after a first streamed read, for a delta
        (master / name).write_bytes(b"inserted" + (master / name).read_bytes())
    writes = [0]

    def write_behind() -> None:
        writes[0] += 1
        with (master / name).open("r+b") as f:
            f.write(_random(4096, 60 + writes[0]))  # at 0: bytes this read has passed

    read_whole, changed_runs = capture_module.read_whole, capture_module.Capture._changed_runs
    if read == "whole":
        reads = capture_module.read_whole

        def read_then_write(*args: Any) -> Any:
            got = reads(*args)
            write_behind()
            return got

        monkeypatch.setattr(capture_module, "read_whole", read_then_write)
    else:
        runs = capture_module.Capture._changed_runs

        def runs_then_write(self: Any, chunk: Any, offset: int, *args: Any) -> int:
            got = runs(self, chunk, offset, *args)
            if offset == 0:
                write_behind()
            return got

        monkeypatch.setattr(capture_module.Capture, "_changed_runs", runs_then_write)
    result = sc.capture()
    assert writes[0] == 2  # the premise: the file moved under both reads
    assert [type(w).__name__ for w in result.warnings] == ["ChangeWhileReadWarning"]
    monkeypatch.setattr(capture_module, "read_whole", read_whole)  # the writer stops
    monkeypatch.setattr(capture_module.Capture, "_changed_runs", changed_runs)
    sc.capture()
    with engine.file_at("fs", name) as f:
        assert f.read() == (master / name).read_bytes()
    sc.wait_replicated(timeout=30)
    assert (tmp_path / "r1" / name).read_bytes() == (master / name).read_bytes()
    assert sc.difference_report("r1", verify=True)["differences"] == {}


def test_a_block_level_resync_holds_a_bounded_part_of_a_large_file(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming a rewound replica resyncs a large shifted file without reading it into memory.

    The block-level synchronization read both the master's and the replica's
    content whole, and built the new content in memory a third time.
    """
    import tracemalloc  # noqa: PLC0415

    from xoengine import tree as tree_module  # noqa: PLC0415
    from xoengine.blobtable import BLOB_MAX  # noqa: PLC0415

    monkeypatch.setattr(tree_module, "HOLD_MAX", 2 * BLOB_MAX)
    sc = _scenario(engine, tmp_path, "r1")
    master = TreeBuilder(tmp_path / "master")
    master.apply(CreateFile("big", _random(24 * BLOB_MAX, 41)))
    sc.start()
    point = sc.set_rewind_point("before")
    master.apply(Insert("big", 100, b"shifts every block"))
    sc.capture()
    sc.wait_replicated(timeout=60)
    sc.rewind("r1", point)
    tracemalloc.start()
    try:
        sc.resume("r1")  # block-level: the replica holds the old content, shifted
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * BLOB_MAX, f"{peak / BLOB_MAX:.1f} chunks held at once"
    (run,) = sc.sync_report("r1")["runs"]
    assert run["level"] == "block"
    assert run["bytes_sent"] < BLOB_MAX  # a delta still: only the inserted bytes were sent
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)


def test_a_large_rewrite_read_whole_is_journaled_in_parts(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file rewritten whole at another size goes in parts, each a bounded record.

    Was a bug (review 27r, M3): read whole (its change shifts data, and a delta
    is not worth it), all of its changed ranges and their block digests went in
    one event: past ~85 GiB of them, more than a record may hold (E4014), and
    every pass failed. Scaled down here by the size of a part.
    """
    from xoengine import capture as capture_module  # noqa: PLC0415
    from xoengine import tree as trees  # noqa: PLC0415
    from xoengine.blobtable import BLOB_MAX  # noqa: PLC0415

    monkeypatch.setattr(capture_module, "FLUSH_BYTES", 2 * BLOB_MAX)
    monkeypatch.setattr(trees, "HOLD_MAX", 2 * BLOB_MAX)
    sc = _scenario(engine, tmp_path, "r1")
    master = tmp_path / "master"
    (master / "big").write_bytes(_random(5 * BLOB_MAX + 123, 70))
    sc.start()
    point = sc.set_rewind_point("before")
    before = (master / "big").read_bytes()
    (master / "big").write_bytes(_random(6 * BLOB_MAX + 7, 71))
    mark = engine.last_position()
    sc.capture()
    written = [event for _, event in engine._iter_events((BytesWritten,), mark)]
    assert len(written) >= 3
    assert max(len(event.ranges) for event in written) <= 2
    sc.wait_replicated(timeout=60)
    assert (tmp_path / "r1" / "big").read_bytes() == (master / "big").read_bytes()
    assert sc.capture().events == 0
    sc.rewind("r1", point)
    assert (tmp_path / "r1" / "big").read_bytes() == before
    with engine.file_at("fs", "big", mark) as f:
        assert f.read() == before
    live = sc.master_state_snapshot()
    sc.rebuild_master_state()
    assert sc.master_state_snapshot() == live


def test_a_delta_of_too_many_ops_is_journaled_as_writes(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delta is one record: past ``MAX_DELTA_OPS`` ops it goes as in-place writes.

    Data shifted every few blocks of a huge file makes millions of ops, more
    than a record may hold (E4014, every pass failing). Scaled down here.
    """
    from xoengine import capture as capture_module  # noqa: PLC0415

    sc = _scenario(engine, tmp_path, "r1", block_size=512)
    master = tmp_path / "master"
    original = _random(64 * 1024, 80)
    (master / "f").write_bytes(original)
    sc.start()
    point = sc.set_rewind_point("before")
    shifted = b"".join(original[i : i + 4096] + b"+" for i in range(0, len(original), 4096))
    (master / "f").write_bytes(shifted)
    monkeypatch.setattr(capture_module, "MAX_DELTA_OPS", 4)
    mark = engine.last_position()
    sc.capture()
    assert not list(engine._iter_events((ContentReplaced,), mark))
    assert list(engine._iter_events((BytesWritten,), mark))
    sc.wait_replicated(timeout=60)
    assert (tmp_path / "r1" / "f").read_bytes() == shifted
    sc.rewind("r1", point)
    assert (tmp_path / "r1" / "f").read_bytes() == original


@pytest.mark.parametrize("block_size", [1536, 1000])
def test_runs_of_a_block_size_that_does_not_divide_a_blob_keep_their_digests(
    engine: Engine, tmp_path: Path, block_size: int
) -> None:
    """Review 28 (B1): a run of changed blocks grew to 4 MiB, cut inside a block where the
    block size does not divide it, and the next run's digests were taken from there: the
    master state held wrong digests past 4 MiB of a new file, a second pass journaled it
    again, and a delta built on them copied wrong blocks (the replica diverged, E3011).
    """
    from xoengine.masterstate import pack_digests  # noqa: PLC0415

    sc = _scenario(engine, tmp_path, "r1", block_size=block_size)
    master = tmp_path / "master"
    sc.start()
    data = _random(10 * 1024 * 1024 + 77, 90)
    (master / "f").write_bytes(data)
    sc.capture()
    held = sc.master_state_snapshot()["f"][1]
    tree = ReplicaTree(str(master), fsync=False)
    assert held == pack_digests(tree.block_map("f", block_size))
    assert sc.capture().events == 0
    (master / "f").write_bytes(data[1024:])  # shifted: a delta built on those digests
    sc.capture()
    sc.wait_replicated(timeout=60)
    assert (tmp_path / "r1" / "f").read_bytes() == data[1024:]


def test_a_rebuild_cut_short_runs_again_when_the_engine_opens(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sc = _scenario(engine, tmp_path, block_size=512)
    master = TreeBuilder(tmp_path / "master")
    master.apply_all([CreateFile(f"f{i}", _random(20_000, 20 + i)) for i in range(5)])
    sc.start()
    master.apply(Insert("f1", 5, b"shifts every block"))
    sc.capture()
    live = sc.master_state_snapshot()

    def crash(self: Scenario) -> None:
        raise RuntimeError("killed before the maps were derived")

    with monkeypatch.context() as patch:
        patch.setattr(Scenario, "_derive_maps", crash)
        with pytest.raises(RuntimeError):
            sc.rebuild_master_state()
    assert sc.master_state_snapshot() != live  # f1's map is missing
    engine.close()
    with temporary_engine(tmp_path) as again:
        reopened = again.scenario("fs")
        assert reopened.master_state_snapshot() == live
        with again.store.read() as txn:
            assert not reopened.manifest.is_rebuilding(txn)
        assert reopened.capture().events == 0


def test_a_journal_from_before_owners_learns_each_owner_once(
    engine: Engine, tmp_path: Path
) -> None:
    # Master-state entries written before owners were recorded hold -1: the next
    # capture journals each path's owner once (a metadata change), then nothing.
    from xoengine.events import MetadataChanged, observed_owner  # noqa: PLC0415

    sc = _scenario(engine, tmp_path)
    master = TreeBuilder(tmp_path / "master")
    master.apply_all([CreateFile("d/a", b"a"), Symlink("d/l", "a")])
    sc.start()

    def forget(txn: Any) -> None:
        for path, state in list(sc.manifest.items(txn)):
            sc.manifest.put(txn, path, state.evolve(uid=-1, gid=-1))

    engine.store.write(forget)
    sc.capture_engine.forget_master_state()
    st = os.lstat(tmp_path / "master" / "d" / "a")
    assert sc.capture().metadata == 3  # d, d/a and d/l
    learned = [e for _, e in engine._iter_events((MetadataChanged,))]
    assert {observed_owner(e.observed)[0] for e in learned} == {st.st_uid}  # type: ignore[index]
    with engine.store.read() as txn:
        assert all(state.uid == st.st_uid for _, state in sc.manifest.items(txn))
    assert sc.capture().events == 0


def _as_nobody(body: str, base: Path) -> Any:
    """Run ``body`` as nobody in a Python child (``base``: its directory); the JSON it printed last.

    The body has ``json``, ``os``, ``sys``, ``Engine`` and ``base`` (a str) at hand.
    """
    script = (
        "import json, os, sys\n"
        "from xoengine.engine import Engine\n"
        "import xoengine.worker\n"
        "os.setgid(65534); os.setuid(65534)  # after the imports: root's Python may be 0700\n"
        "base = sys.argv[1]\n" + body
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(base)], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_a_replica_run_by_a_user_keeps_its_owner_and_settles(tmp_path: Path) -> None:
    # Run as nobody, the replica's files stay nobody's (no chown is possible): a
    # second synchronization must find nothing to do and the verify no difference,
    # not the owners (or the extended attributes only root may set) of root's files
    # again and again.
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    base = Path(tempfile.mkdtemp(prefix="xoengine-nobody-"))  # pytest's tmp is root's alone
    try:
        os.chown(base, 65534, 65534)
        TreeBuilder(base / "master").apply_all(
            [
                CreateFile("docs/a", b"a" * 5000),
                Symlink("docs/l", "a"),
                CreateFile("b", b"b"),
                # A user may give the replica user.* ones, not security.* or trusted.*.
                SetXattr("docs/a", "user.note", b"kept"),
                SetXattr("b", "security.capability", bytes.fromhex("01000002" + "00" * 16)),
                SetXattr("docs", "trusted.t", b"root's"),
                # user.* needs write access, even the owner's: given as rsync -X does.
                CreateFile("ro.txt", b"r"),
                SetXattr("ro.txt", "user.note", b"read-only"),
                Chmod("ro.txt", 0o444),
            ]
        )
        script = (
            "eng = Engine.open(base + '/state', durability='nosync')\n"
            "sc = eng.create_scenario('n', master=base + '/master', replicas={'r1': base + '/r1'})\n"
            "sc.start()\n"
            "sc.synchronize(level='block', replica='r1')\n"
            "run = sc.sync_report('r1')['runs'][-1]\n"
            "verify = sc.difference_report('r1', verify=True)['differences']\n"
            "print(json.dumps([run['files_changed'], verify]))\n"
            "eng.close()\n"
        )
        changed, differences = _as_nobody(script, base)
        assert (changed, differences) == (0, {})
        assert os.stat(base / "r1" / "docs" / "a").st_uid == 65534
        assert os.getxattr(base / "r1" / "docs" / "a", "user.note") == b"kept"
        assert os.listxattr(base / "r1" / "b") == []
        assert os.getxattr(base / "r1" / "ro.txt", "user.note") == b"read-only"
        assert os.stat(base / "r1" / "ro.txt").st_mode & 0o777 == 0o444
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_file_whose_map_is_underived_is_journaled_whole(engine: Engine, tmp_path: Path) -> None:
    # A map the master state could not derive (the rebuild did not get to it) is
    # never guessed at: the next change of that file journals its whole content.
    sc = _scenario(engine, tmp_path, block_size=512)
    master = TreeBuilder(tmp_path / "master")
    master.apply(CreateFile("big", _random(64 * 1024, 10)))
    sc.start()
    with engine.store.read() as txn:
        state = sc.manifest.get(txn, "big")
    assert state is not None
    engine.store.write(lambda txn: sc.manifest.mark_underived(txn, state.file_id, underived=True))
    master.apply(WriteAt("big", 100, b"one small change"))
    result = sc.capture()
    assert result.bytes_journaled == 64 * 1024
    with engine.store.read() as txn:
        assert not sc.manifest.is_underived(txn, state.file_id)
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)


# -- hostile paths ---------------------------------------------------------------------------


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[ReplicaTree, Path, Path]:
    """A replica root whose ``link`` is a symlink to a directory outside it."""
    root, outside = tmp_path / "replica", tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"keep me")
    root.mkdir()
    (root / "link").symlink_to(outside)
    (root / "file").write_bytes(b"f")
    return ReplicaTree(str(root), fsync=False), root, outside


@pytest.mark.parametrize(
    "operation",
    [
        "write_ranges",
        "truncate",
        "replace",
        "create file",
        "create dir",
        "create symlink",
        "rename into",
        "rename out of",
        "delete",
        "set_meta",
        "lstat",
        "read",
    ],
)
def test_replica_tree_refuses_symlinked_parent(
    hostile: tuple[ReplicaTree, Path, Path], operation: str
) -> None:
    tree, root, outside = hostile
    before = snapshot_tree(outside)
    actions = {
        "write_ranges": lambda: tree.write_ranges("link/victim", [(0, b"X")], 1),
        "truncate": lambda: tree.truncate("link/victim", 0),
        "replace": lambda: tree.replace("link/victim", [b"X"]),
        "create file": lambda: tree.create("link/new", "file", 0o644, None),
        "create dir": lambda: tree.create("link/new", "dir", 0o755, None),
        "create symlink": lambda: tree.create("link/new", "symlink", 0, "/etc"),
        "rename into": lambda: tree.rename("file", "link/file"),
        "rename out of": lambda: tree.rename("link/victim", "stolen"),
        "delete": lambda: tree.delete("link/victim"),
        "set_meta": lambda: tree.set_meta("link/victim", 0o777, 0),
        "lstat": lambda: tree.lstat("link/victim"),
        "read": lambda: tree.read("link/victim"),
    }
    with pytest.raises(SymlinkedParentError) as raised:
        actions[operation]()
    assert raised.value.code == "E2003"
    assert snapshot_tree(outside) == before  # nothing outside the root changed
    assert sorted(os.listdir(root)) == ["file", "link"]


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "link/../../x"])
def test_replica_tree_refuses_escaping_paths(
    hostile: tuple[ReplicaTree, Path, Path], path: str
) -> None:
    tree, root, _ = hostile
    before = snapshot_tree(root.parent)
    for action in (
        lambda: tree.write_ranges(path, [(0, b"X")], 1),
        lambda: tree.create(path, "file", 0o644, None),
        lambda: tree.rename("file", path),
        lambda: tree.delete(path),
    ):
        with pytest.raises(PathEscapesRootError):
            action()
    assert snapshot_tree(root.parent) == before


def test_replica_applier_refuses_an_event_that_escapes_its_root(
    engine: Engine, tmp_path: Path
) -> None:
    (tmp_path / "replica").mkdir()
    event = FileCreated(
        originator_id=uuid.uuid4(),
        originator_version=1,
        timestamp=FileCreated.create_timestamp(),
        scenario="s",
        path="../escaped",
        observed=[],
        kind="file",
        mode=0o644,
        mtime_ns=0,
        target=None,
    )
    applier = ReplicaApplier(
        engine.store,
        "replica.s.hostile",
        "s",
        ReplicaTree(str(tmp_path / "replica"), fsync=False),
        lambda after, _limit: [(1, event)] if after < 1 else [],
    )

    def files() -> dict[bytes, Any]:
        return {p: n for p, n in snapshot_tree(tmp_path).items() if not p.startswith(b"state")}

    before = files()
    with pytest.raises(PathEscapesRootError):
        applier.apply_available()
    assert applier.position() == 0  # not marked applied
    assert files() == before


def test_replica_applier_refuses_parent_swapped_for_symlink(engine: Engine, tmp_path: Path) -> None:
    sc = _scenario(engine, tmp_path)
    master = TreeBuilder(tmp_path / "master")
    master.apply(CreateFile("d/f", b"data"))
    sc.start()
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(tmp_path / "r1" / "d")
    (tmp_path / "r1" / "d").symlink_to(outside)  # someone tampers with the replica
    master.apply(WriteAt("d/f", 0, b"DATA"))
    master.apply(CreateFile("d/g", b"new"))
    sc.capture()
    with pytest.raises(SymlinkedParentError):
        sc.wait_replicated(timeout=30)
    sc.stop()  # the applier thread has ended: its alert is journaled
    assert os.listdir(outside) == []
    alerts = [e for _, e in engine._iter_events((AlertRaised,))]
    assert [a.code for a in alerts] == ["E2003"]
    assert sc.replication_report()["replicas"]["r1"]["errors"]


# -- the journaled file object (sc.open) -------------------------------------------------------


def test_journaled_file_new_empty_file_and_its_parents_reach_the_replica(
    engine: Engine, tmp_path: Path
) -> None:
    sc = _scenario(engine, tmp_path)
    sc.start()
    with sc.open("new/deep/empty", "wb"):
        pass  # created by the open alone
    with sc.open("appended", "ab") as f:  # a write-only mode: flush still reads back
        f.write(b"log line\n")
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)
    # The directories are in the master state, so renaming them later is a rename.
    os.rename(tmp_path / "master" / "new", tmp_path / "master" / "renamed")
    result = sc.capture()
    assert (result.renamed, result.created, result.deleted) == (1, 0, 0)
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)


def test_journaled_file_cut_then_written_past_the_cut_zeroes_the_replica(
    engine: Engine, tmp_path: Path
) -> None:
    sc = _scenario(engine, tmp_path, block_size=512)
    TreeBuilder(tmp_path / "master").apply(CreateFile("f", _random(4000)))
    sc.start()
    with sc.open("f") as f:
        f.truncate(300)  # the replica's bytes 300.. must not survive
        f.seek(2500)
        f.write(b"tail")
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)
    data = (tmp_path / "r1" / "f").read_bytes()
    assert data[300:2500] == bytes(2200)
    # The master state's block digests match the file, so a capture finds nothing.
    assert sc.capture().events == 0


def test_journaled_file_refreshes_the_digests_of_a_large_write_in_bounded_reads(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from xoengine import journaledfile  # noqa: PLC0415
    from xoengine.blocks import BlockMap  # noqa: PLC0415

    monkeypatch.setattr(journaledfile, "_DIGEST_READ", 2048)  # 4 blocks per read
    sc = _scenario(engine, tmp_path, block_size=512)
    TreeBuilder(tmp_path / "master").apply(CreateFile("f", _random(3000)))
    sc.start()
    with sc.open("f", "r+b") as f:  # 40 KiB from 1000 on: 80 blocks, read 4 at a time
        f.seek(1000)
        f.write(_random(40_000, 3))
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)
    state = sc.capture_engine.state
    with engine.store.read() as txn:
        kept = state.block_map(txn, state.manifest.get(txn, "f"))
    assert kept is not None
    fresh = BlockMap.compute((tmp_path / "master" / "f").read_bytes(), 512)
    assert (kept.size, kept.digests, kept.weak) == (fresh.size, fresh.digests, fresh.weak)


def test_journaled_file_journals_plain_changes_it_finds_at_open(
    engine: Engine, tmp_path: Path
) -> None:
    sc = _scenario(engine, tmp_path, block_size=512)
    master = TreeBuilder(tmp_path / "master")
    master.apply(CreateFile("f", _random(3000)))
    sc.start()
    master.apply_all([Append("f", b"appended without the journal"), WriteAt("f", 0, b"plain")])
    with sc.open("f") as f:
        f.seek(1000)
        f.write(b"journaled")
    sc.wait_replicated(timeout=30)
    assert_trees_equal(tmp_path / "master", tmp_path / "r1", mtimes=True)


def test_journaled_file_refuses_symlinked_parent(engine: Engine, tmp_path: Path) -> None:
    sc = _scenario(engine, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "master" / "link").symlink_to(outside)
    (tmp_path / "master" / "to-file").symlink_to(outside / "victim")
    with pytest.raises(SymlinkedParentError):
        sc.open("link/victim", "wb")
    with pytest.raises(PathError, match="a symbolic link"):  # coded since review 24 (G5)
        sc.open("to-file", "wb")
    assert os.listdir(outside) == []


def test_an_open_engine_is_the_journals_one_writer_from_the_start(tmp_path: Path) -> None:
    """A second process cannot open the state writable behind an engine that has not written.

    The engine holds the journal's projections in memory; before, the writer lock
    was taken at the first write, so another process could write first and leave
    this engine acting on a journal it had not read.
    """
    master = tmp_path / "master"
    master.mkdir()
    (master / "a.txt").write_bytes(b"a")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
    probe = (
        "import sys\n"
        "from xoengine.engine import Engine\n"
        "from xoengine.errors import JournalLockedError\n"
        "try:\n"
        "    Engine.open(sys.argv[1], durability='nosync').close()\n"
        "except JournalLockedError as e:\n"
        "    print(e.code)\n"
        "else:\n"
        "    print('opened')\n"
        "with Engine.open(sys.argv[1], readonly=True) as ro:\n"
        "    print(len(ro.scenario('s').rewind_points()))\n"
    )

    def other_process() -> list[str]:
        done = subprocess.run(
            [sys.executable, "-c", probe, str(tmp_path / "state")],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.split()

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "xoengine.cli", argv[0], str(tmp_path / "state"), "s"]
        return subprocess.run([*command, *argv[1:]], capture_output=True, text=True, check=False)

    with Engine.open(tmp_path / "state", durability="nosync"):  # opened, nothing written
        assert other_process() == ["E4002", "0"]  # refused; reading is fine
        # The verbs that only look open read-only, so they run beside a daemon.
        for verb in (["stats"], ["report", "sync"], ["rewind-points"], ["difference", "r1"]):
            done = cli(*verb, "--json")
            assert done.returncode == 0, (verb, done.stderr)
        refused = cli("rewind-points", "--set", "p")
        assert refused.returncode != 0 and "E4002" in refused.stderr
    assert other_process() == ["opened", "0"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_a_master_directory_a_user_cannot_list_loses_nothing_in_the_journal() -> None:
    """Review 19: run as a user, a master directory made unlistable (mode 0300) had
    its files journaled as deleted in the same pass that warned W2002 "its contents are
    unknown (not empty)"; listable again, they came back as new files, new identities.
    A file it cannot read was said to have changed while read (W2010)."""
    import tempfile  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    base = Path(tempfile.mkdtemp(prefix="xoengine-nobody-"))  # pytest's tmp is root's alone
    try:
        os.chown(base, 65534, 65534)
        script = (
            "os.makedirs(base + '/master/a')\n"
            "open(base + '/master/a/x', 'wb').write(b'x' * 100)\n"
            "eng = Engine.open(base + '/state', durability='nosync')\n"
            "sc = eng.create_scenario('n', master=base + '/master', replicas={'r1': base + '/r1'})\n"
            "sc.start()\n"
            "sc.wait_replicated()\n"
            "os.chmod(base + '/master/a', 0o300)\n"
            "open(base + '/master/secret', 'wb').write(b's')\n"
            "os.chmod(base + '/master/secret', 0o200)\n"
            "hidden = sc.capture()\n"
            "sc.wait_replicated()\n"
            "os.chmod(base + '/master/a', 0o755)\n"
            "back = sc.capture()\n"
            "sc.wait_replicated()\n"
            "ops = [c.operation for c in eng.history(sc, 'a/x')]\n"
            "codes = [(w.code, w.fields.get('path')) for w in hidden.warnings]\n"
            "print(json.dumps([hidden.deleted, codes, back.created, ops]))\n"
            "eng.close()\n"
        )
        deleted, codes, created, ops = _as_nobody(script, base)
        assert (deleted, created) == (0, 0)
        # A file that cannot be read is unreadable (W2002), not "changed while read" (W2010).
        assert sorted(map(tuple, codes)) == [("W2002", "a"), ("W2002", "secret")], codes
        assert "deleted" not in ops, ops
        assert (base / "r1" / "a" / "x").read_bytes() == b"x" * 100
    finally:
        shutil.rmtree(base, ignore_errors=True)
