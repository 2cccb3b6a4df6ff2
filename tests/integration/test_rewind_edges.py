"""Rewinds at their edges: targets given every way, rewinds that could not finish, resumes.

Each test here is a regression for a bug a review found (session 14): the
replica was left silently wrong, or the engine could not open again.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import shutil
import subprocess
import threading
import unicodedata
from pathlib import Path
from typing import Any

import pytest
import scenario_kit as kit
from scenario_kit import write

from xoengine import tree as tree_module
from xoengine.cli import main
from xoengine.engine import Engine, Scenario
from xoengine.errors import (
    ConfigurationError,
    ReplicaDivergedError,
    RewindUnreachableError,
    RewindWriteError,
    ScenarioError,
    XoError,
)
from xoengine.events import (
    AlertRaised,
    ReplicaRewound,
    ReplicaSuspended,
    RewindStarted,
    UndoTrimmed,
)
from xoengine.rewind import RetentionPolicy, RewindPoint
from xoengine.testing import snapshot_contents

snapshot = snapshot_contents


new_scenario = functools.partial(kit.new_scenario, name="s", master="m")


def events_of(eng: Engine, cls: type) -> list[Any]:
    notes = eng.recorder.select_notifications(
        1, 1_000_000, topics=[f"xoengine.events:{cls.__name__}"]
    )
    return [eng.app.mapper.to_domain_event(n) for n in notes]


def test_resume_compares_the_bytes_of_files_whose_size_and_time_came_back(
    tmp_path: Path,
) -> None:
    # Was a bug: the rewind put the old modification time back; the master's file,
    # rewritten at the same size with its time kept (cp -p, tar x), passed the
    # resync's size-and-time check, and the replica kept the old bytes for good.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "f", b"A" * 4096)
        kept = os.stat(master / "f")
        sc.start()
        point = sc.set_rewind_point("P")
        write(master / "f", b"B" * 4096)
        os.utime(master / "f", ns=(kept.st_atime_ns, kept.st_mtime_ns))
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", point)
        assert (tmp_path / "r1/f").read_bytes() == b"A" * 4096
        sc.resume("r1")
        sc.wait_replicated()
        assert snapshot(tmp_path / "r1") == snapshot(master)
    finally:
        eng.close()


@pytest.mark.parametrize("way", ["synchronize", "resume", "restart"])
def test_a_change_the_synchronizations_own_scan_finds_is_compared_at_the_same_size_and_time(
    tmp_path: Path, way: str
) -> None:
    # Was a bug (review 21, F01): a master file rewritten while not captured, its
    # size and time kept (cp -p, tar x) and its mode changed too, was journaled by
    # the synchronization's own scan (the ctime told it), but the synchronizer took
    # it as the same by size and time: the replica kept the old bytes for good,
    # past the change's position, and the difference report said nothing pending.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "f", b"A" * 10_000)
        write(master / "other", b"o")
        sc.start()
        point = sc.set_rewind_point("P")
        if way == "resume":
            sc.rewind("r1", point)
        elif way == "restart":
            sc.stop()
            eng.close()
        kept = os.stat(master / "f")
        write(master / "f", b"A" * 4096 + b"B" * 4096 + b"A" * 1808)
        os.chmod(master / "f", 0o640)
        os.utime(master / "f", ns=(kept.st_atime_ns, kept.st_mtime_ns))
        if way == "restart":
            eng = Engine.open(tmp_path / "state", durability="nosync")
            sc = eng.scenario("s")
            (summary,) = sc.start()
        elif way == "resume":
            sc.resume("r1")
            summary = None
        else:
            (summary,) = sc.synchronize()
        sc.wait_replicated()
        assert snapshot(tmp_path / "r1") == snapshot(master)
        assert sc.difference_report("r1", verify=True)["differences"] == {}
        if summary is not None:  # the file once, its changed block sent
            assert [(p, a, s) for p, a, _, s in summary.transferred] == [("f", "updated", 4096)]
        sc.rewind("r1", point)  # the bytes it wrote over went to the undo log first
        assert (tmp_path / "r1/f").read_bytes() == b"A" * 10_000
    finally:
        eng.close()


def test_a_rewind_target_is_a_point_a_name_a_position_or_a_time(tmp_path: Path) -> None:
    # Was a bug: sc.rewind("r1", 10) and sc.rewind("r1", a_datetime) rewound to the end.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "f", b"good")
        sc.start()
        good = sc.set_rewind_point("good")
        want = snapshot(master)
        write(master / "f", b"bad!!")
        sc.capture()
        sc.wait_replicated()
        label = eng.recorder.time_of(good.position)
        when = dt.datetime.fromtimestamp(label / 1e9, tz=dt.UTC) + dt.timedelta(microseconds=1)
        for target in (good.position, when, "good", good):
            assert sc.rewind_preview("r1", target).to_position == good.position
            assert sc.rewind("r1", target) == good.position
            assert snapshot(tmp_path / "r1") == want
            sc.resume("r1")
            sc.wait_replicated()
    finally:
        eng.close()


@pytest.mark.parametrize(
    "arguments",
    [
        {"position": 1.5},
        {"position": True},
        {"position": "3"},
        {"at": "2026-11-27T10:00:00+00:00"},
        {"at": dt.date(2026, 11, 27)},
        {"to": 2.0},
        {"to": b"good"},
        # Review 21 (F05): a RewindPoint was taken at its word; one past the journal's
        # end journaled a false ReplicaRewound, a non-int position was a TypeError.
        {"to": RewindPoint(name="far", position=10_000, time_ns=0)},
        {"to": RewindPoint(name="str", position="3", time_ns=0)},  # type: ignore[arg-type]
        {"to": RewindPoint(name="none", position=None, time_ns=0)},  # type: ignore[arg-type]
        {"to": RewindPoint(name="minus", position=-3, time_ns=0)},
    ],
    ids=lambda a: f"{next(iter(a))}={next(iter(a.values()))!r}",
)
def test_a_rewind_target_of_the_wrong_type_is_refused_before_anything_is_journaled(
    tmp_path: Path, arguments: dict[str, Any]
) -> None:
    # Was a bug: position=10.5 was journaled in RewindStarted, and every writable open
    # after that failed on it with an uncoded struct.error.
    eng, sc, master = new_scenario(tmp_path)
    write(master / "f", b"x")
    sc.start()
    sc.set_rewind_point("good")
    sc.wait_replicated()
    top = eng.last_position()
    with pytest.raises(ConfigurationError):
        sc.rewind_preview("r1", **arguments)
    with pytest.raises(ConfigurationError):
        sc.rewind("r1", **arguments)
    assert eng.last_position() == top
    assert not events_of(eng, RewindStarted)
    eng.close()
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        assert "r1" not in eng.scenario("s").suspended


@pytest.mark.parametrize("name", [None, 5, b"p", "two\nlines", "tab\there"])
def test_a_rewind_point_name_that_is_not_plain_text_is_refused(tmp_path: Path, name: Any) -> None:
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "f", b"x")
        with pytest.raises(ConfigurationError):
            sc.set_rewind_point(name)
        assert sc.rewind_points() == []
    finally:
        eng.close()


def test_a_point_name_that_looks_like_one_the_scenario_has_is_refused(tmp_path: Path) -> None:
    """Was a bug (review 21, F12): "café" in NFC and in NFD, or "p1" and "p1 ", were two
    points the listing showed alike, and the shell typed whichever it typed. A name is
    compared in one Unicode form without outer spaces, and found so by rewind."""
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "f", b"x")
        sc.start()
        nfc, nfd = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
        point = sc.set_rewind_point(nfc)
        sc.set_rewind_point("p1")
        for name in (nfd, "p1 ", " café"):
            with pytest.raises(ConfigurationError, match="looks the same"):
                sc.set_rewind_point(name)
        assert [p.name for p in sc.rewind_points() if p.kind == "user"] == [nfc, "p1"]
        assert sc.resolve(nfd) == point.position
    finally:
        eng.close()


def test_a_rewind_point_set_with_the_watcher_on_holds_the_latest_writes(tmp_path: Path) -> None:
    # Was a bug: with the live watcher on, the point was set before the watcher had
    # journaled the writes made just before it.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "report.txt", b"draft")
        sc.start(watch=True)
        write(master / "report.txt", b"final version, approved")
        point = sc.set_rewind_point("approved")
        with eng.file_at("s", "report.txt", point) as f:
            assert f.read() == b"final version, approved"
    finally:
        eng.close()


def _rewind_fails_midway(tmp_path: Path) -> tuple[Engine, Scenario, Path, Any, bytes]:
    """A rewind that stops on E3011 (the replica was edited by hand): left pending."""
    eng, sc, master = new_scenario(tmp_path)
    content = bytes(range(256)) * 256
    write(master / "f.bin", content)
    sc.start()
    point = sc.set_rewind_point("P")
    write(master / "f.bin", content[:1000] + b"INSERTED" + content[1000:])  # a shifting delta
    sc.capture()
    sc.wait_replicated()
    with open(tmp_path / "r1/f.bin", "r+b") as f:
        f.seek(30000)
        f.write(b"HAND")
    with pytest.raises(ReplicaDivergedError):
        sc.rewind("r1", point)
    assert "r1" in sc._def.pending_rewinds
    return eng, sc, master, point, content


def test_resume_gives_up_a_rewind_that_could_not_finish(tmp_path: Path) -> None:
    # Was a bug: the rewind stayed pending after the resume, and the next open rewound
    # the replica (in replication again by then) to the point without a word.
    eng, sc, master, point, _content = _rewind_fails_midway(tmp_path)
    sc.resume("r1")
    sc.wait_replicated()
    assert snapshot(tmp_path / "r1") == snapshot(master)
    # Review 19: the records the given-up rewind had undone stayed in the log, under
    # a replica resynchronized from a tree the journal never held: a later rewind to
    # the point undid the resync over that tree and the old records over it again.
    # The point is out of reach now, and said to be.
    assert sc.rewind_floor("r1") > point.position
    with pytest.raises(RewindUnreachableError):
        sc.rewind("r1", point)
    assert [e.code for e in events_of(eng, AlertRaised)][-1] == "AW0004"
    eng.close()
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.scenario("s")
        assert not sc._def.pending_rewinds
        assert snapshot(tmp_path / "r1") == snapshot(master)
        sc.start()
        sc.wait_replicated()
        assert snapshot(tmp_path / "r1") == snapshot(master)


def test_a_rewind_that_could_not_write_says_to_rewind_again_not_to_resume(
    tmp_path: Path,
) -> None:
    """Was a bug (review 21, F02): a rewind stopped by a replica write error (E3010) gave an
    apply's hint, "the change is retried on resume"; a resume gives the rewind up and puts the
    replica's history before it out of reach. Rewinding again, once the cause is fixed, works."""
    eng, sc, master = new_scenario(tmp_path)
    locked = tmp_path / "r1" / "d"
    try:
        write(master / "a", b"good")
        (master / "d").mkdir()
        sc.start()
        point = sc.set_rewind_point("P")
        want = snapshot(tmp_path / "r1")
        write(master / "a", b"bad")
        write(master / "d" / "y", b"y")
        sc.capture()
        sc.wait_replicated()
        if subprocess.run(["chattr", "+i", str(locked)], check=False).returncode:
            pytest.skip("no immutable flag on this file system")
        with pytest.raises(RewindWriteError) as raised:
            sc.rewind("r1", point)
        assert raised.value.code == "E3010"
        assert "call rewind again" in raised.value.hint
        assert "retried on resume" not in raised.value.hint
        subprocess.run(["chattr", "-i", str(locked)], check=True)
        assert sc.rewind("r1", point) == point.position  # as the hint says
        assert snapshot(tmp_path / "r1") == want
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=False)
        eng.close()


def test_a_rewind_stopped_midway_then_asked_for_a_later_target_holds_that_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Review 25 (L2): a rewind stopped by a full volume had put back 30 deleted files in a
    commit it never made; a rewind called again to a later target undid only what lies
    after that target and left the files deleted before it: the replica held 30 files
    where the target's tree has 14, and the rewind said it held the target."""
    eng, sc, master = new_scenario(tmp_path)
    try:
        for i in range(40):
            write(master / f"f{i:03}", bytes([i]) * 3000)
        sc.start()
        point = sc.set_rewind_point("p0")
        trees = {}
        for i in range(40):  # one deletion per capture: each its own position
            (master / f"f{i:03}").unlink()
            sc.capture()
            trees[eng.last_position()] = snapshot(master)
        sc.wait_replicated()
        real = tree_module.ReplicaTree.replace
        calls = [0]

        def full(self: tree_module.ReplicaTree, *args: Any, **kwargs: Any) -> None:
            calls[0] += 1
            if calls[0] > 12:  # twelve deleted files put back, then the volume is full
                raise tree_module.DiskFullError(path=self.root, detail="could not replace")
            real(self, *args, **kwargs)

        monkeypatch.setattr(tree_module.ReplicaTree, "replace", full)
        with pytest.raises(XoError):
            sc.rewind("r1", point)
        monkeypatch.setattr(tree_module.ReplicaTree, "replace", real)
        later = sorted(trees)[35]  # f000..f035 deleted: above what the stopped rewind reached
        assert sc.rewind("r1", position=later) == later
        assert snapshot(tmp_path / "r1") == trees[later]
        assert sc.rewind("r1", point) == point.position  # and back, exactly
        assert len(os.listdir(tmp_path / "r1")) == 40
    finally:
        eng.close()


@pytest.mark.parametrize("edit", ["add", "modify", "delete"])
def test_a_replica_changed_by_hand_after_a_resume_that_failed_is_not_rewound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edit: str
) -> None:
    """Review 25 (L1): a resume that stopped on an error (a full volume) had cleared the
    print of the rewound replica: a file then added, changed or deleted by hand stayed
    through the next rewind, which said it held the point's tree."""
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "a.txt", b"a0")
        write(master / "b.txt", b"b0")
        sc.start()
        p1 = sc.set_rewind_point("p1")
        write(master / "a.txt", b"a1")
        write(master / "big.bin", b"x" * 100_000)
        sc.capture()
        p2 = sc.set_rewind_point("p2")
        write(master / "a.txt", b"a2")
        write(master / "big2.bin", b"y" * 100_000)
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", p2)

        def full(self: tree_module.ReplicaTree, *_: Any, **__: Any) -> None:
            raise tree_module.DiskFullError(path=self.root, detail="could not copy")

        monkeypatch.setattr(tree_module.ReplicaTree, "copy_new", full)
        with pytest.raises(XoError):
            sc.resume("r1")
        monkeypatch.undo()
        r1 = tmp_path / "r1"
        if edit == "add":
            write(r1 / "notes.txt", b"made by hand")
        elif edit == "modify":
            write(r1 / "b.txt", b"HAND")
        else:
            (r1 / "b.txt").unlink()
        assert not sc.rewindable("r1")
        with pytest.raises(ReplicaDivergedError):
            sc.rewind("r1", p1)
        sc.resume("r1")  # resynchronizes it (its history before is out of reach)
        sc.wait_replicated()
        assert snapshot(r1) == snapshot(master)
    finally:
        eng.close()


def test_cli_rewind_reads_a_number_as_a_position(tmp_path: Path) -> None:
    """Was a bug (review 21, F11): ``xoengine rewind STATE S R 10`` looked for a point named
    "10", a name no point may have; every other verb reads a number as a position."""
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "a", b"good")
        sc.start()
        good = sc.set_rewind_point("good")
        write(master / "a", b"bad")
        sc.capture()
        sc.wait_replicated()
        sc.stop()
    finally:
        eng.close()
    state = tmp_path / "state"
    both = kit.run_cli("rewind", state, "s", "r1", "good", "--position", str(good.position))
    assert both.returncode == 2 and "give one of a rewind point" in both.stderr, both.stderr
    done = kit.run_cli("rewind", state, "s", "r1", str(good.position), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["position"] == good.position
    assert (tmp_path / "r1" / "a").read_bytes() == b"good"


def test_a_resync_that_repairs_a_replica_changed_by_hand_puts_the_history_below_out_of_reach(
    tmp_path: Path,
) -> None:
    """Review 19: damage done to a replica while replication was stopped (a directory
    deleted, a file overwritten: an encryption) was repaired by the next start, and a
    rewind to an earlier point then undid the repair: the damage came back, reported
    as the point's tree. A resync of the master's own changes keeps the points below
    reachable (here, and in the property tests' random stops and starts)."""
    eng, sc, master = kit.new_scenario(tmp_path)
    try:
        for d in ("a", "b"):
            for i in range(3):
                write(master / d / f"f{i}", bytes([i]) * 5000)
        (master / "c").mkdir()
        sc.start()
        point = sc.set_rewind_point("P")
        sc.stop()
        write(master / "b" / "f2", b"the master's change, while stopped")
        sc.start()  # a resync of the master's changes alone: P stays in reach
        sc.wait_replicated()
        assert sc.rewind_floor("r1") <= point.position
        assert not [e for e in events_of(eng, AlertRaised) if e.code == "AW0004"]
        sc.stop()
        shutil.rmtree(tmp_path / "r1" / "a")
        write(tmp_path / "r1" / "b" / "f0", b"junk")
        (tmp_path / "r1" / "c").rmdir()  # an empty directory, gone
        write(master / "b" / "f1", b"the master's own change, while stopped")
        sc.start()
        sc.wait_replicated()
        assert snapshot(tmp_path / "r1") == snapshot(master)
        alert = [e for e in events_of(eng, AlertRaised) if e.code == "AW0004"][-1]
        assert alert.details["paths"] == ["a", "a/f0", "a/f1", "a/f2", "b/f0", "c"]
        assert sc.rewind_floor("r1") > point.position
        with pytest.raises(RewindUnreachableError):
            sc.rewind("r1", point)
        later = sc.set_rewind_point("Q")
        write(master / "b" / "f2", b"after Q")
        sc.capture()
        sc.wait_replicated()
        expected = snapshot(master)
        sc.rewind("r1", later)
        assert snapshot(tmp_path / "r1") != expected
        assert (tmp_path / "r1" / "b" / "f2").read_bytes() == b"the master's change, while stopped"
    finally:
        eng.close()


def test_a_rewind_whose_start_is_not_journaled_leaves_the_replica_in_replication(
    tmp_path: Path,
) -> None:
    """Review 19: the suspension and the rewind's start were two commits; killed
    between them, the replica stayed suspended, not rewound, and nothing said why.
    They are one commit now: a start that fails journals neither."""
    eng, sc, master = kit.new_scenario(tmp_path)
    try:
        write(master / "f", b"one")
        sc.start()
        point = sc.set_rewind_point("P")
        write(master / "f", b"two")
        sc.capture()
        sc.wait_replicated()
        append = eng._append

        def refusing(events: list[Any], *args: Any, **kwargs: Any) -> Any:
            if any(isinstance(e, RewindStarted) for e in events):
                raise OSError("the commit of the rewind's start fails")
            return append(events, *args, **kwargs)

        eng._append = refusing  # type: ignore[method-assign]
        with pytest.raises(OSError):
            sc.rewind("r1", point)
        eng._append = append  # type: ignore[method-assign]
        assert "r1" not in sc.suspended
        assert not events_of(eng, ReplicaSuspended)
        write(master / "f", b"three")
        sc.capture()
        sc.wait_replicated()  # still followed
        assert (tmp_path / "r1" / "f").read_bytes() == b"three"
    finally:
        eng.close()


def test_a_rewind_that_cannot_finish_at_open_for_a_passing_cause_stays_pending(
    tmp_path: Path,
) -> None:
    # Was a bug: any error at open closed the rewind where it stood (the replica's
    # volume not mounted yet, say), and nothing completed it once the cause was gone.
    eng, sc, master, _point, _content = _rewind_fails_midway(tmp_path)
    eng.close()
    replica, away = tmp_path / "r1", tmp_path / "r1.away"
    replica.rename(away)  # the volume is not there at the next open
    for expected in ("E2005", "E3011"):
        with Engine.open(tmp_path / "state", durability="nosync") as eng:
            sc = eng.scenario("s")
            assert "r1" in sc._def.pending_rewinds
            assert "r1" in sc.suspended
            assert [e.code for e in events_of(eng, AlertRaised)][-1] == expected
        if away.exists():
            away.rename(replica)  # back; the hand edit still stops the rewind
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.scenario("s")
        sc.resume("r1")  # given up: a resync makes the replica exact again
        sc.wait_replicated()
        assert not sc._def.pending_rewinds
        assert snapshot(replica) == snapshot(master)


def test_a_rewind_before_a_first_sync_that_found_the_directory_full_is_refused(
    tmp_path: Path,
) -> None:
    # Was a bug: the rewind put the directory's old contents back and called that the
    # journal's state at the position (a replay there gave another tree).
    write(tmp_path / "r1/stale", b"stale seed")
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "f", b"one")
        early = sc.set_rewind_point("early")  # before the first synchronization
        sc.start()
        write(master / "f", b"two")
        sc.capture()
        sc.wait_replicated()
        before = snapshot(tmp_path / "r1")
        with pytest.raises(RewindUnreachableError):
            sc.rewind_preview("r1", early)
        with pytest.raises(RewindUnreachableError):
            sc.rewind("r1", early)
        assert snapshot(tmp_path / "r1") == before
        assert "r1" not in sc.suspended
        assert sc.statistics().replicas["r1"].rewind_floor > early.position
    finally:
        eng.close()


def test_a_rewind_before_a_first_sync_into_an_empty_directory_is_exact(tmp_path: Path) -> None:
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "f", b"one")
        early = sc.set_rewind_point("early")
        want = snapshot(master)
        sc.start()
        write(master / "f", b"two")
        write(master / "g", b"new")
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", early)
        assert snapshot(tmp_path / "r1") == want
    finally:
        eng.close()


def test_a_rewind_to_before_the_scenario_was_created_is_refused(tmp_path: Path) -> None:
    # Was a bug: under a reused name, a position of the removed scenario emptied the
    # new one's replica, where a replay of the name gave the old scenario's files.
    eng, sc, master = new_scenario(tmp_path)
    try:
        write(master / "f", b"old")
        sc.start()
        old = sc.set_rewind_point("old")
        sc.stop()
        eng.remove_scenario("s")
        shutil.rmtree(tmp_path / "r1")
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        write(master / "f", b"new")
        sc.capture()
        sc.wait_replicated()
        with pytest.raises(RewindUnreachableError):
            sc.rewind("r1", position=old.position)
        assert (tmp_path / "r1/f").read_bytes() == b"new"
    finally:
        eng.close()


def _points(tmp_path: Path) -> tuple[Engine, Scenario, Path, list[tuple[Any, dict[bytes, Any]]]]:
    eng, sc, master = new_scenario(tmp_path)
    write(master / "db", b"A" * 8192)
    sc.start()
    marks = []
    for i in range(3):
        with open(master / "db", "r+b") as f:
            f.seek(4096)
            f.write(bytes([66 + i]) * 16)
        write(master / f"log{i}", b"line %d\n" % i)
        sc.capture()
        marks.append((sc.set_rewind_point(f"p{i}"), snapshot(master)))
    sc.wait_replicated()
    return eng, sc, master, marks


def test_a_replica_used_while_rewound_is_never_rewound_from_what_it_became(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Was a bug: an application wrote into the rewound replica; later rewinds undid and
    # applied the journal over those writes and reported trees the journal never held.
    eng, sc, master, marks = _points(tmp_path)
    try:
        (p0, _), (p1, _), _ = marks
        sc.rewind("r1", p0)
        with open(tmp_path / "r1/db", "r+b") as f:  # the application uses the replica
            f.seek(100)
            f.write(b"XXXXXXXXXX")
        write(tmp_path / "r1/app.lock", b"pid")
        with pytest.raises(ReplicaDivergedError):
            sc.rewind("r1", p1)
        # Review 21: `rewind-points` still listed it as reaching every point.
        assert not sc.rewindable("r1")
        capsys.readouterr()
        assert main(["rewind-points", str(tmp_path / "state"), "s", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert len(rows) >= 3
        assert all(row["reachable_by"] == [] for row in rows)
        # Review 21 (F09): the preview (`rewind --dry-run`) showed a plan for it.
        with pytest.raises(ReplicaDivergedError):
            sc.rewind_preview("r1", p1)
        sc.resume("r1")  # resynchronized; what it was before the resume is out of reach
        sc.wait_replicated()
        assert snapshot(tmp_path / "r1") == snapshot(master)
        assert "AW0004" in [e.code for e in events_of(eng, AlertRaised)]
        with pytest.raises(RewindUnreachableError):
            sc.rewind("r1", p1)
        write(master / "later", b"later")
        later = sc.set_rewind_point("later")
        want = snapshot(master)
        write(master / "db", b"gone")
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", later)  # after the resume: exact
        assert snapshot(tmp_path / "r1") == want
    finally:
        eng.close()


class _Announcing:
    """A lock that tells when a given thread comes to take it (before it may block)."""

    def __init__(self, lock: Any, thread_name: str, came: threading.Event) -> None:
        self.lock, self.thread_name, self.came = lock, thread_name, came

    def __enter__(self) -> None:
        if threading.current_thread().name == self.thread_name:
            self.came.set()
        self.lock.acquire()

    def __exit__(self, *exc: object) -> None:
        self.lock.release()


def test_a_resume_in_another_thread_waits_for_the_rewind_under_way(tmp_path: Path) -> None:
    # Was a bug (review 22 C, F1): the resume took the rewind under way for one given up:
    # a false AW0004, no ReplicaRewound, the undo log's history cut at the resync, and
    # (by timing) a replica noted suspended while an applier thread fed it.
    eng, sc, master, marks = _points(tmp_path)
    try:
        (p0, _), (p1, tree1), _ = marks
        applier = sc._appliers["r1"]
        came = threading.Event()
        applier.control = _Announcing(threading.RLock(), "resumer", came)
        failed: list[BaseException] = []

        def resume() -> None:
            try:
                sc.resume("r1")
            except BaseException as e:  # reported below
                failed.append(e)
            finally:
                came.set()  # also when no lock is taken at all

        resumer = threading.Thread(target=resume, name="resumer")

        def progress(done: int, total: int) -> None:
            if not resumer.is_alive() and not came.is_set():
                resumer.start()
                assert came.wait(60)  # at the lock (or, without one, all done)

        assert sc.rewind("r1", p0, progress=progress) == p0.position
        resumer.join(60)
        assert not failed
        rewound = events_of(eng, ReplicaRewound)
        assert [(e.replica, e.to_position) for e in rewound] == [("r1", p0.position)]
        assert "AW0004" not in [e.code for e in events_of(eng, AlertRaised)]
        assert "r1" not in sc.suspended
        sc.wait_replicated()
        assert snapshot(tmp_path / "r1") == snapshot(master)
        sc.rewind("r1", p1)  # the history before the resume's resync is kept
        assert snapshot(tmp_path / "r1") == tree1
    finally:
        eng.close()


def test_a_replica_left_as_rewound_keeps_its_history_across_resumes(tmp_path: Path) -> None:
    eng, sc, _master, marks = _points(tmp_path)
    try:
        (p0, tree0), (p1, tree1), _ = marks
        sc.rewind("r1", p0)
        sc.rewind("r1", p1)  # forward, then back: nothing else touched it
        sc.rewind("r1", p0)
        sc.resume("r1")
        sc.wait_replicated()
        assert "AW0004" not in [e.code for e in events_of(eng, AlertRaised)]
        for point, tree in [(p1, tree1), (p0, tree0)]:
            sc.rewind("r1", point)
            assert snapshot(tmp_path / "r1") == tree
    finally:
        eng.close()


class _Killed(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs, nothing catches it."""


def test_a_trim_killed_before_it_is_journaled_trims_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Was a bug: the trim committed first and UndoTrimmed after it, in its own
    # transaction: a kill between shortened history with nothing journaled.
    eng, sc, _master, _marks = _points(tmp_path)
    undo = sc._appliers["r1"].undo
    held = undo.records()
    with eng.store.read() as txn:
        floor = undo.floor(txn)
    real = type(eng)._append

    def dying(self: Engine, events: Any, inline: Any = None) -> list[int]:
        if any(isinstance(e, UndoTrimmed) for e in events):
            raise _Killed
        return real(self, events, inline)

    monkeypatch.setattr(type(eng), "_append", dying)
    with pytest.raises(_Killed):
        sc.trim_undo(RetentionPolicy(max_bytes=1, min_points=1))
    assert undo.records() == held
    with eng.store.read() as txn:
        assert undo.floor(txn) == floor
    monkeypatch.setattr(type(eng), "_append", real)
    decisions = sc.trim_undo(RetentionPolicy(max_bytes=1, min_points=1))
    trims = events_of(eng, UndoTrimmed)
    assert [t.upto for t in trims if t.replica == "r1"] == [decisions["r1"].trim_upto]
    assert len(undo.records()) == len(held) - trims[0].records
    eng.close()


def _written_in_place(tmp_path: Path) -> tuple[Engine, Scenario, Path, Any]:
    """f and g, a point, then bytes written into both in place (journaled writes)."""
    eng, sc, master = new_scenario(tmp_path)
    write(master / "f", b"A" * 4096)
    write(master / "g", b"G" * 4096)
    sc.start()
    point = sc.set_rewind_point("P")
    for name in ("f", "g"):
        with sc.open(name) as f:
            f.seek(100)
            f.write(b"HH")
    sc.wait_replicated()
    return eng, sc, master, point


def test_a_rewind_that_finds_a_file_gone_from_the_replica_says_so(tmp_path: Path) -> None:
    # Was a bug: the bytes to put back into a file someone deleted from the replica
    # were skipped, and the rewind reported the point reached.
    eng, sc, master, point = _written_in_place(tmp_path)
    try:
        (tmp_path / "r1/g").unlink()
        with pytest.raises(ReplicaDivergedError, match="'g'"):
            sc.rewind("r1", point)
        sc.resume("r1")  # the way out the error's hint names
        sc.wait_replicated()
        assert snapshot(tmp_path / "r1") == snapshot(master)
    finally:
        eng.close()


def test_a_write_into_a_file_gone_from_the_replica_stops_its_applier(tmp_path: Path) -> None:
    # Was a bug: the write made a new file of zeros with the written bytes in it.
    eng, sc, _master = new_scenario(tmp_path)
    try:
        write(tmp_path / "m/g", b"G" * 4096)
        sc.start()
        sc.stop()  # the next writes are applied in this thread
        (tmp_path / "r1/g").unlink()
        with sc.open("g") as f:
            f.seek(100)
            f.write(b"HH")
        with pytest.raises(ReplicaDivergedError, match="'g'"):
            sc.wait_replicated()
        assert not (tmp_path / "r1/g").exists()
    finally:
        eng.close()


@pytest.mark.parametrize("beside", ["new", "renamed"])
def test_a_hand_edit_is_found_though_the_master_changed_its_directory_beside_it(
    tmp_path: Path, beside: str
) -> None:
    """Review 22 (B, F1): a file made or renamed in the same directory on the master
    journals that directory's new mtime, and that change exempted everything below it
    from the check: an encryption and a ransom note went unreported, and a rewind to
    an earlier point put them back, reported as the point's tree."""
    eng, sc, master = kit.new_scenario(tmp_path)
    try:
        for i in range(3):
            write(master / "d" / f"f{i}", b"original %d" % i)
        sc.start()
        point = sc.set_rewind_point("P")
        sc.stop()
        write(tmp_path / "r1" / "d" / "f0", b"ENCRYPTED BY RANSOMWARE")
        write(tmp_path / "r1" / "d" / "HOW_TO_DECRYPT.txt", b"pay")
        if beside == "new":
            write(master / "d" / "new", b"the master's own file")
        else:
            (master / "d" / "f2").rename(master / "f2-moved")
        sc.start()
        sc.wait_replicated()
        assert snapshot(tmp_path / "r1") == snapshot(master)
        alert = [e for e in events_of(eng, AlertRaised) if e.code == "AW0004"][-1]
        assert alert.details["paths"] == ["d/HOW_TO_DECRYPT.txt", "d/f0"]
        with pytest.raises(RewindUnreachableError):
            sc.rewind("r1", point)
    finally:
        eng.close()


def test_a_name_of_255_bytes_in_multibyte_characters_is_replaced_rewound_and_replayed(
    tmp_path: Path,
) -> None:
    """Review 22 (B, F2): a temporary file took the name's first 100 characters: 85 CJK
    characters (255 bytes) made it too long, and every apply, rewind, resync and replay
    through a temporary file failed (E3010) for good."""
    eng, sc, master = kit.new_scenario(tmp_path)
    cjk, emoji = "文" * 85, "\U0001f600" * 63
    try:
        write(master / cjk, b"x" * 50_000)
        write(master / emoji, b"y" * 3000)
        sc.start()
        point = sc.set_rewind_point("P")
        before = snapshot(master)
        write(master / cjk, b"inserted in front " + b"x" * 50_000)  # replaced through a temporary
        (master / emoji).unlink()
        sc.capture()
        sc.wait_replicated()
        assert snapshot(tmp_path / "r1") == snapshot(master)
        sc.rewind("r1", point)
        assert snapshot(tmp_path / "r1") == before
        eng.replay(sc, to=tmp_path / "out", position=point.position)
        assert snapshot(tmp_path / "out") == before
    finally:
        eng.close()


@pytest.mark.parametrize("change", ["rename", "chmod"])
def test_a_rewind_refuses_a_rename_or_mode_it_cannot_put_back(tmp_path: Path, change: str) -> None:
    """Review 22 (B, F3, F4): a rename whose old name someone else took, or a mode to
    put back on a file someone deleted, was skipped, and the rewind reported the
    point's tree: both names (one a link out of the replica) or a file missing."""
    eng, sc, master = kit.new_scenario(tmp_path)
    try:
        write(master / "d" / "s", b"s")
        write(master / "f", b"f")
        sc.start()
        point = sc.set_rewind_point("A")
        if change == "rename":
            (master / "d").rename(master / "d2")
        else:
            (master / "f").chmod(0o600)
        sc.capture()
        sc.wait_replicated()
        (tmp_path / "outside").mkdir()
        if change == "rename":
            (tmp_path / "r1" / "d").symlink_to(tmp_path / "outside")
        else:
            (tmp_path / "r1" / "f").unlink()
        with pytest.raises(ReplicaDivergedError):
            sc.rewind("r1", point)
        assert list((tmp_path / "outside").iterdir()) == []
        sc.resume("r1")  # resynchronized: the master's state again
        sc.wait_replicated()
        assert snapshot(tmp_path / "r1") == snapshot(master)
    finally:
        eng.close()


def test_a_hard_link_to_a_replica_file_from_outside_keeps_its_bytes(tmp_path: Path) -> None:
    """Review 22 (B, F5): the apply, the rewind and the resync wrote in place through a
    hard link a backup tool made (`cp -al r1 snapshot`), changing a file outside the
    replica root."""
    eng, sc, master = kit.new_scenario(tmp_path)
    try:
        write(master / "db", b"A" * 100_000)
        sc.start()
        point = sc.set_rewind_point("P")
        (tmp_path / "snapshot").mkdir()
        os.link(tmp_path / "r1" / "db", tmp_path / "snapshot" / "db")
        with open(master / "db", "r+b") as f:  # in place: an apply writes ranges
            f.seek(5000)
            f.write(b"B" * 100)
        sc.capture()
        sc.wait_replicated()
        assert (tmp_path / "r1" / "db").read_bytes() == (master / "db").read_bytes()
        assert (tmp_path / "snapshot" / "db").read_bytes() == b"A" * 100_000
        os.link(tmp_path / "r1" / "db", tmp_path / "snapshot" / "db2")
        sc.rewind("r1", point)  # puts bytes back in place
        assert (tmp_path / "r1" / "db").read_bytes() == b"A" * 100_000
        assert (tmp_path / "snapshot" / "db2").read_bytes() == (master / "db").read_bytes()
        assert os.stat(tmp_path / "r1" / "db").st_nlink == 1
    finally:
        eng.close()


@pytest.mark.parametrize("change", ["mode", "mtime", "xattr"])
def test_a_hard_link_to_a_replica_file_from_outside_keeps_its_metadata(
    tmp_path: Path, change: str
) -> None:
    """Session 22 left: a change of mode, time or extended attributes alone still
    reached the other names of a replica file hard-linked from outside (a
    `cp -al r1 snapshot`), on the apply and on the rewind that undid it."""
    eng, sc, master = kit.new_scenario(tmp_path)
    try:
        write(master / "db", b"A" * 10_000)
        os.chmod(master / "db", 0o640)
        sc.start()
        point = sc.set_rewind_point("P")
        (tmp_path / "snapshot").mkdir()
        os.link(tmp_path / "r1" / "db", tmp_path / "snapshot" / "db")
        kept = os.stat(tmp_path / "snapshot" / "db")
        kept_xattrs = os.listxattr(tmp_path / "snapshot" / "db")
        if change == "mode":
            os.chmod(master / "db", 0o600)
        elif change == "mtime":
            os.utime(master / "db", ns=(1_000_000_000, 1_000_000_000))
        else:
            os.setxattr(master / "db", "user.tag", b"new")
        sc.capture()
        sc.wait_replicated()
        assert snapshot(tmp_path / "r1") == snapshot(master)
        after = os.stat(tmp_path / "snapshot" / "db")
        assert (after.st_mode, after.st_mtime_ns) == (kept.st_mode, kept.st_mtime_ns)
        assert os.listxattr(tmp_path / "snapshot" / "db") == kept_xattrs
        os.link(tmp_path / "r1" / "db", tmp_path / "snapshot" / "db2")
        moved = os.stat(tmp_path / "snapshot" / "db2")
        moved_xattrs = os.listxattr(tmp_path / "snapshot" / "db2")
        sc.rewind("r1", point)  # puts the old metadata back
        after = os.stat(tmp_path / "snapshot" / "db2")
        assert (after.st_mode, after.st_mtime_ns) == (moved.st_mode, moved.st_mtime_ns)
        assert os.listxattr(tmp_path / "snapshot" / "db2") == moved_xattrs
        assert (tmp_path / "snapshot" / "db").read_bytes() == b"A" * 10_000
    finally:
        eng.close()


@pytest.mark.parametrize("then", ["nothing", "regrown", "written"])
def test_a_cut_of_a_thin_file_keeps_its_data_not_its_holes(tmp_path: Path, then: str) -> None:
    """Review 22 (B, F6, F7): the before-image of a cut read and stored every hole of
    the cut tail (a 4 GiB thin image cut to 0: 32 s, 4 GiB of zeros read), and a
    rewind of bytes written into a hole wrote zeros: the file was thin no more. Now
    holes are noted, not read, and a rewind makes them holes again, over whatever
    grew or was written there since."""
    eng, sc, master = kit.new_scenario(tmp_path)
    size = 64 << 20
    try:
        with open(master / "thin", "wb") as f:
            f.write(b"head" * 1024)
            f.seek(size - 4096)
            f.write(b"tail" * 1024)
        sc.start()
        point = sc.set_rewind_point("P")
        before = snapshot(master)
        read = tree_module.ReplicaTree.read
        taken: list[int] = []

        def counting(self: Any, path: str, offset: int = 0, length: int | None = None) -> bytes:
            data = read(self, path, offset, length)
            taken.append(len(data))
            return data

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(tree_module.ReplicaTree, "read", counting)
            if then == "written":  # 4 MiB into the hole, in place
                with open(master / "thin", "r+b") as f:
                    f.seek(16 << 20)
                    f.write(b"W" * (4 << 20))
            else:
                os.truncate(master / "thin", 4096)
            sc.capture()
            sc.wait_replicated()
        assert sum(taken) < 1 << 20  # the data there, not the zeros of the holes
        if then == "regrown":  # bytes over the old hole: the rewind must zero them
            with open(master / "thin", "r+b") as f:
                f.seek(1 << 20)
                f.write(b"X" * 100_000)
            sc.capture()
            sc.wait_replicated()
        sc.rewind("r1", point)
        assert snapshot(tmp_path / "r1") == before
        assert os.stat(tmp_path / "r1" / "thin").st_blocks * 512 < 1 << 20  # thin again
    finally:
        eng.close()


def test_a_replica_found_diverged_is_not_rewound_until_synchronized(tmp_path: Path) -> None:
    # Was a bug: right after its applier stopped on E3011, a rewind of the replica
    # reported the point reached, over bytes someone had written by hand.
    eng, sc, master, point = _written_in_place(tmp_path)
    sc.stop()
    (tmp_path / "r1/g").unlink()
    with sc.open("g") as f:
        f.write(b"II")
    with pytest.raises(ReplicaDivergedError):
        sc.wait_replicated()
    eng.close()
    with Engine.open(tmp_path / "state", durability="nosync") as eng:  # the journal says so
        sc = eng.scenario("s")
        with pytest.raises(ReplicaDivergedError):
            sc.rewind("r1", point)
        assert "r1" not in sc.suspended  # refused before anything was done
        sc.synchronize(replica="r1")  # exact again: the divergence is over
        sc.wait_replicated()
        assert snapshot(tmp_path / "r1") == snapshot(master)
        want = snapshot(tmp_path / "r1")
        later = sc.set_rewind_point("later")
        write(master / "f", b"changed")
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", later)
        assert snapshot(tmp_path / "r1") == want
        cleared = [e for e in events_of(eng, AlertRaised) if e.code == "E3011"]
        assert [e.severity for e in cleared] == ["error", "info"]


@pytest.mark.parametrize(
    "policy",
    [
        {"max_bytes": -1},
        {"max_bytes": 1.5},
        {"min_points": -5},
        {"min_points": 1.5},
        {"max_age_s": -1.0},
        {"window_s": "1h"},
        {"window_s": float("nan")},  # review 21 (F06): it protected nothing, said nothing
        {"max_age_s": float("inf")},
    ],
)
def test_a_retention_policy_that_means_no_budget_is_refused(
    tmp_path: Path, policy: dict[str, Any]
) -> None:
    # Was a bug: max_bytes=-1 trimmed the whole undo log.
    with pytest.raises(ConfigurationError):
        RetentionPolicy(**policy)


def test_trim_undo_and_the_undo_options_refuse_what_is_not_a_budget(tmp_path: Path) -> None:
    eng, sc, _master = new_scenario(tmp_path)
    try:
        with pytest.raises(ConfigurationError):
            sc.trim_undo("x")  # type: ignore[arg-type]
        with pytest.raises(ConfigurationError):
            sc.trim_undo(now_ns="abc")  # type: ignore[arg-type]
        (tmp_path / "m2").mkdir()
        with pytest.raises(ScenarioError, match="whole one"):
            eng.create_scenario(
                "t",
                master=str(tmp_path / "m2"),
                replicas={"r": str(tmp_path / "r2")},
                undo_min_points=1.5,
            )
        # Review 21 (F06): NaN passed "< 0": a window that protects nothing, an
        # automatic point at every capture, and `scenario list --json` not JSON.
        for option in ("undo_window", "undo_max_age", "rewind_interval"):
            for value in (float("nan"), float("inf")):
                with pytest.raises(ScenarioError, match="finite"):
                    eng.create_scenario(
                        "t",
                        master=str(tmp_path / "m2"),
                        replicas={"r": str(tmp_path / "r2")},
                        **{option: value},
                    )
        with pytest.raises(ScenarioError, match="finite"):
            eng.update_scenario("s", undo_window=float("nan"))
    finally:
        eng.close()


def test_automatic_points_follow_the_scenarios_own_changes(tmp_path: Path) -> None:
    """``rewind_interval``: a point at a capture's last change, once the interval has passed
    since the last automatic point. Was a bug (review 21, F07): another scenario's appends,
    and this one's own suspend or rewind, set points on a master that never changed."""
    eng, a, master = new_scenario(tmp_path, rewind_interval=1e-9)  # every change is due
    try:
        write(tmp_path / "mb" / "x", b"0")
        b = eng.create_scenario(
            "b", master=str(tmp_path / "mb"), replicas={"r": str(tmp_path / "rb")}
        )
        write(master / "f", b"0")
        a.start()
        b.start()

        def autos() -> list[int]:
            return [p.position for p in a.rewind_points() if p.kind == "auto"]

        write(master / "f", b"1")
        changed = a.capture().last_position
        assert autos() == [changed]
        write(tmp_path / "mb" / "x", b"1")
        b.capture()  # the other scenario's change
        assert a.capture().events == 0
        a.suspend("r1")
        a.resume("r1")
        assert a.capture().events == 0
        assert autos() == [changed]
        with a.open("f") as f:  # a journaled file's flush is a change too
            f.write(b"2")
        assert autos() == [changed, eng.history("s", "f")[-1].position]
        a.stop()
        b.stop()
    finally:
        eng.close()
    (tmp_path / "long").mkdir()
    eng, a, master = new_scenario(tmp_path / "long", rewind_interval=3600)
    try:
        a.start()
        firsts = []
        for i in range(3):
            write(master / "f", bytes([i]))
            firsts.append(a.capture().last_position)
        assert [p.position for p in a.rewind_points() if p.kind == "auto"] == firsts[:1]
        a.stop()
    finally:
        eng.close()


def test_a_thin_file_rewound_across_a_resync_comes_back_thin(tmp_path: Path) -> None:
    # Review 26 (P8): a resync keeps a file it rewrites as a whole before-image, its
    # holes read as zeros; a rewind across it wrote them back (2 MiB allocated where
    # the file held 5,000 bytes of data). And the holes between its data, inside one
    # piece of the before-image, stay holes too (they were written as zeros).
    master, r1 = tmp_path / "m", tmp_path / "r1"
    master.mkdir()
    with (master / "s.img").open("wb") as f:
        f.truncate(2 << 20)
        f.write(os.urandom(5000))
        f.seek(1 << 20)
        f.write(os.urandom(5000))
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(r1)})
        sc.start()
        point = sc.set_rewind_point("p")
        want = (master / "s.img").read_bytes()
        with (master / "s.img").open("r+b") as f:
            f.seek(3 << 20)
            f.write(b"x" * 100)
        sc.capture()
        sc.wait_replicated()
        sc.rewind("r1", point)
        sc.resume("r1")
        sc.wait_replicated()
        sc.rewind("r1", point)
        assert (r1 / "s.img").read_bytes() == want
        assert (r1 / "s.img").stat().st_blocks * 512 <= 256 << 10
        sc.stop()
