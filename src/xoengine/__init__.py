"""xoengine: event-sourced replication, continuous data protection and backup cataloguing.

Every byte-level change, rewind point, sync and backup session is an immutable
event in an LMDB-backed journal (:mod:`xoengine.journal`); everything else is a
projection of it. This package re-exports the entry points; the part modules
(``journal``, ``codec``, ``datastore``, ``errors``) are the rest of the API.

The engine's names (``Engine``, ``Scenario``, ``RewindPoint`` ...) are loaded on
first use, so that an application that only uses the journal as its
persistence module does not import the replication engine.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

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

if TYPE_CHECKING:
    from xoengine.engine import Engine, Scenario
    from xoengine.forensic import (
        BisectResult,
        DiffResult,
        HeldSpan,
        HistoryEntry,
        ReplayResult,
    )
    from xoengine.rewind import RetentionPolicy, RewindPoint

#: Names loaded on first use, and the module each comes from.
_LAZY = {
    "BisectResult": "xoengine.forensic",
    "DiffResult": "xoengine.forensic",
    "Engine": "xoengine.engine",
    "HeldSpan": "xoengine.forensic",
    "HistoryEntry": "xoengine.forensic",
    "ReplayResult": "xoengine.forensic",
    "RetentionPolicy": "xoengine.rewind",
    "RewindPoint": "xoengine.rewind",
    "Scenario": "xoengine.engine",
}


def __getattr__(name: str) -> object:
    """Load an engine name on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'xoengine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "BisectResult",
    "BlobTable",
    "DiffResult",
    "Durability",
    "Engine",
    "HeldSpan",
    "HistoryEntry",
    "LMDBAggregateRecorder",
    "LMDBApplicationRecorder",
    "LMDBFactory",
    "LMDBProcessRecorder",
    "LMDBTrackingRecorder",
    "MsgpackTranscoder",
    "ReplayResult",
    "RetentionPolicy",
    "RewindPoint",
    "Scenario",
    "Store",
    "XoError",
    "open_store",
]

__version__ = "0.1.0"
