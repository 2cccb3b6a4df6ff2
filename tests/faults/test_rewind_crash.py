"""kill -9 of a rewind at random moments: reopening the engine finishes it, exactly.

One state directory, several trials. Each trial sets a rewind point, records
the master tree, then changes the master over many captures (writes in place,
inserts, truncations, renames, deletions, creations, chmod), so that replica
r1 holds hundreds of before-images after the point. A child
(``rewind_worker.py``, ``durability="sync"``) rewinds r1 to the point (or, in
some trials, to an earlier trial's point, inside the gap an earlier rewind and
resume left) and reports every undone before-image; the parent kills it with SIGKILL after a
random number of them (no sleeping: the delay is the reading). Some trials
kill a second child too, one that only opens the engine (the open resumes the
interrupted rewind) -- so the resumption itself is interrupted. Then the
parent reopens the engine and checks:

- the rewind is complete: r1 equals the recorded tree of the point (names,
  kinds, content, modes, link targets), its applied position is the point's,
  and the journal has its ReplicaRewound;
- no temporary file (``.xoengine-tmp-*``) is left in r1;
- ``resume`` brings r1 back to the master by a block-level resynchronization
  (a new run in the sync report) and r1 equals the master again.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
from typing import TYPE_CHECKING, Any

import pytest
from journal_probe import HERE, PYTHON, run_killed

import xoengine.rewind as rewind_module
from xoengine.engine import Engine, Scenario
from xoengine.errors import ReplicaDivergedError, ReplicaVolumeChangedError
from xoengine.events import FileRenamed, ReplicaRewound, RewindStarted
from xoengine.rewind import RetentionPolicy
from xoengine.sync import Synchronizer
from xoengine.testing import snapshot_contents
from xoengine.tree import TMP_PREFIX, ReplicaTree, UndoLog

if TYPE_CHECKING:
    from pathlib import Path

    from xoengine.datastore import WriteTxn

TRIALS = 8
CAPTURES_PER_TRIAL = 30
WORKER = os.path.join(HERE, "rewind_worker.py")

Node = tuple[Any, ...]


snapshot = snapshot_contents


def temp_files(root: Path) -> list[str]:
    return [
        os.path.join(d, n)
        for d, dirs, files in os.walk(root)
        for n in files + dirs
        if n.startswith(TMP_PREFIX)
    ]


def journal_events(eng: Engine, *classes: type) -> list[Any]:
    topics = [f"xoengine.events:{c.__name__}" for c in classes]
    return [
        eng.app.mapper.to_domain_event(n)
        for n in eng.recorder.select_notifications(1, 10**6, topics=topics)
    ]


def change_master(master: Path, rng: random.Random, sc: Scenario) -> None:
    """Many small captures, each changing a few files in every way a rewind must undo."""
    for _ in range(CAPTURES_PER_TRIAL):
        files = sorted(p for p in master.rglob("*") if p.is_file() and not p.is_symlink())
        for _ in range(rng.randint(1, 4)):
            path = rng.choice(files)
            if not path.exists():
                continue
            data = path.read_bytes()
            what = rng.choice(
                ["write", "write", "insert", "truncate", "append", "rename", "replace", "chmod"]
            )
            if what == "write":
                at = rng.randrange(len(data) + 1)
                with path.open("r+b") as f:
                    f.seek(at)
                    f.write(rng.randbytes(rng.randint(1, 3000)))
            elif what == "insert":
                at = rng.randrange(len(data) + 1)
                path.write_bytes(data[:at] + rng.randbytes(rng.randint(1, 700)) + data[at:])
            elif what == "truncate":
                os.truncate(path, rng.randrange(len(data) + 1))
            elif what == "append":
                with path.open("ab") as f:
                    f.write(rng.randbytes(rng.randint(1, 5000)))
            elif what == "rename":
                target = master / rng.choice(["", "d1", "d2"]) / f"r{rng.randrange(10**6)}"
                path.rename(target)
            elif what == "replace":  # delete and create another
                path.unlink()
                (master / rng.choice(["", "d1", "d2"]) / f"n{rng.randrange(10**6)}").write_bytes(
                    rng.randbytes(rng.randint(0, 9000))
                )
            else:
                path.chmod(rng.choice([0o600, 0o640, 0o644, 0o755]))
        sc.capture()


def run_worker(
    state: Path, point: str, target: int | None, extra: list[str] | None = None
) -> tuple[int, str]:
    """Run the worker; SIGKILL it once it has reported ``target`` undone before-images
    (``target`` None: let it run until it ends or kills itself).

    Returns (before-images reported, how it ended: "killed", "died" or "done").
    """
    ready = [False]
    undone = [0]

    def reached(line: str) -> bool:
        ready[0] = ready[0] or line == "READY"
        undone[0] += line == "U"
        return target is not None and ready[0] and undone[0] >= target

    lines, errors = run_killed(
        [PYTHON, WORKER, str(state), "cx", "r1", point, *(extra or [])],
        None if target is None else reached,
    )
    assert "Traceback" not in errors, errors
    how = "done" if "DONE" in lines else "died" if "DYING" in lines else "killed"
    return sum(line == "U" for line in lines), how


def prepare(tmp_path: Path, rng: random.Random) -> tuple[Path, Path, Path]:
    master, state, r1 = tmp_path / "master", tmp_path / "state", tmp_path / "r1"
    for sub in ("d1", "d2"):
        (master / sub).mkdir(parents=True)
    for i in range(24):
        (master / ["", "d1", "d2"][i % 3] / f"f{i}").write_bytes(
            rng.randbytes(rng.randint(0, 12000))
        )
    os.symlink("d1/f1", master / "link")
    with Engine.open(state, durability="nosync") as eng:
        sc = eng.create_scenario(
            "cx",
            master=str(master),
            replicas={"r1": str(r1), "r2": str(tmp_path / "r2")},
            block_size=512,
        )
        sc.start()
    return master, state, r1


def trial(
    tmp_path: Path,
    rng: random.Random,
    name: str,
    crash: Any,
    totals: dict[str, int],
    earlier: dict[str, dict[bytes, Node]],
) -> None:
    """One point, many captures after it, a rewind crashed by ``crash``, then the checks.

    The rewind goes to the new point or, sometimes, to an ``earlier`` trial's point:
    that one lies in the gap the earlier rewind left (its before-images were consumed
    and a resynchronization followed), reached by undoing to the gap, then applying
    the journal forward -- both interrupted by the kill too.
    """
    master, state, r1 = tmp_path / "master", tmp_path / "state", tmp_path / "r1"
    # 1. A point, its tree, then many captures after it (the parent's writes need no fsync).
    with Engine.open(state, durability="nosync") as eng:
        sc = eng.scenario("cx")
        sc.set_rewind_point(name)
        earlier[name] = snapshot(master)
        change_master(master, rng, sc)
        sc.wait_replicated()
        target = name if rng.random() < 0.6 else rng.choice(sorted(earlier))
        if target != name:
            totals["to_an_earlier_point"] += 1
        position = next(p.position for p in sc.rewind_points() if p.name == target)
        want = earlier[target]
        applier = sc._appliers["r1"]
        expected = len(applier.undo.records(after=position))
        started_before = len(journal_events(eng, RewindStarted))
    totals["before_images"] += expected
    assert expected > 50, "the trial must span many before-images"

    # 2. The rewind, in children that die.
    crash(state, target, expected)
    pending_is_said(state, master, r1, position)

    # 3. Reopen: the open completes the rewind; r1 is exactly the point's tree.
    with Engine.open(state, durability="sync") as eng:
        sc = eng.scenario("cx")
        if len(journal_events(eng, RewindStarted)) == started_before:
            # Killed before the rewind was journaled: nothing happened to r1's files.
            totals["killed_before_start"] += 1
            sc.rewind("r1", target)
        assert temp_files(r1) == [], f"{name}: temporary files left"
        got = snapshot(r1)
        assert got == want, f"{name}: r1 is not the tree of {target}: " + ", ".join(
            repr(p) for p in sorted(set(got) | set(want)) if got.get(p) != want.get(p)
        )
        rewound = [e for e in journal_events(eng, ReplicaRewound) if e.to_position == position]
        assert rewound, "no ReplicaRewound journaled"
        assert sc.statistics().replicas["r1"].applied_position == position
        assert "r1" in sc.suspended
        # The records undone went with their blobs, in the commits the kills cut short too.
        assert sc._appliers["r1"].undo.check() == []

        # 4. Resume: block-level resync back to the master.
        runs = len(sc.sync_report("r1", last_only=False)["runs"])
        sc.resume("r1")
        sc.wait_replicated()
        report = sc.sync_report("r1", last_only=False)["runs"]
        assert len(report) == runs + 1
        assert report[-1]["level"] == "block"
        assert report[-1]["files_changed"] + report[-1]["files_deleted"] > 0
        assert snapshot(r1) == snapshot(master)
        assert snapshot(tmp_path / "r2") == snapshot(master)
        assert temp_files(r1) == []
        for replica in ("r1", "r2"):
            assert sc._appliers[replica].undo.check() == []
    totals["trials"] += 1


def pending_is_said(state: Path, master: Path, r1: Path, target: int) -> None:
    """Before anything completes it, a rewind killed midway is reported, by read-only readers.

    The replica holds neither where the rewind started nor its target: the difference
    report and the statistics name the unfinished rewind, and every path where r1
    differs from the master is among the pending ones (none is reported in sync).
    """
    with Engine.open(state, readonly=True) as eng:
        sc = eng.scenario("cx")
        report = sc.difference_report("r1")
        stats = sc.statistics().replicas["r1"]
        started = {e.to_position for e in journal_events(eng, RewindStarted)}
    if report["rewind_pending"] is None:  # killed before it began, or after it ended
        assert stats.rewind_pending is None
        return
    assert target in started
    assert report["rewind_pending"][1] == target == stats.rewind_pending[1], report
    assert stats.backlog_events > 0
    got, want = snapshot(r1), snapshot(master)
    differ = {
        os.fsdecode(p)
        for p in set(got) | set(want)
        if got.get(p) != want.get(p) and TMP_PREFIX.encode() not in p  # swept at the next open
    }
    assert differ <= set(report["pending"]), sorted(differ - set(report["pending"]))


def _totals() -> dict[str, int]:
    return dict.fromkeys(
        ["trials", "killed", "died", "finished_before_kill", "killed_twice", "killed_before_start",
         "undone_before_kill", "before_images", "to_an_earlier_point"], 0,
    )  # fmt: skip


def test_rewind_killed_midway_is_completed_at_open(tmp_path: Path) -> None:
    seed = int(os.environ.get("REWIND_CRASH_SEED") or int.from_bytes(os.urandom(4), "big"))
    rng = random.Random(seed)
    print(f"\nrewind crash: seed {seed}")
    totals = _totals()

    def crash(state: Path, point: str, expected: int) -> None:
        target = rng.choice([0, 1, rng.randint(1, max(1, expected // 4)), rng.randint(1, expected),
                             rng.randint(expected // 2, expected)])  # fmt: skip
        undone, how = run_worker(state, point, target)
        totals["undone_before_kill"] += undone
        totals["killed" if how == "killed" else "finished_before_kill"] += 1
        if how == "killed" and rng.random() < 0.4:
            # Kill the completion too: a child that only opens the engine.
            run_worker(state, "--open-only", rng.randint(0, max(0, expected - undone)))
            totals["killed_twice"] += 1

    prepare(tmp_path, rng)
    earlier: dict[str, dict[bytes, Node]] = {}
    for index in range(TRIALS):
        trial(tmp_path, rng, f"t{index}", crash, totals, earlier)
    print(f"rewind crash: {totals}")


def test_rewind_killed_inside_a_whole_file_write_is_completed_at_open(tmp_path: Path) -> None:
    """The worker kills itself with a temporary file written and fsynced but not renamed."""
    seed = int(os.environ.get("REWIND_CRASH_SEED") or int.from_bytes(os.urandom(4), "big"))
    rng = random.Random(seed)
    print(f"\nrewind crash at a temp rename: seed {seed}")
    totals = _totals()

    def crash(state: Path, point: str, _expected: int) -> None:
        undone, how = run_worker(state, point, None, [str(rng.randint(1, 6))])
        totals["undone_before_kill"] += undone
        totals["died" if how == "died" else "finished_before_kill"] += 1
        if how == "died":
            assert temp_files(state.parent / "r1"), (
                "died before a rename: a temporary file is there"
            )

    prepare(tmp_path, rng)
    earlier: dict[str, dict[bytes, Node]] = {}
    for index in range(3):
        trial(tmp_path, rng, f"w{index}", crash, totals, earlier)
    print(f"rewind crash at a temp rename: {totals}")
    assert totals["died"] >= 1


class _Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs, nothing catches it."""


def _dead(eng: Engine) -> None:
    """Leave ``eng`` as a killed process leaves it: no clean close (its locks go,
    the replica roots' among them)."""
    eng._closed = True
    for scenario in eng._scenarios.values():
        scenario._release_replicas()
    eng.app.close()


def test_rewind_resumed_between_undo_and_commit_is_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A position whose before-images are undone but not yet committed is undone again.

    The position is a rename onto a path the replica holds (a stray file on the
    replica: before-images "deleted Y" and "renamed X -> Y"). Undoing it twice
    must not move the restored Y over X.
    """
    master, r1 = tmp_path / "master", tmp_path / "r1"
    master.mkdir()
    (master / "X").write_bytes(b"A" * 3000)
    eng = Engine.open(tmp_path / "state", durability="nosync")
    sc = eng.create_scenario("cx", master=str(master), replicas={"r1": str(r1)})
    sc.start()
    point = sc.set_rewind_point("before")
    (r1 / "Y").write_bytes(b"stray")  # the replica holds a Y the master never had
    want = snapshot(r1)
    (master / "X").rename(master / "Y")
    sc.capture()
    sc.wait_replicated()
    assert snapshot(r1) == snapshot(master)

    renamed = [p for p, _, e in eng.file_events("cx", None) if isinstance(e, FileRenamed)]
    assert len(renamed) == 1

    # Die in the commit that follows the undo of the rename's position.
    real = UndoLog.drop

    def dying(self: UndoLog, txn: WriteTxn, position: int) -> None:
        if position == renamed[0]:
            raise _Killed
        real(self, txn, position)

    monkeypatch.setattr(UndoLog, "drop", dying)
    with pytest.raises(_Killed):
        sc.rewind("r1", point)
    _dead(eng)
    monkeypatch.setattr(UndoLog, "drop", real)
    with Engine.open(tmp_path / "state", durability="nosync") as eng:  # completes the rewind
        assert snapshot(r1) == want


@pytest.mark.parametrize(
    ("die_after", "durability"),
    [(0, "nosync"), (1, "nosync"), (3, "nosync"), (5, "nosync"), ("commit", "nosync"), (3, "sync")],
)
def test_rewind_killed_inside_a_coalesced_run_is_completed_at_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, die_after: int | str, durability: str
) -> None:
    """A run of in-place undos killed after some of its paths (or before its commit) is redone.

    The files written before the kill hold their oldest before-images already; the
    redo plans the run again from its records (never from the files) and ends
    with every file exact. The kill comes after ``die_after`` paths, or in the
    commit that would drop the run's records. At ``sync`` the paths are undone
    from several threads, and the kill comes from one of them.
    """
    rng = random.Random(7)
    master, r1 = tmp_path / "master", tmp_path / "r1"
    master.mkdir()
    for i in range(6):
        (master / f"f{i}").write_bytes(rng.randbytes(rng.randint(0, 20000)))
    eng = Engine.open(tmp_path / "state", durability=durability)
    sc = eng.create_scenario("cx", master=str(master), replicas={"r1": str(r1)}, block_size=512)
    sc.start()
    point = sc.set_rewind_point("before")
    want = snapshot(master)
    for _ in range(40):  # overlapping writes, truncations, extensions, appends, chmods
        path = master / f"f{rng.randrange(6)}"
        size = path.stat().st_size
        what = rng.choice(["write", "write", "truncate", "extend", "append", "chmod"])
        if what == "write":
            with path.open("r+b") as f:
                f.seek(rng.randrange(size + 1))
                f.write(rng.randbytes(rng.randint(1, 5000)))
        elif what == "truncate":
            os.truncate(path, rng.randrange(size + 1))
        elif what == "extend":
            os.truncate(path, size + rng.randint(1, 5000))
        elif what == "append":
            with path.open("ab") as f:
                f.write(rng.randbytes(rng.randint(1, 5000)))
        else:
            path.chmod(rng.choice([0o600, 0o640, 0o755]))
        sc.capture()
    sc.wait_replicated()
    records = sc._appliers["r1"].undo.records(after=point.position)
    assert {r.op for r in records} <= {"bytes", "meta", "content"}, "one run only"
    assert len({r.path for r in records}) == 6

    real_undo_path, real_drop = rewind_module.undo_path, UndoLog.drop
    done = [0]
    counting = threading.Lock()  # paths are undone from several threads

    def dying_undo_path(*args: Any) -> None:
        with counting:
            if done[0] >= die_after:
                raise _Killed
            done[0] += 1
        real_undo_path(*args)

    def dying_drop(self: UndoLog, txn: WriteTxn, position: int) -> None:
        raise _Killed

    if die_after == "commit":
        monkeypatch.setattr(UndoLog, "drop", dying_drop)
    else:
        monkeypatch.setattr(rewind_module, "undo_path", dying_undo_path)
    with pytest.raises(_Killed):
        sc.rewind("r1", point)
    _dead(eng)
    monkeypatch.setattr(rewind_module, "undo_path", real_undo_path)
    monkeypatch.setattr(UndoLog, "drop", real_drop)
    if die_after == "commit":
        assert snapshot(r1) == want  # written, not committed
    with Engine.open(tmp_path / "state", durability=durability) as eng:  # completes the rewind
        assert snapshot(r1) == want
        sc = eng.scenario("cx")
        assert sc.statistics().replicas["r1"].applied_position == point.position
        assert sc._appliers["r1"].undo.records(after=point.position) == []
        assert sc._appliers["r1"].undo.check() == []


class _Points:
    """A master of a few files changed in place, and rewind points with their trees."""

    def __init__(self, tmp_path: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        self.master = tmp_path / "master"
        self.master.mkdir()
        for i in range(8):
            (self.master / f"f{i}").write_bytes(self.rng.randbytes(self.rng.randint(600, 9000)))
        self.trees: dict[str, dict[bytes, Node]] = {}

    def change(self, sc: Scenario) -> None:
        """Writes in place into five of the files, each captured on its own."""
        for i in self.rng.sample(range(8), 5):
            path = self.master / f"f{i}"
            with path.open("r+b") as f:
                f.seek(self.rng.randrange(path.stat().st_size))
                f.write(self.rng.randbytes(700))
            sc.capture()

    def mark(self, sc: Scenario, name: str) -> None:
        sc.set_rewind_point(name)
        self.trees[name] = snapshot(self.master)

    def check(self, sc: Scenario, r1: Path, names: list[str]) -> None:
        for name in names:
            sc.rewind("r1", name)
            got = snapshot(r1)
            assert got == self.trees[name], f"r1 rewound to {name}: " + ", ".join(
                repr(p)
                for p in sorted(set(got) | set(self.trees[name]))
                if got.get(p) != self.trees[name].get(p)
            )


@pytest.mark.parametrize("trim_first", [False, True])
def test_a_rewound_replica_whose_resync_was_killed_midway_rewinds_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trim_first: bool
) -> None:
    """Was a bug: a resume killed inside its block-level resynchronization.

    The resync had written some files (their before-images recorded) while the
    replica's applied position stayed at the rewound one. A rewind then started
    from those files: to the position held it changed nothing, forward it
    applied events over newer bytes, back it left them as they were. What an
    apply or a synchronization that did not finish left is undone first now.
    With ``trim_first`` a retention trim comes before: it used to drop those
    before-images (they lie above the position held), and nothing could undo
    the resync's writes any more.
    """
    points = _Points(tmp_path, 11)
    r1 = tmp_path / "r1"
    eng = Engine.open(tmp_path / "state", durability="nosync")
    sc = eng.create_scenario(
        "cx",
        master=str(points.master),
        replicas={"r1": str(r1), "r2": str(tmp_path / "r2")},
        block_size=512,
    )
    sc.start()
    for name in ("p0", "p1", "p2"):
        points.mark(sc, name)
        points.change(sc)
    sc.wait_replicated()
    sc.rewind("r1", "p0")
    points.change(sc)  # while r1 is out of replication
    points.mark(sc, "p3")

    real = Synchronizer._record
    recorded = [0]

    def dying(self: Synchronizer, images: Any) -> None:
        real(self, images)  # the before-image is durable; the change is not made
        recorded[0] += 1
        if recorded[0] == 3:
            raise _Killed

    monkeypatch.setattr(Synchronizer, "_record", dying)
    with pytest.raises(_Killed):
        sc.resume("r1")
    _dead(eng)
    monkeypatch.setattr(Synchronizer, "_record", real)
    assert snapshot(r1) != points.trees["p0"]  # two files hold the master's newer bytes

    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.scenario("cx")
        assert "r1" in sc.suspended  # the resume did not happen
        if trim_first:  # every record up to the position held goes, no more
            sc.trim_undo(RetentionPolicy(max_bytes=1, min_points=1))
            points.check(sc, r1, ["p0", "p3", "p0"])
        else:
            points.check(sc, r1, ["p0", "p2", "p1", "p3", "p0"])
        assert sc._appliers["r1"].undo.check() == []
        sc.resume("r1")
        sc.wait_replicated()
        assert snapshot(r1) == snapshot(points.master)
        points.check(sc, r1, ["p3", "p0"] if trim_first else ["p3", "p1", "p2", "p0"])
        assert sc._appliers["r1"].undo.check() == []


def _kill_an_apply_midway(
    tmp_path: Path, points: _Points, r1: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Points p0, p1 (applied), p2 (journaled); the apply of p2's group dies after two writes."""
    eng = Engine.open(tmp_path / "state", durability="nosync")
    sc = eng.create_scenario("cx", master=str(points.master), replicas={"r1": str(r1)})
    sc.start()
    points.mark(sc, "p0")
    points.change(sc)
    points.mark(sc, "p1")
    sc.wait_replicated()
    sc.stop()  # the next changes are applied by wait_replicated, in this thread
    points.change(sc)
    points.mark(sc, "p2")
    real = ReplicaTree.write_ranges
    written = [0]

    def dying(self: ReplicaTree, *args: Any) -> None:
        if written[0] == 2:
            raise _Killed
        written[0] += 1
        real(self, *args)

    monkeypatch.setattr(ReplicaTree, "write_ranges", dying)
    with pytest.raises(_Killed):
        sc.wait_replicated()
    _dead(eng)
    monkeypatch.setattr(ReplicaTree, "write_ranges", real)


def test_a_rewind_after_an_apply_killed_midway_starts_from_the_position_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An apply killed inside a group of events leaves some of their changes made.

    Their before-images are recorded above the applied position. A rewind back
    undid only what lies below it, and the changes made stayed; they are
    undone first now. Applying again (no rewind) ends right either way.
    """
    points = _Points(tmp_path, 12)
    r1 = tmp_path / "r1"
    _kill_an_apply_midway(tmp_path, points, r1, monkeypatch)
    assert snapshot(r1) not in (points.trees["p1"], points.trees["p2"])  # half the group

    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.scenario("cx")
        applied = sc.statistics().replicas["r1"].applied_position
        assert applied < sc._appliers["r1"].undo.records()[-1].position  # records above it
        points.check(sc, r1, ["p1", "p0", "p2", "p1"])
        assert sc._appliers["r1"].undo.check() == []


def test_what_a_killed_apply_left_is_not_undone_into_an_unmounted_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coarse_fs: Path
) -> None:
    """A review finding: recovery ran before the volume check.

    With the replica's volume unmounted, it undid the leftover changes into
    the mount point (another file system's directory) and dropped their
    records; with the volume back, the half-applied files stayed, and a rewind
    across them was silently wrong. Now nothing is written or dropped until
    the replica's own volume is there again.
    """
    points = _Points(tmp_path, 13)
    _kill_an_apply_midway(tmp_path, points, coarse_fs, monkeypatch)
    assert subprocess.run(["umount", str(coarse_fs)], check=False).returncode == 0

    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.scenario("cx")
        held = sc._appliers["r1"].undo.records()
        with pytest.raises(ReplicaVolumeChangedError):
            sc.wait_replicated()
        with pytest.raises(ReplicaVolumeChangedError):
            sc.rewind("r1", "p0")
        assert os.listdir(coarse_fs) == []  # nothing written into the mount point
        assert sc._appliers["r1"].undo.records() == held  # nor a record dropped
        mounted = subprocess.run(
            ["mount", "-o", "loop", str(tmp_path / "coarse.img"), str(coarse_fs)], check=False
        )
        assert mounted.returncode == 0
        points.check(sc, coarse_fs, ["p1", "p0", "p2", "p1"])


def test_a_rewind_killed_after_any_record_of_kind_swaps_completes_at_open(
    tmp_path: Path,
) -> None:
    """Review 19: killed after it put back a link (or a file) where a directory had
    been, before the commit, the rewind's redo found the directory's child under a
    link and refused it (E2003, E2004) at every open: 7 of 31 kill points stuck.

    The worker kills itself after each record in turn, on a history of kind swaps
    (link, directory and file each becoming another), renames and a swap of names.
    """
    master, state, r1 = tmp_path / "master", tmp_path / "state", tmp_path / "r1"
    master.mkdir()
    (master / "f").write_bytes(b"f" * 100)
    os.symlink("f", master / "ln2dir")
    (master / "dir2ln").mkdir()
    (master / "dir2ln" / "a").write_bytes(b"a" * 3000)
    (master / "file2dir").write_bytes(b"F" * 5000)
    (master / "dir2file" / "z").mkdir(parents=True)
    (master / "dir2file" / "z" / "q").write_bytes(b"q" * 50)
    (master / "A" / "B").mkdir(parents=True)
    (master / "A" / "B" / "c").write_bytes(b"c" * 7000)
    (master / "swap1").write_bytes(b"1" * 10)
    (master / "swap2").write_bytes(b"2" * 20)
    with Engine.open(state, durability="sync") as eng:
        sc = eng.create_scenario("cx", master=str(master), replicas={"r1": str(r1)})
        sc.start()
        sc.set_rewind_point("P")
        expected = snapshot(master)
        os.unlink(master / "ln2dir")
        (master / "ln2dir").mkdir()
        (master / "ln2dir" / "x").write_bytes(b"x" * 10)
        shutil.rmtree(master / "dir2ln")
        os.symlink("A", master / "dir2ln")
        os.unlink(master / "file2dir")
        (master / "file2dir").mkdir()
        (master / "file2dir" / "in").write_bytes(b"in")
        shutil.rmtree(master / "dir2file")
        (master / "dir2file").write_bytes(b"now a file")
        sc.capture()
        (master / "A" / "B").rename(master / "B2")
        (master / "A").rename(master / "A2")
        os.symlink("A2", master / "A")
        (master / "swap1").rename(master / "tmp")
        (master / "swap2").rename(master / "swap1")
        (master / "tmp").rename(master / "swap2")
        sc.capture()
        shutil.rmtree(master / "ln2dir")
        os.symlink("B2", master / "ln2dir")
        (master / "B2" / "c").write_bytes(b"C" * 9000)
        (master / "file2dir" / "in").rename(master / "in")
        os.rmdir(master / "file2dir")
        (master / "in").rename(master / "file2dir")
        sc.capture()
        sc.wait_replicated()
        sc.stop()
    pristine = tmp_path / "pristine"
    shutil.copytree(state, pristine / "state", symlinks=True)
    shutil.copytree(r1, pristine / "r1", symlinks=True)
    k = 0
    while True:
        k += 1
        proc = _rewind_dying_after(tmp_path, pristine, "P", k)
        if "DYING" not in proc.stdout:
            assert "DONE" in proc.stdout, proc.stdout
            break  # every record had its kill
        with Engine.open(state, durability="sync") as eng:  # completes the rewind
            sc = eng.scenario("cx")
            assert sc.applied_position("r1") == sc.resolve("P"), k
            assert not sc.statistics().replicas["r1"].standing_alerts, k
        assert snapshot(r1) == expected, k
    assert k > 20  # the history has that many records to kill after


def _rewind_dying_after(
    tmp_path: Path, pristine: Path, point: str, k: int
) -> subprocess.CompletedProcess[str]:
    """Restore ``state`` and ``r1`` from ``pristine``; rewind r1 to ``point`` in a worker
    that kills itself after its ``k``-th undone before-image (DYING), or ends (DONE)."""
    for name in ("state", "r1"):
        shutil.rmtree(tmp_path / name)
        shutil.copytree(pristine / name, tmp_path / name, symlinks=True)
    state = tmp_path / "state"
    Engine.open(state, durability="nosync", adopt=True).close()  # restored with its replica
    proc = subprocess.run(
        [PYTHON, WORKER, str(state), "cx", "r1", point],
        env={**os.environ, "DIE_AFTER_UNDO": str(k)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


_RESUME_KILLED = """
import os, sys
import xoengine.tree as tree
from xoengine.engine import Engine
def killed(*_args, **_kwargs):
    os.kill(os.getpid(), 9)  # inside the resync, before its first new file is made
tree.ReplicaTree.copy_new = killed
with Engine.open(sys.argv[1], durability="nosync") as eng:
    eng.scenario("cx").resume("r1")
"""


@pytest.mark.parametrize("absent", [False, True])
@pytest.mark.parametrize("edit", ["none", "add", "modify", "delete"])
def test_a_replica_changed_by_hand_after_its_resync_was_killed_is_not_rewound(
    tmp_path: Path, edit: str, absent: bool
) -> None:
    """Review 25 (L1): a resume killed in its resynchronization left no print of the rewound
    replica: a file then added, changed or deleted by hand stayed through the next rewind,
    which said it held the point's tree. The next open undoes what the resync did and
    compares the tree with the one the resync started from: changed, the replica is taken
    as used (E3011); as it was, it is rewound exactly. ``absent``: review 26 (N B4), the
    replica's volume was not there at that open and came back (edited) after it: the
    first question asked of the replica does what the open could not."""
    master, r1, state = tmp_path / "master", tmp_path / "r1", tmp_path / "state"
    master.mkdir()
    (master / "a.txt").write_bytes(b"a0")
    (master / "b.txt").write_bytes(b"b0")
    with Engine.open(state, durability="nosync") as eng:
        sc = eng.create_scenario("cx", master=str(master), replicas={"r1": str(r1)})
        sc.start()
        p1 = sc.set_rewind_point("p1")
        want = snapshot(r1)
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
        [PYTHON, "-c", _RESUME_KILLED, str(state)], capture_output=True, text=True, check=False
    )
    assert done.returncode == -9, done.stderr

    def hand_edit() -> None:
        if edit == "add":
            (r1 / "notes.txt").write_bytes(b"made by hand")
        elif edit == "modify":
            (r1 / "b.txt").write_bytes(b"HAND")
        elif edit == "delete":
            (r1 / "b.txt").unlink()

    if absent:
        r1.rename(tmp_path / "r1-unmounted")
    else:
        hand_edit()
    with Engine.open(state, durability="nosync") as eng:
        sc = eng.scenario("cx")
        if absent:
            (tmp_path / "r1-unmounted").rename(r1)
            hand_edit()
        if edit == "none":
            assert sc.rewindable("r1")
            assert sc.rewind("r1", p1) == p1.position
            assert snapshot(r1) == want
        else:
            assert not sc.rewindable("r1")
            with pytest.raises(ReplicaDivergedError):
                sc.rewind("r1", p1)
        sc.resume("r1")
        sc.wait_replicated()
        assert snapshot(r1) == snapshot(master)


def test_a_rewind_into_an_earlier_rewinds_gap_killed_midway_reports_what_it_passed_through(
    tmp_path: Path,
) -> None:
    """Found by the randomized kill test (seed 1017031482): a target inside the gap an
    earlier rewind and its resync left is reached by undoing down to the gap's start,
    then applying forward. Killed in between, the replica held a file deleted before
    the target (y.txt), and the difference report, counting pending paths from the
    target only, did not list it."""
    master, state, r1 = tmp_path / "master", tmp_path / "state", tmp_path / "r1"
    master.mkdir()
    (master / "a.txt").write_bytes(b"a0")
    (master / "y.txt").write_bytes(b"y0")
    with Engine.open(state, durability="nosync") as eng:
        sc = eng.create_scenario("cx", master=str(master), replicas={"r1": str(r1)})
        sc.start()
        p1 = sc.set_rewind_point("p1")
        (master / "y.txt").unlink()
        (master / "x.txt").write_bytes(b"x0")
        sc.capture()
        sc.set_rewind_point("p2")
        (master / "a.txt").write_bytes(b"a1")
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", p1)
        sc.resume("r1")  # the gap: (p1, the resync)
        (master / "a.txt").write_bytes(b"a2")
        sc.capture()
        sc.wait_replicated()
        sc.stop()
    pristine = tmp_path / "pristine"
    shutil.copytree(state, pristine / "state", symlinks=True)
    shutil.copytree(r1, pristine / "r1", symlinks=True)
    seen = []
    for k in range(1, 12):
        proc = _rewind_dying_after(tmp_path, pristine, "p2", k)
        if "DYING" not in proc.stdout:
            break
        if (r1 / "y.txt").exists():  # past the resync's undo, before the apply forward
            with Engine.open(state, readonly=True) as eng:
                report = eng.scenario("cx").difference_report("r1")
            assert "y.txt" in report["pending"], (k, report)
            seen.append(k)
    assert seen, "no kill left the replica holding y.txt"
