"""What `rayexp run` shows on the terminal, and where the rest goes.

stdout carries rayexp's own lines: the banner, one line per trial event and finished stage, progress
inside long stages, the summary. Everything else a run writes to stderr (Ray's start-up lines, Tune's
warnings, RLlib's deprecation notices, "Install gputil", worker tracebacks forwarded by Ray, MLflow's
progress bars) is not the user's business while the run is healthy: :class:`StderrLog` sends this
process's file descriptor 2 to a log file, so the Ray processes the driver starts (and the worker
output Ray forwards to it) land there too. The path is printed once, at the start (``logs: PATH``).

Real errors still reach the terminal, in one line: a sweep file or resource problem as
``error: FILE: FIELD: ...`` (exit 2), a run the watchdog stopped or an unexpected exception as
``error: ...`` with the log path (exit 1, the traceback in the log), a trial that fails on its
progress line with its exception's last line.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

#: where the logs go (default: ``{tempdir}/rayexp-logs``)
LOG_DIR_ENV = "RAYEXP_LOG_DIR"


class OneLineError(Exception):
    """An error the command line reports as ``error: {message}`` on stderr, exiting with ``code``."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def log_dir() -> Path:
    return Path(os.environ.get(LOG_DIR_ENV) or Path(tempfile.gettempdir()) / "rayexp-logs")


class StderrLog:
    """This process's stderr (file descriptor 2) sent to a log file between :meth:`start` and :meth:`stop`.

    At the descriptor, not ``sys.stderr``: Ray's and Tune's logging handlers hold the stream they were
    made with, C++ code writes to the descriptor, and child processes (the Ray head) inherit it."""

    def __init__(self):
        self.path: Path | None = None
        self._saved: int | None = None

    def start(self, name: str) -> Path:
        directory = log_dir()
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        # MLflow draws a progress bar per artifact it downloads (the verdict tables): noise even in a log
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        sys.stderr.flush()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._saved = os.dup(2)
        os.dup2(fd, 2)
        os.close(fd)
        return self.path

    def stop(self) -> None:
        if self._saved is None:
            return
        sys.stderr.flush()
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._saved = None

    def add_traceback(self, err: BaseException) -> None:
        if self.path is not None:
            with open(self.path, "a") as f:
                traceback.print_exception(err, file=f)

    def one_line(self, err: BaseException) -> OneLineError:
        """``err`` as one line naming the log (where its traceback goes)."""
        self.add_traceback(err)
        first = (str(err).strip().splitlines() or [""])[0]
        where = f" (traceback in {self.path})" if self.path is not None else ""
        return OneLineError(f"{type(err).__name__}: {first}{where}", 1)
