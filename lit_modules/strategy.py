"""Lightning strategy from ``trainer.strategy``: ddp, fsdp (ViT blocks as the wrap unit) or pass-through.

Multi-node launches (torchrun, SLURM) are described in docs/multinode.md.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, Strategy
from omegaconf import DictConfig, OmegaConf

import storage
from lit_modules.backbones import block_classes, create_backbone
from lit_modules.checkpoints import SHARDED_CURRENT, SHARDED_META, checkpoint_copy, is_sharded_checkpoint
from lit_modules.tasks import task_datasets

__all__ = [
    "ObjectStoreFSDPStrategy",
    "all_gather_cpu",
    "any_rank",
    "build_strategy",
    "heads_may_be_unused",
    "reduce_cpu",
    "to_root",
    "wrap_classes",
]


# ---------------------------------------------------------------------------------------------- collectives
# Every collective of the repo (data position, skip counters, the non-finite-loss decision) goes through these
# three functions. NCCL, the GPU process group, only takes tensors on the rank's own GPU ("No backend type
# associated with device type cpu"), while gloo (CPU tests) takes anything: so the move to the strategy's root
# device happens here, once, and never at a call site. Lightning's strategy.all_gather/reduce do not move tensors.


def to_root(strategy: Strategy, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on ``strategy.root_device`` (the device NCCL collectives require)."""
    return tensor.to(strategy.root_device)


def all_gather_cpu(strategy: Strategy, tensor: torch.Tensor) -> torch.Tensor:
    """All-gather ``tensor`` (same shape on every rank) -> ``[world_size, *tensor.shape]`` on CPU.

    With one process the result is ``tensor[None]``.
    """
    gathered = strategy.all_gather(to_root(strategy, tensor))
    if strategy.world_size == 1:  # single-device strategies return the tensor itself
        gathered = gathered.unsqueeze(0)
    return gathered.cpu()


def reduce_cpu(strategy: Strategy, tensor: torch.Tensor, reduce_op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced over ranks (``sum`` or ``mean``), returned on CPU."""
    return strategy.reduce(to_root(strategy, tensor), reduce_op=reduce_op).cpu()


def any_rank(strategy: Strategy, flag: bool | torch.Tensor) -> bool:
    """True when ``flag`` is true on at least one rank (every rank gets the same answer).

    A 0-d tensor flag stays on its device through the all-reduce: one host sync in all, none before it.
    """
    if isinstance(flag, torch.Tensor):
        return bool(strategy.reduce(to_root(strategy, flag.to(torch.int32)), reduce_op="sum").item() > 0)
    return bool(reduce_cpu(strategy, torch.tensor(int(flag), dtype=torch.int32), "sum").item() > 0)


def _plain(cfg: Mapping[str, Any] | DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)


def heads_may_be_unused(cfg: Mapping[str, Any] | DictConfig) -> bool:
    """True when a training step may leave some head without gradient: with
    ``data.mixing.mode=interleave`` one dataset is drawn per step, so the heads of the others idle."""
    cfg = _plain(cfg)
    mixing = (cfg.get("data") or {}).get("mixing") or {}
    return mixing.get("mode", "combined") == "interleave" and len(task_datasets(cfg.get("tasks") or {})) > 1


def wrap_classes(cfg: Mapping[str, Any] | DictConfig) -> set[type[torch.nn.Module]]:
    """Block classes of the configured backbone (timm ViT ``Block``, ResNet ``Bottleneck``/``BasicBlock``),
    found on a meta-device instance (no memory)."""
    cfg = _plain(cfg)
    with torch.device("meta"):
        model = create_backbone({**cfg["model"], "compile": False}, int(cfg["data"]["img_size"]))
    return block_classes(model)


class ObjectStoreFSDPStrategy(FSDPStrategy):
    """Lightning's ``FSDPStrategy`` whose checkpoints may also live on an object store (``output_dir=s3://...``), and
    whose sharded saves are versioned, on local disk too.

    Lightning's FSDP save and load turn the checkpoint path into a ``pathlib.Path`` (``s3://b/x`` becomes the local
    folder ``s3:/b/x``), and its local sharded save rewrites one folder in place (a save killed between its shards and
    its ``meta.pt`` leaves new weights under the old ``meta.pt``). So:

    * sharded (``state_dict_type="sharded"``), local or remote: each save goes to a new folder ``<path>/<save id>/``
      in Lightning's layout (DCP shards + ``.metadata``, written by ``torch.distributed.checkpoint``'s own fsspec
      writer, ``FsspecWriter``: every rank writes its shard files, the coordinator the index; then ``meta.pt``), and
      rank 0 commits it by writing ``<path>/CURRENT`` (one atomic file or object naming the folder), then deletes the
      older saves. An object store has no rename, so the name is the commit: a save that dies at any point leaves the
      previous save committed and loadable (``lit_modules.checkpoints.committed_sharded``), never a mix of old and new
      shards. Folders written by Lightning's own layout (no ``CURRENT``) still load;
    * full, remote: rank 0 writes one file through the checkpoint IO (``AtomicCheckpointIO``: one upload), then
      deletes an older sharded folder of the same name (a run switched from sharded to full), as Lightning's local
      save does; full, local: Lightning's save, after removing an older versioned sharded folder of the same name;
    * load: from the committed save (for a remote one, its local copy in the storage cache: ``storage.local_copy``),
      the local folder Lightning reads.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        if not storage.is_remote(filepath) and self._state_dict_type == "full":
            path = Path(self.broadcast(str(filepath)))
            if self.is_global_zero and path.is_dir() and is_sharded_checkpoint(path):
                shutil.rmtree(path)  # a versioned sharded folder, which Lightning's check does not recognize
            self.barrier("full_checkpoint_over_sharded")
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        url = str(self.broadcast(str(filepath)))
        if self._state_dict_type == "full":
            if self.is_global_zero:
                self.checkpoint_io.save_checkpoint(checkpoint, url)
                if storage.isdir(url):  # an older sharded folder of the same name (Lightning's local save deletes it
                    # too); deleted after the upload, so a kill in between leaves the new file, which local_copy prefers
                    for entry in storage.listdir(url):
                        storage.remove(entry, recursive=True)
            return None
        from torch.distributed.checkpoint import save
        from torch.distributed.checkpoint._fsspec_filesystem import FsspecWriter

        save_id = str(self.broadcast(f"save-{checkpoint.get('global_step', 0)}-{uuid.uuid4().hex[:8]}"))
        folder = str(storage.join(url, save_id))
        if self.is_global_zero and storage.isfile(url):
            storage.remove(url)  # a full checkpoint of the same name before (a run switched from full to sharded)
        self.barrier("sharded_checkpoint_start")
        converted = {"model": checkpoint.pop("state_dict")}
        converted.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
        save(converted, storage_writer=FsspecWriter(folder))
        if self.is_global_zero:
            storage.atomic_write(storage.join(folder, SHARDED_META), lambda f: torch.save(checkpoint, f))
            storage.write_text(storage.join(url, SHARDED_CURRENT), save_id + "\n")  # the commit
            for entry in storage.listdir(url):  # older saves, and the flat files of a folder written before versions
                if str(entry).rstrip("/").rsplit("/", 1)[-1] not in (save_id, SHARDED_CURRENT):
                    storage.remove(entry, recursive=True)
        self.barrier("sharded_checkpoint_end")
        return None

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        # The committed save of a versioned folder, local too (ckpt_path="best" names best.ckpt/ itself); a remote one
        # from its local copy.
        checkpoint_path = checkpoint_copy(checkpoint_path)
        return super().load_checkpoint(checkpoint_path, weights_only=weights_only)


def build_strategy(cfg: Mapping[str, Any] | DictConfig) -> Strategy | str:
    """The Lightning strategy of a run.

    * ``ddp``: ``DDPStrategy`` (static graph off; ``find_unused_parameters`` only when
      ``heads_may_be_unused``: interleaved datasets leave heads idle in a step).
    * ``fsdp``: ``FSDPStrategy`` (``ObjectStoreFSDPStrategy``: remote checkpoint paths too) wrapping each backbone block (timm ViT ``Block``, ResNet
      ``Bottleneck``), with activation checkpointing per block when ``trainer.fsdp.activation_checkpointing``,
      ``trainer.fsdp.sharding_strategy`` and ``trainer.fsdp.state_dict_type`` (sharded|full).
    * anything else (``auto``, ``ddp_spawn``, ``ddp_find_unused_parameters_true``, ...): passed through.

    Raises:
        ValueError: ``fsdp`` together with ``optim.ema_decay`` (the EMA copy assumes unsharded weights).
    """
    cfg = _plain(cfg)
    t = cfg["trainer"]
    name = str(t["strategy"])
    if name == "ddp":
        return DDPStrategy(find_unused_parameters=heads_may_be_unused(cfg), static_graph=False)
    if name == "fsdp":
        if (cfg.get("optim") or {}).get("ema_decay"):
            raise ValueError("optim.ema_decay is not supported with trainer.strategy=fsdp: use ddp, or unset it")
        fsdp = t.get("fsdp") or {}
        state_dict_type = str(fsdp.get("state_dict_type", "sharded"))
        blocks = wrap_classes(cfg)
        return ObjectStoreFSDPStrategy(
            auto_wrap_policy=blocks,
            activation_checkpointing_policy=blocks if fsdp.get("activation_checkpointing", True) else None,
            sharding_strategy=str(fsdp.get("sharding_strategy", "FULL_SHARD")),
            state_dict_type=state_dict_type,
            # Original parameter names and shapes stay visible: name-based optimizer groups, torch.compile.
            use_orig_params=True,
        )
    return name
