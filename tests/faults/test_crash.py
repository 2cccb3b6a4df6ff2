"""kill -9 of a writer process at random moments loses no acknowledged event.

A child (``crash_writer.py``) appends batches of 1..20 events from 1..4 threads
to a journal opened with ``durability="sync"`` and reports each event only after
``insert_events`` returned. The parent reads its reports and sends SIGKILL after
a random number of them plus a random number of further bytes (the random
delay is the time it takes to read them: no sleeping). It then drains what the
child had already reported, reopens the journal and checks it: it opens, its
positions are gapless, every frame verifies, every record's content is its own,
every acknowledged event is there, each originator's stream is a prefix, the
topic index names exactly the events of each topic, and ``verify`` is clean.
Several trials share one journal, so each trial also checks the reopen and the
continued appending after the previous crash.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import uuid
from typing import TYPE_CHECKING

from journal_probe import END_TOPIC, HERE, PYTHON, TOPIC, LineReader, check_records, read_all

from xoengine.datastore import open_store
from xoengine.journal import LMDBApplicationRecorder, verify

if TYPE_CHECKING:
    from pathlib import Path

JOURNALS = 8
TRIALS_PER_JOURNAL = 15  # 120 trials in all
WRITER = os.path.join(HERE, "crash_writer.py")


def _kill_at_random(
    path: Path, seed: int, threads: int, rng: random.Random, errors: Path
) -> tuple[list[str], int]:
    """Run the writer, kill -9 it at a random moment; return every reported line."""
    # -1: kill while the writer opens the journal and creates its tables.
    target = rng.choice([-1, 0, rng.randint(1, 40), rng.randint(1, 400), rng.randint(1, 1500)])
    extra = 0 if target < 0 else rng.randint(0, 6000)
    with errors.open("wb") as stderr:
        proc = subprocess.Popen(
            # A small merge_at makes kills land in stream-index merges too.
            [PYTHON, WRITER, str(path), str(seed), str(threads), str(rng.choice([7, 64, 16384]))],
            stdout=subprocess.PIPE,
            stderr=stderr,
            bufsize=0,
        )
    assert proc.stdout is not None
    reader = LineReader(proc.stdout.fileno())
    lines: list[str] = []
    try:
        # 1. Read until `target` events are acknowledged (or the writer is ready, for 0;
        #    or it is opening the journal, for -1).
        acked = 0
        ready = False
        while not reader.eof and not (ready and acked >= target):
            for line in reader.read_some():
                lines.append(line)
                ready = ready or line == ("OPENING" if target < 0 else "READY")
                acked += line.startswith("A ")
        # 2. The random extra delay: read `extra` more bytes, as they come.
        until = reader.total + extra
        while reader.total < until and not reader.eof:
            lines.extend(reader.read_some(until - reader.total))
        os.kill(proc.pid, signal.SIGKILL)
        # 3. What the writer reported before it died was acknowledged too.
        lines.extend(reader.drain())
    finally:
        if proc.poll() is None:
            proc.kill()
        returncode = proc.wait()
        proc.stdout.close()
    return lines, returncode


def test_crash_kill9_loses_no_acknowledged_event(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    print(f"\ncrash: seed {seed}")
    totals = {
        "trials": 0,
        "acknowledged": 0,
        "beyond_acknowledged": 0,
        "losses": 0,
        "killed_before_ready": 0,
        "records_checked": 0,
    }
    problems: list[str] = []
    for j in range(JOURNALS):
        path = tmp_path / f"journal{j}"
        acknowledged: dict[int, tuple[uuid.UUID, int]] = {}
        previous_max = 0
        for t in range(TRIALS_PER_JOURNAL):
            threads = rng.randint(1, 4)
            lines, returncode = _kill_at_random(
                path, rng.getrandbits(40), threads, rng, tmp_path / "stderr.txt"
            )
            stderr = (tmp_path / "stderr.txt").read_text()
            assert returncode == -signal.SIGKILL, (
                f"writer ended by itself ({returncode}):\n{stderr}"
            )
            totals["trials"] += 1
            totals["killed_before_ready"] += "READY" not in lines
            reported = {}
            for line in lines:
                if line.startswith("A "):
                    _, pos, oid, version = line.split()
                    reported[int(pos)] = (uuid.UUID(hex=oid), int(version))
            assert not set(reported) & set(acknowledged), "a position was acknowledged twice"
            acknowledged.update(reported)

            # Reopen as the next writer would (writable, no write) and read everything.
            store = open_store(path, durability="sync")
            try:
                recorder = LMDBApplicationRecorder(store)
                notes = read_all(recorder, page=rng.choice([1, 7, 100, 256, 1000]))
                last = recorder.max_notification_id() or 0
                check = check_records(notes)
                # The topic index agrees with the events table, and verify finds nothing.
                for topic in (TOPIC, END_TOPIC):
                    by_index = recorder.select_notifications(None, 10**7, topics=[topic])
                    if [n.id for n in by_index] != [n.id for n in notes if n.topic == topic]:
                        problems.append(f"journal{j} trial {t}: topic index of {topic}")
                report = verify(store)
                problems.extend(f"journal{j} trial {t}: {d.message}" for d in report.damage)
                # The stream index agrees with the events table for this run's originators.
                for oid in {oid for oid, _ in reported.values()}:
                    versions = [e.originator_version for e in recorder.select_events(oid)]
                    if versions != list(range(1, check.versions.get(oid, 0) + 1)):
                        problems.append(
                            f"journal{j} trial {t}: stream index of {oid} is {versions}"
                        )
            finally:
                store.close()
            problems.extend(f"journal{j} trial {t}: {p}" for p in check.problems)
            if last != len(notes):
                problems.append(f"journal{j} trial {t}: max id {last} but {len(notes)} records")
            found = {n.id: (n.originator_id, n.originator_version) for n in notes}
            lost = [p for p, content in acknowledged.items() if found.get(p) != content]
            totals["losses"] += len(lost)
            problems.extend(
                f"journal{j} trial {t}: acknowledged position {p} lost" for p in lost[:5]
            )
            if last < previous_max:
                problems.append(
                    f"journal{j} trial {t}: journal shrank from {previous_max} to {last}"
                )
            totals["acknowledged"] += len(reported)
            totals["beyond_acknowledged"] += (last - previous_max) - len(reported)
            totals["records_checked"] += len(notes)
            previous_max = last
    print("crash: " + ", ".join(f"{k} {v}" for k, v in totals.items()))
    assert totals["trials"] >= 100
    assert not problems, "\n".join(problems[:30])
    assert totals["losses"] == 0
    assert totals["acknowledged"] > 0
