"""Where the per-shard pass functions run: a local process pool (default) or Ray (``run.engine=ray``).

Both engines run the same module-level task functions of :mod:`labels.passes` with the same
arguments; a task writes its outputs and then its stats file (last), so the engines produce the same
bytes and a rerun skips every task whose stats file exists. Failures are collected per task (the
other tasks still run) and raised together, naming each partition, so a shard that cannot be read is
reported and retried on the next run, never dropped. A worker that dies (killed, out of memory) is
retried: the local pool is rebuilt and its unfinished tasks resubmitted; Ray retries by itself
(``max_retries``).

Written by hand because the things it adds to ``concurrent.futures`` / ``ray`` are small: skip what is
done, survive a dead worker in the local pool (``BrokenProcessPool`` ends the pool), and tie the run's processes
to the driver (:mod:`labels.lifetime`): pool workers and a local Ray die with the driver, and every task runs
fenced by the driver's hold on the output folder (``fenced_call``), so a task of a dead run never writes into a
new run's files.

``workers=None`` (the default) uses the CPUs this process may use (its affinity mask and cgroup CPU quota, not
``os.cpu_count()``, which counts CPUs a container or ``taskset`` does not give it); 0 runs the tasks in the
driver process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from tqdm import tqdm

from labels import lifetime
from labels.store import committed

log = logging.getLogger(__name__)
ENGINES = ("local", "ray")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Task:
    """One call ``fn(*args)`` that writes ``done_path`` (its commit marker: a file, or an object on a store) last;
    ``name`` is what errors report."""

    name: str
    done_path: str
    args: tuple


@dataclass
class PassStats:
    """What one pass did: task counts, retries, failures and times (for the label report)."""

    name: str
    tasks: int = 0
    already_done: int = 0
    ran: int = 0
    retries: int = 0
    failed: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        return {
            "tasks": self.tasks,
            "already_done": self.already_done,
            "ran": self.ran,
            "retries": self.retries,
            "failed": list(self.failed),
            "wall_s": round(self.wall_s, 3),
        }


class PassFailed(Exception):
    """Tasks of a pass failed; ``failures`` maps each task name to its error text."""

    def __init__(self, pass_name: str, failures: dict[str, str]) -> None:
        self.failures = failures
        lines = "; ".join(f"{k}: {v}" for k, v in failures.items())
        super().__init__(f"{len(failures)} task(s) of pass '{pass_name}' failed (rerun retries them): {lines}")


def _worker_ready() -> int:
    """A near no-op Ray task (module level, so workers import it by reference); it lasts 0.1 s so that concurrent
    calls occupy one worker each."""
    time.sleep(0.1)
    return os.getpid()


def available_cpus() -> int:
    """CPUs this process may use: loky's count (joblib, already here through scikit-learn), the least of
    ``os.cpu_count()``, the affinity mask (``taskset``, cgroup cpusets) and the cgroup CPU quota (a container given
    2 CPUs of a 64-core host sees 64 in its affinity mask)."""
    from joblib.externals.loky import cpu_count

    return max(1, cpu_count())


def resolve_workers(workers: int | None) -> int:
    """``run.workers``: None -> ``available_cpus()``; 0 -> tasks in the driver; N -> N worker processes."""
    return available_cpus() if workers is None else int(workers)


def _worker_init(driver_pid: int, driver_start: int | None, environ: dict[str, str]) -> None:
    """Pool initializer: the driver's environment (the forkserver, started by an earlier run of this process, forks
    workers with the environment it had then: storage credentials and endpoints set since were missing, measured),
    then ``lifetime.die_with``."""
    for key in set(os.environ) - set(environ):
        del os.environ[key]
    os.environ.update(environ)
    lifetime.die_with(driver_pid, driver_start)


def _pool(workers: int) -> ProcessPoolExecutor:
    # forkserver: workers fork from a clean server that preloads the pass module (imports once, no
    # threads inherited from a driver that may hold torch/tokenizer threads). Each worker dies with
    # this process (lifetime.die_with: the forkserver does not, while its workers live).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["labels.passes", "labels._inflect", "labels.lifetime", "labels.engine"])
    me = os.getpid()
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=ctx,
        initializer=_worker_init,
        initargs=(me, lifetime.process_start(me), dict(os.environ)),
    )


class Engine:
    """Runs passes of tasks.

    Args:
        kind: ``local`` or ``ray``.
        workers: local: worker processes (0: in the driver process); ray local mode: CPUs to start with;
            None: ``available_cpus()``.
        max_retries: how often a task whose worker died is resubmitted.
        progress: show a tqdm bar per pass.
        fence: the driver's hold on the output folder (``lifetime.OutputLock.acquire``); every task checks it.
    """

    def __init__(
        self,
        kind: str = "local",
        workers: int | None = None,
        max_retries: int = 2,
        progress: bool = False,
        fence: lifetime.Fence | None = None,
    ) -> None:
        if kind not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got '{kind}'")
        self.kind = kind
        self.workers = resolve_workers(workers)
        self.max_retries = max_retries
        self.progress = progress
        self.fence = fence
        self._executor: ProcessPoolExecutor | None = None
        self._owns_ray = False  # this engine started a local Ray (it shuts it down in close())
        self._ray_guard: lifetime.Guard | None = None  # kills that Ray if the driver dies (Linux)
        self.startup_s = 0.0  # time spent starting Ray (inside the first pass's wall time)

    # ------------------------------------------------------------------ public
    def run_pass(self, name: str, fn: Callable, tasks: Sequence[Task]) -> PassStats:
        """Run every task whose ``done_path`` does not exist yet (``labels.store.committed``); raise ``PassFailed`` at the end if
        any failed (the others are complete on disk)."""
        t0 = time.perf_counter()
        stats = PassStats(name, tasks=len(tasks))
        done = committed([t.done_path for t in tasks])
        todo = [t for t in tasks if t.done_path not in done]
        stats.already_done = len(tasks) - len(todo)
        failures: dict[str, str] = {}
        with tqdm(total=len(todo), desc=name, disable=not self.progress, dynamic_ncols=True, unit=" tasks") as bar:
            if not todo:
                pass
            elif self.kind == "ray":
                self._run_ray(fn, todo, stats, failures, bar)
            elif self.workers <= 0:
                for t in todo:
                    try:
                        lifetime.fenced_call(self.fence, fn, *t.args)
                    except Exception as err:  # collected and re-raised together, naming the partition
                        failures[t.name] = f"{type(err).__name__}: {err}"
                    bar.update()
            else:
                self._run_local(fn, todo, stats, failures, bar)
        stats.ran = len(todo) - len(failures)
        stats.failed = sorted(failures)
        stats.wall_s = time.perf_counter() - t0
        if failures:
            raise PassFailed(name, failures)
        return stats

    def close(self) -> None:
        """Stop the pool; a local Ray this engine started is shut down (a run's processes end with it: a later run
        starts its own), and its guard reaps what is left of it."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._owns_ray or self._ray_guard is not None:
            import ray

            shut = False
            try:
                if self._owns_ray:
                    ray.shutdown()  # stops every Ray process (measured: none left 0 s after it returns)
                shut = True
            finally:
                self._owns_ray = False
                if self._ray_guard is not None:
                    self._ray_guard.stop(reap_first=not shut)
                    self._ray_guard = None

    # ------------------------------------------------------------------ local
    def _run_local(self, fn, todo, stats, failures, bar) -> None:
        attempts = {t.name: 0 for t in todo}
        pending = list(todo)
        while pending:
            if self._executor is None:
                self._executor = _pool(self.workers)
            futures, unsent, broken = {}, [], False
            for i, t in enumerate(pending):
                try:
                    futures[self._executor.submit(lifetime.fenced_call, self.fence, fn, *t.args)] = t
                except BrokenProcessPool:
                    # A worker of the kept pool died before (or while) this pass was handed out: the tasks not sent
                    # never ran, so they are resent to a new pool without counting as an attempt.
                    broken, unsent = True, pending[i:]
                    break
            pending = []
            not_done = set(futures)
            while not_done:
                done, not_done = wait(not_done, return_when=FIRST_COMPLETED)
                for fut in done:
                    t = futures[fut]
                    try:
                        fut.result()
                        bar.update()
                    except BrokenProcessPool:
                        broken = True
                        pending.append(t)
                    except Exception as err:
                        failures[t.name] = f"{type(err).__name__}: {err}"
                        bar.update()
            if broken:
                # A worker died: every task of the dead pool that has no stats file is resubmitted.
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None
                retry = []
                done = committed([t.done_path for t in pending])  # one listing per pass, not one per task
                for t in pending:
                    if t.done_path in done:
                        bar.update()
                        continue
                    attempts[t.name] += 1
                    if attempts[t.name] > self.max_retries:
                        failures[t.name] = f"worker died {attempts[t.name]} times"
                        bar.update()
                    else:
                        retry.append(t)
                stats.retries += len(retry)
                log.warning("a worker died; resubmitting %d task(s)", len(retry) + len(unsent))
                pending = retry + unsent

    # ------------------------------------------------------------------ ray
    def _run_ray(self, fn, todo, stats, failures, bar) -> None:
        import ray

        if not ray.is_initialized():
            t0 = time.perf_counter()
            address = os.environ.get("RAY_ADDRESS")
            env = {"env_vars": {"PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}}
            if address:
                ray.init(address=address, runtime_env=env, log_to_driver=False)
            else:
                # Started before Ray: if this driver dies, the guard kills the local Ray's processes (lifetime.Guard).
                if sys.platform.startswith("linux"):
                    self._ray_guard = lifetime.Guard()
                ctx = ray.init(
                    num_cpus=max(1, self.workers), runtime_env=env, include_dashboard=False, log_to_driver=False
                )
                self._owns_ray = True
                if self._ray_guard is not None:
                    self._ray_guard.watch_folder(ctx.address_info["session_dir"])
                # A local Ray is ready when its worker processes are: one no-op task per CPU waits for them, so that
                # start-up (counted in startup_s) does not run on into the first pass's time.
                ready = ray.remote(num_cpus=1)(_worker_ready)
                ray.get([ready.remote() for _ in range(max(1, self.workers))])
            self.startup_s += time.perf_counter() - t0
        remote = ray.remote(num_cpus=1, max_retries=self.max_retries, retry_exceptions=False)(lifetime.fenced_call)
        remote = remote.options(name=fn.__name__)
        refs = {remote.remote(self.fence, fn, *t.args): t for t in todo}
        not_ready = list(refs)
        while not_ready:
            ready, not_ready = ray.wait(not_ready, num_returns=1)
            for ref in ready:
                t = refs[ref]
                try:
                    ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    cause = err.cause if getattr(err, "cause", None) is not None else err
                    failures[t.name] = f"{type(cause).__name__}: {cause}"
                except ray.exceptions.RayError as err:  # worker crashed past max_retries
                    failures[t.name] = f"{type(err).__name__}: {err}"
                bar.update()
