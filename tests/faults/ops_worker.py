"""Child process of test_random_kills.py: random work on a scenario until killed.

Usage: ops_worker.py ROOT SEED

ROOT holds ``m`` (the master), ``r1`` and ``r2`` (its replicas), ``state``
(scenario ``s``, made by the parent) and ``points.json``. The worker opens the
engine, starts the scenario (a resync of its active replicas) and then, until
it is killed, at random: writes to the master (a whole file then a capture, or
in place through ``sc.open``, a cut), deletes and renames files (over another,
maybe) and directories, sets a rewind point (and records the master's
tree under the point's name in ``points.json``), rewinds a replica to a
recorded point, resumes a replica, trims the undo logs with a random budget,
and stops or starts replication. It prints ``OP`` after each operation (one
write(2) each), so that the parent can kill it after a chosen number of them:
inside the next one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path

from xoengine.engine import Engine, Scenario
from xoengine.errors import XoError
from xoengine.rewind import RetentionPolicy

NAMES = ["a", "b", "c", "d/e", "d/f", "d2/g"]
POOL = [bytes([65 + i]) * n for i, n in enumerate([0, 1, 300, 5000, 70000])]


def tree(root: str) -> dict[str, str]:
    """Each file under ``root``: its path and the digest of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.blake2b(p.read_bytes(), digest_size=16).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


def say(line: str) -> None:
    data = (line + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def main() -> None:
    root, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    os.chdir(root)
    points = json.loads(Path("points.json").read_text())
    eng = Engine.open("state", durability="nosync")
    sc = eng.scenario("s")
    sc.start()
    say("READY")
    for i in range(10**6):
        op = rng.random()
        if op < 0.35:
            change(sc, rng)
        elif op < 0.45:
            move(sc, rng)
        elif op < 0.6:
            point = sc.set_rewind_point(f"p{seed}-{i}")
            points[point.name] = [point.position, tree("m")]
            Path("points.tmp").write_text(json.dumps(points))
            os.replace("points.tmp", "points.json")
        elif op < 0.75 and points:
            name = rng.choice(sorted(points))
            try:
                sc.rewind(rng.choice(["r1", "r2"]), name)
            except XoError:
                pass  # trimmed away: refused, nothing done
        elif op < 0.87 and sc.suspended:
            sc.resume(rng.choice(sorted(sc.suspended)))
        elif op < 0.90:
            sc.trim_undo(
                RetentionPolicy(
                    max_bytes=rng.choice([1, 500_000, 5_000_000, 50_000_000]),
                    min_points=rng.choice([0, 1, 3, 10]),
                )
            )
        elif sc.state == "Stopped":
            sc.start()
        else:
            sc.stop()
        say("OP")


def change(sc: Scenario, rng: random.Random) -> None:
    """A whole-file write then a capture, or a write or a cut in place through ``sc.open``."""
    path = Path("m", rng.choice(NAMES))
    if rng.random() < 0.5 or not path.is_file():
        if path.is_dir():
            return
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(rng.choice(POOL) + rng.choice(POOL)[: rng.randint(0, 5000)])
        sc.capture()
        return
    with sc.open(str(path.relative_to("m")), "r+b") as f:
        size = path.stat().st_size
        if rng.random() < 0.2:
            f.truncate(rng.randint(0, size + 3000))
        else:
            f.seek(rng.randint(0, size))
            f.write(rng.choice(POOL)[: rng.randint(1, 3000)] or b"z")


def move(sc: Scenario, rng: random.Random) -> None:
    """A file deleted or renamed (over another, maybe), or a directory renamed; captured."""
    files = sorted(p for p in Path("m").rglob("*") if p.is_file())
    what = rng.choice(["delete", "rename", "rename", "directory"])
    if what == "directory":
        src, dst = (Path("m", d) for d in rng.sample(["d", "d2"], 2))
        if not src.is_dir() or dst.exists():
            return
        src.rename(dst)
    elif files:
        path = rng.choice(files)
        if what == "delete":
            path.unlink()
        else:
            target = Path("m", rng.choice(NAMES))
            if target.is_dir() or not target.parent.is_dir():
                return
            path.rename(target)
    sc.capture()


if __name__ == "__main__":
    main()
