"""One writer per folder: an atomic lock file naming the process that writes the folder.

`FolderLock(folder)` creates FOLDER/.kdepth.lock holding the writer's pid, host, start time
and command line. The file is written completely under a temporary name and then hard-linked
to its final name, which fails if the name exists: taking the lock is atomic and a lock file is
never seen half-written (where the file system has no hard links, O_CREAT|O_EXCL is used). The
lock is released on every way out of the `with` block, exceptions and Ctrl-C included; while it
is held, SIGTERM (if it would otherwise kill the process) raises SystemExit so the lock goes too.

A lock whose process is gone (same host: no such pid, or the pid now belongs to a process that
started later) is stale and taken over with a message; a lock from another host cannot be
checked from here, so the error says how to remove it. Used by `kdepth fit` (the stage folder)
and `kdepth export` (OUT); it imports nothing of kdepth.training, so serving code can use it.
"""

import contextlib
import dataclasses
import datetime
import json
import os
import shlex
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

from kdepth.errors import KdepthError

LOCK_NAME = ".kdepth.lock"
TAKEOVER_TIMEOUT_S = 30  # a takeover marker older than this was left by a killed process
COMMAND_SHOWN = 160  # characters of the holder's command line quoted in a message


class FolderLocked(KdepthError):
    """Another process writes the folder (or may: a lock from another host)."""


def command_line(argv=None):
    """This process's command line as a user typed it: `kdepth fit ...` for the CLI."""
    argv = list(sys.argv if argv is None else argv)
    if not argv:
        return ""
    program = Path(argv[0]).name
    if program == "kdepth" or Path(argv[0]).parts[-2:] in (("kdepth", "cli.py"), ("kdepth", "__main__.py")):
        program = "kdepth"
    return shlex.join([program, *argv[1:]])


def _process_start(pid):
    """The start time of process `pid` in clock ticks since boot (/proc), or None if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    except OSError:
        return False
    return True


@dataclasses.dataclass
class LockHolder:
    """What a lock file says about the process that holds it."""

    pid: int
    host: str
    started: str  # ISO 8601, UTC
    command: str
    token: str
    pid_start: int | None = None
    folder: str | None = None  # the locked folder, resolved: a lock in a copy of it is stale

    @classmethod
    def current(cls, folder):
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        pid = os.getpid()
        return cls(pid, socket.gethostname(), now, command_line(), uuid.uuid4().hex, _process_start(pid), str(folder))

    @classmethod
    def read(cls, path):
        """The holder named in lock file `path`, None if there is no such file.

        Raises:
            KdepthError: the file is not a kdepth lock.
        """
        try:
            data = json.loads(Path(path).read_text())
            return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            raise KdepthError(
                f"{path} is not a readable kdepth lock file ({e}). If no kdepth process writes "
                f"{Path(path).parent}, delete {path} and run the command again."
            ) from None

    def on_this_host(self):
        return self.host == socket.gethostname()

    def running(self, folder):
        """Whether the holder writes `folder`: True or False on this host, None for a process on
        another host (cannot be checked). False for a lock copied from another folder."""
        if self.folder is not None and self.folder != str(folder):
            return False
        if not self.on_this_host():
            return None
        if not isinstance(self.pid, int) or not _pid_running(self.pid):
            return False
        start = _process_start(self.pid)
        return self.pid_start is None or start is None or start == self.pid_start

    def since(self):
        """The start time in local time: HH:MM today, else the date too."""
        try:
            started = datetime.datetime.fromisoformat(self.started).astimezone()
        except (TypeError, ValueError):
            return str(self.started)
        today = datetime.datetime.now().astimezone().date()
        return started.strftime("%H:%M" if started.date() == today else "%Y-%m-%d %H:%M")

    def describe(self):
        """`process 12345 on HOST since 16:51 (kdepth fit ...)`."""
        command = self.command if len(self.command or "") <= COMMAND_SHOWN else self.command[:COMMAND_SHOWN] + " ..."
        return f"process {self.pid} on {self.host} since {self.since()} ({command})"


class FolderLock:
    """Holds FOLDER/.kdepth.lock while a process writes FOLDER; a context manager.

    Args:
        folder: the folder to lock (created if missing).
        activity: what the holder does, for messages: "being trained", "being written".
        fix: the advice in the message when the folder is busy, e.g. "use --name NEW".
        echo: where the stale-lock takeover message goes.

    Raises (on entering):
        FolderLocked: a running process (or one on another host) holds the lock.
        KdepthError: the lock file cannot be created (unwritable folder) or is not a kdepth lock.
    """

    def __init__(self, folder, *, activity="being written", fix="wait for it", echo=print):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.activity, self.fix, self.echo = activity, fix, echo
        self.holder = None  # our LockHolder while held
        self._resolved = self.folder
        self._previous_sigterm = None

    # ------------------------------------------------------------------ taking
    def _create(self, holder):
        """Creates the lock file atomically with its full content; False if it exists."""
        text = json.dumps(dataclasses.asdict(holder), indent=1)
        temporary = self.folder / f"{LOCK_NAME}.{holder.token}.tmp"
        temporary.write_text(text)
        try:
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here: O_EXCL (a reader may see the file empty for a moment)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return True
        finally:
            temporary.unlink(missing_ok=True)

    def _busy(self, other):
        if other.running(self._resolved) is None:
            return FolderLocked(
                f"{self.folder} is locked by {other.describe()}, another host: kdepth cannot tell from "
                f"{socket.gethostname()} whether it still runs. If it does not, delete {self.path} and run "
                f"the command again; if it does, {self.fix}."
            )
        return FolderLocked(f"{self.folder} is {self.activity} by {other.describe()}. {self.fix[0].upper()}{self.fix[1:]}.")

    def _take_over(self, stale):
        """Removes a stale lock, if it is still the same one; one process at a time does this."""
        marker = self.folder / f"{LOCK_NAME}.takeover"
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError):
                if time.time() - marker.stat().st_mtime > TAKEOVER_TIMEOUT_S:
                    marker.unlink()
            time.sleep(0.05)
            return
        os.close(fd)
        try:
            current = LockHolder.read(self.path)
            if current is not None and current.token == stale.token:
                why = "it was copied from another folder" if stale.folder not in (None, str(self._resolved)) else "the process is gone"
                self.echo(f"{self.folder}: the lock of {stale.describe()} is stale ({why}); taking it over.")
                self.path.unlink()
        finally:
            marker.unlink(missing_ok=True)

    def acquire(self):
        """Takes the lock; returns self. See the class for what it raises."""
        deadline = time.monotonic() + TAKEOVER_TIMEOUT_S
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._resolved = self.folder.resolve()
            holder = LockHolder.current(self._resolved)
            while not self._create(holder):
                other = LockHolder.read(self.path)
                if other is None:
                    continue  # released in the meantime
                if other.running(self._resolved) is not False:
                    raise self._busy(other)
                if time.monotonic() > deadline:
                    raise self._busy(other)
                self._take_over(other)
        except OSError as e:
            raise KdepthError(
                f"cannot create the lock file {self.path}: {e.strerror or e}. Nothing was written; choose a "
                "writable place or fix the folder's permissions."
            ) from e
        self.holder = holder
        return self

    # ------------------------------------------------------------------ releasing
    def release(self):
        """Deletes the lock file if it is still ours. Safe to call twice."""
        if self.holder is None:
            return
        with contextlib.suppress(KdepthError, OSError):
            current = LockHolder.read(self.path)
            if current is not None and current.token == self.holder.token:
                self.path.unlink()
        self.holder = None

    def _on_sigterm(self, signum, frame):
        raise SystemExit(128 + signum)

    def __enter__(self):
        self.acquire()
        main = threading.current_thread() is threading.main_thread()
        if main and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._previous_sigterm = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc):
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None
        self.release()
        return False


@contextlib.contextmanager
def output_folder_lock(folder, *, activity="being written", fix="wait for it", echo=print):
    """Holds `folder`'s lock inside the block, creating the folder for it and removing it again
    if it was created here and is left empty. A path that is a file is not locked (the writer's
    own check reports it)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        yield None
        return
    created = not folder.exists()
    try:
        with FolderLock(folder, activity=activity, fix=fix, echo=echo) as lock:
            yield lock
    finally:
        if created and folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
