"""Forensic verbs: the findings of review 14 (bisect, bursts, empty answers, roots, instants).

- ``bisect`` takes a root's own change (``RootChanged``) as a candidate.
- A burst committed in several transactions (one capture pass past
  ``FLUSH_BYTES``) is still one burst; the window rule that says so.
- A replay of a path that held nothing, and the history of a path that never
  was, are errors (E3014), never an empty answer.
- A replay of one root of several gives it its mode.
- ``bisect --json`` stays JSON when the command prints.
- Instants of the wrong type are ``ConfigurationError``.
- A removed scenario's rewind point names resolve; with the name reused, the
  newest point of a name wins.
- A truncation's byte range spans the bytes it changed, a cut a capture saw too.
- Review 17: a burst reported from its start, whatever its length; a burst
  window or threshold out of range refused before any probe; a bisect command
  that gives no verdict (not found, killed) stops the search; one file's
  change past ``FLUSH_BYTES`` is one commit; ``cat`` says when a position is a
  step inside one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from scenario_kit import run_cli, write

from xoengine.capture import FLUSH_BYTES
from xoengine.cli import main
from xoengine.engine import Engine
from xoengine.errors import (
    ConfigurationError,
    InvalidRelPathError,
    NoFileAtError,
    OutputLocationError,
    ScenarioNotFoundError,
)
from xoengine.forensic import Forensics
from xoengine.journal import iso_time

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[Engine, dict[str, int]]]:
    """Scenario "s": ``a`` written twice, ``later`` made after point "before", ``gone`` deleted."""
    master = tmp_path / "m"
    write(master / "a", b"1")
    write(master / "gone", b"g")
    eng = Engine.open(tmp_path / "state", durability="nosync")
    sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
    sc.start()
    points = {"before": sc.set_rewind_point("before").position}
    write(master / "a", b"22")
    write(master / "later", b"l")
    (master / "gone").unlink()
    sc.capture()
    points["end"] = eng.last_position()
    sc.stop()
    try:
        yield eng, points
    finally:
        eng.close()


# -- 1. root changes are bisect candidates ------------------------------------------------------


def test_bisect_takes_a_root_change_as_a_candidate(tmp_path: Path) -> None:
    master = tmp_path / "m"
    write(master / "a", b"1")
    master.chmod(0o755)
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        good_end = eng.last_position()
        master.chmod(0o700)  # the damage: the share's root mode
        sc.capture()
        root_change = eng.last_position()
        for i in range(3):
            write(master / f"later{i}", b"x")
            sc.capture()
        sc.stop()
        assert [e.mode for e in eng.history("s", ".")][-1] == 0o700

        def good(tree: str) -> bool:
            return stat.S_IMODE(os.stat(tree).st_mode) == 0o755

        found = eng.bisect("s", good, between=(good_end, None))
        assert (found.last_good, found.first_bad) == (root_change - 1, root_change)
        out = tmp_path / "check"
        eng.replay("s", to=out, position=found.last_good)
        assert good(str(out))


@pytest.mark.parametrize(("days", "damaged"), [(10, 9), (16, 14), (20, 10)])
def test_bisect_never_probes_a_state_inside_a_commit(
    tmp_path: Path, days: int, damaged: int
) -> None:
    """Review 23 (D, F1): bisect probed every position, steps inside a capture's commit
    too: a new report made but not yet written is empty there, a state the master
    never held. "Every report is non-empty" then failed on a good day's creation step,
    and the search named that day (10 days, damage on day 9: day 5)."""
    master = tmp_path / "m"
    write(master / "r0.csv", b"id,amount\n1,5\n")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        good_end = eng.last_position()
        spans = {}
        for day in range(1, days + 1):
            write(master / f"r{day}.csv", f"id,amount\n{day},{day * 7}\n".encode())
            if day == damaged:
                os.truncate(master / "r0.csv", 0)  # the damage
            first = eng.last_position() + 1
            sc.capture()
            spans[day] = (first, eng.last_position())
        sc.stop()

        def good(tree: str) -> bool:
            return all(os.path.getsize(os.path.join(tree, n)) > 0 for n in os.listdir(tree))

        found = eng.bisect("s", good, between=(good_end, None))
        assert found.first_bad == spans[damaged][0]  # the damage's commit
        assert found.last_good == spans[damaged][0] - 1
        assert all(
            position in {end for _, end in spans.values()} | {good_end, eng.last_position()}
            for position, _ in found.probes
        )
        out = tmp_path / "check"
        eng.replay("s", to=out, position=found.last_good)
        assert good(str(out)) and len(os.listdir(out)) == damaged


def test_history_shows_a_chmod_the_capture_saw_with_a_write(tmp_path: Path) -> None:
    """Review 23 (E, F6): a chmod made with a content write between two captures was
    journaled with the write (its lstat holds the mode) and shown nowhere: history's
    last word on the mode stayed the old one."""
    master = tmp_path / "m"
    write(master / "f", b"secret")
    os.chmod(master / "f", 0o600)
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        os.chmod(master / "f", 0o644)
        with open(master / "f", "ab") as f:
            f.write(b" shared")
        sc.capture()
        sc.stop()
        last = eng.history("s", "f")[-1]
        assert (last.operation, last.mode, last.changed) == ("written", 0o644, ["mode", "mtime"])
        assert [e.mode for e in eng.history("s", "f") if e.mode is not None] == [0o600, 0o644]


def test_replay_gives_a_link_its_journaled_mtime(tmp_path: Path) -> None:
    """Review 23 (E, F3): replayed links carried the replay's own time; the journal,
    diff and the replica had the link's."""
    master = tmp_path / "m"
    write(master / "f", b"f")
    os.symlink("f", master / "l")
    os.utime(master / "l", ns=(1_100_000_000 * 10**9,) * 2, follow_symlinks=False)
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        first = eng.last_position()
        os.utime(master / "l", ns=(1_200_000_000 * 10**9,) * 2, follow_symlinks=False)
        sc.capture()
        sc.stop()
        for position, seconds in [(first, 1_100_000_000), (eng.last_position(), 1_200_000_000)]:
            out = tmp_path / f"out{position}"
            eng.replay("s", to=out, position=position)
            assert os.lstat(out / "l").st_mtime_ns == seconds * 10**9


# -- 2. a burst committed in several transactions ----------------------------------------------


def test_bisect_finds_a_burst_that_one_capture_committed_in_several_transactions(
    tmp_path: Path,
) -> None:
    count, size = 12, FLUSH_BYTES // 10  # one pass of 1.2 FLUSH_BYTES: two commits
    master = tmp_path / "m"
    master.mkdir()
    for i in range(count):
        (master / f"f{i:02}.doc").write_bytes(b"GOOD" + os.urandom(size - 4))
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        sc.suspend("r1")  # the replica needs nothing here
        good_end = eng.last_position()
        for i in range(count):  # "encrypt" every file in place
            (master / f"f{i:02}.doc").write_bytes(b"BAD!" + os.urandom(size - 4))
        sc.capture()  # ONE capture pass
        labels = {eng.recorder.time_of(p) for p in range(good_end + 1, eng.last_position() + 1)}
        assert len(labels) > 1  # the premise: the pass is more than one commit
        sc.stop()

    def intact(tree: str) -> bool:
        for name in os.listdir(tree):
            with Path(tree, name).open("rb") as f:
                if f.read(4) != b"GOOD":
                    return False
        return True

    with Engine.open(tmp_path / "state", readonly=True) as ro:
        found = ro.bisect("s", intact, between=(good_end, None))
        assert (found.last_good, found.first_bad) == (good_end, good_end + 1)
        assert (found.burst_position, found.burst_files) == (good_end + 1, count)
        # burst_window=0 is the rule of one commit at a time: no commit holds them all.
        alone = ro.bisect(
            "s", intact, between=(good_end, None), burst_threshold=count, burst_window=0
        )
        assert alone.burst_position is None
    # The command line takes the window too.
    command = "head -c4 f00.doc | grep -q GOOD"
    state = str(tmp_path / "state")
    for window, burst in (("60", good_end + 1), ("0", None)):
        argv = ["bisect", state, "s", command, "--good", str(good_end), "--json"]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert main([*argv, "--burst", str(count), "--burst-window", window]) == 0
        assert json.loads(out.getvalue())["burst_position"] == burst


def test_burst_window_rules() -> None:
    """The burst rule alone, on changes ``(position, time label, file id, operation)``."""
    second = 10**9
    old = [uuid.uuid4() for _ in range(12)]
    # A load that made the files, then one pass rewriting them in two commits.
    load = [(1 + i, 0, fid, "created") for i, fid in enumerate(old)]
    first = [(20 + i, 30 * second, fid, "written") for i, fid in enumerate(old[:8])]
    rest = [(40 + i, 31 * second, fid, "written") for i, fid in enumerate(old[8:])]
    later = [(60, 45 * second, old[0], "deleted"), (61, 45 * second, uuid.uuid4(), "created")]
    changes = load + first + rest + later
    window = 60 * second
    # The files made within the window of the load do not count; the run is the pass.
    assert Forensics._burst(changes, 10, window) == (20, 12)
    assert Forensics._burst(changes, 10, 0) == (None, 0)  # neither commit holds 10
    assert Forensics._burst(changes, 8, 0) == (20, 8)
    # The whole window counts, whether or not its commits follow each other straight on.
    assert Forensics._burst(changes, 8, window) == (20, 12)
    straight = [(p - 12 if 40 <= p < 60 else p, t, f, o) for p, t, f, o in changes]
    assert Forensics._burst(straight, 8, window) == (20, 12)
    # An attack longer than the threshold: its start, never its end. Was a bug
    # (review 17): the window was cut from the front while it still held the
    # threshold, so 100 files damaged one by one gave the last 10.
    victims = [uuid.uuid4() for _ in range(100)]
    slow = [(1 + i, 0, fid, "created") for i, fid in enumerate(victims)]
    slow += [(200 + i, second + i * second // 10, fid, "written") for i, fid in enumerate(victims)]
    assert Forensics._burst(slow, 10, window) == (200, 100)
    # One commit over the threshold is the start too, with what follows in the window.
    big = [
        (200 if i < 50 else 300 + i, second * (1 if i < 50 else 2), fid, "deleted")
        for i, fid in enumerate(victims)
    ]
    assert Forensics._burst(slow[:100] + big, 10, window) == (200, 100)
    # A commit that made a file and wrote it is no damage: the burst starts after it.
    new = uuid.uuid4()
    made_first = [(190, second // 2, new, "created"), (191, second // 2, new, "written")]
    assert Forensics._burst(slow + made_first, 10, window) == (200, 100)
    # Too far apart, two halves are two small changes.
    apart = [(p, t + (120 * second if t == 31 * second else 0), f, o) for p, t, f, o in changes]
    assert Forensics._burst(apart, 10, window) == (None, 0)
    # Metadata alone is no damage; files made in the window are new, not damaged.
    meta = [(70 + i, 200 * second, fid, "metadata") for i, fid in enumerate(old)]
    assert Forensics._burst(meta, 10, window) == (None, 0)
    fresh = [uuid.uuid4() for _ in range(12)]
    made = [(80 + i, 300 * second, fid, "created") for i, fid in enumerate(fresh)]
    made += [(100 + i, 300 * second, fid, "written") for i, fid in enumerate(fresh)]
    assert Forensics._burst(made, 10, window) == (None, 0)
    # A file made before the window existed before it: rewritten, it is damaged.
    again = [(120 + i, 400 * second, fid, "written") for i, fid in enumerate(fresh)]
    assert Forensics._burst(made + again, 10, window) == (120, 12)


def test_bisect_refuses_a_burst_window_or_threshold_out_of_range_before_any_probe(
    small: tuple[Engine, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was a bug (review 17): nan or inf ended in a traceback, after every probe had run."""
    eng, points = small
    probed: list[str] = []

    def predicate(tree: str) -> bool:
        probed.append(tree)
        return True

    between = (points["before"], points["end"])
    for window in (float("nan"), float("inf"), 1e300, -1.0):
        with pytest.raises(ConfigurationError, match="burst_window"):
            eng.bisect("s", predicate, between=between, burst_window=window)
    for threshold in (0, -3):
        with pytest.raises(ConfigurationError, match="burst_threshold"):
            eng.bisect("s", predicate, between=between, burst_threshold=threshold)
    assert probed == []
    state = str(tmp_path / "state")
    for option in (["--burst-window", "nan"], ["--burst", "0"]):
        assert main(["bisect", state, "s", "true", "--good", "0", *option]) == 2
        assert "burst_" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("command", "said"),
    [("no-such-command-xo", "exit status 127"), ("kill -9 $$", "killed by signal 9 (SIGKILL)")],
)
def test_cli_bisect_stops_on_a_command_that_gives_no_verdict(
    small: tuple[Engine, dict[str, int]],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    said: str,
) -> None:
    """Was a bug (review 17): a command not found read as "bad at the lower bound".

    Review 19: a killed shell was said as "exit status -9".
    """
    _, points = small
    argv = ["bisect", str(tmp_path / "state"), "s", command, "--good", str(points["before"])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert said in err and "lower bound" not in err


def test_cli_bisect_says_when_its_bad_bound_tests_good(
    small: tuple[Engine, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 19: a --bad bound that tested good was taken as the answer without a word."""
    _, points = small
    state = str(tmp_path / "state")
    bad = str(points["before"] + 1)
    argv = ["bisect", state, "s", "true", "--good", str(points["before"]), "--bad", bad]
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["first_bad"] is None
    assert f"the --bad bound {bad} tests good" in err
    assert main(["bisect", state, "s", "true", "--good", str(points["before"])]) == 0
    err = capsys.readouterr().err
    assert "--bad" not in err  # no bound given: nothing to say
    # Review 23 (D, F9): no burst is said as such, with what it means.
    assert "no burst: no 10 files that were there changed within 60 s" in err


def test_cli_bisect_says_when_the_burst_starts_where_the_command_found_good(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 25 (K7): an ordinary edit just before the attack, inside the window, starts
    the burst: before the last good position, and nothing said the two disagree."""
    master = tmp_path / "m"
    for i in range(12):
        write(master / f"f{i}", b"plain")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        write(master / "f0", b"an edit")  # ordinary work, seconds before the attack
        sc.capture()
        for i in range(12):
            write(master / f"f{i}", b"ENC")
        sc.capture()
        sc.stop()
    state = str(tmp_path / "state")
    assert main(["bisect", state, "s", "! grep -rq ENC .", "--json"]) == 0
    out, err = capsys.readouterr()
    found = json.loads(out)
    assert found["burst_position"] <= found["last_good"] < found["first_bad"]
    assert f"note: the burst's window starts at position {found['burst_position']}" in err
    assert f"what the command calls bad starts at position {found['first_bad']}" in err
    # Review 25 (M4): a command that finds nothing bad has no such start to name.
    assert main(["bisect", state, "s", "true", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["first_bad"] is None
    assert "burst: " in err and "note: the burst's window" not in err


def test_events_up_to_a_position_past_the_end_are_those_up_to_the_end(
    small: tuple[Engine, dict[str, int]],
) -> None:
    """Review 25 (J3): ``upto`` past the end (read a moment before in another process, an
    off-by-one) was reported as a damaged journal (E4010: the topic index lacked the
    positions not there yet)."""
    eng, _ = small
    end = eng.last_position()
    whole = list(eng.file_events("s", None))
    assert whole
    assert list(eng.file_events("s", end + 1)) == list(eng.file_events("s", end + 100)) == whole
    assert list(eng.root_events("s", end + 5)) == list(eng.root_events("s", None))


# -- 3. never an empty answer -----------------------------------------------------------------


def test_replay_of_a_path_that_held_nothing_is_an_error(
    small: tuple[Engine, dict[str, int]], tmp_path: Path
) -> None:
    eng, _ = small
    out = tmp_path / "out"
    with pytest.raises(NoFileAtError, match="E3014"):
        eng.replay("s", to=out, path="no/such/file")
    assert not out.exists()  # nothing made
    # It existed, later: the answer at "before" is still an error, the end has it.
    with pytest.raises(NoFileAtError, match="position"):
        eng.replay("s", to=out, path="later", point="before")
    eng.replay("s", to=out, path="later")
    assert (out / "later").read_bytes() == b"l"
    # It existed, earlier: deleted since.
    with pytest.raises(NoFileAtError):
        eng.replay("s", to=tmp_path / "out2", path="gone")
    eng.replay("s", to=tmp_path / "out3", path="gone", point="before")
    assert (tmp_path / "out3" / "gone").read_bytes() == b"g"


def test_history_of_a_path_that_never_was_is_an_error(
    small: tuple[Engine, dict[str, int]],
) -> None:
    eng, _ = small
    with pytest.raises(NoFileAtError, match="ever had the path"):
        eng.history("s", "no/such/file")
    assert [e.operation for e in eng.history("s", "gone")][-1] == "deleted"
    assert eng.history("s", "later")[0].operation == "created"


def test_cli_replay_and_history_of_nothing_exit_2(
    small: tuple[Engine, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    eng, _ = small
    state = str(eng.state_dir)
    eng.close()
    assert main(["replay", state, "s", "--to", str(tmp_path / "o"), "--path", "no/such"]) == 2
    assert "E3014" in capsys.readouterr().err
    assert main(["history", state, "s", "no/such"]) == 2
    assert "E3014" in capsys.readouterr().err


def test_bisect_says_where_it_left_a_replay_it_could_not_remove(
    small: tuple[Engine, dict[str, int]],
) -> None:
    """Review 22 (A, F9): a predicate that made its replay unremovable (``chattr +i``)
    left the scratch trees in $TMPDIR without a word."""
    eng, points = small
    kept: list[str] = []

    def predicate(tree: str) -> bool:
        locked = os.path.join(tree, "locked")
        os.mkdir(locked)
        if subprocess.run(["chattr", "+i", locked], capture_output=True, check=False).returncode:
            pytest.skip("chattr +i is not available here")
        kept.append(locked)
        return True

    try:
        with pytest.warns(RuntimeWarning, match="bisect left the replay of position"):
            eng.bisect("s", predicate, between=(points["before"], points["before"]))
        assert kept and all(os.path.exists(k) for k in kept)
    finally:
        for locked in kept:
            subprocess.run(["chattr", "-i", locked], check=False)
            shutil.rmtree(os.path.dirname(os.path.dirname(locked)), ignore_errors=True)


def test_bisect_of_a_path_absent_at_some_probes_still_runs(
    small: tuple[Engine, dict[str, int]],
) -> None:
    eng, points = small
    found = eng.bisect("s", lambda p: not os.path.exists(p), path="later")
    assert found.first_bad is not None
    assert points["before"] <= found.last_good < found.first_bad <= points["end"]


# -- 4. a root of several, replayed alone -------------------------------------------------------


def test_replay_of_one_root_of_several_gives_it_its_mode(tmp_path: Path) -> None:
    (tmp_path / "x" / "alpha").mkdir(parents=True)
    (tmp_path / "y" / "beta").mkdir(parents=True)
    write(tmp_path / "x" / "alpha" / "f", b"f")
    write(tmp_path / "y" / "beta" / "g", b"g")
    (tmp_path / "y" / "beta").chmod(0o755)
    (tmp_path / "y" / "empty").mkdir()
    roots = [str(tmp_path / "x" / "alpha"), str(tmp_path / "y" / "beta")]
    roots.append(str(tmp_path / "y" / "empty"))
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=roots, replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        (tmp_path / "y" / "beta").chmod(0o700)
        (tmp_path / "y" / "empty").chmod(0o750)
        sc.capture()
        sc.stop()
        whole = tmp_path / "whole"
        eng.replay("s", to=whole)
        assert stat.S_IMODE((whole / "beta").stat().st_mode) == 0o700
        alone = tmp_path / "alone"
        eng.replay("s", to=alone, path="beta")
        assert stat.S_IMODE((alone / "beta").stat().st_mode) == 0o700
        assert (alone / "beta" / "g").read_bytes() == b"g"
        assert sorted(os.listdir(alone)) == ["beta"]
        # An empty root is an answer too (its directory, with its mode), not nothing.
        empty = tmp_path / "empty"
        eng.replay("s", to=empty, path="empty")
        assert os.listdir(empty / "empty") == []
        assert stat.S_IMODE((empty / "empty").stat().st_mode) == 0o750


# -- 5. bisect --json with a chatty command ----------------------------------------------------


def test_cli_bisect_json_stays_json_when_the_command_prints(
    small: tuple[Engine, dict[str, int]], capfd: pytest.CaptureFixture[str]
) -> None:
    eng, points = small
    state = str(eng.state_dir)
    eng.close()
    command = "echo checking; test ! -e later"
    code = main(["bisect", state, "s", command, "--good", "before", "--json"])
    assert code == 0
    captured = capfd.readouterr()
    found = json.loads(captured.out)
    assert found["first_bad"] is not None
    assert points["before"] <= found["last_good"] < found["first_bad"] <= points["end"]
    assert "checking" in captured.err


def test_cli_bisect_takes_the_verdict_from_the_shells_exit_not_from_its_background(
    small: tuple[Engine, dict[str, int]], tmp_path: Path
) -> None:
    """Review 22 (A, F2): the command's output went through a pipe, and each probe
    waited for its end: a process the command left in the background (a database
    started on the replay) held it open, for as long as it ran."""
    eng, points = small
    state = str(eng.state_dir)
    eng.close()
    pids = tmp_path / "pids"
    command = f"(sleep 600 & echo $! >> {pids}); test ! -e later"
    cli = [sys.executable, "-m", "xoengine", "bisect", state, "s", command, "--good", "before"]
    try:
        with open(tmp_path / "err", "wb") as err:  # a file: the sleeps keep what they inherit
            done = subprocess.run(
                [*cli, "--json"], stdout=subprocess.PIPE, stderr=err, timeout=120, check=False
            )
        assert done.returncode == 0, (tmp_path / "err").read_text()
        found = json.loads(done.stdout)
        assert points["before"] <= found["last_good"] < found["first_bad"] <= points["end"]
        # Review 25 (K4): each probe's processes end with it, not in a tree that is gone.
        assert not [pid for pid in pids.read_text().split() if _running(int(pid))]
    finally:
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def _running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its reaper has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


@pytest.mark.parametrize("stop", ["sigterm", "probe-timeout"])
def test_cli_bisect_ends_what_its_command_started_when_it_stops(
    small: tuple[Engine, dict[str, int]], tmp_path: Path, stop: str
) -> None:
    """Review 25 (K4): SIGTERM to bisect (``timeout``, ``systemctl stop``) killed the shell
    alone: what the command ran went on, orphaned, in a scratch tree already deleted; and a
    probe that hung hung the search. Its process group is killed with it now, and
    ``--probe-timeout`` ends a probe that takes too long (no verdict: E1001)."""
    eng, _ = small
    state = str(eng.state_dir)
    eng.close()
    ready = tmp_path / "ready"
    if stop == "sigterm":
        os.mkfifo(ready)  # the test reads it once the probe runs: then it stops bisect
    command = f"sleep 600 & echo $! > {ready}; wait"
    cli = [sys.executable, "-m", "xoengine", "bisect", state, "s", command, "--good", "before"]
    if stop == "probe-timeout":
        cli += ["--probe-timeout", "5"]
    pid = 0
    with open(tmp_path / "err", "wb") as err:
        bisect = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=err)
        try:
            if stop == "sigterm":
                with ready.open() as fifo:  # opens once the probe's shell writes: it runs
                    pid = int(fifo.read())
                bisect.terminate()
            status = bisect.wait(timeout=120)
            pid = pid or int(ready.read_text())
        finally:
            bisect.kill()
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    said = (tmp_path / "err").read_text()
    if stop == "sigterm":
        assert status == -signal.SIGTERM, said
    else:
        assert status == 2 and "gave no verdict within --probe-timeout 5 s" in said, said
    assert not _running(pid), "the command's background process outlived bisect"


def test_cli_bisect_refuses_a_probe_timeout_out_of_range(
    small: tuple[Engine, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = str(tmp_path / "state")
    for bad in ("0", "-1", "nan", "inf"):
        assert main(["bisect", state, "s", "true", "--probe-timeout", bad]) == 2
        assert "--probe-timeout is seconds above 0" in capsys.readouterr().err


# -- 6. instants of the wrong type ---------------------------------------------------------------


@pytest.mark.parametrize(
    "keywords",
    [
        {"at": dt.date(2026, 11, 27)},
        {"position": 5.5},
        {"position": True},
        {"position": "1"},
        {"point": 1},
        {"at": 1},
    ],
    ids=repr,
)
def test_replay_refuses_an_instant_of_the_wrong_type(
    small: tuple[Engine, dict[str, int]], tmp_path: Path, keywords: dict[str, Any]
) -> None:
    eng, _ = small
    with pytest.raises(ConfigurationError):
        eng.replay("s", to=tmp_path / "out", **keywords)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", [dt.date(2026, 1, 1), 5.5, True, b"before", 1j], ids=repr)
def test_instants_of_the_wrong_type_are_configuration_errors(
    small: tuple[Engine, dict[str, int]], value: Any
) -> None:
    eng, _ = small
    with pytest.raises(ConfigurationError):
        eng.diff("s", value)
    with pytest.raises(ConfigurationError):
        eng.diff("s", 1, value)
    with pytest.raises(ConfigurationError), eng.file_at("s", "a", value):
        pass
    with pytest.raises(ConfigurationError):
        eng.bisect("s", lambda _: True, between=(value, None))
    with pytest.raises(ConfigurationError):
        eng.instant("s", value)


# -- 7. rewind point names of a removed scenario -----------------------------------------------


def test_a_removed_scenarios_point_names_resolve(tmp_path: Path) -> None:
    master = tmp_path / "m"
    write(master / "a", b"1")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        before = sc.set_rewind_point("before").position
        write(master / "a", b"2")
        sc.capture()
        sc.stop()
        eng.remove_scenario("s")
    with Engine.open(tmp_path / "state", readonly=True) as ro:
        assert ro.instant("s", "before") == before
        assert ro.replay("s", to=tmp_path / "o", point="before").position == before
        assert (tmp_path / "o" / "a").read_bytes() == b"1"
        assert ro.diff("s", "before") == ro.diff("s", before)
        with ro.file_at("s", "a", "before") as f:
            assert f.read() == b"1"
        with pytest.raises(ConfigurationError, match="no rewind point named 'after'"):
            ro.instant("s", "after")
        with pytest.raises(ScenarioNotFoundError):
            ro.instant("t", "before")
    # The command line reads a point name of the removed scenario as the API does.
    assert main(["diff", str(tmp_path / "state"), "s", "before"]) == 0


def test_a_reused_name_resolves_a_point_name_to_the_newest(tmp_path: Path) -> None:
    master = tmp_path / "m"
    write(master / "a", b"old")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        old_only = sc.set_rewind_point("old-only").position
        old_shared = sc.set_rewind_point("shared").position
        sc.stop()
        eng.remove_scenario("s")
        write(master / "a", b"new")
        sc = eng.create_scenario("s", master=str(master), replicas={"r2": str(tmp_path / "r2")})
        sc.start()
        new_shared = sc.set_rewind_point("shared").position
        sc.stop()
        assert new_shared > old_shared
        assert eng.instant("s", "shared") == new_shared  # the scenario of the name now wins
        assert eng.instant("s", "old-only") == old_only  # an older one's, where it alone has it
        with eng.file_at("s", "a", "old-only") as f:
            assert f.read() == b"old"


# -- 8. truncation ranges ------------------------------------------------------------------------


def test_a_truncations_range_spans_the_bytes_it_changed(tmp_path: Path) -> None:
    master = tmp_path / "m"
    write(master / "f", b"0123456789")
    write(master / "g", b"0123456789" * 1000)
    write(master / "h", b"0123456789")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        a = eng.last_position()
        with sc.open("f", "r+b") as f:
            f.truncate(5000)  # bytes 10..4999 become zeros
        with sc.open("g", "r+b") as f:
            f.truncate(3)  # bytes 3..9999 go
        with sc.open("h", "r+b") as f:
            f.write(b"abcdefghijklmnopqrst")  # 20 bytes, then cut to 4
        with sc.open("h", "r+b") as f:
            f.truncate(4)
        b = eng.last_position()
        sc.stop()
        assert eng.diff("s", a, b).modified == {
            "f": [[10, 4990]],
            "g": [[3, 9997]],
            "h": [[0, 20]],  # the cut lies inside the write: one range
        }
        assert eng.diff("s", b, a).modified == eng.diff("s", a, b).modified
        for path, ranges in {"f": [[10, 4990]], "g": [[3, 9997]], "h": [[4, 16]]}.items():
            cuts = [e for e in eng.history("s", path) if e.operation == "truncated"]
            assert [e.ranges for e in cuts] == [ranges]


def test_a_cut_a_capture_saw_spans_the_tail_that_went(tmp_path: Path) -> None:
    """``truncate`` or ``>`` on the master: journaled as a write, the cut is in its ranges.

    Was a bug (review 17): a 1 MiB file cut to 512 KiB showed no range at all
    in ``diff``, ``history`` and ``rewind --dry-run``.
    """
    mib = 1 << 20
    master = tmp_path / "m"
    for name in ("half", "zero"):
        write(master / name, os.urandom(mib))
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        a = eng.last_position()
        os.truncate(master / "half", mib // 2)
        os.truncate(master / "zero", 0)
        sc.capture()
        b = eng.last_position()
        modified = eng.diff("s", a, b).modified
        assert [mib // 2, mib // 2] in modified["half"]
        assert modified["zero"] == [[0, mib]]
        assert eng.diff("s", b, a).modified == modified
        sc.wait_replicated()
        assert sc.rewind_preview("r1", position=a).modified == modified
        last = eng.history("s", "half")[-1]
        assert (last.operation, last.size) == ("written", mib // 2)
        assert [mib // 2, mib // 2] in last.ranges
        sc.stop()


def test_the_zeros_a_write_past_the_end_left_are_in_its_ranges(tmp_path: Path) -> None:
    """A write past a file's end (through ``sc.open``): the gap of zeros before it changed too.

    Was a bug (review 21, M1): the ranges held the written bytes only, ``[[1000, 10]]``
    where 910 bytes differ, in ``history``, ``diff`` both ways and ``rewind --dry-run``.
    """
    master = tmp_path / "m"
    write(master / "f", b"a" * 100)
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        a = eng.last_position()
        with sc.open("f", "r+b") as f:
            f.seek(1000)
            f.write(b"X" * 10)
        b = eng.last_position()
        sc.wait_replicated()
        assert eng.diff("s", a, b).modified == {"f": [[100, 910]]}
        assert eng.diff("s", b, a).modified == {"f": [[100, 910]]}
        assert sc.rewind_preview("r1", position=a).modified == {"f": [[100, 910]]}
        last = eng.history("s", "f")[-1]
        assert (last.operation, last.ranges, last.size) == ("written", [[100, 910]], 1010)
        sc.stop()


def test_bytes_a_delta_moved_within_the_file_are_in_its_ranges(tmp_path: Path) -> None:
    """Blocks copied over others, a hole punched, the tail cut: each change is in the ranges.

    Was a bug (review 18): the capture journals such a change as a delta
    (``replaced``) that builds the moved bytes from the old content; only its
    new data counted, so ``diff``, ``history`` and ``rewind --dry-run`` said
    ``f.bin: []`` while 44 KiB had changed.
    """
    kib = 1024
    master = tmp_path / "m"
    blocks = b"".join(bytes([65 + i]) * 4 * kib for i in range(16))
    write(master / "f.bin", blocks + bytes(16 * kib))
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        before = sc.set_rewind_point("before").position
        fd = os.open(master / "f.bin", os.O_RDWR)
        try:
            os.pwrite(fd, blocks[: 16 * kib], 32 * kib)  # blocks 0-3 over blocks 8-11
            os.pwrite(fd, bytes(16 * kib), 8 * kib)  # blocks 2-5 zeroed, as a punched hole reads
            os.ftruncate(fd, 68 * kib)  # the zero tail goes
        finally:
            os.close(fd)
        after = sc.set_rewind_point("after").position
        want = [[8 * kib, 16 * kib], [32 * kib, 16 * kib], [68 * kib, 12 * kib]]
        (change,) = [e for e in eng.history("s", "f.bin") if e.position > before]
        assert (change.operation, change.ranges) == ("replaced", want)
        assert eng.diff("s", before, after).modified == {"f.bin": want}
        sc.wait_replicated()
        assert sc.rewind_preview("r1", position=before).modified == {"f.bin": want}
        sc.stop()


# -- 9. one path's change is one commit ------------------------------------------------------------


def test_a_file_change_past_the_flush_size_is_journaled_in_one_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No time shows a file half old, half new: a state the master never had.

    Was a bug (review 17): a change streamed past ``FLUSH_BYTES`` committed
    its parts as it read them, each under a time label of its own. The bytes
    are still stored as they are read (memory stays bounded); the events wait.
    """
    from xoengine import capture as capture_module  # noqa: PLC0415
    from xoengine.blobtable import BLOB_MAX  # noqa: PLC0415

    monkeypatch.setattr(capture_module, "FLUSH_BYTES", BLOB_MAX)
    old, new = os.urandom(6 * BLOB_MAX), os.urandom(6 * BLOB_MAX)
    master = tmp_path / "m"
    write(master / "small", b"s")
    write(master / "big", old)
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        before = eng.last_position()
        write(master / "big", new)
        write(master / "small", b"t")
        result = sc.capture()
        assert result.bytes_journaled >= len(new)
        positions = range(before, eng.last_position() + 1)
        labels = {eng.recorder.time_of(p) for p in positions}
        assert len(labels) > 1  # the premise: the pass is more than one commit
        seen = set()
        for label in labels:  # a time resolves to the end of a commit
            position = eng.instant("s", dt.datetime.fromtimestamp(label / 1e9, dt.UTC))
            assert eng.recorder.time_of(position) == label
            with contextlib.suppress(NoFileAtError), eng.file_at("s", "big", position) as f:
                seen.add(f.read())
        assert seen == {old, new}
        # The file's events share one commit: one label from its first to its last.
        history = [e for e in eng.history("s", "big") if e.position > before]
        assert len(history) > 2  # the premise: the change is several events
        assert len({e.time for e in history}) == 1
        sc.wait_replicated()
        assert (tmp_path / "r1" / "big").read_bytes() == new


def test_cat_says_when_a_position_is_a_step_inside_one_commit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file's creation and its content are two positions of one commit: the first is a step."""
    master = tmp_path / "m"
    write(master / "a", b"first")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        write(master / "b", b"made with bytes")
        sc.capture()
        created, written = (e.position for e in eng.history("s", "b"))
        assert written == created + 1
    state = str(tmp_path / "state")
    assert main(["cat", state, "s", "b", "--at", str(created)]) == 0
    said = capsys.readouterr()
    assert said.out == ""  # made empty, then written: the step holds no byte yet
    assert f"shares its time label with later positions, up to {written}" in said.err
    assert main(["cat", state, "s", "b", "--at", str(written), "--json"]) == 0
    said = capsys.readouterr()
    assert said.out == "made with bytes"
    assert json.loads(said.err)["commit_end"] == written
    assert "time label" not in said.err


def test_a_time_before_the_scenarios_first_change_is_said_so(
    small: tuple[Engine, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The rule gives a position where the journal knows nothing: the answer is empty, and said so.

    Review 17: ``replay --at 1999-01-01`` gave an empty tree and exit 0, as if
    the master had been empty then.
    """
    eng, points = small
    state = str(tmp_path / "state")
    early = "1999-01-01T00:00:00+00:00"
    assert main(["replay", state, "s", "--to", str(tmp_path / "out"), "--at", early]) == 0
    said = capsys.readouterr().err
    assert f"note: {early} names position 0, before the first change" in said
    assert main(["diff", state, "s", early, "--json"]) == 0
    out, err = capsys.readouterr()
    assert "before the first change" in err
    json.loads(out)  # stdout stays the answer alone
    when = dt.datetime.fromtimestamp(eng.recorder.time_of(points["end"]) / 1e9, dt.UTC)
    assert main(["diff", state, "s", when.isoformat()]) == 0
    assert "note:" not in capsys.readouterr().err


def test_a_time_finer_than_a_microsecond_is_refused_not_cut(
    small: tuple[Engine, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 19: ``--at`` with nanoseconds (``stat -c %z``) was cut to its microsecond,
    which names that microsecond's last nanosecond: 1 ns before a commit gave the commit."""
    eng, points = small
    state = str(tmp_path / "state")
    label = eng.recorder.time_of(points["end"])
    seconds, ns = divmod(label - 1, 10**9)
    whole = dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    capsys.readouterr()
    assert main(["cat", state, "s", "b", "--at", f"{whole}.{ns:09d}+00:00"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error E1001:") and "finer than a microsecond" in err, err
    # Zeros past the microsecond name it exactly: taken.
    micro = f"{whole}.{ns // 1000:06d}000+00:00"
    assert main(["diff", state, "s", micro, "--json"]) == 0


def test_a_time_without_a_utc_offset_is_refused_by_every_verb(
    small: tuple[Engine, dict[str, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 25 (K2): a time without an offset was read as UTC, whatever the zone of whoever
    typed it: local "15:04" in New York named 10:04 there, east of UTC a later instant
    (inside an attack). The API refuses a naive datetime; the command line does too."""
    _, _ = small
    state = str(tmp_path / "state")
    naive = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    capsys.readouterr()
    for argv in (
        ["rewind", state, "s", "r1", "--at", naive, "--dry-run"],
        ["replay", state, "s", "--to", str(tmp_path / "out"), "--at", naive],
        ["cat", state, "s", "b", "--at", naive],
        ["diff", state, "s", naive],
        ["bisect", state, "s", "true", "--good", naive],
        ["journal", "log", state, "--since", naive],
        ["journal", "log", state, "--until", naive[:10]],  # a date alone: midnight where?
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error E1001:") and "has no UTC offset" in err, (argv, err)
    assert not (tmp_path / "out").exists()
    # Review 25 (M7): a date alone is told its midnight's form, which parses.
    assert main(["diff", state, "s", naive[:10]]) == 2
    assert f"({naive[:10]}T00:00Z for UTC" in capsys.readouterr().err
    for stamp in (
        f"{naive}Z",
        f"{naive}+00:00",
        f"{naive}-05:00",
        f" {naive}z ",
        f"{naive[:10]}T00:00Z",
    ):
        assert main(["diff", state, "s", stamp, "--json"]) == 0
        capsys.readouterr()


def test_an_attribute_set_and_removed_again_is_no_difference(tmp_path: Path) -> None:
    """Review 19: ``diff`` listed the file under ``metadata``: no attributes ever set
    (None) and all of them removed ({}) were compared as different."""
    master = tmp_path / "m"
    write(master / "xa", b"b")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        before = eng.last_position()
        stat_before = os.stat(master / "xa")
        os.setxattr(master / "xa", "user.k", b"v1")
        sc.capture()
        os.removexattr(master / "xa", "user.k")
        os.utime(master / "xa", ns=(stat_before.st_atime_ns, stat_before.st_mtime_ns))
        sc.capture()
        assert eng.diff(sc, before, eng.last_position()).metadata == []
        sc.stop()


def test_cat_out_keeps_a_sparse_files_holes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 19: ``cat --out`` wrote a thin disk image out whole (64 MiB for 6 bytes of data)."""
    master = tmp_path / "m"
    master.mkdir()
    with open(master / "img", "wb") as image:
        image.truncate(64 << 20)
        image.seek(32 << 20)
        image.write(b"mid")
        image.seek((64 << 20) - 3)
        image.write(b"end")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        sc.stop()
    out = tmp_path / "img.out"
    assert main(["cat", str(tmp_path / "state"), "s", "img", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().err)
    data = out.read_bytes()
    assert data == (master / "img").read_bytes()
    assert summary["bytes"] == len(data) == 64 << 20
    assert summary["sha256"] == hashlib.sha256(data).hexdigest()
    assert out.stat().st_blocks * 512 <= 1 << 20  # the holes stayed holes


def test_a_time_while_the_scenario_was_stopped_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 19: ``cat --at`` a time when nothing captured the master answered without a word."""
    master = tmp_path / "m"
    write(master / "f", b"v1")
    state = str(tmp_path / "state")
    with Engine.open(state, durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        running = eng.last_position()
        sc.stop()
        stop = eng.last_position()
        write(master / "f", b"v2, made while stopped")
        sc.start()
        again = eng.last_position()
        sc.stop()
        at_running, at_stop, at_again = (
            iso_time(eng.recorder.time_of(p)) for p in (running, stop, again)
        )
        assert eng.stopped_at("s", running) is None
        assert eng.stopped_at("s", stop) == (stop, eng.recorder.time_of(stop))
        assert eng.stopped_at("s", again) is None
    for at, noted in ((at_running, False), (at_stop, True), (at_again, False)):
        capsys.readouterr()
        assert main(["cat", state, "s", "f", "--at", at]) == 0
        out, err = capsys.readouterr()
        assert out == ("v1" if at != at_again else "v2, made while stopped")
        assert ("s was stopped at" in err) is noted, (at, err)
        assert ("changes made to the master while it was stopped were not captured" in err) is noted


def test_a_time_after_the_last_record_of_a_running_scenario_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 24 (H3): on a copy taken while the scenario ran, a time after its last
    record was answered with the last bytes journaled and no word: the copy cannot
    say what the master held then. (Stopped, the stop's note says why.)"""
    master = tmp_path / "m"
    write(master / "f", b"v1")
    state = str(tmp_path / "state")
    eng = Engine.open(state, durability="nosync")
    try:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        last = iso_time(eng.recorder.time_of(eng.last_position()))
        assert eng.scenario("s").state == "Running"
    finally:
        eng.close()  # closed while running: as a copy taken beside the writer reads
    for at, noted in ((last, False), ("2099-01-01T00:00:00Z", True)):
        capsys.readouterr()
        assert main(["cat", state, "s", "f", "--at", at]) == 0
        out, err = capsys.readouterr()
        assert out == "v1"
        assert ("after the journal's last record" in err) is noted, (at, err)


def test_a_time_before_the_journal_of_a_never_started_scenario_is_answered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Review 20: ``replay --at`` a time before the journal was ``KeyError: 0`` (no label)."""
    (tmp_path / "m").mkdir()
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        eng.create_scenario("s", master=str(tmp_path / "m"), replicas={"r1": str(tmp_path / "r1")})
        assert eng.clock_behind("s", 0) is None
        assert eng.stopped_at("s", 0) is None
    argv = ["replay", str(tmp_path / "state"), "s", "--at", "2020-01-01T00:00:00Z"]
    status = main([*argv, "--to", str(tmp_path / "out")])
    assert status in (0, 2), capsys.readouterr().err  # an answer or a coded refusal


def test_a_name_made_again_is_not_said_stopped_by_the_removed_scenarios_stop(
    tmp_path: Path,
) -> None:
    """Review 20: the stop of a removed scenario was said of a new one under its name."""
    write(tmp_path / "m" / "f", b"1")
    (tmp_path / "m2").mkdir()
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario(
            "s", master=str(tmp_path / "m"), replicas={"r1": str(tmp_path / "r1")}
        )
        sc.start()
        sc.stop()
        stopped = eng.last_position()
        assert eng.stopped_at("s", stopped) is not None
        eng.remove_scenario("s")
        eng.create_scenario("s", master=str(tmp_path / "m2"), replicas={"r1": str(tmp_path / "r2")})
        assert eng.stopped_at("s", eng.last_position()) is None


# -- review 21 -------------------------------------------------------------------------------


def test_cat_of_a_file_its_owner_could_not_read_then_gives_its_bytes(tmp_path: Path) -> None:
    """Was a bug (review 21, M5): a file ``chmod 200`` at the instant asked (an intruder's
    doing) made ``cat`` die with a PermissionError traceback for an investigator without
    CAP_DAC_OVERRIDE (any user): the replayed copy kept the mode that forbids reading it."""
    master = tmp_path / "m"
    write(master / "wo.txt", b"write-only evidence\n")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        os.chmod(master / "wo.txt", 0o200)
        sc.capture()
        sc.stop()
    # The reading process without the capabilities that let root read anything.
    unprivileged = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
    if os.geteuid() != 0:
        unprivileged = []
    done = subprocess.run(
        [
            *unprivileged,
            sys.executable,
            "-m",
            "xoengine.cli",
            "cat",
            str(tmp_path / "state"),
            "s",
            "wo.txt",
        ],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert (done.returncode, done.stdout) == (0, b"write-only evidence\n"), done.stderr


@pytest.mark.parametrize("verb", [["diff", "s", "²"], ["cat", "s", "a", "--at", "³"]])
def test_a_unicode_digit_instant_is_a_coded_error(
    small: tuple[Engine, dict[str, int]], tmp_path: Path, verb: list[str]
) -> None:
    """Was a bug (review 21, L1): ``"²".isdigit()`` holds but ``int("²")`` raises:
    a ValueError traceback where a coded E1001 belongs."""
    done = run_cli(verb[0], tmp_path / "state", *verb[1:])
    assert done.returncode == 2 and "E1001" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_bisect_takes_none_as_the_good_bound_for_position_zero(
    small: tuple[Engine, dict[str, int]],
) -> None:
    """Was a bug (review 21, L2): ``between=(None, b)`` read None as the journal's end, so the
    search refused to start; None is position 0 (the empty tree), as the default is. A predicate
    that raises keeps its own exception, with a note naming the probe's position."""
    eng, _ = small

    def has_no_later(tree: str) -> bool:
        return not os.path.exists(os.path.join(tree, "later"))

    default = eng.bisect("s", has_no_later)
    assert eng.bisect("s", has_no_later, between=(None, None)).last_good == default.last_good
    end = eng.last_position()
    assert eng.bisect("s", has_no_later, between=(None, end)).last_good == default.last_good
    with pytest.raises(ZeroDivisionError) as raised:
        eng.bisect("s", lambda tree: 1 / 0 > 0)
    assert "raised by the bisect predicate at position 0" in raised.value.__notes__


def test_history_of_dot_in_a_scenario_of_several_roots_is_an_error(tmp_path: Path) -> None:
    """Was a bug (review 21, L4): ``history(".")`` was an empty list where no root is named
    "." (each of several roots has its name); a typo is never an empty answer."""
    for name in ("alpha", "beta"):
        write(tmp_path / name / "f", name.encode())
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        roots = [str(tmp_path / "alpha"), str(tmp_path / "beta")]
        sc = eng.create_scenario("s", master=roots, replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        sc.stop()
        for path in (".", "/"):
            with pytest.raises(NoFileAtError, match="names no root"):
                eng.history("s", path)
        assert [e.operation for e in eng.history("s", "alpha")] == ["root"]


def test_output_inside_a_scenarios_tree_or_the_state_directory_is_refused(
    tmp_path: Path,
) -> None:
    """Was a bug (review 21, M2, L3): ``replay --to`` (and ``cat --out``, ``--scratch``)
    into the scenario's master was journaled by the next capture as the master's own
    content; into a replica, a synchronization removed it; the library's replay wrote
    even beside ``data.mdb``. Each is E2007 now, and nothing is written."""
    master = tmp_path / "m"
    write(master / "doc.txt", b"v1")
    state = tmp_path / "state"
    with Engine.open(state, durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        sc.stop()
    places = [master / "evidence", tmp_path / "r1" / "evidence", state / "journal" / "out"]
    with Engine.open(state, readonly=True) as eng:
        for place in places:
            with pytest.raises(OutputLocationError, match="inside"):
                eng.replay("s", to=place)
            with (
                pytest.raises(OutputLocationError, match="inside"),
                eng.file_at("s", "doc.txt", scratch=place.parent),
            ):
                pass
            assert not place.exists()
    for place in places:
        for verb in (["replay", "--to", place], ["cat", "doc.txt", "--out", place]):
            done = run_cli(verb[0], state, "s", *verb[1:])
            assert done.returncode == 2 and "E2007" in done.stderr, done.stderr
            assert not place.exists()
    # Review 22 (A, F8): the state directory's journal/ named instead of the state
    # directory (it opens as a bare journal) let a replay into the state directory.
    with Engine.open(state / "journal", readonly=True) as eng:
        with pytest.raises(OutputLocationError, match="inside"):
            eng.replay("s", to=state / "out")
    assert not (state / "out").exists()
    assert sorted(p.name for p in master.iterdir()) == ["doc.txt"]


@pytest.mark.parametrize("closed", ["journal", "data.mdb"])
def test_a_copy_this_user_may_not_read_is_a_coded_error_not_no_journal(
    tmp_path: Path, closed: str
) -> None:
    """Review 24 (H5): a copy whose journal directory this user could not search made
    every engine verb die with a PermissionError traceback, and `journal verify` say
    "No journal" (E4001, "open it writable to create one"); an unreadable data file
    was E4003 "open it writable". Each is E4008 now, naming what may not be read."""
    master = tmp_path / "m"
    write(master / "a", b"a")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(tmp_path / "r1")})
        sc.start()
        sc.stop()
    target = tmp_path / "state" / "journal" / ("" if closed == "journal" else closed)
    os.chmod(target, 0)
    unprivileged = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
    if os.geteuid() != 0:
        unprivileged = []
    try:
        state = str(tmp_path / "state")
        for verb in (
            ["history", state, "s", "a"],
            ["journal", "verify", state],
            ["journal", "log", state],
        ):
            done = subprocess.run(
                [*unprivileged, sys.executable, "-m", "xoengine.cli", *verb],
                capture_output=True,
                text=True,
                check=False,
                timeout=120,
            )
            assert done.returncode == 3, (verb, done.stderr)
            assert "E4008" in done.stderr and "Traceback" not in done.stderr, (verb, done.stderr)
    finally:
        os.chmod(target, 0o755 if closed == "journal" else 0o644)


def test_replay_and_rewind_read_at_as_every_verb_reads_an_instant(
    small: tuple[Engine, dict[str, int]], tmp_path: Path
) -> None:
    """Review 24 (H4): ``replay --at`` and ``rewind --at`` took only times, while
    ``cat``/``diff``/``bisect --at`` take a position, a rewind point or a time: the
    same text (``20261129``) was a position to one verb and a date to the other."""
    eng, points = small
    state = tmp_path / "state"
    for at in ("before", str(points["before"])):
        out = tmp_path / f"out-{at}"
        done = run_cli("replay", state, "s", "--to", out, "--at", at, "--json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["position"] == points["before"]
        assert sorted(os.listdir(out)) == ["a", "gone"] and (out / "a").read_bytes() == b"1"
        preview = run_cli("rewind", state, "s", "r1", "--at", at, "--dry-run", "--json")
        assert preview.returncode == 0, preview.stderr
    far = run_cli("replay", state, "s", "--to", tmp_path / "far", "--at", "20261129")
    cat = run_cli("cat", state, "s", "a", "--at", "20261129")
    assert far.returncode == cat.returncode == 2, (far.stderr, cat.stderr)  # both: a position
    assert "E1001" in far.stderr and "E1001" in cat.stderr
    both = run_cli(
        "replay", state, "s", "--to", tmp_path / "b", "--at", "before", "--position", "1"
    )
    assert both.returncode == 2 and "not both" in both.stderr, both.stderr


def test_replay_and_diff_at_a_position_inside_a_commit_say_so(
    small: tuple[Engine, dict[str, int]], tmp_path: Path
) -> None:
    """Review 24 (L9): ``cat`` noted a position inside a commit (a step of it, such as
    a file made before its content); ``replay`` and ``diff`` built that state silently."""
    eng, points = small
    recorder = eng.recorder
    inside = next(
        p for p in range(1, points["end"]) if recorder.position_at(recorder.time_of(p)) != p
    )
    state = tmp_path / "state"
    for verb in (
        ["replay", state, "s", "--to", tmp_path / "out", "--position", str(inside)],
        ["diff", state, "s", str(inside), str(points["end"])],
    ):
        done = run_cli(*verb)
        assert done.returncode == 0, done.stderr
        assert f"position {inside} shares its time label" in done.stderr, done.stderr
    done = run_cli("replay", state, "s", "--to", tmp_path / "end", "--position", str(points["end"]))
    assert "shares its time label" not in done.stderr


def test_replay_of_an_empty_path_is_refused_and_dot_is_the_whole_tree(
    small: tuple[Engine, dict[str, int]], tmp_path: Path
) -> None:
    """Review 24 (L1): ``--path ''`` (a variable left empty) replayed the whole tree
    silently, while ``--path .`` (the root, as ``history .`` takes it) was refused;
    ``--path file/`` gave the file."""
    eng, _ = small
    with pytest.raises(InvalidRelPathError):
        eng.replay("s", to=tmp_path / "empty", path="")
    assert not (tmp_path / "empty").exists()
    whole = eng.replay("s", to=tmp_path / "dot", path=".")
    assert sorted(os.listdir(tmp_path / "dot")) == ["a", "later"] and whole.files == 2
    with pytest.raises(NoFileAtError, match="not the directory"):  # "a/" names a directory
        eng.replay("s", to=tmp_path / "slash", path="a/")
    assert not (tmp_path / "slash").exists()


def test_a_replay_into_another_journals_directory_is_refused(
    small: tuple[Engine, dict[str, int]], tmp_path: Path
) -> None:
    """Review 24 (L3): a replay or ``cat --out`` refused only the state directory it
    read, and wrote into another one (the original's, another evidence copy's)."""
    eng, _ = small
    other = tmp_path / "other"
    assert run_cli("journal", "copy", tmp_path / "state", other / "journal").returncode == 0
    for target in (other / "journal" / "rebuilt", other / "rebuilt"):
        with pytest.raises(OutputLocationError, match="another journal"):
            eng.replay("s", to=target)
        assert not target.exists()
    eng.replay("s", to=tmp_path / "elsewhere")  # beside it, not in it


def test_a_replay_target_that_is_a_link_is_refused_as_a_link(
    small: tuple[Engine, dict[str, int]], tmp_path: Path
) -> None:
    """Review 24 (L2): a target that is a symbolic link to an empty directory was
    refused as "not an empty directory"."""
    eng, _ = small
    (tmp_path / "empty").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    with pytest.raises(ConfigurationError, match="a symbolic link"):
        eng.replay("s", to=tmp_path / "link")
    assert os.listdir(tmp_path / "empty") == []


def test_a_bisect_predicate_that_says_no_bool_is_refused(
    small: tuple[Engine, dict[str, int]],
) -> None:
    """Review 24 (G, minor): the verdict was ``bool(predicate(...))``: a predicate that
    answered ``"no"`` (truthy) was taken for good, silently."""
    eng, _ = small
    with pytest.raises(ConfigurationError, match="must return True"):
        eng.bisect("s", lambda tree: "no")
    result = eng.bisect("s", lambda tree: not os.path.exists(os.path.join(tree, "later")))
    assert result.first_bad is not None
