"""Record framing, msgpack encoding and hashing: the only importer of msgpack and xxhash.

Room: floor. May import ``errors`` (and eventsourcing's transcoder base).

A *frame* is what the journal stores under a key::

    +---------+----------------------+------------------------+
    | version | xxh3_64(key || body) |  body (msgpack or raw)  |
    | 1 byte  | 8 bytes, big-endian  |  len(frame) - 9 bytes   |
    +---------+----------------------+------------------------+

The checksum covers the key too (for events, the 8-byte position), so a record
copied or misplaced to another position fails verification just as a flipped
bit does. Decoding is bounded: a frame larger than the cap, or a body that
claims more items than it has bytes, is a :class:`~xoengine.errors.FrameError`
and never allocates much more than the frame itself.

Names travel byte-exact: ``str`` is packed and unpacked with
``surrogateescape``, so names that came from ``os.fsdecode`` (non-UTF-8 bytes)
round-trip, and ``bytes`` are carried as msgpack ``bin``.
"""

from __future__ import annotations

import datetime as dt
import struct
import uuid
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

import msgpack
import xxhash
from eventsourcing.persistence import JSONTranscoder, TranscodingNotRegisteredError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

from xoengine.errors import (
    ChecksumMismatchError,
    FrameError,
    FrameTooLargeError,
    RecordTooLargeError,
    UnsupportedFormatError,
)

__all__ = [
    "FORMAT_VERSION",
    "FRAME_HEADER",
    "MAX_FRAME_BYTES",
    "MsgpackTranscoder",
    "block_digests64",
    "digest64",
    "digest128",
    "frame",
    "frame_many",
    "hasher64",
    "hasher128",
    "pack",
    "unframe",
    "unpack",
    "verified_size",
]

FORMAT_VERSION: Final = 1
"""Frame format written by this build. Readers accept every version <= this."""

FRAME_HEADER: Final = struct.Struct(">BQ")
MAX_FRAME_BYTES: Final = 256 * 1024 * 1024
"""Largest frame accepted on read and write (bytes)."""

_EXT_UUID: Final = 1
_EXT_DATETIME: Final = 2
_EXT_DECIMAL: Final = 3
_EXT_TUPLE: Final = 4
_EXT_CUSTOM: Final = 5
_EXT_DATE: Final = 6
_EXT_BIGINT: Final = 7
_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_NAIVE: Final = 0x7FFFFFFF
_EPOCH_NAIVE: Final = _EPOCH.replace(tzinfo=None)


# -- hashing -----------------------------------------------------------------------


def digest64(data: bytes | memoryview, seed: int = 0) -> int:
    """xxh3-64 of ``data`` (change detection and checksums, not collision-proof)."""
    return int(xxhash.xxh3_64_intdigest(data, seed))


def block_digests64(view: memoryview, block_size: int) -> list[int]:
    """xxh3-64 of every ``block_size`` block of ``view`` (the last may be short), in one loop."""
    digest = xxhash.xxh3_64_intdigest  # bound once: ~1/3 of the per-block cost is the call
    return [digest(view[o : o + block_size]) for o in range(0, len(view), block_size)]


def digest128(data: bytes | memoryview) -> bytes:
    """xxh3-128 digest (16 bytes) of ``data``; content ids compare bytes on a hit."""
    return bytes(xxhash.xxh3_128_digest(data))


def hasher64(seed: int = 0) -> Any:
    """A streaming xxh3-64 hasher (``update``/``intdigest``)."""
    return xxhash.xxh3_64(seed=seed)


def hasher128() -> Any:
    """A streaming xxh3-128 hasher (``update``/``digest``/``hexdigest``)."""
    return xxhash.xxh3_128()


# -- frames ------------------------------------------------------------------------


_JOIN_BELOW: Final = 4096


def _checksum(key: bytes, body: bytes | memoryview) -> int:
    if len(body) <= _JOIN_BELOW:  # one call over a small copy: the same value, sooner
        return int(xxhash.xxh3_64_intdigest(key + body))
    h = xxhash.xxh3_64(key)
    h.update(body)
    return int(h.intdigest())


def frame(key: bytes, body: bytes | memoryview) -> bytes:
    """Return the frame storing ``body`` under ``key``."""
    if len(body) + FRAME_HEADER.size > MAX_FRAME_BYTES:
        raise RecordTooLargeError(
            position=key.hex(), size=len(body) + FRAME_HEADER.size, cap=MAX_FRAME_BYTES
        )
    return FRAME_HEADER.pack(FORMAT_VERSION, _checksum(key, body)) + body


def frame_many(items: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``(key, frame(key, body))`` for each ``(key, body)``: :func:`frame` for a batch.

    The same frames, without two Python calls per item (an append of a batch
    of small events spent a fifth of its framing time in them).
    """
    header, digest = FRAME_HEADER.pack, xxhash.xxh3_64_intdigest
    out = []
    for key, body in items:
        size = len(body)
        if size + FRAME_HEADER.size > MAX_FRAME_BYTES:
            raise RecordTooLargeError(
                position=key.hex(), size=size + FRAME_HEADER.size, cap=MAX_FRAME_BYTES
            )
        checksum = digest(key + body) if size <= _JOIN_BELOW else _checksum(key, body)
        out.append((key, header(FORMAT_VERSION, checksum) + body))
    return out


def unframe(
    key: bytes, value: bytes, *, where: str = "events", position: object = None
) -> memoryview:
    """Verify the frame ``value`` stored under ``key`` and return its body.

    Raises :class:`~xoengine.errors.ChecksumMismatchError` (naming the position)
    if a single bit of key or value differs from what was written.
    """
    pos = key.hex() if position is None else position
    if len(value) < FRAME_HEADER.size:
        raise FrameError(position=pos, detail=f"{len(value)}-byte frame is shorter than its header")
    if len(value) > MAX_FRAME_BYTES:
        raise FrameTooLargeError(position=pos, size=len(value), cap=MAX_FRAME_BYTES)
    version, checksum = FRAME_HEADER.unpack_from(value)
    body = memoryview(value)[FRAME_HEADER.size :]
    if version == 1:
        if _checksum(key, body) != checksum:
            raise ChecksumMismatchError(position=pos, table=where)
        return body
    # Version 1's checksum leaves its version byte out; every later version's covers
    # it. So a frame checked by the rule of the version it claims fails when that
    # byte is damaged (a version-1 frame whose byte now reads 0 or 3), and only a
    # frame really written by a later version is refused as a newer format.
    if version == 0 or _checksum(bytes((version,)) + key, body) != checksum:
        raise ChecksumMismatchError(position=pos, table=where)
    raise UnsupportedFormatError(position=pos, version=version, supported=FORMAT_VERSION)


def verified_size(key: bytes, value: bytes) -> int | None:
    """The body size of the frame ``value`` under ``key`` if it verifies, else None.

    :func:`unframe`'s checks without its body view, for a reader that only
    counts a table's records (call :func:`unframe` on None for the coded error).
    """
    size = len(value) - FRAME_HEADER.size
    if size < 0 or len(value) > MAX_FRAME_BYTES:
        return None
    version, checksum = FRAME_HEADER.unpack_from(value)
    if not 0 < version <= FORMAT_VERSION:
        return None
    body = (
        value[FRAME_HEADER.size :]
        if size <= _JOIN_BELOW
        else memoryview(value)[FRAME_HEADER.size :]
    )
    return size if _checksum(key, body) == checksum else None


# -- msgpack -----------------------------------------------------------------------


def _default(obj: Any) -> Any:
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, obj.bytes)
    if isinstance(obj, dt.datetime):
        return msgpack.ExtType(_EXT_DATETIME, _pack_datetime(obj))
    if isinstance(obj, dt.date):
        return msgpack.ExtType(_EXT_DATE, struct.pack(">i", obj.toordinal()))
    if isinstance(obj, Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
    if isinstance(obj, tuple):
        return msgpack.ExtType(_EXT_TUPLE, _packb(list(obj)))
    if isinstance(obj, int):  # beyond 64 bits (msgpack calls default on overflow)
        return msgpack.ExtType(_EXT_BIGINT, str(int(obj)).encode())
    # strict_types sends subclasses here: store them as their base type.
    base: type[Any]
    for base in (str, bytes, dict, list, float, bool):
        if isinstance(obj, base):
            return base(obj)
    msg = f"Object of type {type(obj)} is not serializable by the xoengine codec."
    raise TypeError(msg)


def _pack_datetime(value: dt.datetime) -> bytes:
    offset = value.utcoffset()
    aware = value.replace(tzinfo=dt.UTC) if offset is None else value
    micros = (aware - _EPOCH) // dt.timedelta(microseconds=1)
    # Offset in seconds, or a sentinel for a naive datetime.
    off = _NAIVE if offset is None else int(offset.total_seconds())
    return struct.pack(">qi", micros, off)


def _unpack_datetime(data: bytes) -> dt.datetime:
    micros, off = struct.unpack(">qi", data)
    if off == _NAIVE:
        return _EPOCH_NAIVE + dt.timedelta(microseconds=micros)
    # One addition straight to local time: the UTC instant of a datetime near
    # year 1 or 9999 may lie outside datetime's range even when local time does not.
    local = _EPOCH_NAIVE + dt.timedelta(microseconds=micros + off * 1_000_000)
    return local.replace(tzinfo=dt.UTC if off == 0 else dt.timezone(dt.timedelta(seconds=off)))


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == _EXT_DATETIME:
        return _unpack_datetime(data)
    if code == _EXT_DATE:
        return dt.date.fromordinal(struct.unpack(">i", data)[0])
    if code == _EXT_DECIMAL:
        return Decimal(data.decode())
    if code == _EXT_TUPLE:
        return tuple(_unpackb(data))
    if code == _EXT_BIGINT:
        return int(data.decode())
    return msgpack.ExtType(code, data)


def _packb(obj: Any, default: Any = _default) -> bytes:
    packed: bytes = msgpack.packb(
        obj,
        use_bin_type=True,
        default=default,
        unicode_errors="surrogateescape",
        strict_types=True,  # so that tuples reach default() and round-trip as tuples
        datetime=False,
    )
    return packed


def _unpackb(data: bytes | memoryview, ext_hook: Any = _ext_hook) -> Any:
    # unpackb caps every length at len(data): bounded by the frame.
    return msgpack.unpackb(
        data,
        raw=False,
        use_list=True,
        ext_hook=ext_hook,
        unicode_errors="surrogateescape",
        strict_map_key=False,
    )


def packer() -> Callable[[Any], bytes]:
    """A :func:`pack` that reuses one msgpack packer: for a batch, in one thread only."""
    pack: Callable[[Any], bytes] = msgpack.Packer(
        use_bin_type=True,
        default=_default,
        unicode_errors="surrogateescape",
        strict_types=True,
        datetime=False,
    ).pack
    return pack


def pack(obj: Any) -> bytes:
    """Encode ``obj`` as msgpack (bin for bytes, ext types for UUID, datetime, Decimal, tuple)."""
    return _packb(obj)


def unpack(body: bytes | memoryview, *, position: object = "?") -> Any:
    """Inverse of :func:`pack`; malformed input is a :class:`FrameError`."""
    try:
        return _unpackb(body)
    except (
        ValueError,
        TypeError,
        msgpack.ExtraData,
        msgpack.FormatError,
        msgpack.StackError,
        struct.error,
        UnicodeDecodeError,
    ) as e:
        raise FrameError(position=position, detail=f"undecodable body ({e})") from e


class MsgpackTranscoder(JSONTranscoder):
    """eventsourcing transcoder that writes msgpack instead of JSON.

    UUID, timezone-aware datetime, date, Decimal, tuple and bytes round-trip
    natively; other types use transcodings registered with :meth:`register`,
    exactly as with the library's JSON transcoder.

    It subclasses ``JSONTranscoder`` only because eventsourcing's
    ``Application.construct_transcoder`` registers an application's custom
    transcodings on instances of that class; none of its JSON code is used.
    """

    def encode(self, obj: Any) -> bytes:
        """Encode ``obj`` as msgpack bytes."""
        return _packb(obj, default=self._encode_custom)

    def decode(self, data: bytes) -> Any:
        """Decode msgpack bytes made by :meth:`encode`."""
        try:
            return _unpackb(data, ext_hook=self._decode_ext)
        except TranscodingNotRegisteredError:
            raise
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
            raise FrameError(position="?", detail=f"undecodable event state ({e})") from e

    def _encode_custom(self, obj: Any) -> Any:
        transcoding = self.types.get(type(obj))
        if transcoding is not None and not isinstance(
            obj, (uuid.UUID, dt.datetime, Decimal, tuple)
        ):
            inner = _packb([transcoding.name, transcoding.encode(obj)], default=self._encode_custom)
            return msgpack.ExtType(_EXT_CUSTOM, inner)
        if isinstance(obj, tuple):  # elements may need this transcoder's registrations
            return msgpack.ExtType(_EXT_TUPLE, _packb(list(obj), default=self._encode_custom))
        try:
            return _default(obj)
        except TypeError:
            msg = (
                f"Object of type {type(obj)} is not "
                "serializable. Please define and register "
                "a custom transcoding for this type."
            )
            raise TranscodingNotRegisteredError(msg) from None

    def _decode_ext(self, code: int, data: bytes) -> Any:
        if code == _EXT_CUSTOM:
            name, value = _unpackb(data, ext_hook=self._decode_ext)
            transcoding = self.names.get(name)
            if transcoding is None:
                msg = (
                    f"Data serialized with name '{name}' is not "
                    "deserializable. Please register a custom transcoding for this type."
                )
                raise TranscodingNotRegisteredError(msg)
            return transcoding.decode(value)
        if code == _EXT_TUPLE:
            return tuple(_unpackb(data, ext_hook=self._decode_ext))
        return _ext_hook(code, data)
