"""Safe checkpoint reading and the checks that a checkpoint fits a model.

Checkpoints are only ever read with ``torch.load(weights_only=True)``: a file holding pickled Python
objects other than tensors and plain containers is refused, never executed.

A checkpoint is a ``.ckpt`` file, or the folder Lightning's ``FSDPStrategy(state_dict_type="sharded")`` writes
under the same name (``last.ckpt/``): ``torch.distributed.checkpoint`` files (``.metadata``, ``__<rank>_0.distcp``
holding ``{"model": state_dict, "optimizer_<i>": ...}``) and ``meta.pt`` (everything else: hyper-parameters, loop
and callback state), written by rank 0 after the shards. ``read_checkpoint`` turns such a folder into the usual
dict, weights only, on CPU.

Every function takes a local path or a URL (``s3://bucket/runs/<run>/checkpoints/last.ckpt``): a remote checkpoint is
read from a local copy in the storage cache (``storage.local_copy``: ``$STORAGE_CACHE_DIR``, downloaded once per
version), and errors name the URL.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import storage

__all__ = [
    "CheckpointError",
    "InitReport",
    "checkpoint_copy",
    "committed_sharded",
    "compatibility_problems",
    "is_checkpoint",
    "is_sharded_checkpoint",
    "read_checkpoint",
    "read_checkpoint_meta",
]

SHARDED_META = "meta.pt"  # lightning.fabric.utilities.load._METADATA_FILENAME
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of the shards
# On an object store a sharded checkpoint folder holds one folder per save and this object, written last, naming the
# committed one (lit_modules.strategy.ObjectStoreFSDPStrategy): a save interrupted at any point leaves the previous.
SHARDED_CURRENT = "CURRENT"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely, is not one of this repo, or does not fit the model."""


@dataclass
class InitReport:
    """What ``init_from`` loaded into a model (all lists of state-dict keys, sorted)."""

    path: str
    loaded: list[str] = field(default_factory=list)  # copied from the checkpoint
    new: list[str] = field(default_factory=list)  # in the model, freshly initialised
    mismatched: list[tuple[str, list[int], list[int]]] = field(default_factory=list)  # (key, ckpt, model shape)
    resampled: list[str] = field(default_factory=list)  # position embeddings resized to this img_size
    skipped_label_space: list[str] = field(default_factory=list)  # heads over another label space
    unused: list[str] = field(default_factory=list)  # in the checkpoint, not in the model

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON / W&B friendly)."""
        return asdict(self)

    def summary(self) -> str:
        """One line per category with counts and the first few keys."""

        def head(keys: list, n: int = 6) -> str:
            shown = [k if isinstance(k, str) else f"{k[0]} {k[1]}->{k[2]}" for k in keys[:n]]
            return ", ".join(shown) + (f", ... (+{len(keys) - n})" if len(keys) > n else "")

        lines = [f"init_from {self.path}: {len(self.loaded)} tensors loaded, {len(self.new)} new"]
        for name in ("new", "mismatched", "resampled", "skipped_label_space", "unused"):
            keys = getattr(self, name)
            if keys:
                lines.append(f"  {name} ({len(keys)}): {head(keys)}")
        return "\n".join(lines)


def committed_sharded(path: os.PathLike | str) -> Any:
    """Where a sharded checkpoint's files are: the save folder its ``CURRENT`` file (or object) names; else (a file, a
    folder in Lightning's own layout, written before saves were versioned) ``path`` itself."""
    if not storage.isfile(path):
        current = storage.join(path, SHARDED_CURRENT)
        if storage.isfile(current):
            return storage.join(path, storage.read_text(current).strip())
    return path


def checkpoint_copy(path: os.PathLike | str) -> Path:
    """A local path holding the checkpoint at ``path``: the path itself when local, else a copy of the remote file or
    of the committed save of a remote sharded folder (``storage.local_copy``)."""
    return storage.local_copy(committed_sharded(path))


def is_sharded_checkpoint(path: os.PathLike | str) -> bool:
    """True for a complete sharded FSDP checkpoint folder (DCP index and Lightning's ``meta.pt`` both present)."""
    path = storage.as_path(committed_sharded(path))
    return storage.isfile(path / SHARDED_META) and storage.isfile(path / DCP_METADATA)


def is_checkpoint(path: os.PathLike | str) -> bool:
    """True for a checkpoint file or a sharded FSDP checkpoint folder (local or a URL)."""
    return storage.isfile(path) or is_sharded_checkpoint(path)


def _named(url: os.PathLike | str, read: Any) -> Any:
    """``read(local copy)`` of a remote checkpoint (``storage.local_copy``), with errors naming the URL."""
    local = checkpoint_copy(url)
    try:
        return read(local)
    except (CheckpointError, FileNotFoundError) as err:
        raise type(err)(str(err).replace(str(local), str(url))) from None


class _DCPMetadataUnpickler(pickle.Unpickler):
    """Reads DCP's ``.metadata`` index, which torch.distributed.checkpoint writes with plain pickle: only the
    classes such an index holds (DCP metadata dataclasses, torch dtypes/sizes/layouts, paths) may be built, so a
    crafted index cannot run code. The shards themselves are read by DCP with ``torch.load(weights_only=True)``."""

    _TORCH = {"Size", "_get_layout"}
    _PATHLIB = {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"}

    def find_class(self, module: str, name: str) -> Any:
        allowed = (
            (module.startswith("torch.distributed.checkpoint.") and not name.startswith("__"))
            or (module in ("torch", "torch.serialization") and name in self._TORCH)
            or (module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format)))
            or (module == "pathlib" and name in self._PATHLIB)
            or (module == "collections" and name == "OrderedDict")
        )
        if not allowed:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a DCP metadata index")
        return super().find_class(module, name)


def _sharded_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The full model state dict of a sharded folder, on CPU (optimizer shards are not read)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            with open(self.path / DCP_METADATA, "rb") as f:
                metadata = _DCPMetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is not None:
                metadata.storage_meta.load_id = self.load_id
            return metadata

    # The private calls DCP's own dcp_to_torch_save and Lightning's consolidate_checkpoint make (the public
    # dcp.load fills only keys the caller's dict already has): the planner builds the state dict from the index,
    # so no model is needed; keys={"model"} leaves the optimizer shards on disk; no_dist: a local read per rank.
    state: dict[str, Any] = {}
    _load_state_dict(
        state, storage_reader=SafeReader(path), planner=_EmptyStateDictLoadPlanner(keys={"model"}), no_dist=True
    )
    model = state.get("model")
    if not isinstance(model, dict):
        raise CheckpointError(f"{path}: the sharded checkpoint holds no 'model' state dict")
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in model.items()}


def read_checkpoint_meta(path: os.PathLike | str) -> dict[str, Any]:
    """Everything but the tensors of a checkpoint: a file's full dict (memory-mapped), or a sharded folder's
    ``meta.pt`` (hyper-parameters, loop state, ...), read with ``weights_only=True``."""
    if storage.is_remote(path):
        return _named(path, read_checkpoint_meta)
    path = Path(committed_sharded(path))
    target = path / SHARDED_META if is_sharded_checkpoint(path) else path
    try:
        payload = torch.load(target, map_location="cpu", weights_only=True, mmap=target.is_file() and path.is_file())
    except Exception as err:  # a pickle that weights_only refuses, a truncated file, not a checkpoint
        raise CheckpointError(f"cannot read checkpoint {path} safely (torch.load weights_only=True): {err}") from None
    if not isinstance(payload, dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (a {type(payload).__name__}, not a dict)")
    return payload


def read_checkpoint(path: os.PathLike | str, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint of this repo with ``weights_only=True`` and check its structure.

    Args:
        path: a ``.ckpt`` file written by Lightning for a ``MultiTaskModule``, or a sharded FSDP checkpoint
            folder (see the module docstring; its weights are gathered into one state dict on CPU).
        map_location: passed to ``torch.load`` (files).

    Returns:
        The checkpoint dict; it has ``state_dict`` and ``hyper_parameters`` with ``config`` and
        ``num_classes``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a pickle payload (refused), an unreadable file, an incomplete sharded folder, or
            a checkpoint that is not one of this repo; the message names the file.
    """
    if storage.is_remote(path):
        return _named(path, lambda local: read_checkpoint(local, map_location=map_location))
    path = Path(committed_sharded(path))
    if path.is_dir():
        if not is_sharded_checkpoint(path):
            have = sorted(p.name for p in path.iterdir())[:8]
            raise CheckpointError(
                f"{path} is a directory but not a complete sharded FSDP checkpoint (needs {DCP_METADATA} and "
                f"{SHARDED_META}; has {have}): an interrupted save, or not a checkpoint"
            )
        ckpt = read_checkpoint_meta(path)
        from torch.distributed.checkpoint.api import CheckpointException

        try:
            ckpt["state_dict"] = _sharded_state_dict(path)
        except (Exception, CheckpointException) as err:  # DCP wraps reader errors (a refused index too) in its
            # CheckpointException, a BaseException
            reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path}: cannot read the sharded checkpoint's weights: {reason}") from None
        return _checked(path, ckpt)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):
        # torch.save has written zip archives since PyTorch 1.6; anything else is truncated or foreign.
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (not a torch.save zip archive; truncated?)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "WeightsUnpickler error" in ln]
        reason = lines[0].split(". Please use")[0] if lines else type(err).__name__
        raise CheckpointError(
            f"{path}: refused to load: it holds pickled Python objects beyond tensors and plain "
            f"containers, and checkpoints are only read with torch.load(weights_only=True) ({reason})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint (truncated or another format): {err}"
        ) from None
    return _checked(path, ckpt)


def _checked(path: Path, ckpt: Any) -> dict[str, Any]:
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict' mapping)")
    hp = ckpt.get("hyper_parameters")
    if (
        not isinstance(hp, dict)
        or not isinstance(hp.get("config"), dict)
        or not isinstance(hp.get("num_classes"), dict)
    ):
        raise CheckpointError(
            f"{path}: not a checkpoint of this repo's MultiTaskModule (hyper_parameters lack 'config' / 'num_classes')"
        )
    return ckpt


def _model_arch(config: Mapping[str, Any]) -> tuple[str, dict]:
    model = config.get("model") or {}
    return str(model.get("name")), dict(model.get("kwargs") or {})


def compatibility_problems(
    saved: Mapping[str, Any], current: Mapping[str, Any], check_tasks: bool = True, check_img_size: bool = True
) -> list[str]:
    """Why a checkpoint's weights cannot be restored into the current module (empty list: they can).

    Args:
        saved: the checkpoint's ``hyper_parameters`` (``config`` and ``num_classes``).
        current: the current module's hyper-parameters, same form.
        check_tasks: also require the same task heads (resuming); ``init_from`` only checks the backbone.
        check_img_size: require the same ``data.img_size`` (position embeddings of ViTs are sized by it).
    """
    problems: list[str] = []
    s_cfg, c_cfg = saved["config"], current["config"]
    s_arch, c_arch = _model_arch(s_cfg), _model_arch(c_cfg)
    if s_arch != c_arch:
        problems.append(
            f"backbone differs: checkpoint model.name={s_arch[0]} kwargs={s_arch[1]}, "
            f"this run model.name={c_arch[0]} kwargs={c_arch[1]}"
        )
    if not check_tasks:
        return problems
    s_size, c_size = s_cfg.get("data", {}).get("img_size"), c_cfg.get("data", {}).get("img_size")
    if check_img_size and s_size != c_size:
        problems.append(f"data.img_size differs: checkpoint {s_size}, this run {c_size}")
    s_nc, c_nc = dict(saved["num_classes"]), dict(current["num_classes"])
    for ds in sorted(set(s_nc) | set(c_nc)):
        if s_nc.get(ds) != c_nc.get(ds):
            problems.append(
                f"label space of '{ds}' differs: checkpoint {s_nc.get(ds)} classes, this run {c_nc.get(ds)}"
            )
    s_space = s_cfg.get("data", {}).get("weak_label", {}).get("label_space")
    c_space = c_cfg.get("data", {}).get("weak_label", {}).get("label_space")
    if s_space != c_space and "weak_label" in c_nc:
        problems.append(f"data.weak_label.label_space differs: checkpoint '{s_space}', this run '{c_space}'")
    from lit_modules.tasks import build_tasks

    s_tasks = [t.name for t in build_tasks(s_cfg.get("tasks", {}))]
    c_tasks = [t.name for t in build_tasks(c_cfg.get("tasks", {}))]
    if s_tasks != c_tasks:
        problems.append(f"tasks differ: checkpoint {s_tasks}, this run {c_tasks}")
    if bool(s_cfg.get("optim", {}).get("ema_decay")) != bool(c_cfg.get("optim", {}).get("ema_decay")):
        problems.append("optim.ema_decay is set in only one of the checkpoint and this run")
    return problems


def describe(path: os.PathLike | str | None) -> str:
    """``checkpoint <path>`` or ``the checkpoint`` when the path is unknown."""
    return f"checkpoint {path}" if path else "the checkpoint"
