"""One writer at a time: a driver (`llmpipe run`, a stage command) holds a lock on what it writes.

A second `llmpipe run` of a workdir, or `llmpipe dedup --output X` while a pipeline writes X, is
refused in one line naming the holder (command, pid, host, since when), exit 2, as Snakemake does
("Directory cannot be locked"): a run lasts hours, so a second one that waited would look hung,
and the usual cause is a forgotten first run in another terminal or on another login node.

The lock is the driver's, never the tasks': worker processes, Slurm array tasks (`llmpipe task`)
and torchrun ranks take none, so a driver that follows its Slurm jobs cannot deadlock them.

How, and why it holds on shared filesystems:
- `flock` on `<workdir>/.llmpipe-run.lock` for a pipeline run, `<parent>/.<name>.writer.lock` for
  each artifact a run or a stage command writes. The kernel drops it when the holder dies, even by
  SIGKILL, so a crash never leaves a stale lock behind. Linux NFS clients (since 2.6.12) turn
  flock into a byte-range lock on the server (NLM on v3, v4 locks), and Lustre mounted with
  `-o flock` makes it coherent across nodes.
- Some mounts make flock local to one machine (NFS `local_lock=flock|all`, Lustre `localflock`)
  or refuse it (NFS `nolock` gives ENOLCK, Lustre `noflock` ENOSYS). For those the file also
  holds a record of the holder (host, pid, start), whose mtime a heartbeat thread renews every
  HEARTBEAT seconds. A newcomer that gets the flock yet finds a record from another machine
  renewed less than STALE seconds ago knows the flock is not shared and refuses anyway; a
  record from this machine counts while its process lives. Without flock at all, two runs
  starting within the same instant could both pass; that window is the one cost.
The lock file is emptied on release but not deleted: deleting it would let a process that has it
open lock the old file while a newcomer locks a new one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from llmpipe.errors import InputError

HEARTBEAT = 10.0  # seconds between renewals of the holder's record
STALE = 120.0  # a record from another machine not renewed for this long is a dead holder's (clock skew included)
NO_FLOCK = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP)

_held: set[str] = set()  # lock files this process holds


def workdir_lock(workdir: Path) -> Path:
    """In the workdir: a step name cannot start with a dot, so no step's directory can be this."""
    return Path(workdir) / ".llmpipe-run.lock"


def artifact_lock(out: Path) -> Path:
    """Beside the artifact, not in it: a stale artifact is deleted whole before it is rewritten."""
    out = Path(out)
    return out.parent / f".{out.name}.writer.lock"


def driver_command() -> str:
    """What the user typed, as the holder's record and the refusal name it."""
    prog = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    prog = "llmpipe" if prog in ("__main__.py", "llmpipe") else prog
    return shlex.join([prog, *sys.argv[1:]])


@contextlib.contextmanager
def hold(path: Path, shown: str) -> Iterator[None]:
    """Hold the lock file `path` for the block, or refuse in one line: "<shown> is in use by ..."."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    if key in _held:  # already ours: a pipeline holds its steps' locks, and execute() asks again for the step it runs
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    stop = threading.Event()
    try:
        _acquire(fd, shown)
        _held.add(key)
        heartbeat = threading.Thread(target=_renew, args=(fd, stop), daemon=True, name="llmpipe-lock-heartbeat")
        heartbeat.start()
        try:
            yield
        finally:
            stop.set()
            heartbeat.join()
            _held.discard(key)
            os.ftruncate(fd, 0)  # the record goes first: a newcomer that flocks next finds the lock free
    finally:
        os.close(fd)  # closing drops the flock


def _acquire(fd: int, shown: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        flocked = True
    except BlockingIOError:
        raise InputError(_refusal(shown, _record(fd))) from None
    except OSError as e:
        if e.errno not in NO_FLOCK:
            raise
        flocked = False
    holder = _record(fd)
    if holder and _alive(holder, fd, flocked):
        raise InputError(_refusal(shown, holder))
    record = {"host": os.uname().nodename, "pid": os.getpid(), "start": _process_start(os.getpid()),
              "since": time.time(), "command": driver_command()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    os.fsync(fd)


def _record(fd: int) -> dict | None:
    try:
        data = os.pread(fd, 1 << 16, 0)
        return json.loads(data) if data.strip() else None
    except (OSError, ValueError):
        return None  # half written by a holder that just started, or not ours: the flock decides


def _alive(holder: dict, fd: int, flocked: bool) -> bool:
    """Is the holder of a record we found (although we may hold the flock) still running?"""
    if holder.get("host") != os.uname().nodename:
        return time.time() - os.fstat(fd).st_mtime < STALE  # a flock that is not shared across machines
    if flocked:
        return False  # flock always works within one machine: its holder is gone
    pid = holder.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and _process_start(pid) == holder.get("start") and _exists(pid)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    return True


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks: a pid reused by another process has another one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _renew(fd: int, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        with contextlib.suppress(OSError):
            os.utime(fd)


def _refusal(shown: str, holder: dict | None) -> str:
    if not holder:
        who = "another llmpipe process"
    else:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
        who = f"{holder.get('command', 'llmpipe')} (pid {holder.get('pid')} on {holder.get('host')}, since {since})"
    return f"{shown} is in use by {who}; wait for it to finish, or stop it and run again"


@contextlib.contextmanager
def hold_run(workdir: Path, outs: list[Path]) -> Iterator[None]:
    """A pipeline run holds its workdir, then every artifact it may write, so that a second run of the
    workdir, or a stage command writing one of those artifacts, is refused before anything is written."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(hold(workdir_lock(workdir), str(workdir)))
        for out in outs:
            stack.enter_context(hold(artifact_lock(out), str(out)))
        yield
