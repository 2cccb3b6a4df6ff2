"""Coded errors: the one tree of exceptions that xoengine raises.

Room: floor. Imports nothing from xoengine.

Every class carries
- its first docstring line as the user message template (``str.format`` fields
  filled from the keyword arguments given when it is raised),
- ``code``: the message code an operator searches for (E = error, W = warning,
  AE/AW = agent codes from the vendor guide, MISSION.md R36),
- ``exit_code`` for the CLI, and
- ``hint``: what the operator can do about it.

Foreign errors (lmdb, msgpack, OSError) are translated at their one choke point
with ``raise ... from e`` so that callers only ever see this tree.
"""

from __future__ import annotations

from typing import Any, ClassVar

from eventsourcing.persistence import IntegrityError as _ESIntegrityError
from eventsourcing.persistence import OperationalError as _ESOperationalError

__all__ = [
    "ChecksumMismatchError",
    "ConfigurationError",
    "DiskFullError",
    "FrameError",
    "FrameTooLargeError",
    "IntegrityViolationError",
    "JournalLockedError",
    "JournalMissingError",
    "JournalReadOnlyError",
    "StorageError",
    "UnsupportedFormatError",
    "XoError",
]


class XoError(Exception):
    """xoengine error: {detail}."""

    code: ClassVar[str] = "E0000"
    exit_code: ClassVar[int] = 1
    hint: ClassVar[str] = "See the message and the activity log."

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        """Format the class's message template with ``fields`` (or take ``message``)."""
        self.fields = fields
        if message is None:
            template = (type(self).__doc__ or "{detail}").strip().splitlines()[0]
            try:
                message = template.format(**fields)
            except (KeyError, IndexError, ValueError):
                message = f"{template} {fields!r}"
        self.message = message
        super().__init__(f"{self.code}: {message}")

    def describe(self) -> dict[str, Any]:
        """Return the error as a plain dict (code, message, hint, fields)."""
        return {
            "code": self.code,
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "fields": {k: repr(v) if isinstance(v, bytes) else v for k, v in self.fields.items()},
        }


class ConfigurationError(XoError, ValueError):
    """Invalid configuration: {detail}."""

    code = "E1001"
    exit_code = 2
    hint = "Check the named setting (environment variable or argument)."


# -- journal and storage -----------------------------------------------------------


class StorageError(XoError, _ESOperationalError):
    """The journal store failed: {detail}."""

    code = "E4000"
    exit_code = 3
    hint = "Check the state directory: permissions, free space, and the underlying disk."


class JournalMissingError(StorageError):
    """No journal at {path}."""

    code = "E4001"
    hint = "Give the path of an existing state directory, or open it writable to create one."


class JournalLockedError(StorageError):
    """Another process (pid {pid}) is writing the journal at {path}."""

    code = "E4002"
    hint = (
        "Only one writer process per journal: stop the other writer, or open this "
        "one read-only (followers, `xoengine journal log`, forensic replay)."
    )


class JournalReadOnlyError(StorageError):
    """The journal at {path} is open read-only: {detail}."""

    code = "E4003"
    hint = "Open the journal writable to change it; copies for investigators stay read-only."


class DiskFullError(StorageError):
    """No space left for the journal at {path}: the last operation was not recorded."""

    code = "E4004"
    hint = (
        "Free space on the volume holding the state directory, then retry: everything "
        "acknowledged before this error is intact."
    )


class FrameError(StorageError):
    """Malformed record at position {position}: {detail}."""

    code = "E4010"
    exit_code = 4
    hint = (
        "The journal is damaged at that position. Run `xoengine journal verify` and "
        "restore the state directory from a copy (`xoengine journal copy`)."
    )


class ChecksumMismatchError(FrameError):
    """Checksum mismatch at position {position} in {table}: the record is damaged."""

    code = "E4011"


class FrameTooLargeError(FrameError):
    """Record at position {position} declares {size} bytes, above the cap of {cap}."""

    code = "E4012"


class UnsupportedFormatError(FrameError):
    """Record at position {position} has format version {version}; this build reads {supported}."""

    code = "E4013"
    hint = "Open the journal with a newer xoengine (format versions only ever increase)."


class IntegrityViolationError(XoError, _ESIntegrityError):
    """Refused to record: {detail}."""

    code = "E4020"
    hint = "The event or tracking record already exists; reload and retry the command."
