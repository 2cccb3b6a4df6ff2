"""Runtime edges: open reads and a growing map, stop with the watcher on, and
the CLI killed by SIGTERM.

1. A capture that must grow the LMDB map while a read of the store is open and
   idle (on the capturing thread itself, or on another one) ends: the grow cannot
   wait for an idle read, so the capture fails with a coded error instead of
   hanging (at once when the read is the capturing thread's own, which waits for
   the commit), and nothing is lost (a capture after the read ends journals it
   all). Busy readers, and journal iterators left unfinished (they hold no read
   between chunks), do not make it fail. Each case runs in a subprocess with a
   timeout, so a regression fails instead of hanging the suite.
2. ``stop()`` journals every change made before it (its last pass is a full
   capture), with no watchdog noise (nothing logged: on a process without logging
   set up that went to stderr).
3. ``xoengine replay`` and ``cat --out`` interrupted by SIGTERM clean up as after
   Ctrl-C and end by that signal. The child blocks at a known point and says so
   on stderr; the signal is sent then (no sleeps).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from xoengine.engine import Engine, Scenario
from xoengine.forensic import UNFINISHED_REPLAY
from xoengine.testing import compare_trees

HANG_GUARD_S = 180  # only ends a stuck child so that the failure is reported

_GROW_SCRIPT = r"""
import json, os, sys, threading
from pathlib import Path
from xoengine.engine import Engine
from xoengine.errors import StorageError
from xoengine.testing import compare_trees

mode, base = sys.argv[1], Path(sys.argv[2])
master, replica = base / "m", base / "r1"
master.mkdir()
(master / "small").write_text("x")
eng = Engine.open(base / "state", durability="nosync", map_size=4 * 1024 * 1024)
# The capturing thread's own read can never end while it waits for the commit: that
# must fail at once, whatever the patience (a wait would hit HANG_GUARD_S).
eng.store.grow_patience = 3600.0 if mode == "same" else 2.0
sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(replica)})
sc.start()
before = eng.last_position()
# One batch of 24 MiB: committed off the scanning thread, it needs the map to grow.
for i in range(2):
    (master / f"big{i}").write_bytes(os.urandom(12 * 1024 * 1024))
grew_from = eng.store.info().map_size

def attempt():
    try:
        return "captured %d" % sc.capture().events
    except StorageError as e:
        return f"{e.code} {e.message}"

if mode == "iterate":
    # The embedder's natural loop: capture while iterating the journal. The
    # iterator holds no read between its chunks: nothing waits for it.
    events = eng.file_events("s", None)
    seen = [next(events)]
    first = attempt()
    seen += list(events)
    assert {e.path for _, _, e in seen} == {"small"}, seen  # the journal as it began
elif mode == "same":
    with eng.store.read():  # a read left open by the capturing thread itself
        first = attempt()
elif mode == "other":
    held, release = threading.Event(), threading.Event()
    def hold():
        with eng.store.read():
            held.set()
            release.wait()
    holder = threading.Thread(target=hold, name="ui-thread")
    holder.start()
    held.wait()
    first = attempt()
    release.set()
    holder.join()
else:  # "busy": another thread reads all along, each read short
    done = threading.Event()
    def read():
        while not done.is_set():
            eng.history("s", "small")
            sc.statistics()
    reader = threading.Thread(target=read, name="reader")
    reader.start()
    first = attempt()
    done.set()
    reader.join()
second = sc.capture().events
sc.wait_replicated(timeout=60)
journaled = {e.path for _, _, e in eng.file_events("s", None)}
print(json.dumps({
    "first": first,
    "second": second,
    "grew": eng.store.info().map_size > grew_from,
    "kept": eng.last_position() > before,
    "journaled": sorted(journaled),
    "differences": len(compare_trees(master, replica)),
}))
eng.close()
"""


def _child(script: str, *args: str | Path) -> Any:
    """Run ``script`` in a child (ended by HANG_GUARD_S); the JSON of its last line."""
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _grow(mode: str, tmp_path: Path) -> dict[str, object]:
    result: dict[str, object] = _child(_GROW_SCRIPT, mode, tmp_path)
    return result


@pytest.mark.parametrize("mode", ["same", "other"])
def test_capture_needing_a_bigger_map_beside_an_open_read_ends(mode: str, tmp_path: Path) -> None:
    result = _grow(mode, tmp_path)
    first = str(result["first"])
    # A coded error naming the thread that holds the read, not a hang.
    assert first.startswith("E4000 "), first
    assert "end the read" in first
    assert ("'MainThread'" if mode == "same" else "'ui-thread'") in first
    assert ("waits for this write" in first) == (mode == "same"), first
    # Nothing lost: once the iterator ended, the next capture journals it all (the
    # two files, their directory's change), as one capture does with no iterator open.
    assert result["second"] == 4
    assert result["grew"] is True
    assert result["journaled"] == ["big0", "big1", "small"]
    assert result["differences"] == 0


@pytest.mark.parametrize("mode", ["busy", "iterate"])
def test_capture_needing_a_bigger_map_waits_for_busy_readers_not_iterators(
    mode: str, tmp_path: Path
) -> None:
    result = _grow(mode, tmp_path)
    assert result["first"] == "captured 4"
    assert result["second"] == 0
    assert result["grew"] is True
    assert result["journaled"] == ["big0", "big1", "small"]
    assert result["differences"] == 0


_FLUSH_SCRIPT = r"""
import json, os, sys
from pathlib import Path
from xoengine.engine import Engine
from xoengine.errors import StorageError
from xoengine.testing import compare_trees

base = Path(sys.argv[1])
master, replica = base / "m", base / "r1"
master.mkdir()
(master / "db").write_bytes(bytes(8192))
eng = Engine.open(base / "state", durability="nosync", map_size=4 * 1024 * 1024)
sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(replica)})
sc.start()
f = sc.open("db", "r+b")
with eng.store.read():  # the map must grow for the flush: it cannot while this read is open
    try:
        f.write(os.urandom(12 * 1024 * 1024))  # past BLOB_MAX: flushed by the write
        first = "flushed"
    except StorageError as e:
        first = e.code
f.seek(0, os.SEEK_END)
f.write(b"tail")  # the program goes on writing, and its next flush succeeds
f.close()
captured = sc.capture().events  # the stat the flush recorded is the file's: nothing to see
sc.wait_replicated(timeout=60)
with eng.file_at("s", "db") as held:
    journal_holds = held.read() == (master / "db").read_bytes()
print(json.dumps({
    "first": first,
    "captured": captured,
    "journal_holds": journal_holds,
    "differences": len(compare_trees(master, replica)),
}))
eng.close()
"""


def test_a_journaled_file_flush_that_failed_is_journaled_by_the_next(tmp_path: Path) -> None:
    """Review 24 (G1): a flush that failed (E4000 here; a full journal volume, Ctrl-C)
    dropped the ranges it took; the next flush journaled its own and recorded the
    file's stat, so no capture looked again: the journal and every replica kept
    zeros where the master had the bytes. The failed flush's ranges now stay."""
    result = _child(_FLUSH_SCRIPT, tmp_path)
    assert result["first"] == "E4000"
    assert result["journal_holds"] is True
    assert result["differences"] == 0
    assert result["captured"] == 0


_ABORT_SCRIPT = r"""
import json, os, sys, threading
from xoengine.datastore import open_store

store = open_store(sys.argv[1], durability="nosync", map_size=1 << 20)
store.ensure("t")
stop = threading.Event()

def read():
    while not stop.is_set():
        with store.read() as txn:
            txn.get("t", b"k")

readers = [threading.Thread(target=read) for _ in range(3)]
for reader in readers:
    reader.start()
outcomes = []
for i in range(40):
    data = os.urandom(256 * 1024)
    def work(txn, i=i, data=data):
        txn.put("t", b"k%d" % i, data)
        if i % 4 == 3:
            raise ValueError(i)  # its caller's error: the transaction is aborted
    try:
        store.write(work)
        outcomes.append("ok")
    except ValueError:
        outcomes.append("refused")
stop.set()
for reader in readers:
    reader.join()
with store.read() as txn:
    kept = sum(1 for _ in txn.items("t"))
print(json.dumps({"outcomes": outcomes, "kept": kept, "map": store.info().map_size}))
store.close()
"""


def test_writes_that_abort_finish_while_other_threads_keep_reading(tmp_path: Path) -> None:
    """A full map and a failing write each abort a transaction; busy readers never hold it off.

    py-lmdb (2.x on) makes an abort wait until no operation of any thread is in
    flight: three threads reading back to back held a write's abort for
    seconds, or for ever (3 of 90 writes done in 30 s).
    """
    result = _child(_ABORT_SCRIPT, tmp_path / "store")
    assert result["outcomes"] == ["refused" if i % 4 == 3 else "ok" for i in range(40)]
    assert result["kept"] == 30
    assert result["map"] > 1 << 20


# -- 2. stop() with the live watcher ----------------------------------------------------------


ROUNDS = 8


def _journal_holds(eng: Engine, master: Path, where: Path) -> list[str]:
    """How the journal's end differs from ``master`` (a replay of it, compared)."""
    eng.replay("s", to=where, position=eng.last_position())
    return [str(d) for d in compare_trees(master, where)]


def _watched(eng: Engine, tmp_path: Path) -> tuple[Scenario, Path]:
    """Scenario ``s`` of a master holding ``a`` ("0"), with a long watch delay: only
    ``stop()`` (or ``close()``) can journal what the test changes after ``start``."""
    master = tmp_path / "m"
    master.mkdir()
    (master / "a").write_text("0")
    replica = str(tmp_path / "r1")
    sc = eng.create_scenario("s", master=str(master), replicas={"r1": replica}, watch_delay=30)
    return sc, master


def test_watch_stop_journals_a_change_made_just_before(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc, master = _watched(eng, tmp_path)
        for k in range(ROUNDS):
            sc.start(watch=True)
            (master / f"new{k}").write_text(f"round {k}")
            (master / "a").write_text(f"{k + 1}")
            sc.stop()
            assert _journal_holds(eng, master, tmp_path / f"replay{k}") == [], k
    assert not [r for r in caplog.records if r.name.startswith("watchdog")]


def test_watch_journals_a_change_made_just_before_close_by_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The report's case: the `with` block left through an exception right after a write.
    master = tmp_path / "m"
    master.mkdir()
    (master / "a").write_text("1")
    for k in range(ROUNDS):
        state = tmp_path / f"state{k}"
        with pytest.raises(RuntimeError), Engine.open(state, durability="nosync") as eng:
            sc = eng.create_scenario(
                "s", master=str(master), replicas={"r1": str(tmp_path / f"r{k}")}, watch_delay=30
            )
            sc.start(watch=True)
            (master / f"b{k}").write_text("new file")
            raise RuntimeError("embedder bug")
        with Engine.open(state, readonly=True) as reader:
            assert _journal_holds(reader, master, tmp_path / f"replay{k}") == [], k
    assert not [r for r in caplog.records if r.name.startswith("watchdog")]


def test_watch_stop_journals_a_burst_after_a_read_of_a_file(tmp_path: Path) -> None:
    # A mark sent through watchdog's queue (open a file, wait for its close event) was
    # taken for the stale close of a read made just before the burst: 157 of 400 files.
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc, master = _watched(eng, tmp_path)
        sc.start(watch=True)
        assert (master / "a").read_text() == "0"
        for i in range(400):
            (master / f"burst{i:03}").write_text(str(i))
        sc.stop()
        assert _journal_holds(eng, master, tmp_path / "replay") == []


_EXCHANGE_SCRIPT = r"""
import ctypes, json, sys
from pathlib import Path
from xoengine.engine import Engine

base = Path(sys.argv[1])
master = base / "m"
(master / "x1").mkdir(parents=True)
(master / "x1" / "k").write_text("k")
(master / "x2").mkdir()
(master / "x2" / "k2").write_text("k2")
eng = Engine.open(base / "state", durability="nosync")
sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(base / "r1")}, watch_delay=30)
sc.start(watch=True)
libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2
x1, x2 = str(master / "x1").encode(), str(master / "x2").encode()
assert libc.renameat2(-100, x1, -100, x2, RENAME_EXCHANGE) == 0, ctypes.get_errno()
(master / "x1" / "late").write_text("written just before stop")
sc.stop()
print(json.dumps({"late": [e.operation for e in eng.history("s", "x1/late")]}))
eng.close()
"""


def test_watch_stop_after_two_directories_were_exchanged(tmp_path: Path) -> None:
    # watchdog's inotify watches lose track of an exchange (renameat2 RENAME_EXCHANGE):
    # stop() raised its KeyError, the watcher's thread went on, and close() hung.
    assert _child(_EXCHANGE_SCRIPT, tmp_path) == {"late": ["created", "written"]}


# -- 3. the CLI and SIGTERM -------------------------------------------------------------------

# Runs the CLI with one step made to stop half-way: it says "blocked" on stderr and
# waits on stdin, where the test's signal finds it.
_CLI_HOOKED = r"""
import sys
from xoengine import cli, tree
from xoengine.cli import forensic

def block():
    print("blocked", file=sys.stderr, flush=True)
    sys.stdin.readline()

hook = sys.argv[1]
if hook == "replay-cleanup":  # a second signal while the cleanup runs
    delete = tree.ReplicaTree.delete
    def hooked_delete(self, *args, **kwargs):
        if not getattr(hooked_delete, "once", False):
            hooked_delete.once = True
            print("cleaning", file=sys.stderr, flush=True)
            sys.stdin.readline()
        return delete(self, *args, **kwargs)
    tree.ReplicaTree.delete = hooked_delete
    hook = "replay"
if hook == "replay":
    write_new = tree.ReplicaTree.write_new
    count = 0
    def hooked(self, *args, **kwargs):
        global count
        count += 1
        if count == 5:  # some files written, more to come
            block()
        return write_new(self, *args, **kwargs)
    tree.ReplicaTree.write_new = hooked
else:
    copy = forensic._copy
    def hooked_copy(source, sink, digest):
        if sink is not None:  # to stdout; with --out the file is there and is being hashed
            sink.write(source.read(1 << 16))
            sink.flush()
        block()
        return copy(source, sink, digest)
    forensic._copy = hooked_copy
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def journal_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("cli-sigterm")
    master = base / "m"
    (master / "sub").mkdir(parents=True)
    for i in range(20):
        (master / "sub" / f"f{i:02d}").write_bytes(os.urandom(100_000 + i))
    with Engine.open(base / "state", durability="nosync") as eng:
        sc = eng.create_scenario("s", master=str(master), replicas={"r1": str(base / "r1")})
        sc.start()
        sc.stop()
    return base


def _interrupted(
    hook: str, args: list[str], signum: signal.Signals, blocked: Path | None = None
) -> tuple[int, str]:
    """Run the CLI hooked to block midway, signal it there; ``blocked`` must exist by then.

    The hook ``replay-cleanup`` blocks again once the cleanup begins, and is
    signalled a second time there.
    """
    child = subprocess.Popen(
        [sys.executable, "-c", _CLI_HOOKED, hook, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stderr is not None
        line = child.stderr.readline()
        assert line == "blocked\n", line + child.stderr.read()
        assert blocked is None or blocked.exists()
        child.send_signal(signum)
        if hook == "replay-cleanup":
            assert child.stderr.readline() == "cleaning\n"
            child.send_signal(signum)  # again, while the partial tree is removed
        _, err = child.communicate("\n", timeout=HANG_GUARD_S)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for pipe in (child.stdin, child.stdout, child.stderr):
            if pipe is not None:
                pipe.close()
    return child.returncode, err


@pytest.mark.parametrize("hook", ["replay", "replay-cleanup"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_cli_replay_interrupted_removes_its_partial_tree(
    journal_state: Path, tmp_path: Path, signum: signal.Signals, hook: str
) -> None:
    """``replay-cleanup``: signalled again while it removes the tree (review 20: a second
    Ctrl-C cut the cleanup short and left part of the tree)."""
    out = tmp_path / "out" / "rep"
    args = ["replay", str(journal_state / "state"), "s", "--to", str(out)]
    returncode, err = _interrupted(hook, args, signum)
    assert returncode == -signum, err  # ended by the signal, as after Ctrl-C
    assert not (tmp_path / "out").exists(), list((tmp_path / "out").rglob("*"))
    said = "stopped by SIGTERM" if signum == signal.SIGTERM else "xoengine: interrupted"
    assert said in err, err
    assert "Traceback" not in err  # review 19: Ctrl-C printed one


def test_cli_cat_out_interrupted_by_sigterm_leaves_no_file(
    journal_state: Path, tmp_path: Path
) -> None:
    out = tmp_path / "f00.copy"
    args = ["cat", str(journal_state / "state"), "s", "sub/f00", "--out", str(out)]
    returncode, err = _interrupted("cat", args, signal.SIGTERM)
    assert returncode == -signal.SIGTERM, err
    assert not out.exists()
    assert sorted(tmp_path.iterdir()) == []  # its partial copy too


def test_cli_cat_out_killed_leaves_no_file_holding_part_of_the_bytes(
    journal_state: Path, tmp_path: Path
) -> None:
    # Review 26 (O F4): kill -9 cleans nothing up; the copy was made at the name
    # asked for, so it was left there cut short. It is made under a reserved name.
    out = tmp_path / "f00.copy"
    args = ["cat", str(journal_state / "state"), "s", "sub/f00", "--out", str(out)]
    returncode, err = _interrupted("cat", args, signal.SIGKILL)
    assert returncode == -signal.SIGKILL, err
    assert not out.exists()
    assert [p.name.startswith(".xoengine-tmp-") for p in tmp_path.iterdir()] == [True]


def test_cli_replay_killed_leaves_a_tree_that_says_it_is_unfinished(
    journal_state: Path, tmp_path: Path
) -> None:
    # Review 26 (O F4): a replay killed with -9 (the OOM killer, timeout -s KILL) left
    # files under their names, some empty or cut short, and nothing said so.
    out = tmp_path / "rep"
    args = ["replay", str(journal_state / "state"), "s", "--to", str(out)]
    returncode, err = _interrupted("replay", args, signal.SIGKILL)
    assert returncode == -signal.SIGKILL, err
    marker = out / UNFINISHED_REPLAY
    assert "did not finish" in marker.read_text()
    again = subprocess.run(
        [sys.executable, "-m", "xoengine", *args], capture_output=True, text=True, check=False
    )
    assert again.returncode == 2, again.stderr
    assert "a replay that did not finish" in again.stderr
    assert marker.exists()
    done = tmp_path / "whole"
    finished = subprocess.run(
        [sys.executable, "-m", "xoengine", *args[:-1], str(done)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert not (done / UNFINISHED_REPLAY).exists()
    assert len(list((done / "sub").iterdir())) == 20


def test_cli_replay_after_sigterm_handler_is_restored(journal_state: Path, tmp_path: Path) -> None:
    # In-process: the verb runs with the CLI's SIGTERM handler, and the caller's is back after.
    from xoengine.cli import main  # noqa: PLC0415

    before = signal.getsignal(signal.SIGTERM)
    assert main(["replay", str(journal_state / "state"), "s", "--to", str(tmp_path / "rep")]) == 0
    assert signal.getsignal(signal.SIGTERM) is before
    assert compare_trees(journal_state / "m", tmp_path / "rep") == []
