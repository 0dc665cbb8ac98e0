"""User errors vs internal errors at the command line: find the user's mistake inside Prefect / Ray wrappers.

A ``ValueError`` / ``FileNotFoundError`` (``ConfigError`` is a ValueError) raised by a stage is the project's way of
saying "bad input, here is the fix" in one line. Ray wraps it (``WorkerGroupError`` -> per-rank exceptions,
``RayTaskError`` -> ``.cause``) and Python chains it; :func:`user_error` digs it out so the terminal shows that one
line, while the whole traceback goes to a log file.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path

USER_ERRORS = (ValueError, FileNotFoundError)


def _is_wrapper(err: BaseException) -> bool:
    # RayTaskError.as_instanceof_cause() subclasses the cause's type too: its str is a traceback, not a message.
    return type(err).__module__.startswith("ray.") or "RayTaskError" in type(err).__name__


def _inner(err: BaseException) -> list[BaseException]:
    found: list[BaseException] = []
    failures = getattr(err, "worker_failures", None)  # ray.train.WorkerGroupError: {rank: exception}
    if isinstance(failures, dict):
        found += [e for _, e in sorted(failures.items()) if isinstance(e, BaseException)]
    for attr in ("cause", "controller_failure"):  # RayTaskError, ray.train.ControllerError
        inner = getattr(err, attr, None)
        if isinstance(inner, BaseException):
            found.append(inner)
    found += [e for e in (err.__cause__, err.__context__) if e is not None]
    return found


def user_error(err: BaseException) -> BaseException | None:
    """The outermost user error (ValueError / FileNotFoundError) that is not a Ray wrapper, searching through
    ``err``'s wrappers and chained causes; None for an internal error."""
    todo, seen = [err], set()
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, USER_ERRORS) and not _is_wrapper(current):
            return current
        todo += _inner(current)
    return None


def write_traceback(home: Path, err: BaseException) -> Path:
    """Write the full traceback to ``home/logs/last-error.log`` (one file, the latest failure); returns its path."""
    log = Path(home) / "logs" / "last-error.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(traceback.format_exception(err))
    log.write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n{text}")
    return log
