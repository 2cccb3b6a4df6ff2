"""Room the state directory takes under in-place writes, with an undo budget.

    python benchmarks/probe_undo_space.py              # 80 rounds (~20 s)
    python benchmarks/probe_undo_space.py --rounds 200

One scenario, one replica, a master file of 32 MiB of random bytes. Each round
writes 2 MiB of random bytes at a random place in it, captures and sets a
rewind point; retention runs after every append (``undo_max_bytes`` 8 MiB,
``undo_min_points`` 1, ``undo_check_interval`` 0). Every 20 rounds it prints
the size of ``data.mdb``, LMDB's high-water mark (pages ever used), what the
undo log holds by the retention's count, and ``undo_bytes`` of the replica's
statistics (the room its tables take).

The journal keeps every write (2 MiB a round, forever: it is the history).
The before-images are the bytes each write overwrote: the journal never held
them (the file came by synchronization and each write lands at a new place),
so they are the undo log's own, and the budget must bound the room they take.
Run it with another checkout first on ``PYTHONPATH`` to compare two versions.

A probe, not a comparison with an anchor.
"""

from __future__ import annotations

import argparse
import random
import shutil
import tempfile
from pathlib import Path

from xoengine.engine import Engine

MIB = 1 << 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=80)
    parser.add_argument("--work", help="scratch directory (default: a temporary one)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="xo-undospace-", dir=args.work))
    try:
        rng = random.Random(1)
        master = base / "master"
        master.mkdir()
        (master / "big").write_bytes(rng.randbytes(32 * MIB))
        with Engine.open(base / "state", durability="nosync") as eng:
            sc = eng.create_scenario(
                "s",
                master=str(master),
                replicas={"r1": str(base / "r1")},
                undo_max_bytes=8 * MIB,
                undo_min_points=1,
                undo_check_interval=0,
            )
            sc.start()
            env = eng.store._env  # the probe may peek: LMDB's own figures
            for i in range(1, args.rounds + 1):
                with (master / "big").open("r+b") as f:
                    f.seek(rng.randrange(30 * MIB))
                    f.write(rng.randbytes(2 * MIB))
                sc.capture()
                sc.set_rewind_point(f"p{i}")
                sc.wait_replicated()
                if i % 20 == 0:
                    used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
                    size = (base / "state" / "journal" / "data.mdb").stat().st_size
                    held = sum(n for _, n in sc._appliers["r1"].undo.position_sizes())
                    room = getattr(sc.statistics().replicas["r1"], "undo_bytes", None)
                    shown = "-" if room is None else f"{room / MIB:.1f} MiB"
                    print(
                        f"round {i:4}: data.mdb {size / MIB:7.1f} MiB, high-water "
                        f"{used / MIB:7.1f} MiB, undo held {held / MIB:5.1f} MiB, "
                        f"undo_bytes {shown}",
                        flush=True,
                    )
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
