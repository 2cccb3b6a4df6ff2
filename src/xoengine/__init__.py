"""xoengine: event-sourced replication, continuous data protection and backup cataloguing.

Every byte-level change, rewind point, sync and backup session is an immutable
event in an LMDB-backed journal (:mod:`xoengine.journal`); everything else is a
projection of it. This package re-exports the entry points; the part modules
(``journal``, ``codec``, ``datastore``, ``errors``) are the rest of the API.
"""

from __future__ import annotations

from xoengine.codec import MsgpackTranscoder
from xoengine.datastore import Durability, Store, open_store
from xoengine.errors import XoError
from xoengine.journal import (
    BlobTable,
    LMDBAggregateRecorder,
    LMDBApplicationRecorder,
    LMDBFactory,
    LMDBProcessRecorder,
    LMDBTrackingRecorder,
)

__all__ = [
    "BlobTable",
    "Durability",
    "LMDBAggregateRecorder",
    "LMDBApplicationRecorder",
    "LMDBFactory",
    "LMDBProcessRecorder",
    "LMDBTrackingRecorder",
    "MsgpackTranscoder",
    "Store",
    "XoError",
    "open_store",
]

__version__ = "0.1.0"
