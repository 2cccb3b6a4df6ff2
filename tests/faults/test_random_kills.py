"""kill -9 in the middle of random work: every rewind point stays exact.

A child (``ops_worker.py``) works on scenario ``s`` (master ``m``, replicas
``r1`` and ``r2``) at random: whole-file writes and captures, writes in place
through ``sc.open``, rewind points (it records the master's tree at each),
rewinds of either replica to a recorded point, resumes, retention trims with
random budgets, stops and starts. The parent kills it with SIGKILL after a
random number of operations (no sleeping: the delay is the reading), so the
kill lands inside an apply, a capture, a resync, a rewind or a trim, and starts
the next child on what it left. Then it checks, in this process:

- each replica's undo log holds and counts its own blobs exactly;
- after a start and a resume of every replica, both replicas equal the master;
- for every recorded point, newest first, and each replica: the rewind is
  refused (trimmed away) or leaves exactly the recorded tree, and a replay of
  the journal at the point gives that tree too.

This test found four bugs that each made a rewind silently wrong after a kill:
a start that put suspended (rewound) replicas back into replication, a
resync that left the points journaled before it unreachable, what a killed
resync or apply left on the replica never undone, and a trim that dropped it.
``XO_KILLS_SEED`` replays one run's choices (the kills land where they land).
"""

from __future__ import annotations

import json
import os
import random
from typing import TYPE_CHECKING

from journal_probe import HERE, PYTHON, run_killed
from ops_worker import NAMES, tree

from xoengine.engine import Engine
from xoengine.errors import RewindUnreachableError

if TYPE_CHECKING:
    from pathlib import Path

ROUNDS = 16
WORKER = os.path.join(HERE, "ops_worker.py")


def run_worker(root: Path, seed: int, kill_after: int) -> None:
    """Run the worker until it has done ``kill_after`` operations, then SIGKILL it."""
    done = [0]

    def reached(line: str) -> bool:
        done[0] += line == "OP"
        return done[0] >= kill_after

    _, errors = run_killed([PYTHON, WORKER, str(root), str(seed)], reached)
    assert "Traceback" not in errors, errors


def test_random_work_killed_at_random_keeps_every_point_exact(tmp_path: Path) -> None:
    seed = int(os.environ.get("XO_KILLS_SEED") or int.from_bytes(os.urandom(4), "big"))
    rng = random.Random(seed)
    print(f"\nrandom kills: seed {seed}")
    master = tmp_path / "m"
    for name in NAMES:
        (master / name).parent.mkdir(parents=True, exist_ok=True)
        (master / name).write_bytes(rng.randbytes(rng.randint(0, 9000)))
    (tmp_path / "points.json").write_text("{}")
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        eng.create_scenario(
            "s", master=str(master), replicas={r: str(tmp_path / r) for r in ("r1", "r2")}
        )
    for round_ in range(ROUNDS):
        run_worker(tmp_path, seed * 100 + round_, rng.randint(1, 40))

    points = json.loads((tmp_path / "points.json").read_text())
    totals = {"points": len(points), "rewinds": 0, "refused": 0}
    with Engine.open(tmp_path / "state", durability="nosync") as eng:
        sc = eng.scenario("s")
        for replica in ("r1", "r2"):
            assert sc._appliers[replica].undo.check() == []
        sc.start()
        for replica in sorted(sc.suspended):
            sc.resume(replica)
        sc.wait_replicated()
        for replica in ("r1", "r2"):
            assert tree(str(tmp_path / replica)) == tree(str(master)), replica
        for name, (position, want) in sorted(points.items(), key=lambda kv: -kv[1][0]):
            out = tmp_path / "replays" / name
            eng.replay(sc, to=out, position=position)
            assert tree(str(out)) == want, f"replay at {name}@{position}"
            for replica in ("r1", "r2"):
                try:
                    sc.rewind(replica, name)
                except RewindUnreachableError:
                    totals["refused"] += 1
                    continue
                got = tree(str(tmp_path / replica))
                assert got == want, f"{replica} rewound to {name}@{position}: " + ", ".join(
                    p for p in sorted(set(got) | set(want)) if got.get(p) != want.get(p)
                )
                totals["rewinds"] += 1
        for replica in ("r1", "r2"):
            assert sc._appliers[replica].undo.check() == []
        sc.stop()
    print(f"random kills: {totals}")
