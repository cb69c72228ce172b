"""How long the processes of a mining run live, and which run may write an output folder.

Three mechanisms, each for a failure measured on the code before them (docs/labels_distributed.md):

* **Pool workers die with the driver** (``die_with``, the local pool's initializer). kill -9 of the driver left
  every pool worker, the forkserver and the resource tracker alive, idle, forever: the workers wait on a call
  queue whose write end they hold themselves, and the forkserver exits only when every holder of its "alive"
  pipe is gone, which includes the workers. ``PR_SET_PDEATHSIG`` cannot fix that: it fires when the *parent*
  dies, and a worker's parent is the forkserver, which outlives the driver for the reason above. So each
  worker watches the driver itself: a thread blocks on a pidfd of the driver (``os.pidfd_open``: the kernel
  wakes it when that very process exits, no polling, no pid-reuse race) and SIGKILLs its own process. Once the
  workers are gone the forkserver and the resource tracker see end-of-file and exit by themselves.
* **A local Ray goes with the driver** (``Guard``). Ray fate-shares its head processes (GCS, raylet) with the
  driver through ``PR_SET_PDEATHSIG``, but the raylet's dashboard and runtime-env agents, after seeing the
  raylet die, spend about 60 s trying to report it to the dead GCS (a fixed 60 s timeout in Ray's
  ``publish_error_to_driver``; measured: both alive 60 s after the kill). Before ``ray.init`` the engine starts a
  small guard process; when the driver exits without stopping it, the guard SIGKILLs every process that holds a
  file open in the Ray session's folder (every Ray process keeps its logs there) and their descendants (during
  ``ray.init``, before that folder is known, it records the driver's descendants every ``SNAPSHOT_S``). Not by
  process group (Ray's head shares the driver's, which may hold the user's shell pipeline or pytest), nor by an
  environment variable (Ray's processes rewrite their environment block when they set their titles: measured,
  the agents' ``/proc/<pid>/environ`` lost it).
* **No two runs write one output folder** (``OutputLock``). The driver holds an exclusive ``flock`` on
  ``<output>/.mine_labels.lock`` for its lifetime (the kernel releases it when the driver dies, kill -9
  included), so a second driver on the same output stops at once, naming the holder's pid. Every task holds a
  shared ``flock`` on ``<output>/.mine_labels.tasks.lock`` while it runs and first checks that the run lock
  file still names its run's token (``fenced_call``); a new driver, after taking the run lock and writing its
  token, waits (``SURVIVOR_WAIT_S`` at most) until it can take that task lock exclusively. So a task of an
  earlier run either finished before the new run touches anything, or sees a foreign token and writes nothing:
  no interleaving in any order of events, even for a worker no signal reached (a Ray node on another host,
  over a shared file system that supports locks).

  Why locks and a token rather than a token alone: a token check right before a task's commit leaves a window
  (checked, then the new run starts, then the stale commit lands), and a config change between the runs would
  let a stale task of the old config commit a stats file that the new run then trusts. Why not the lock alone:
  it is released when the driver dies, while its workers may still be finishing a task.

* **An output on an object store** (``ObjectLock``, ``output=s3://...``): no ``flock`` there. The run lock is an
  object ``<output>/.mine_labels.lock`` created with an exclusive PUT (``If-None-Match: *``) that holds the driver's
  pid, host and token, and that the driver rewrites every ``LOCK_HEARTBEAT_S`` as a compare-and-swap on its ETag
  (``If-Match``). A second driver finds it taken and stops naming the holder, unless the holder is dead: on this
  host and pid namespace its pid is gone (taken over at once), elsewhere (another host, or a container sharing this
  host's name) its ETag has not changed for ``LOCK_STALE_S`` (taken
  over by a compare-and-swap on that ETag, so two drivers racing for a stale lock cannot both win). A driver whose
  heartbeat finds the lock taken stops before it writes anything more (``check``), and so does one that has not
  renewed it for nearly ``LOCK_STALE_S`` and cannot renew it now (cut off from the store, it may be taken over). Tasks are not fenced by a lock:
  a task of a dead run that is still running writes its files under its own attempt prefix and its commit marker
  with an exclusive PUT (labels/store.py ``TaskFiles``), so it can never replace what a new run committed, and a
  run with another config uses another work prefix (labels/pipeline.py). ``fenced_call`` only saves such a task
  the work: it checks the lock object still names its run.

Linux mechanisms (pidfd, ``/proc``, ``flock``): elsewhere the workers' watchdog polls the driver's pid, the guard
is not started, and a file system without ``flock`` runs unfenced, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

RUN_LOCK = ".mine_labels.lock"
LOCK_HEARTBEAT_S = 10.0  # how often a driver rewrites its lock object (output on an object store)
LOCK_STALE_ENV = "MINE_LABELS_LOCK_STALE_S"
LOCK_STALE_S = 60.0  # a lock object unchanged this long belongs to a dead driver (another host)
TASK_LOCK = ".mine_labels.tasks.lock"
SURVIVOR_WAIT_S = 30.0  # how long a new run waits for tasks of an earlier run to finish or die
REAP_S = 5.0  # how long the guard keeps killing processes of the run (some may be starting)
SNAPSHOT_S = 0.25  # how often the guard records the driver's descendants until it knows their folder


class OutputBusy(RuntimeError):
    """Another run holds the output folder, or tasks of an earlier run still write to it."""


class StaleRun(RuntimeError):
    """A task of a run that no longer holds the output folder: it writes nothing."""


# ---------------------------------------------------------------------------------------- processes
def process_start(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22), None if unknown.

    A pid and its start time name one process: a pid reused by a later process has a later start time."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat.rsplit(b")", 1)[1].split()[19])


def die_with(driver_pid: int, driver_start: int | None) -> None:
    """Pool initializer: SIGKILL this process as soon as the driver ``driver_pid`` exits (see the module docstring).

    The pidfd is opened after this process started, so the driver may already be gone and its pid reused: the
    start time read after opening it must still be the driver's, else this process exits at once."""
    try:
        pidfd = os.pidfd_open(driver_pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd (kernel < 5.3, not Linux): poll the driver's pid
        pidfd = None
    if driver_start is not None and process_start(driver_pid) != driver_start:
        os._exit(1)

    def watch() -> None:
        if pidfd is not None:
            select.select([pidfd], [], [])
        else:
            while _alive(driver_pid, driver_start):
                time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-driver", daemon=True).start()


def _alive(pid: int, start: int | None) -> bool:
    """Process ``pid`` (started at ``start``, when known) runs: not gone, not a zombie, not a reused pid."""
    if start is not None:
        entry = _process_table_entry(pid)
        return entry is not None and entry[1] == start
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _process_table_entry(pid: int) -> tuple[int, int, int] | None:
    """``(parent pid, start time, session id)`` of a live process ``pid`` (None: gone or a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    if fields[0] in (b"Z", b"X"):
        return None
    return int(fields[1]), int(fields[19]), int(fields[3])


def _process_table() -> dict[int, tuple[int, int, int]]:
    """Every live process: pid -> (parent pid, start time, session id), from ``/proc/<pid>/stat`` (zombies left out:
    they are dead, only not yet collected by their parent)."""
    table: dict[int, tuple[int, int, int]] = {}
    names = os.listdir("/proc") if os.path.isdir("/proc") else []
    for name in names:
        entry = _process_table_entry(int(name)) if name.isdigit() else None
        if entry is not None:
            table[int(name)] = entry
    return table


def _descendants(table: dict[int, tuple[int, int, int]], roots) -> dict[int, int]:
    """Processes below ``roots`` in ``table``: pid -> start time."""
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = {}, list(roots)
    while stack:
        for c in children.get(stack.pop(), ()):
            if c not in found:
                found[c] = table[c][1]
                stack.append(c)
    return found


def _holds_file_under(pid: int, folder: str) -> bool:
    prefix = folder.rstrip("/") + "/"
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or another user's
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(prefix):
                return True
        except OSError:
            continue
    return False


def reap(known: dict[int, int], folders: list[str], session: int, spare: set[int], within_s: float = REAP_S) -> int:
    """SIGKILL the run's processes: those in ``known`` (pid -> start time, so a reused pid is spared), those of login
    session ``session`` (the driver's: inherited by all it starts) holding a file open under one of ``folders``, and
    every descendant of these, never ``spare`` nor this process; repeated until none is left (or ``within_s`` passed,
    as some may be starting). Returns how many were killed."""
    spare = spare | {os.getpid()}
    killed: set[int] = set()
    deadline = time.monotonic() + within_s
    while True:
        table = _process_table()
        targets = {pid for pid, start in known.items() if table.get(pid, (0, None, 0))[1] == start}
        if folders:
            targets |= {
                pid
                for pid, (_, _, sid) in table.items()
                if sid == session and pid not in spare and any(_holds_file_under(pid, f) for f in folders)
            }
        targets |= set(_descendants(table, targets))
        targets -= spare
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed |= targets
        if not targets or time.monotonic() > deadline:
            return len(killed)
        time.sleep(0.05)


class Guard:
    """A process that outlives the driver to kill what the driver started through others (a local Ray's head
    processes, agents and workers), when the driver exits without ``stop`` (see the module docstring).

    How it knows them: ``watch_folder`` names a folder every one of them holds files open in (a Ray session's
    folder: logs), and they are in the driver's login session (a log viewer in another terminal is spared); until a
    folder is named, it records the driver's descendants started after the guard every ``SNAPSHOT_S`` (a scan of
    ``/proc``, stopped once a folder is named). Start it before the processes it is to kill."""

    def __init__(self) -> None:
        env = dict(os.environ)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        # Its own session: a Ctrl-C in the terminal reaches the driver (which stops the guard), not the guard.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "labels.lifetime", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        # It watches this process once it says so: only then may the processes it guards be started.
        if self.proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"the guard process did not start (exit code {self.proc.wait()})")

    def _send(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(line.encode() + b"\n")
            self.proc.stdin.flush()

    def watch_folder(self, folder: str) -> None:
        """Every process holding a file open under ``folder`` is the run's."""
        self._send(f"folder {os.path.abspath(folder)}")

    def stop(self, reap_first: bool = True) -> None:
        """End the guard; with ``reap_first``, it first kills what is left of the run's processes."""
        self._send("reap" if reap_first else "stop")
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=REAP_S + 5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _guard_main(driver_pid: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    known: dict[int, int] = {}
    folders: list[str] = []
    born = process_start(os.getpid()) or 0  # what the driver started before the guard is not the guard's to kill
    try:
        pidfd = os.pidfd_open(driver_pid)
    except ProcessLookupError:
        return  # nothing was started yet: the driver starts what the guard watches after the guard
    except (AttributeError, OSError):
        pidfd = None  # then the end of stdin is the only sign of the driver's death
    if os.getppid() != driver_pid:  # the driver died before the pidfd was opened (this process was reparented)
        return
    session = os.getsid(driver_pid)
    spare = {driver_pid}  # the driver holds files in Ray's folder too: reaped at close(), it must live on
    sys.stdout.buffer.write(b"ready\n")
    sys.stdout.buffer.flush()
    stdin = sys.stdin.buffer
    watch = [stdin] + ([pidfd] if pidfd is not None else [])
    while True:
        ready, _, _ = select.select(watch, [], [], None if folders else SNAPSHOT_S)
        if not ready:
            known.update((p, t) for p, t in _descendants(_process_table(), [driver_pid]).items() if t >= born)
            known.pop(os.getpid(), None)
            continue
        if pidfd in ready:
            reap(known, folders, session, spare)
            return
        line = stdin.readline()
        if line.startswith(b"folder "):
            folders.append(line[7:].decode().rstrip("\n"))
        elif line == b"stop\n":
            return
        elif line == b"reap\n" or (not line and pidfd is None):
            reap(known, folders, session, spare)
            return
        elif not line:  # the driver dropped the pipe but lives: keep watching its exit
            watch = [pidfd]


# ---------------------------------------------------------------------------------------- the output lock
@dataclass(frozen=True)
class Fence:
    """What a task needs to check that its run still owns the output folder (``fenced_call``): on an object store
    ``run_lock`` is the lock object's URL and there is no ``task_lock``."""

    run_lock: str
    task_lock: str | None
    token: str


def _holder(path: str) -> dict:
    """The record a run lock file holds (``pid``, ``host``, ``token``, ``started``); {} when empty or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def fenced_call(fence: Fence | None, fn, *args):
    """``fn(*args)`` while holding the task lock shared, if the run lock still names this run's token.

    Raises ``StaleRun`` (nothing written) when another run holds the output folder."""
    if fence is None:
        return fn(*args)
    if fence.task_lock is None:  # an output on an object store (ObjectLock): the token check alone
        if ObjectLock.holder(fence.run_lock).get("token") != fence.token:
            raise StaleRun(f"{fence.run_lock} no longer names this task's run: nothing written")
        return fn(*args)
    fd = os.open(fence.task_lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        if _holder(fence.run_lock).get("token") != fence.token:
            raise StaleRun(f"{os.path.dirname(fence.run_lock)} is no longer held by this task's run: nothing written")
        return fn(*args)
    finally:
        os.close(fd)  # releases the shared lock


def _lock_holders(fd: int) -> list[int]:
    """Pids on this host holding a lock on the file open as ``fd`` (``/proc/locks``; [] where unavailable)."""
    st = os.fstat(fd)
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    pids = set()
    try:
        with open("/proc/locks", encoding="ascii") as f:
            for line in f:
                parts = line.split()
                if "->" in parts:  # a waiter, not a holder
                    continue
                if len(parts) >= 6 and parts[5] == ident:
                    pids.add(int(parts[4]))
    except (OSError, ValueError):
        return []
    return sorted(pids)


class OutputLock:
    """The driver's hold on an output folder (see the module docstring): ``acquire`` once, ``release`` at the end."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.run_lock = os.path.join(out, RUN_LOCK)
        self.task_lock = os.path.join(out, TASK_LOCK)
        self._fd: int | None = None

    def acquire(self, survivor_wait_s: float | None = None) -> Fence | None:
        """Take the run lock (``OutputBusy`` at once when another driver holds it, naming its pid), record this
        run's token, and wait for tasks of earlier runs to end (``OutputBusy`` after ``survivor_wait_s``).

        Returns the tasks' fence, or None on a file system without ``flock`` (then runs are not fenced: warned)."""
        survivor_wait_s = SURVIVOR_WAIT_S if survivor_wait_s is None else survivor_wait_s
        os.makedirs(self.out, exist_ok=True)
        fd = os.open(self.run_lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            h = _holder(self.run_lock)
            who = f"pid {h['pid']} on {h.get('host', '?')}, started {h.get('started', '?')}" if h else "another process"
            raise OutputBusy(
                f"output {self.out} is being written by another mining run ({who}): wait for it to end or stop it, "
                f"or choose another output"
            ) from None
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                log.warning(
                    "%s: file locks unsupported (%s): concurrent runs on this output are not prevented", self.out, err
                )
                return None
            raise
        token = secrets.token_hex(16)
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "token": token,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record, sort_keys=True).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        try:
            self._wait_for_survivors(survivor_wait_s)
        except BaseException:
            self.release()
            raise
        return Fence(self.run_lock, self.task_lock, token)

    def _wait_for_survivors(self, wait_s: float) -> None:
        tfd = os.open(self.task_lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + wait_s
            waited = False
            while True:
                try:
                    fcntl.flock(tfd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    pids = _lock_holders(tfd)
                    if not waited:
                        log.warning("%s: waiting for tasks of an earlier run to end (pids %s)", self.out, pids or "?")
                        waited = True
                    if time.monotonic() > deadline:
                        raise OutputBusy(
                            f"tasks of an earlier run still write to {self.out} after {wait_s:.0f} s "
                            f"(pids on this host: {', '.join(map(str, pids)) or 'none: on other hosts'}): stop them, "
                            f"then rerun"
                        ) from None
                    time.sleep(0.05)
        finally:
            os.close(tfd)  # releases the probe's exclusive lock

    def check(self) -> None:
        """Nothing to check: the kernel holds the lock until this process exits."""

    def release(self) -> None:
        """Clear the holder record (stale tasks then see no token) and drop the lock."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None


def _pid_namespace() -> str:
    """This process's pid namespace (``/proc/self/ns/pid``, e.g. ``pid:[4026531836]``; "" where unknown): a pid
    names a process only within it, and containers sharing a host name (host network) each have their own."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _stale_s() -> float:
    from storage.retry import env_seconds

    return env_seconds(LOCK_STALE_ENV, LOCK_STALE_S)


def _precondition_failed(err: BaseException) -> bool:
    """Whether a write failed its condition (412: If-Match / If-None-Match) or found no object to match."""
    while err is not None:
        response = getattr(err, "response", None)
        if isinstance(response, dict) and (response.get("Error") or {}).get("Code") in ("PreconditionFailed", "412"):
            return True
        if isinstance(err, FileNotFoundError):
            return True
        err = err.__cause__ or err.__context__
    return False


class ObjectLock:
    """The driver's hold on an output on an object store (see the module docstring): ``acquire`` once, ``check``
    before writing, ``release`` at the end.

    Compare-and-swap needs conditional PUTs (``If-Match``): AWS S3, MinIO, Ceph and moto have them through s3fs.
    Other fsspec stores get a read-compare-write (a window of one round trip between two drivers taking over a stale
    lock at the same moment), with a warning.
    """

    def __init__(self, out: str, heartbeat_s: float = LOCK_HEARTBEAT_S, stale_s: float | None = None) -> None:
        import storage

        self.out = out
        self.url = out.rstrip("/") + "/" + RUN_LOCK
        self.heartbeat_s = heartbeat_s
        self.stale_s = _stale_s() if stale_s is None else stale_s
        self.fs, self.path = storage.url_to_fs(self.url)
        self.conditional = storage.protocol(self.url) in ("s3", "s3a")
        self.lost: str | None = None
        self._record: dict = {}
        self._etag: str | None = None
        self._renewed = 0.0  # monotonic time the last write of the lock object that took effect was sent (a lease)
        self._mutex = threading.Lock()  # one write of the lock object at a time (heartbeat thread, check)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -------------------------------------------------------------- object operations
    @staticmethod
    def holder(url: str) -> dict:
        """The record the lock object ``url`` holds; {} when there is none."""
        import storage

        try:
            return json.loads(storage.read_bytes(url))
        except (FileNotFoundError, ValueError):
            return {}

    def _read(self) -> tuple[dict, str] | None:
        """(record, ETag) of the lock object, None when there is none."""
        import storage

        def read():
            self.fs.invalidate_cache(self.path)
            try:
                info = self.fs.info(self.path)
                return json.loads(self.fs.cat_file(self.path)), str(info.get("ETag") or info.get("etag") or "")
            except FileNotFoundError:
                return None
            except ValueError:
                return {}, str(info.get("ETag") or info.get("etag") or "")

        return storage.retry_call(read, url=self.url, what="read lock")

    def _write(self, record: dict, create: bool = False, if_match: str | None = None) -> str | None:
        """PUT ``record``: exclusively (``create``) or only over ETag ``if_match``; its new ETag, None when the
        condition failed."""
        import storage

        data = json.dumps(record, sort_keys=True).encode()

        def put():
            try:
                if create:
                    out = self.fs.pipe_file(self.path, data, mode="create")
                elif self.conditional:
                    out = self.fs.pipe_file(self.path, data, IfMatch=if_match)
                else:
                    current = self._read()
                    if current is None or current[1] != if_match:
                        return None
                    out = self.fs.pipe_file(self.path, data)
            except FileExistsError:
                return None
            except OSError as err:
                if _precondition_failed(err):
                    return None
                raise
            if isinstance(out, dict) and out.get("ETag"):
                return str(out["ETag"])
            self.fs.invalidate_cache(self.path)
            info = self.fs.info(self.path)
            return str(info.get("ETag") or info.get("etag") or "")

        return storage.retry_call(put, url=self.url, what="write lock")

    def _ours(self, record: dict) -> str | None:
        """The lock object's ETag if it holds exactly ``record`` (a conditional PUT that went through before a transient
        error fails its condition when retried: it must not read as lost), else None."""
        current = self._read()
        if current is not None and current[0] == json.loads(json.dumps(record)):
            return current[1]
        return None

    # -------------------------------------------------------------- the hold
    def acquire(self) -> Fence:
        """Create the lock object (or take it over from a dead driver) and start the heartbeat.

        Raises:
            OutputBusy: a live driver holds the output (named: pid, host, start), or another driver won a takeover.
        """
        if not self.conditional:
            log.warning("%s: no conditional writes on this store: two drivers may both take a stale lock", self.out)
        token = secrets.token_hex(16)
        me = os.getpid()
        self._record = {
            "pid": me,
            "pid_start": process_start(me),
            "host": socket.gethostname(),
            "pid_ns": _pid_namespace(),
            "token": token,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "beat": 0,
        }
        sent = time.monotonic()
        etag = self._write(self._record, create=True)
        if etag is None:
            sent = time.monotonic()  # a takeover writes later (_take_over): its lease starts no earlier than now
            etag = self._ours(self._record) or self._take_over()
        self._etag, self._renewed = etag, sent
        self._thread = threading.Thread(target=self._beat, name="output-lock-heartbeat", daemon=True)
        self._thread.start()
        return Fence(self.url, None, token)

    def _busy(self, h: dict, why: str = "") -> OutputBusy:
        who = f"pid {h['pid']} on {h.get('host', '?')}, started {h.get('started', '?')}" if h else "another process"
        return OutputBusy(
            f"output {self.out} is being written by another mining run ({who}){why}: wait for it to end or stop it, "
            f"or choose another output"
        )

    def _take_over(self) -> str:
        """The lock object exists: take it over if its driver is dead, else raise ``OutputBusy``."""
        current = self._read()
        if current is None:  # released in between
            etag = self._write(self._record, create=True)
            if etag is None:
                raise self._busy(self.holder(self.url), " (it took the output a moment ago)")
            return etag
        held, etag = current
        # Its pid can be looked up here only from the same host and pid namespace (a record without one: older code).
        here = held.get("host") == socket.gethostname() and held.get("pid_ns", _pid_namespace()) == _pid_namespace()
        if here and held.get("pid"):
            if _alive(int(held["pid"]), held.get("pid_start")):
                raise self._busy(held)
            why = f"its driver, pid {held['pid']} on this host, is gone"
        else:
            log.warning(
                "%s: lock held by %s; taking it over if its heartbeat stays still for %.0f s",
                self.out,
                held.get("host", "?"),
                self.stale_s,
            )
            deadline = time.monotonic() + self.stale_s
            while time.monotonic() < deadline:
                time.sleep(min(self.heartbeat_s / 2, max(0.0, deadline - time.monotonic())))
                now = self._read()
                if now is None or now[1] != etag:
                    raise self._busy(now[0] if now else held, " (its heartbeat is alive)")
            why = f"no heartbeat from {held.get('host', '?')} for {self.stale_s:.0f} s"
        new = self._write(self._record, if_match=etag) or self._ours(self._record)
        if new is None:
            raise self._busy(self.holder(self.url), " (it took the output a moment ago)")
        log.warning("%s: took over the output lock (%s)", self.out, why)
        return new

    def _renew(self) -> None:
        """One heartbeat: rewrite the lock object by compare-and-swap on its ETag (sets ``lost`` when another run
        took it); a store that cannot be reached raises."""
        with self._mutex:
            if self.lost is not None:
                return
            record = {**self._record, "beat": self._record["beat"] + 1}
            sent = time.monotonic()  # the write, and so the new ETag another driver may read, is no older than this
            etag = self._write(record, if_match=self._etag) or self._ours(record)
            if etag is None:
                self.lost = f"another run took over {self.url} (this driver missed its heartbeats)"
                log.error("%s", self.lost)
                return
            self._record, self._etag, self._renewed = record, etag, sent

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._renew()
            except Exception as err:  # the store is away: the next beat tries again (check() watches the lease)
                log.warning("%s: lock heartbeat failed: %s", self.out, err)
                continue
            if self.lost is not None:
                return

    def check(self) -> None:
        """Raise ``OutputBusy`` if this driver lost the output to another run: it must write nothing more.

        A lock not renewed for nearly ``stale_s`` (heartbeats that do not reach the store: a network partition, a
        store away) may be taken over by another driver at any moment, which cannot tell this driver from a dead one:
        then the lock is renewed here first, and if that fails this driver stops too. The margin (one heartbeat
        period, at most half the stale time) is the time a check may precede the write it guards."""
        age = time.monotonic() - self._renewed
        if (
            self.lost is None
            and self._etag is not None
            and age > self.stale_s - min(self.heartbeat_s, self.stale_s / 2)
        ):
            try:
                self._renew()
            except Exception as err:
                self.lost = (
                    f"its lock {self.url} was last renewed {age:.0f} s ago and cannot be renewed now ({err}); another "
                    f"run may take it over after {self.stale_s:.0f} s without a heartbeat"
                )
        if self.lost is not None:
            raise OutputBusy(f"stopping: {self.lost}; nothing more is written by this run")

    def release(self) -> None:
        """Stop the heartbeat and delete the lock object if it is still this run's."""
        import storage

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.lost is None and self._etag is not None:
            with contextlib.suppress(Exception):
                if self.holder(self.url).get("token") == self._record.get("token"):
                    storage.remove(self.url)
        self._etag = None


if __name__ == "__main__":  # the guard process: python -m labels.lifetime <driver pid>
    _guard_main(int(sys.argv[1]))
