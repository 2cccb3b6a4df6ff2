"""Child process of test_bitflip.py: read damaged journal copies, one per stdin line.

Usage: bitflip_reader.py EXPECTED_PICKLE

EXPECTED_PICKLE holds what was written: ``{"events": [(id, oid, version, topic,
state), ...], "blobs": {blob_id: data}}``. For each journal directory read from
stdin it opens the journal read-only, reads every notification and every blob,
and prints one line ``<outcome> <detail>``:

- ``checksum <code>``: a FrameError (checksum, frame, format) was raised;
- ``lmdb <code>``: another coded StorageError (LMDB refused to open or read);
- ``same``: everything read back equal to what was written;
- ``wrong <detail>``: different data came back, or ``wrong non-coded <type> in
  <function>: <message>`` for an exception outside the coded tree.

A crash of this process (some damaged B-tree pages make LMDB read outside the
map) is seen by the parent as end of file.
"""

from __future__ import annotations

import pickle
import sys
import traceback

from journal_probe import read_all, write_all

from xoengine.datastore import open_store
from xoengine.errors import FrameError, XoError
from xoengine.journal import BlobTable, LMDBApplicationRecorder


def compare(path: str, expected: dict) -> str:
    store = open_store(path, readonly=True)
    try:
        recorder = LMDBApplicationRecorder(store)
        notes = read_all(recorder, page=500)
        last = recorder.max_notification_id()
        got = [(n.id, n.originator_id, n.originator_version, n.topic, n.state) for n in notes]
        if got != expected["events"]:
            differ = next(
                (
                    i
                    for i, (a, b) in enumerate(zip(got, expected["events"], strict=False))
                    if a != b
                ),
                None,
            )
            return f"wrong events: {len(got)} read, {len(expected['events'])} written, first difference at index {differ}"
        if last != len(got):
            return f"wrong max_notification_id {last} for {len(got)} events"
        blobs = BlobTable(store)
        for blob_id, data in expected["blobs"].items():
            if blobs.get(blob_id) != data:
                return f"wrong blob {blob_id.hex()}"
        return "same"
    finally:
        store.close()


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        expected = pickle.load(f)
    for line in sys.stdin:
        path = line.strip()
        try:
            outcome = compare(path, expected)
        except FrameError as e:
            outcome = f"checksum {e.code} {type(e).__name__}"
        except XoError as e:
            outcome = f"lmdb {e.code} {type(e).__name__}: {e.message[:200]}"
        except Exception as e:
            kind = f"{type(e).__module__}.{type(e).__qualname__}"
            where = traceback.extract_tb(e.__traceback__)[-1].name
            outcome = f"wrong non-coded {kind} in {where}: {str(e)[:200]}"
        write_all(1, (outcome.replace("\n", " ") + "\n").encode())


if __name__ == "__main__":
    main()
