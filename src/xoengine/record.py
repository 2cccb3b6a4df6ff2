"""The event record: positions, stream keys and the frame of an event (format version 1).

Room: record. May import ``errors`` and ``codec`` (and eventsourcing's
``StoredEvent``). The journal's recorders, the stream index and the
verifier all encode and decode through these few functions; the layout is
documented in docs/journal-format.md.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import struct
import uuid
from typing import TYPE_CHECKING, Any, Final

from eventsourcing.persistence import StoredEvent

from xoengine import codec
from xoengine.errors import FrameError

if TYPE_CHECKING:
    from collections.abc import Container, Sequence

__all__ = [
    "POS",
    "VERSION_OFFSET",
    "datetime_ns",
    "decode_event",
    "decode_event_of",
    "decode_position",
    "decode_stream_key",
    "decode_topic",
    "decode_topic_entry",
    "encode_events",
    "encode_position",
    "encode_topic_entries",
    "iso_time",
    "oid_prefix",
    "oid_prefixes",
    "read_iso_time",
    "stream_key",
    "topic_key",
]

POS: Final = struct.Struct(">Q")
VERSION_OFFSET: Final = 1 << 63
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
OID_UUID: Final = 0  # the first field of an event record: a UUID originator
OID_STR: Final = 1  # or a string one


def datetime_ns(when: dt.datetime) -> int:
    """The last UTC nanosecond of the microsecond a timezone-aware datetime names (no float)."""
    return (when - _EPOCH) // dt.timedelta(microseconds=1) * 1000 + 999


def read_iso_time(text: str) -> dt.datetime | None:
    """``text`` read as an ISO 8601 time (naive if it has no offset); None if it reads as none.

    Outer blanks are left out and a final ``z`` is taken as ``Z``.
    """
    text = text.strip()
    if text.endswith("z"):
        text = text[:-1] + "Z"
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        return None


def iso_time(time_ns: int) -> str:
    """A UTC time in nanoseconds as ISO 8601 to the microsecond: :func:`datetime_ns` reversed.

    No float: a label is shown in the microsecond that resolves to it.
    A file may carry any time (``touch -d``): one outside the years 1-9999 is
    given as ``@`` and its seconds since the epoch.
    """
    try:
        when = _EPOCH + dt.timedelta(microseconds=time_ns // 1000)
    except OverflowError:
        seconds, fraction = divmod(abs(time_ns), 10**9)
        return f"@{'-' if time_ns < 0 else ''}{seconds}.{fraction:09d}"
    return when.isoformat(timespec="microseconds")


def encode_position(position: int) -> bytes:
    """The 8-byte big-endian key of a journal position."""
    return POS.pack(position)


def decode_position(key: bytes) -> int:
    """Inverse of :func:`encode_position` (a damaged key is a :class:`FrameError`)."""
    if len(key) != POS.size:
        raise FrameError(position=bytes(key).hex(), detail=f"a {len(key)}-byte position key")
    return int(POS.unpack(key)[0])


def oid_prefix(originator_id: uuid.UUID | str) -> bytes:
    """The stream-key prefix of an originator (UUID or string id)."""
    if isinstance(originator_id, uuid.UUID):
        return b"\x00" + originator_id.bytes
    raw = str(originator_id).encode("utf-8", "surrogateescape")
    return b"\x01" + struct.pack(">H", len(raw)) + raw


def stream_key(originator_id: uuid.UUID | str, version: int) -> bytes:
    """The key of one event in a stream index: prefix, then ``version + 2**63``."""
    return oid_prefix(originator_id) + POS.pack(version + VERSION_OFFSET)


@functools.lru_cache(maxsize=4096)
def topic_key(topic: str) -> bytes:
    """The 8-byte prefix of a topic's entries in the topic index: xxh3-64 of its UTF-8.

    Two topics may share it: a reader checks each event's own topic.
    """
    return POS.pack(codec.digest64(topic.encode("utf-8", "surrogateescape")))


TOPIC_RUN_MAX: Final = 1024
"""Positions one topic index entry holds at most."""


def encode_topic_entries(first: int, topics: Sequence[str]) -> list[tuple[bytes, bytes]]:
    """The topic index entries of events of ``topics`` placed from position ``first``.

    One entry per topic key and run of up to :data:`TOPIC_RUN_MAX` positions, in
    key order: the key is the topic key and the run's first position, the value
    the frame of the run's positions (8 bytes big-endian each, ascending).
    """
    if len(topics) == 1:  # a plain append of one event: the common case
        key = topic_key(topics[0]) + POS.pack(first)
        return [(key, codec.frame(key, POS.pack(first)))]
    runs: dict[bytes, list[int]] = {}
    for position, topic in enumerate(topics, first):
        runs.setdefault(topic_key(topic), []).append(position)
    entries = []
    for tkey, positions in runs.items():
        for low in range(0, len(positions), TOPIC_RUN_MAX):
            run = positions[low : low + TOPIC_RUN_MAX]
            key = tkey + POS.pack(run[0])
            entries.append((key, struct.pack(f">{len(run)}Q", *run)))
    entries.sort()
    return codec.frame_many(entries)


def decode_topic_entry(key: bytes, value: bytes, table: str) -> tuple[bytes, tuple[int, ...]]:
    """The topic key and the positions of a topic index entry, checked (coded errors)."""
    where = bytes(key).hex()
    body = bytes(codec.unframe(key, value, where=table, position=where))
    count, rest = divmod(len(body), POS.size)
    if len(key) != 16 or rest or not count:
        raise FrameError(position=where, detail="not a topic index entry")
    positions = struct.unpack(f">{count}Q", body)
    if positions[0] != POS.unpack_from(key, 8)[0] or any(
        a >= b for a, b in itertools.pairwise(positions)
    ):
        raise FrameError(position=where, detail="a topic index entry out of order")
    return bytes(key[:8]), positions


def oid_prefixes(events: Sequence[StoredEvent]) -> list[bytes]:
    """:func:`oid_prefix` of each event's originator (a UUID's without a call of its own)."""
    return [
        b"\x00" + oid.int.to_bytes(16, "big")  # UUID.bytes, without the property's call
        if type(oid := e.originator_id) is uuid.UUID
        else oid_prefix(oid)
        for e in events
    ]


def encode_events(
    first: int, events: Sequence[StoredEvent], prefixes: Sequence[bytes], time_ns: int
) -> list[tuple[bytes, bytes]]:
    """``(position key, frame)`` of ``events`` placed from position ``first``, labelled ``time_ns``.

    ``prefixes`` are the events' :func:`oid_prefix` (already made for the
    stream index: a UUID's bytes follow its one-byte tag).
    """
    pack = codec.packer()
    bodies = []
    for position, event, prefix in zip(
        range(first, first + len(events)), events, prefixes, strict=True
    ):
        if prefix[0] == 0:
            oid: bytes | str = prefix[1:]
            kind = OID_UUID
        else:
            oid, kind = str(event.originator_id), OID_STR
        body = pack([kind, oid, event.originator_version, event.topic, event.state, time_ns])
        bodies.append((POS.pack(position), body))
    return codec.frame_many(bodies)


def _record(key: bytes, value: bytes, table: str) -> tuple[int | str, Any]:
    """The position (or key, in hex) and the checksum-verified, unpacked record of a frame."""
    position = decode_position(key) if len(key) == 8 else key.hex()
    body = codec.unframe(key, value, where=table, position=position)
    return position, codec.unpack(body, position=position)


def decode_event(key: bytes, value: bytes, table: str) -> tuple[StoredEvent, int]:
    """The verified event and time label of a frame (coded errors for damage)."""
    return _event(*_record(key, value, table))


def decode_topic(key: bytes, value: bytes, table: str) -> str:
    """The topic of a frame's event, the frame verified (for indexing without making events)."""
    position, record = _record(key, value, table)
    topic = _topic_of(record)
    return topic if topic is not None else _event(position, record)[0].topic


def decode_event_of(
    key: bytes, value: bytes, table: str, topics: Container[str]
) -> tuple[StoredEvent, int] | None:
    """:func:`decode_event` for a scan that wants ``topics``: None for another topic.

    The frame is verified either way; an event of another topic is not made.
    """
    position, record = _record(key, value, table)
    topic = _topic_of(record)
    if topic is not None and topic not in topics:
        return None
    return _event(position, record)


def _topic_of(record: Any) -> str | None:
    """The topic of an unpacked event record of the common shape (None: let :func:`_event` say)."""
    if type(record) is list and len(record) == 6 and type(record[3]) is str:
        return record[3]
    return None


def _originator(kind: object, oid: object) -> uuid.UUID | str:
    """The originator id of a record's first two fields (ValueError: of no known kind)."""
    if kind == OID_UUID and isinstance(oid, bytes):
        return uuid.UUID(bytes=oid)
    if kind == OID_STR and type(oid) is str:
        return oid
    msg = f"originator id kind {kind!r} with a {type(oid).__name__} id"
    raise ValueError(msg)


def _event(position: int | str, record: Any) -> tuple[StoredEvent, int]:
    """The event and time label of an unpacked record (FrameError if it is not one)."""
    try:
        kind, oid, version, topic, state, time_ns = record
        event = StoredEvent(
            originator_id=_originator(kind, oid),
            originator_version=int(version),
            topic=str(topic),
            state=bytes(state),
        )
    except (TypeError, ValueError) as e:
        raise FrameError(position=position, detail=f"not an event record ({e})") from e
    return event, int(time_ns)


def decode_stream_key(key: bytes, value: bytes, table: str) -> bytes:
    """The :func:`stream_key` of a frame's event, verified as :func:`decode_event` does.

    For rebuilding the stream index: the common record (a UUID originator,
    fields of their stored types) is checked field by field without making
    the event; any other goes through :func:`decode_event`.
    """
    _, record = _record(key, value, table)
    if type(record) is list and len(record) == 6:
        kind, oid, version, topic, state, time_ns = record
        if (
            kind == OID_UUID
            and type(oid) is bytes
            and len(oid) == 16  # a UUID's bytes
            and type(version) is int
            and type(topic) is str
            and type(state) is bytes
            and type(time_ns) is int
        ):
            return b"\x00" + oid + POS.pack(version + VERSION_OFFSET)
    event, _ = decode_event(key, value, table)
    return stream_key(event.originator_id, event.originator_version)
