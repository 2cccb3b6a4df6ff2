"""Child process of test_mapgrowth.py: follow a journal that another process writes.

Usage: follower.py PATH

Opens the journal read-only and reads it from two threads at once while the
writer grows its map: the main thread follows a subscription from position 1
(checking the sequence is gapless and every record's content), and a tail
thread repeatedly reads ``max_notification_id`` and the last few records.
Prints ``READY``, then ``SEEN <position>`` as it goes, and at the end topic
``DONE <events> <tail reads> <map sizes seen>``. Any error: traceback on stderr,
exit status 1.
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
import traceback

from journal_probe import END_TOPIC, check_records, write_all

from xoengine.datastore import open_store
from xoengine.journal import LMDBApplicationRecorder


def main() -> int:
    faulthandler.register(signal.SIGUSR1)  # stacks on demand, to debug a stuck follower
    store = open_store(sys.argv[1], readonly=True)
    recorder = LMDBApplicationRecorder(store)
    stop = threading.Event()
    tail_reads = 0
    map_sizes: list[int] = [store.info().map_size]
    failures: list[str] = []

    def tail() -> None:
        nonlocal tail_reads
        highest = 0
        try:
            while not stop.is_set():
                last = recorder.max_notification_id() or 0
                if last < highest:
                    failures.append(f"max_notification_id went back from {highest} to {last}")
                highest = last
                notes = recorder.select_notifications(max(1, last - 4), limit=10)
                check = check_records(notes, first=max(1, last - 4), kind="bulky", streams=False)
                failures.extend(check.problems)
                if last and (not notes or notes[-1].id < last):
                    failures.append(f"tail read of {last} returned {[n.id for n in notes]}")
                tail_reads += 1
                size = store.info().map_size
                if size != map_sizes[-1]:
                    map_sizes.append(size)
        except BaseException:
            failures.append(traceback.format_exc())

    tail_thread = threading.Thread(target=tail)
    tail_thread.start()
    write_all(1, b"READY\n")
    seen = 0
    versions: dict = {}
    try:
        with recorder.subscribe(gt=0) as subscription:
            for note in subscription:
                check = check_records([note], first=seen + 1, kind="bulky", versions=versions)
                failures.extend(check.problems)
                versions = check.versions
                seen = note.id
                write_all(1, f"SEEN {seen}\n".encode())
                if note.topic == END_TOPIC or failures:
                    break
    finally:
        stop.set()
        tail_thread.join()
        store.close()
    if failures:
        sys.stderr.write("\n".join(failures[:20]) + "\n")
        return 1
    write_all(1, f"DONE {seen} {tail_reads} {','.join(map(str, map_sizes))}\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
