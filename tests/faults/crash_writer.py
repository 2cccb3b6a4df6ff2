"""Child process of test_crash.py: append events forever until killed.

Usage: crash_writer.py PATH SEED THREADS [MERGE_AT]

Prints ``OPENING`` before it opens the journal, ``READY`` once the journal is open, then, only after ``insert_events``
returned, one line ``A <position> <originator hex> <version>`` per acknowledged
event (one write(2) per batch, so a batch's lines are never interleaved).
"""

from __future__ import annotations

import os
import random
import sys
import threading
import traceback
import uuid

from journal_probe import make_event, write_all

from xoengine.datastore import open_store
from xoengine.journal import LMDBApplicationRecorder


def main() -> None:
    path, seed, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    merge_at = int(sys.argv[4]) if len(sys.argv) > 4 else 16384
    write_all(1, b"OPENING\n")
    store = open_store(path, durability="sync")
    recorder = LMDBApplicationRecorder(store, merge_at=merge_at)
    recorder.create_table()
    out = threading.Lock()
    write_all(1, b"READY\n")

    def append_forever(index: int) -> None:
        try:
            append(index)
        except BaseException:
            # A failing thread must end the process, or the parent would wait forever.
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(2)

    def append(index: int) -> None:
        rng = random.Random(seed * 100 + index)
        versions = {uuid.UUID(int=rng.getrandbits(128)): 0 for _ in range(3)}
        oids = list(versions)
        while True:
            batch = []
            for _ in range(rng.randint(1, 20)):
                oid = rng.choice(oids)
                versions[oid] += 1
                batch.append(make_event(oid, versions[oid]))
            positions = recorder.insert_events(batch)
            assert positions is not None
            assert len(positions) == len(batch)
            lines = "".join(
                f"A {p} {e.originator_id.hex} {e.originator_version}\n"  # type: ignore[union-attr]
                for p, e in zip(positions, batch, strict=True)
            )
            with out:
                write_all(1, lines.encode())

    workers = [
        threading.Thread(target=append_forever, args=(i,), daemon=True) for i in range(threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()  # forever: the parent kills this process


if __name__ == "__main__":
    main()
