"""kill -9 the replica applier at random moments: after a restart the replica is identical.

A replica is suspended while the master takes many changes (writes, inserts,
renames, deletes); a subprocess resumes it, applies the backlog a few events
per step, reporting each step, and is killed at a random point: after a
random number of steps, a random moment into the next one. The parent reopens
the engine, drains, and checks the replica is byte-identical to the master
with no torn or temporary files left. The kill moment is random (a fault
injection); nothing waits on time to sync. Most trials must kill mid-apply.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from xoengine.engine import Engine
from xoengine.testing import compare_trees

WORKER = Path(__file__).with_name("applier_worker.py")
TRIALS = 16


def _mutate(master: Path, rng: random.Random, round_no: int) -> None:
    files = sorted(p for p in master.rglob("*") if p.is_file())
    for path in rng.sample(files, k=min(len(files), 8)):
        data = path.read_bytes()
        choice = rng.randrange(4)
        if choice == 0:  # overwrite in place
            offset = rng.randrange(max(len(data), 1))
            with path.open("r+b") as f:
                f.seek(offset)
                f.write(rng.randbytes(rng.randrange(1, 20000)))
        elif choice == 1:  # insert in the middle (data shifts)
            cut = rng.randrange(len(data) + 1)
            path.write_bytes(data[:cut] + rng.randbytes(rng.randrange(1, 300)) + data[cut:])
        elif choice == 2:
            path.rename(path.with_name(f"{path.name}.r{round_no}"))
        else:
            path.write_bytes(data[: len(data) // 2])
    for i in range(3):
        (master / f"new-{round_no}-{i}.bin").write_bytes(rng.randbytes(rng.randrange(0, 200_000)))
    victims = sorted(p for p in master.rglob("*") if p.is_file())
    if victims:
        rng.choice(victims).unlink()


def test_applier_crash_restart_converges(tmp_path: Path) -> None:
    rng = random.Random(20261126)
    master, replica, state = tmp_path / "m", tmp_path / "r", tmp_path / "state"
    (master / "sub").mkdir(parents=True)
    for i in range(20):
        (master / ("sub" if i % 2 else ".") / f"f{i}.bin").write_bytes(
            rng.randbytes(rng.randrange(1, 300_000))
        )
    with Engine.open(state, durability="sync") as eng:
        sc = eng.create_scenario("crash", master=str(master), replicas={"r1": str(replica)})
        sc.start()
        sc.stop()
    killed = finished = 0
    for trial in range(TRIALS):
        # 1. A backlog while the replica is suspended.
        with Engine.open(state, durability="sync") as eng:
            sc = eng.scenario("crash")
            sc.suspend("r1")
            for round_no in range(3):
                _mutate(master, rng, trial * 10 + round_no)
                sc.capture()
        # 2. A worker applies it a few events per step and is killed at a random point:
        #    after hearing of a random number of steps, a random moment into the next.
        limit, steps = rng.randint(1, 6), rng.randint(0, 8)
        with subprocess.Popen(
            [sys.executable, str(WORKER), str(state), "crash", "r1", str(limit)],
            stdout=subprocess.PIPE,
            text=True,
        ) as worker:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "opened"
            heard = ""
            for _ in range(steps):
                heard = worker.stdout.readline().strip()
                if heard != "applied":
                    break
            time.sleep(rng.uniform(0, 0.004))  # fault injection: when to kill, not synchronisation
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            rest = heard + worker.stdout.read()
        if "done" in rest:
            finished += 1
        else:
            killed += 1
        # 3. Restart: resume and drain; the replica must equal the master exactly.
        with Engine.open(state, durability="sync") as eng:
            sc = eng.scenario("crash")
            sc.resume("r1")
            sc.wait_replicated()
            # Each before-image recorded once, its blobs counted once per record.
            assert sc._appliers["r1"].undo.check() == []
        assert compare_trees(master, replica) == []
        leftovers = list(replica.rglob(".xoengine-tmp-*"))
        assert leftovers == []
    print(
        f"\napplier crash: {TRIALS} trials, {killed} killed while applying, {finished} finished first"
    )
    assert killed >= TRIALS // 2
