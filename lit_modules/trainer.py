"""Build the Lightning Trainer of a run from its config: strategy, precision, checkpoints, callbacks."""

from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import zipfile
from collections.abc import Sequence
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.data import sized_len
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

import storage
from lit_modules.checkpoints import CheckpointError, checkpoint_copy
from tracking.run_dir import RunDir
from tracking.sample_keys import SampleKeyRecorder


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint writes that a crash or a kill at any moment cannot corrupt, to a local path or an object store.

    Lightning's own writer (``_atomic_save``) stages the file through an fsspec transaction whose temporary file
    lives in the system temp folder; when that is another filesystem than the run directory (a node-local /tmp, runs
    on a shared filesystem) the final move is a copy *into* ``last.ckpt``, so a kill during it leaves a truncated
    checkpoint, and a multi-GB checkpoint must also fit /tmp (and, for a URL, memory: it serializes to a buffer
    first). Here ``torch.save`` writes locally into a temporary file in the target's own folder
    (``storage.open_atomic``), flushed and fsynced, then renamed over the target with ``os.replace`` (atomic on POSIX)
    and the folder entry fsynced. For a URL it writes a staging file in the storage cache folder
    (``$STORAGE_CACHE_DIR``: needs the checkpoint's size in local disk, not in memory), then ``storage.upload`` sends
    it as one (multipart, concurrent) upload that becomes the object only when complete (a failed upload is aborted,
    the previous object stays), re-sent on transient errors until ``STORAGE_RETRY_DEADLINE_S``. Loading uses
    ``weights_only`` as passed (train.py passes True), reads a remote checkpoint from its cached local copy
    (``storage.local_copy``), and turns a refused pickle payload or an unreadable file into a ``CheckpointError``
    naming the file.
    """

    def load_checkpoint(
        self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Lightning's loader, with clear errors for a pickle payload (refused, never executed) or a broken file."""
        local = checkpoint_copy(path)
        try:
            return super().load_checkpoint(local, map_location=map_location, weights_only=weights_only)
        except pickle.UnpicklingError:
            raise CheckpointError(
                f"{path}: refused to load: it holds pickled Python objects beyond tensors and plain containers, "
                "and checkpoints are only read with torch.load(weights_only=True)"
            ) from None
        except (RuntimeError, EOFError, zipfile.BadZipFile) as err:
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint (truncated or another format): {err}. Resume from "
                "another checkpoint (resume=<path>) or start over (resume=never)"
            ) from None

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically (see the class docstring)."""
        if storage_options is not None:
            raise TypeError("storage_options are not supported: credentials and endpoints come from the environment")
        if not storage.is_remote(path):
            with storage.open_atomic(path, durable=True) as f:
                torch.save(checkpoint, f)
            return
        staging = storage.cache_dir() / "staging"
        staging.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=staging) as folder:
            local = os.path.join(folder, "checkpoint")
            torch.save(checkpoint, local)
            storage.upload(local, path)

    def remove_checkpoint(self, path: Any) -> None:
        storage.remove(path, recursive=True)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose mid-run existence check (``file_exists``, before every save) goes through
    ``storage.exists``, so on an object store it rides out a transient error like the save itself does (Lightning
    asks its fsspec filesystem directly: one failed request ends the run). Its state key is ``ModelCheckpoint``'s:
    checkpoints written before this class existed restore its state."""

    @property
    def state_key(self) -> str:
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def file_exists(self, filepath: Any, trainer: Trainer) -> bool:
        local_decision = storage.exists(filepath) if trainer.is_global_zero else False
        return trainer.strategy.reduce_boolean_decision(local_decision, all=False)


class StepCheckpoint(RunCheckpoint):
    """``ModelCheckpoint`` that also writes ``last.ckpt`` after the run's final training batch.

    Lightning's ``on_train_end`` writes ``last.ckpt`` when no periodic save happened yet, but by then the epoch
    counter has moved on while the batch counter has not: a run stopped by ``max_steps`` at step 3 of epoch 0 is
    saved as "epoch 1, batch 3", and extending it (same run, larger ``trainer.max_steps``) skips the rest of epoch 0.
    Saving at the last batch, like every periodic save, records a consistent position.
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.save_last and not self._should_skip_saving_checkpoint(trainer) and _final_batch(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def _final_batch(trainer: Trainer) -> bool:
    """True at the end of the fit's last training batch (``max_steps`` reached, or the last batch of the last epoch)."""
    if trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps:
        return True
    max_epochs = trainer.max_epochs
    return bool(
        max_epochs is not None and max_epochs > 0 and trainer.current_epoch + 1 >= max_epochs and trainer.is_last_batch
    )


class EpochLength(Callback):
    """Give Lightning the training loader's length when training starts and at every epoch start.

    Lightning reads the length once a fit (``FitLoop.setup_data``: the loader's limit, ``max_batches``, the fetcher's
    length, ``val_check_batch``), and it reads the limit before it restores the loader's position, then clamps the
    epoch to it. An epoch resumed on another world size has its own length (``datamodules.resume.TrainLoader.__len__``):
    on more ranks it is longer than a fresh epoch there, and the clamp would end it early, dropping the batches left.
    So ``on_train_start`` (after the restore, before the first batch; ``on_train_epoch_start`` is not called in an epoch
    resumed mid-way) recomputes all four with ``trainer.limit_train_batches``'s rule, and every epoch start gives the
    epochs after the resumed one their usual length again. Written here because no Lightning option re-reads the length
    of a loader that is not reloaded (``reload_dataloaders_every_n_epochs`` would rebuild the loader and its workers)."""

    def on_train_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._sync(trainer)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: Any) -> None:
        self._sync(trainer)

    @staticmethod
    def _sync(trainer: Trainer) -> None:
        loop = trainer.fit_loop
        combined = loop._combined_loader
        if combined is None:
            return
        lengths = [sized_len(dl) for dl in combined.flattened]
        if any(n is None for n in lengths):
            return
        limit = trainer.limit_train_batches  # Lightning's rule (data_connector._parse_num_batches), on the sized case
        limits = [min(n, limit) if isinstance(limit, int) else int(n * limit) for n in lengths]
        if combined.limits is not None and len(combined.limits) == len(limits):
            combined.limits[:] = limits  # in place: the iterator setup_data already made holds this list
        else:
            combined.limits = limits
        length = sized_len(combined)
        if length is None or length == loop.max_batches:
            return
        loop.max_batches = length
        fetcher = loop._data_fetcher
        if fetcher is not None and fetcher.length is not None:
            fetcher.length = length
        if isinstance(trainer.val_check_interval, float) and trainer.check_val_every_n_epoch is not None:
            trainer.val_check_batch = max(1, int(length * trainer.val_check_interval))


class AbortAllRanksOnError(Callback):
    """One rank's exception ends every rank within seconds, and every record names the first rank that failed.

    Without it, the other ranks of a run wait in their next collective (a gradient all-reduce, a checkpoint's
    data-position gather) until the process group's timeout (30 min by default) when the launcher does not kill
    them: Lightning's own launcher and torchrun do, ``srun`` without ``--kill-on-bad-exit=1`` does not, and gloo
    reports only "connection closed". A rank that fails writes its error into the process group's key-value store
    (the c10d store every rank already talks to); a daemon thread on every rank polls that key every
    ``poll_s`` seconds and, when another rank has failed, prints the cause, calls ``on_abort(message)`` (train.py
    marks run.json failed) and ends the process with exit code 1 (``os._exit``: its main thread is stuck inside a
    collective that cannot be interrupted). No torch or Lightning facility does this: NCCL's watchdog acts only at
    the timeout.

    A rank that dies without a word (kill -9, the OOM killer, a lost node) writes nothing; the launcher then stops the
    others (torchrun: SIGTERM), whose own errors are consequences ("DataLoader worker ... Terminated"). So every rank
    also registers its host and pid and refreshes a heartbeat key while it lives, and ``first_failure`` names, in
    this order: a rank that reported an error, a rank whose process is gone (same host) or whose heartbeat stopped,
    and only then this rank's own exception.
    """

    KEY = "repo/abort"
    PROC = "repo/proc/{}"
    ALIVE = "repo/alive/{}"

    def __init__(self, poll_s: float = 1.0, on_abort: Any = None) -> None:
        self.poll_s = float(poll_s)
        self.on_abort = on_abort
        self._store = None
        self._failed_here = False
        self._stop = None
        self._rank = 0
        self._world = 1

    def setup(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        import json
        import threading

        import torch.distributed as dist

        from tracking.run_dir import this_process

        if self._store is not None or trainer.world_size < 2 or not (dist.is_available() and dist.is_initialized()):
            return
        # The default group's store: private in torch, but the one store every rank of the run shares already.
        self._store = dist.distributed_c10d._get_default_store()
        self._stop = threading.Event()
        self._rank, self._world = trainer.global_rank, trainer.world_size
        with contextlib.suppress(Exception):
            self._store.set(self.PROC.format(self._rank), json.dumps(this_process()))
        threading.Thread(target=self._watch, args=(self._rank,), name="abort-all-ranks", daemon=True).start()

    def _watch(self, rank: int) -> None:
        import sys
        import time

        while not self._stop.wait(self.poll_s):
            try:
                self._store.set(self.ALIVE.format(rank), repr(time.time()))
                if not self._store.check([self.KEY]):
                    continue
                cause = self._store.get(self.KEY).decode(errors="replace")
            except Exception:  # the store went away: the run is ending anyway
                return
            if self._failed_here:
                return
            message = f"rank {rank} stops because {cause}"
            print(f"\nERROR: {message}", file=sys.stderr, flush=True)
            if self.on_abort is not None:
                with contextlib.suppress(Exception):
                    self.on_abort(message)
            os._exit(1)

    def _peer_gone(self, rank: int) -> str | None:
        """Why peer ``rank`` counts as dead (its process is gone, or its heartbeat stopped), else None."""
        import json
        import time

        from tracking.run_dir import process_alive

        proc = (
            json.loads(self._store.get(self.PROC.format(rank))) if self._store.check([self.PROC.format(rank)]) else {}
        )
        if proc and process_alive(proc) is False:
            return (
                f"rank {rank} (pid {proc.get('pid')} on {proc.get('host')}) died without an error "
                "(killed: kill -9, the OOM killer or a lost node)"
            )
        key = self.ALIVE.format(rank)
        if self._store.check([key]):
            silent = time.time() - float(self._store.get(key).decode())
            if silent > 3 * self.poll_s:
                return f"rank {rank} stopped responding ({silent:.0f} s without a heartbeat: its process or node died)"
        return None

    def first_failure(self, exception: BaseException) -> str:
        """The cause to record for a failed run, seen from this rank (see the class docstring)."""
        own = f"{type(exception).__name__}: {exception}"
        if self._store is None:
            return own
        try:
            if self._store.check([self.KEY]):
                cause = self._store.get(self.KEY).decode(errors="replace")
                if not cause.startswith(f"rank {self._rank} "):
                    return f"{cause} (rank {self._rank} then: {own})"
            for rank in range(self._world):
                gone = None if rank == self._rank else self._peer_gone(rank)
                if gone:
                    return f"{gone} (rank {self._rank} then: {own})"
        except Exception:  # the store is gone too: this rank's own error is all there is
            pass
        return f"rank {self._rank} failed: {own}"

    def on_exception(self, trainer: Trainer, pl_module: Any, exception: BaseException) -> None:
        if self._store is None or self._failed_here:
            return
        self._failed_here = True
        # A consequence of a dead peer (torchrun's SIGTERM, a closed connection) must not pass for the first failure.
        try:
            peer_died = any(self._peer_gone(r) for r in range(self._world) if r != trainer.global_rank)
        except Exception:
            peer_died = False
        if peer_died:
            return
        cause = f"rank {trainer.global_rank} failed: {type(exception).__name__}: {exception}"[:4000]
        with contextlib.suppress(Exception):
            self._store.set(self.KEY, cause)

    def teardown(self, trainer: Trainer, pl_module: Any, stage: str) -> None:
        if self._stop is not None and not self._failed_here:
            self._stop.set()


def checkpoint_callbacks(cfg: DictConfig, run_dir: RunDir) -> list[RunCheckpoint]:
    """`last.ckpt` every trainer.checkpoint_every_n_steps and after the final batch, `best.ckpt` by val/loss.

    Checkpoints are written by ``AtomicCheckpointIO`` (temporary file in the same folder, fsync, rename; one upload
    on an object store), so a crash or kill while writing leaves the previous checkpoint intact
    (tests/test_reliability.py, tests/test_storage_runs.py). The folder may be a URL (``output_dir=s3://...``).
    """
    last = StepCheckpoint(
        dirpath=str(run_dir.checkpoints),
        filename="step{step}",
        save_last=True,
        save_top_k=0,
        every_n_train_steps=cfg.trainer.checkpoint_every_n_steps,
        save_on_train_epoch_end=True,
    )
    best = RunCheckpoint(
        dirpath=str(run_dir.checkpoints),
        filename="best",
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    return [last, best]


def seed_run(cfg: DictConfig) -> None:
    """Make a run repeatable before anything is built: seed every RNG (``seed``, loader workers included), fix the
    CPU thread count (``trainer.cpu_threads``) and, with ``trainer.deterministic``, refuse nondeterministic kernels."""
    import torch
    from lightning.pytorch import seed_everything

    seed_everything(cfg.seed, workers=True)
    threads = cfg.trainer.cpu_threads
    if threads:
        torch.set_num_threads(int(threads))
        try:
            import faiss  # evaluation's exact search: its BLAS blocking follows the OpenMP thread count too

            faiss.omp_set_num_threads(int(threads))
        except ImportError:
            pass
    if cfg.trainer.deterministic:
        # Lightning's Trainer(deterministic=True) sets this too; setting it here also covers evaluate.py.
        torch.use_deterministic_algorithms(True)


def build_trainer(
    cfg: DictConfig,
    run_dir: RunDir,
    logger=None,
    callbacks: Sequence[Callback] = (),
    enable_checkpointing: bool = True,
    on_abort: Any = None,
) -> Trainer:
    """A Trainer driven by steps (webdataset epochs are nominal), with the run's strategy, atomic checkpoint writes,
    ``AbortAllRanksOnError`` (``on_abort(message)`` is called on a rank another rank's failure ends) and, when
    ``data.record_keys`` is set, the ``SampleKeyRecorder``."""
    from lit_modules.strategy import build_strategy

    t = cfg.trainer
    all_callbacks: list[Callback] = [TQDMProgressBar(refresh_rate=max(1, min(20, t.log_every_n_steps))), EpochLength()]
    if not any(isinstance(c, AbortAllRanksOnError) for c in callbacks):
        all_callbacks.append(AbortAllRanksOnError(on_abort=on_abort))
    if logger is not None:
        all_callbacks.append(LearningRateMonitor(logging_interval="step"))
    if enable_checkpointing:
        all_callbacks.extend(checkpoint_callbacks(cfg, run_dir))
    all_callbacks.extend(callbacks)
    record_keys = OmegaConf.select(cfg, "data.record_keys", default=None)
    if record_keys:
        all_callbacks.append(SampleKeyRecorder(record_keys))
    limit_val: float | None = t.limit_val_batches
    if limit_val is not None and float(limit_val).is_integer() and limit_val > 1:
        limit_val = int(limit_val)
    return Trainer(
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=build_strategy(cfg),
        precision=t.precision,
        max_steps=t.max_steps,
        max_epochs=t.max_epochs,
        val_check_interval=t.val_check_interval,
        check_val_every_n_epoch=None if t.val_check_interval else 1,
        limit_val_batches=limit_val,
        num_sanity_val_steps=t.num_sanity_val_steps,
        gradient_clip_val=t.gradient_clip_val,
        accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps,
        deterministic=t.deterministic,
        logger=logger if logger is not None else False,
        callbacks=all_callbacks,
        enable_checkpointing=enable_checkpointing,
        default_root_dir=str(run_dir.path),
        use_distributed_sampler=True,
        plugins=[AtomicCheckpointIO()],
    )


def resume_checkpoint(cfg: DictConfig, run_dir: RunDir) -> str | None:
    """The checkpoint to resume from, a file or a sharded FSDP folder (``lit_modules.checkpoints.is_checkpoint``),
    as a local path: a remote checkpoint (``output_dir=s3://...``, ``resume=s3://...``) is first copied into the
    storage cache (``storage.local_copy``: ``$STORAGE_CACHE_DIR``, once per version), since Lightning's FSDP loader
    takes only local folders and a local file is memory-mapped.

    resume=never: None; resume=auto: ``<run_dir>/checkpoints/last.ckpt`` when it exists (file, or the folder
    ``FSDPStrategy(state_dict_type="sharded")`` writes), else None; any other value: that checkpoint.

    Raises:
        FileNotFoundError: resume=<path> names neither a checkpoint file nor a complete sharded folder.
    """
    from lit_modules.checkpoints import is_checkpoint

    if cfg.resume == "never":
        return None
    if cfg.resume == "auto":
        last = run_dir.last_checkpoint
        if not is_checkpoint(last):
            if storage.isdir(last):
                # A sharded save that died before rank 0 wrote meta.pt: refuse to overwrite it by starting over.
                raise FileNotFoundError(
                    f"resume=auto: {last} is an incomplete sharded checkpoint folder (no meta.pt / .metadata): pass "
                    "resume=<an older checkpoint> or resume=never"
                )
            return None
        return str(checkpoint_copy(last))
    if not is_checkpoint(cfg.resume):
        raise FileNotFoundError(
            f"resume={cfg.resume}: no such checkpoint file or complete sharded checkpoint folder (.metadata + meta.pt)"
        )
    return str(checkpoint_copy(cfg.resume))


def checkpoint_topology(path: str) -> dict[str, int] | None:
    """The ``{"batch_size", "world_size", "accumulate_grad_batches"}`` a checkpoint was trained with (``None`` when
    it does not say). Checkpoints written before the module stored it (``MultiTaskModule.on_save_checkpoint``) give
    their config's batch and accumulation and the world size of their data position."""
    from datamodules.resume import saved_position
    from lit_modules.checkpoints import CheckpointError, read_checkpoint_meta

    try:
        meta = read_checkpoint_meta(path)  # memory-mapped file, or a sharded folder's meta.pt: no weights read
    except CheckpointError:
        return None  # unreadable: the resume itself fails next, with AtomicCheckpointIO's message naming the file
    if isinstance(meta.get("topology"), dict):
        return {k: int(v) for k, v in meta["topology"].items()}
    config = (meta.get("hyper_parameters") or {}).get("config") or {}
    world = saved_position(meta).get("world_size")
    if world is None or not config:
        return None
    return {
        "batch_size": int(config["data"]["batch_size"]),
        "world_size": int(world),
        "accumulate_grad_batches": int(config["trainer"]["accumulate_grad_batches"]),
    }


def adapt_topology(trainer: Trainer, cfg: DictConfig, ckpt_path: str | None) -> str | None:
    """Apply ``optim.on_world_size_change`` to a resume on another world size or ``data.batch_size`` than the
    checkpoint's, before training: sets ``trainer.accumulate_grad_batches`` by
    ``lit_modules.optim.plan_topology_change`` (the run's lineage records the trainer's value); the module's ``peak_lr``
    then follows the resulting global batch. Returns the message printed on rank 0 (None: nothing changed).

    Raises:
        TopologyChangeError: ``keep_global_batch`` and no integer accumulation keeps the checkpoint's global batch.
    """
    from lightning.pytorch.utilities import rank_zero_info

    from lit_modules.optim import plan_topology_change

    saved = checkpoint_topology(ckpt_path) if ckpt_path else None
    if saved is None:
        return None
    accumulate, message = plan_topology_change(
        saved,
        int(cfg.data.batch_size),
        int(trainer.world_size),
        int(trainer.accumulate_grad_batches),
        str(cfg.optim.on_world_size_change),
    )
    trainer.accumulate_grad_batches = accumulate
    if message:
        rank_zero_info(message)
    return message
