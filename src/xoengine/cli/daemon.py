"""Requests to a running ``xoengine start --watch`` from the other commands.

Room: edge (the command line). A journal has one writer process. While
``start --watch`` is that writer, ``rewind-points --set``, ``capture``,
``wait`` and ``stop`` of the scenario it runs are handed to it instead of
failing with E4002: each is a JSON file in ``STATE/requests`` named after the
asking process (``PID-ID.request``, written whole, then renamed into place),
which the daemon takes, carries out and answers with ``PID-ID.answer``; the
command reads the answer and removes it. The daemon names itself in
``STATE/requests/daemon.json`` (its pid and scenario) while it serves, looks
for requests four times a second in a thread of its own (so a long request
never holds up its stop), and carries them out one at a time.

A request is carried out as the same verb would be by the command itself;
its error comes back coded as it was raised. A request or an answer whose
command has ended (interrupted) is dropped; a new daemon drops whatever an
earlier one left. If the daemon ends before it answers (stopped, killed),
the command runs the verb itself, since the journal is free then. ``stop``
is answered once the scenario stopped, with its error if the stop failed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from xoengine import errors
from xoengine.cli.output import plain
from xoengine.engine import Engine
from xoengine.errors import (
    ConfigurationError,
    JournalLockedError,
    ReplicationTimeoutError,
    XoError,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from xoengine.engine import Scenario

__all__ = ["POLL_S", "REQUESTS", "VERBS", "Daemon", "run_or_ask"]

REQUESTS: Final = "requests"
"""The directory of the state directory that requests and answers pass through."""
POLL_S: Final = 0.25
"""How often the daemon looks for requests, and a command for its answer."""
_SELF: Final = "daemon.json"
_REQUEST: Final = ".request"
_ANSWER: Final = ".answer"
_REQUEST_MAX: Final = 1 << 16  # bytes: a request is a few names
_FINISH_S: Final = 60.0  # how long a stopped daemon waits for the request it is carrying out


def _point(sc: Scenario, request: dict[str, Any]) -> Any:
    return sc.set_rewind_point(str(request["name"]))


def _capture(sc: Scenario, request: dict[str, Any]) -> Any:
    del request
    result = sc.capture()
    sc.wait_replicated()
    return result


def _wait(sc: Scenario, request: dict[str, Any]) -> Any:
    return {"position": sc.wait_replicated(timeout=request.get("timeout"))}


def _stop(sc: Scenario, request: dict[str, Any]) -> Any:
    del request
    sc.stop()


VERBS: Final[dict[str, Callable[[Scenario, dict[str, Any]], Any]]] = {
    "point": _point,
    "capture": _capture,
    "wait": _wait,
    "stop": _stop,
}
"""What each request does to the scenario, the same whether the daemon or the command runs it."""


def _write(path: Path, value: Any) -> None:
    """Write ``value`` as JSON to ``path`` whole: a reader never sees part of it.

    A full volume is :class:`~xoengine.errors.DiskFullError`, nothing left behind.
    """
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        partial.write_text(json.dumps(value))
        os.replace(partial, path)
    except OSError as e:
        partial.unlink(missing_ok=True)
        if e.errno in {errno.ENOSPC, errno.EDQUOT}:
            raise errors.DiskFullError(
                path=str(path.parent), detail=f"{path.name} was not written"
            ) from e
        raise


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, ended but not yet waited for, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's: alive
        return True
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc to ask: it answered the signal
    return status.rpartition(")")[2].split()[:1] != ["Z"]


def _wait_ended(pid: int) -> None:
    """Return once process ``pid`` has ended."""
    while _alive(pid):
        time.sleep(POLL_S / 2)


def _asker(path: Path) -> int | None:
    """The pid of the command that wrote ``path`` (``PID-ID.request``), None if not named so."""
    pid, sep, _ = path.name.partition("-")
    return int(pid) if sep and pid.isdigit() else None


def _read_request(path: Path) -> Any:
    """The JSON of a request file: a regular file of at most 64 KiB (never a FIFO or a link)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _REQUEST_MAX:
            raise ValueError(
                f"not a request file ({stat.filemode(st.st_mode)}, {st.st_size} bytes)"
            )
        return json.loads(os.read(fd, _REQUEST_MAX + 1))
    finally:
        os.close(fd)


class Daemon:
    """The serving side: ``start --watch`` answers the requests for its scenario."""

    def __init__(
        self, state_dir: str | os.PathLike[str], scenario: Scenario, stop: threading.Event
    ) -> None:
        """Serve requests for ``scenario``; ``stop`` is set by a ``stop`` request.

        What an earlier daemon left in the directory is dropped first: its
        commands have ended, or run their verbs themselves.
        """
        self.directory = Path(state_dir) / REQUESTS
        self.scenario = scenario
        self.stop = stop
        self._closing = threading.Event()
        self._stop_answers: list[Path] = []
        self.directory.mkdir(mode=0o700, exist_ok=True)
        for left in self.directory.iterdir():
            if left.name != _SELF:
                with contextlib.suppress(OSError):
                    left.unlink()
        _write(self.directory / _SELF, {"pid": os.getpid(), "scenario": scenario.name})
        self._thread = threading.Thread(target=self._run, name="xoengine-requests", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving (a command waiting for an answer then waits for the process to end)."""
        self._closing.set()
        with contextlib.suppress(FileNotFoundError):
            (self.directory / _SELF).unlink()

    def stopped(self, error: BaseException | None) -> None:
        """Answer the ``stop`` requests: the scenario stopped, or ``error`` (its stop failed)."""
        if isinstance(error, XoError):
            answer: dict[str, Any] = {"error": error.describe()}
        elif error is not None:
            answer = {"error": ConfigurationError(detail=f"the stop failed: {error!r}").describe()}
        else:
            answer = {"result": {"stopped": self.scenario.name}}
        for path in self._stop_answers:
            with contextlib.suppress(OSError):
                _write(path, answer)
        # A request begun before the stop ends before the journal closes (the
        # scenario's stop let any wait in it return); one that hangs is left.
        self._thread.join(timeout=_FINISH_S)

    def _run(self) -> None:
        while not self._closing.wait(POLL_S):
            with contextlib.suppress(OSError):  # the directory gone: nothing to serve
                self.serve()

    def serve(self) -> None:
        """Carry out and answer every request waiting, oldest first; drop what no one waits for."""
        for path in sorted(self.directory.glob("*" + _ANSWER)):
            pid = _asker(path)
            if pid is None or not _alive(pid):  # its command was interrupted
                path.unlink(missing_ok=True)
        for path in sorted(self.directory.glob("*" + _REQUEST), key=_age):
            if self._closing.is_set():
                return
            pid = _asker(path)
            try:
                request = _read_request(path) if pid is not None and _alive(pid) else None
            except FileNotFoundError:
                continue  # its command gave up and took it back
            except (OSError, ValueError) as e:
                request = {"verb": None, "unreadable": repr(e)}
            path.unlink(missing_ok=True)
            if request is None:
                continue  # no command waits for it
            answer_path = path.with_suffix(_ANSWER)
            answer = self._answer(request if isinstance(request, dict) else {"verb": None})
            if answer is None:  # a stop: answered once the scenario stopped
                self._stop_answers.append(answer_path)
                continue
            with contextlib.suppress(OSError):  # a full volume: the command waits, or is stopped
                _write(answer_path, answer)

    def _answer(self, request: dict[str, Any]) -> dict[str, Any] | None:
        """The result of ``request``, or its error: nothing a request holds ends the daemon."""
        try:
            return self._carry_out(request)
        except XoError as e:
            return {"error": e.describe()}
        except Exception as e:  # noqa: BLE001 (a malformed request: said to its command)
            error = ConfigurationError(detail=f"request {request!r} failed: {e!r}")
            return {"error": error.describe()}

    def _carry_out(self, request: dict[str, Any]) -> dict[str, Any] | None:
        sc = self.scenario
        verb = request.get("verb")
        if request.get("scenario") != sc.name:
            raise ConfigurationError(
                detail=f"the running `xoengine start --watch` (pid {os.getpid()}) "
                f"protects scenario {sc.name!r}, not {request.get('scenario')!r}"
            )
        if verb == "stop":  # the main loop ends, and stops the scenario as it always does
            self.stop.set()
            return None
        if verb not in VERBS:
            raise ConfigurationError(detail=f"a request the daemon cannot read: {request!r}")
        return {"result": plain(VERBS[verb](sc, request))}


def _age(path: Path) -> int:
    """When ``path`` was written (0 if its command took it back meanwhile)."""
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0


def _rebuilt(described: dict[str, Any]) -> XoError:
    """The coded error a daemon answered with, as the same class (else a plain XoError)."""
    cls = getattr(errors, str(described.get("error")), None)
    message = str(described.get("message"))
    if isinstance(cls, type) and issubclass(cls, XoError):
        with contextlib.suppress(Exception):
            return cls(message)
    return XoError(message)


_GONE: Final = object()


def _ask(
    state_dir: str, busy: JournalLockedError, request: dict[str, Any], timeout: float | None
) -> Any:
    """Hand ``request`` to the daemon that holds the journal; ``_GONE`` if it ended first.

    ``timeout``: seconds to wait for the answer (the daemon may be busy with
    another command's request), then ReplicationTimeoutError.
    """
    directory = Path(state_dir) / REQUESTS
    try:
        daemon = json.loads((directory / _SELF).read_bytes())
    except (OSError, ValueError):
        raise busy from None  # the writer serves no requests
    pid = daemon.get("pid")
    if not isinstance(pid, int) or str(pid) != str(busy.fields.get("pid")):
        raise busy  # a note left by an earlier daemon: this writer is another program
    name = f"{os.getpid()}-{uuid.uuid4().hex}"
    request_path = directory / (name + _REQUEST)
    answer_path = directory / (name + _ANSWER)
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        _write(request_path, request)
    except errors.DiskFullError:
        if request["verb"] != "stop" or daemon.get("scenario") != request["scenario"]:
            raise
        # No room for the request: SIGTERM ends a daemon as a stop does, room or not.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        _wait_ended(pid)
        return None
    try:
        while True:
            try:
                answer = json.loads(answer_path.read_bytes())
                break
            except FileNotFoundError:
                pass
            if not _alive(pid):
                return _GONE
            if deadline is not None and time.monotonic() > deadline:
                what = f"the running daemon (pid {pid}) to answer"
                raise ReplicationTimeoutError(timeout=timeout, what=what)
            time.sleep(POLL_S / 2)
    finally:
        request_path.unlink(missing_ok=True)
        answer_path.unlink(missing_ok=True)
    if "error" in answer:
        raise _rebuilt(answer["error"])
    if request["verb"] == "stop":  # answered as the daemon ends: the journal is free after
        _wait_ended(pid)
    return answer["result"]


def run_or_ask(state_dir: str, durability: str, scenario: str, request: dict[str, Any]) -> Any:
    """Carry out ``request`` (``{"verb": ..., ...}``, see :data:`VERBS`) on ``scenario``.

    With a writable engine of its own, or through the running daemon that
    holds the journal. The answer is plain data either way, so the two print
    alike.
    """
    try:
        engine = Engine.open(state_dir, durability=durability)
    except JournalLockedError as busy:
        timeout = request.get("timeout")
        if timeout is not None:
            timeout = float(timeout) + 2 * POLL_S  # the daemon's wait, and its poll
        answer = _ask(state_dir, busy, {**request, "scenario": scenario}, timeout)
        if answer is not _GONE:
            return answer
        engine = Engine.open(state_dir, durability=durability)
    with engine:
        return plain(VERBS[request["verb"]](engine.scenario(scenario), request))
