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

import re
import string
from typing import Any, ClassVar

from eventsourcing.persistence import IntegrityError as _ESIntegrityError
from eventsourcing.persistence import OperationalError as _ESOperationalError

__all__ = [
    "ApplierFailedError",
    "BlobNotFoundError",
    "CaptureFailedError",
    "ChecksumMismatchError",
    "ConfigurationError",
    "DiskFullError",
    "EntryUnreadableWarning",
    "EntryVanishedWarning",
    "FrameError",
    "FrameTooLargeError",
    "IntegrityViolationError",
    "InvalidRelPathError",
    "JournalDamagedError",
    "JournalInsideJournalError",
    "JournalLockedError",
    "JournalMissingError",
    "JournalReadOnlyError",
    "JournalUnreadableError",
    "NoFileAtError",
    "OutputLocationError",
    "OverlappingTreesError",
    "ParentNotDirectoryError",
    "PathError",
    "PathEscapesRootError",
    "RecordTooLargeError",
    "ReplicaDivergedError",
    "ReplicaInUseError",
    "ReplicaNotFoundError",
    "ReplicaVolumeChangedError",
    "ReplicaWriteError",
    "ReplicationTimeoutError",
    "ReservedNameSkippedWarning",
    "RewindUnreachableError",
    "RewindWriteError",
    "ScenarioError",
    "ScenarioExistsError",
    "ScenarioNotFoundError",
    "ScenarioStateError",
    "SpecialFileSkippedWarning",
    "StateCopiedError",
    "StorageError",
    "SymlinkedParentError",
    "TreeRootMissingError",
    "TreeRootUnreadableError",
    "TreeWarning",
    "UnsupportedFormatError",
    "XoError",
    "quoted",
]


_ESCAPE = re.compile(r"(\\\\)|\\(x|udc)([89a-f][0-9a-f])")
"""In a ``repr``: an escaped backslash, or an escape of U+0080-U+00FF or of a lone surrogate."""


def _byte_escape(match: re.Match[str]) -> str:
    if match.group(1):
        return match.group(1)
    kind, code = match.group(2), match.group(3)
    return f"\\x{code}" if kind == "udc" else f"\\u00{code}"


class _Message(string.Formatter):
    r"""``str.format`` whose ``!r`` of a name writes its escapes as the CLI's listings do.

    Names come from :func:`os.fsdecode` (PEP 383): ``b"caf\xe9"`` is held as
    ``"caf\udce9"``. Its ``repr`` would print the surrogate, and a no-break
    space (U+00A0) as ``\xa0``: here a byte that is not UTF-8 is ``\xNN``
    and a character from U+0080 up is ``\uNNNN``, so the two never look alike.
    """

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion == "r" and isinstance(value, str):
            return quoted(value)
        return super().convert_field(value, conversion)


def quoted(name: str) -> str:
    """``repr(name)`` with the escapes of a message field's ``!r`` (see :class:`_Message`)."""
    return _ESCAPE.sub(_byte_escape, repr(name))


_MESSAGE = _Message()


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
                message = _MESSAGE.format(template, **fields)
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


class JournalLiveUnlockedError(StorageError):
    """The journal at {path} is written by {writer}; this reader cannot use its lock: {detail}."""

    code = "E4007"
    hint = (
        "A journal in use is read safely only through its lock file (LMDB's table of "
        "readers): without it the writer reuses pages the reader is still walking. Read "
        "it as a user who may write its journal directory and lock.mdb, or stop the "
        "writer, or read a copy taken beside the writer by such a user "
        "(`xoengine journal copy STATE COPY`). Nothing was read."
    )


class JournalUnreadableError(StorageError):
    """The journal at {path} cannot be read by this user: {detail}."""

    code = "E4008"
    hint = (
        "Read it as a user who may search the directories down to it and read data.mdb, "
        "or copy it to where you may read it (`cp -a` keeps the modes: give the copy "
        "yours). Nothing was read."
    )


class JournalReadOnlyError(StorageError):
    """The journal at {path} is open read-only: {detail}."""

    code = "E4003"
    hint = "Open the journal writable to change it; copies for investigators stay read-only."


class JournalInsideJournalError(ConfigurationError):
    """Refused to create a journal at {path}: {parent} holds a journal already."""

    code = "E1002"
    hint = (
        "That directory is a bare journal copy (`xoengine journal copy`): read it with "
        "the verbs that only look, or copy it into a state directory's journal/ and "
        "adopt it (`xoengine adopt STATE`) to write to it. Nothing was created."
    )


class StateCopiedError(StorageError):
    """{state} holds a copy: its journal is not the file it was made in ({detail})."""

    code = "E4006"
    hint = (
        "Its scenarios name the masters and replicas of the state directory it was "
        "copied from: writing from the copy (start, rewind, resume, sync, rewind points) "
        "would change them behind the original's journal. Read the copy with the verbs "
        "that only look (Engine.open(..., readonly=True); replay, cat, history, diff, "
        "bisect, rewind --dry-run). If it is to take the original's place (restored after "
        "a loss, moved to another disk), adopt it: Engine.open(..., adopt=True) or "
        "`xoengine adopt STATE`. Nothing was written."
    )


class DiskFullError(StorageError):
    """No space left on the volume holding {path}: {detail}."""

    code = "E4004"
    hint = (
        "Free space on the volume holding the path named (or write elsewhere), then "
        "retry: the journal keeps everything acknowledged before this error, and a "
        "replay or a copy removes what it wrote."
    )

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        """As :class:`XoError`; ``detail`` says what was not done (default: the last write)."""
        fields.setdefault("detail", "the last write did not finish")
        super().__init__(message, **fields)


class JournalDamagedError(StorageError):
    """The journal at {path} is damaged: {detail}."""

    code = "E4005"
    exit_code = 4
    hint = (
        "The journal's structure (LMDB's pages, or its list of tables) is not what "
        "xoengine wrote (a cut-short, corrupted or foreign-modified file): nothing "
        "was read from it. A copy made with cp, tar or rsync while a writer ran is "
        "torn this way: copy a journal in use with `xoengine journal copy STATE COPY`, "
        "which is consistent while it is written. Otherwise restore the state "
        "directory from such a copy; `xoengine journal verify` checks a copy."
    )


class FrameError(StorageError):
    """Malformed record at {at}: {detail}."""

    code = "E4010"
    exit_code = 4
    hint = (
        "The journal is damaged at that record (or torn: copied with cp, tar or "
        "rsync while a writer ran). Run `xoengine journal verify` and restore the "
        "state directory from a copy (`xoengine journal copy`, consistent while "
        "the journal is written)."
    )

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        """As :class:`XoError`; ``at`` names the record: a position, else its key (a blob id)."""
        fields.setdefault("at", _record_at(fields.get("position")))
        super().__init__(message, **fields)


def _record_at(position: object) -> str:
    """Where a damaged record is: a journal position, a key (a blob id, in hex) or a label."""
    text = str(position)
    if isinstance(position, int) or text.isdigit():
        return f"position {text}"
    if len(text) >= 16 and all(c in "0123456789abcdef" for c in text):
        return f"key {text}"
    return text


class ChecksumMismatchError(FrameError):
    """Checksum mismatch at {at} in {table}: the record is damaged."""

    code = "E4011"


class FrameTooLargeError(FrameError):
    """Record at {at} declares {size} bytes, above the cap of {cap}."""

    code = "E4012"


class RecordTooLargeError(FrameTooLargeError):
    """Refused to store a record of {size} bytes under key {position}: the cap is {cap}."""

    code = "E4014"
    exit_code = 3  # a refusal before the write: nothing damaged
    hint = (
        "Nothing was written and the journal is intact. xoengine stores content in "
        "4 MiB blobs, so a record this large is a bug: report it with the traceback."
    )


class UnsupportedFormatError(FrameError):
    """Record at {at} has format version {version}; this build reads {supported}."""

    code = "E4013"
    hint = "Open the journal with a newer xoengine (format versions only ever increase)."


class BlobNotFoundError(StorageError, KeyError):
    """No blob {blob} in the journal."""

    code = "E4015"
    exit_code = 4
    hint = (
        "An event references bytes the blob table does not hold: the journal is damaged "
        "(run `xoengine journal verify`) or the blob id is wrong."
    )

    def __str__(self) -> str:
        """The coded message (KeyError would show only the repr of its argument)."""
        return f"{self.code}: {self.message}"


class IntegrityViolationError(XoError, _ESIntegrityError):
    """Refused to record: {detail}."""

    code = "E4020"
    exit_code = 3
    hint = "The event or tracking record already exists; reload and retry the command."


# -- paths and trees ---------------------------------------------------------------


class PathError(XoError, ValueError):
    """Refused the path {path!r}: {detail}."""

    code = "E2000"
    exit_code = 2
    hint = (
        "Paths from outside (journal, media, network, user) must name something under "
        "their root; check where the path came from."
    )


class PathEscapesRootError(PathError):
    """The path {path!r} would leave its root: {detail}."""

    code = "E2001"
    exit_code = 2
    hint = (
        "Give a relative path without '..' parts. A journal, media file or peer that "
        "sends such a path is damaged or hostile: investigate it before trusting it."
    )


class InvalidRelPathError(PathError):
    """{path!r} is not a valid relative path: {detail}."""

    code = "E2002"
    exit_code = 2
    hint = "A relative path names a file under a root: not empty, no NUL byte."


class SymlinkedParentError(PathError):
    """Refused {path!r} under {root!r}: its parent {parent!r} is a symbolic link."""

    code = "E2003"
    exit_code = 3  # the tree's state, not the command's
    hint = (
        "Writing through a symbolic link could leave the root. Replace the link with a "
        "directory on the target (or remove it) and retry."
    )


class ParentNotDirectoryError(PathError):
    """Refused {path!r} under {root!r}: its parent {parent!r} is not a directory."""

    code = "E2004"
    exit_code = 3
    hint = "The target tree differs from the source: resynchronize the replica."


class OutputLocationError(XoError):
    """Cannot {action} {path!r}: {detail}."""

    code = "E2007"
    exit_code = 2
    hint = (
        "Give a path whose parent is an existing, writable directory, outside the state "
        "directory and the scenarios' masters and replicas (a replay's --to: a new or "
        "empty directory). Nothing was written."
    )


class TreeRootMissingError(XoError):
    """No directory at {root!r}: {detail}."""

    code = "E2005"
    exit_code = 2
    hint = "Check the configured root directory: it must exist and be a directory."


class TreeRootUnreadableError(XoError):
    """Cannot list the tree at {root!r}: {detail}."""

    code = "E2006"
    exit_code = 3
    hint = (
        "Check permissions on the root directory. An unreadable root is never treated "
        "as an empty tree (that would delete everything on a replica)."
    )


class TreeWarning(XoError):  # noqa: N818 -- collected on the walk, never raised
    """Skipped {path!r} during the walk: {detail}."""

    code = "W2000"
    hint = "Warnings are collected on the walk and reported; the entry was skipped."


class EntryVanishedWarning(TreeWarning):
    """{path!r} vanished or was replaced during the walk: {detail}."""

    code = "W2001"
    hint = "The tree changed while it was read; the next scan picks the change up."


class EntryUnreadableWarning(TreeWarning):
    """Could not read {path!r}: {detail}."""

    code = "W2002"
    hint = (
        "Check permissions below the root. For a directory, its contents are unknown "
        "(not empty): nothing below it is deleted on a replica."
    )


class SpecialFileSkippedWarning(TreeWarning):
    """{path!r} is a {detail}: only files, directories and symlinks are replicated."""

    code = "W2003"
    hint = (
        "Fifos, sockets and device nodes have no content to copy; recreate them on the "
        "replica host if an application needs them, or exclude them."
    )


class ReservedNameSkippedWarning(TreeWarning):
    """{path!r} has a name xoengine keeps for its temporary files: it is not replicated."""

    code = "W2004"
    hint = (
        "Rename it: a name beginning with .xoengine-tmp- is what a write killed midway "
        "leaves on a replica, which xoengine sweeps away (a directory with all it holds)."
    )


# -- scenarios and replication ---------------------------------------------------------


class ScenarioError(XoError, ValueError):
    """Invalid scenario {name!r}: {detail}."""

    code = "AE0468"  # the guide's "invalid parameter given to the scenario"
    exit_code = 2
    hint = "Fix the scenario definition; nothing was created or changed."


class ScenarioExistsError(ScenarioError):
    """A scenario named {name!r} exists already."""

    code = "E3001"
    hint = "Pick another name, or update or remove the existing scenario."


class ScenarioNotFoundError(ScenarioError, KeyError):
    """No scenario named {name!r}."""

    code = "E3002"
    hint = "List scenarios with Engine.scenarios() or `xoengine scenario list STATE`."


class OverlappingTreesError(ScenarioError):
    """Scenario {name!r}: {first!r} and {second!r} overlap."""

    code = "E3003"
    hint = (
        "A replica may not lie inside its master or another replica, master roots "
        "may not contain each other, and neither may hold or lie in the engine's state "
        "directory; pick separate directories."
    )


class ReplicaNotFoundError(ScenarioError, KeyError):
    """Scenario {name!r} has no replica {replica!r}."""

    code = "E3004"
    hint = "Use one of the scenario's replica names."


class ScenarioStateError(XoError):
    """Scenario {name!r} is {state}: cannot {action}."""

    code = "AE0465"  # the guide's "the scenario is not in replication state"
    exit_code = 2
    hint = (
        "Bring the scenario to the state the action needs first, as the message "
        "says: stop it to update it (`xoengine stop`), open a new engine for a closed one."
    )


class ReplicaWriteError(XoError):
    """Cannot {action} {path!r} on the replica at {root!r}: {detail}."""

    code = "E3010"
    exit_code = 3
    hint = "Check the replica volume (permissions, space); the change is retried on resume."


class RewindWriteError(ReplicaWriteError):
    """Cannot {action} {path!r} on the replica at {root!r}: {detail}."""

    hint = (
        "The rewind stays pending and the replica suspended: fix the cause, then call "
        "rewind again (the next open of the engine also retries it). resume() does not "
        "retry it: it gives the rewind up, resynchronizes the replica with the master "
        "and puts the replica's history before then out of reach of rewinds."
    )


class ReplicaDivergedError(XoError):
    """Replica {replica!r} differs from the journal at {path!r} (position {position})."""

    code = "E3011"
    exit_code = 3
    hint = (
        "Something changed the replica outside xoengine. A block-level synchronization "
        "of the replica makes it exact again: `sc.synchronize(replica=...)` (CLI "
        "`xoengine sync STATE SCENARIO --replica R`), or resume() if it was rewound."
    )


class ReplicaVolumeChangedError(XoError):
    """Replica root {root!r} is on another file system than at its last sync ({detail})."""

    code = "E3015"
    exit_code = 3
    hint = (
        "Its volume is not mounted, or was replaced: mount it again, or synchronize the "
        "replica to build it on this file system. Nothing was written."
    )


class ReplicaInUseError(XoError):
    """Replica root {root!r} is held by another engine: {detail}."""

    code = "E3016"
    exit_code = 3
    hint = (
        "Another state directory's scenario names the same replica directory, and its "
        "engine is open: two journals would write one tree, each behind the other's undo "
        "log. Give this scenario another replica directory, or close the other engine "
        "(and remove its scenario) first. Nothing was written."
    )


class ReplicationTimeoutError(XoError, TimeoutError):
    """Timed out after {timeout} s waiting for {what}."""

    code = "AE0469"  # the guide's "operation timed out"
    exit_code = 3
    hint = "Raise the timeout, or check the statistics for a stuck or suspended replica."


class ApplierFailedError(XoError):
    """The applier of replica {replica!r} stopped on an unexpected error: {detail}."""

    code = "E3013"
    exit_code = 3
    hint = "The scenario is in Problem; fix the cause and resume the replica to retry."


class CaptureFailedError(XoError):
    """A live capture pass of scenario {name!r} stopped on an unexpected error: {detail}."""

    code = "E2008"
    exit_code = 3
    hint = (
        "Nothing of the failed pass is journaled; the watcher retries with full passes "
        "until one succeeds. Fix the cause (see the detail)."
    )


class NoFileAtError(XoError, FileNotFoundError):
    """{path!r} was no regular file at position {position}: {detail}."""

    code = "E3014"
    exit_code = 2
    hint = (
        "`xoengine history` lists when the path existed and what it was; a directory "
        "is rebuilt with `xoengine replay --path`."
    )

    def __str__(self) -> str:
        """The coded message (OSError would show its own fields)."""
        return f"{self.code}: {self.message}"


class RewindUnreachableError(XoError):
    """Replica {replica!r} of {name!r} cannot be rewound to {position}, before {floor}."""

    code = "E3012"
    exit_code = 2
    hint = (
        "Before that, the undo log holds no state the journal names: retention dropped "
        "those before-images, the replica's first synchronization found its directory "
        "not empty, or the scenario did not exist yet. Replay the journal "
        "(`xoengine replay`) to see that state, or choose a later rewind point."
    )
