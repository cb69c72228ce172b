"""A run's identity: which runs are one run (naming, resume), and which are replicates of each other (tables).

- **Config fingerprint**: a hash of the resolved config without ``configs.schema.OPERATIONAL_KEYS`` (hardware,
  paths, logging). Two runs with different fingerprints never share a run directory or a W&B run, and
  ``resume=auto`` continues only a run whose stored fingerprint matches (the hardware may differ).
- **Replicate fingerprint**: the same config without the seed, plus the run's lineage that changes results without
  being a science key: the data manifest's fingerprint, the world size, the global batch and the precision. A table
  cell averages only runs that share it; anything else is a row of its own.

See docs/sweeps.md ("Run identity") for why the axes a table compares on cannot be a run's identity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import storage
from configs.schema import OPERATIONAL_KEYS, RunConfig

# The environment `wandb agent` gives every run it launches (wandb/wandb_agent.py: WANDB_SWEEP_ID, WANDB_RUN_ID,
# plus WANDB_SWEEP_PARAM_PATH, WANDB_ENTITY, WANDB_PROJECT).
AGENT_SWEEP_ENV = "WANDB_SWEEP_ID"
AGENT_RUN_ENV = "WANDB_RUN_ID"
# Lineage entries that make two runs of one config give different results: part of the replicate fingerprint.
REPLICATE_LINEAGE = ("data_fingerprint", "world_size", "global_batch", "precision")
_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(RunConfig))


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": value}``; lists and scalars are values. An empty mapping is a value (``{}``)."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = dict(value) if isinstance(value, Mapping) else value
    return flat


def is_operational(key: str) -> bool:
    """Whether a dotted config key is in ``OPERATIONAL_KEYS`` (exactly, or under one of its ``prefix.`` entries)."""
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in OPERATIONAL_KEYS)


def science(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flat science keys of a resolved config (a dict as ``configs.compose.to_dict`` returns, or config.yaml):
    every ``RunConfig`` field except the operational ones; keys other writers added (W&B's, ``axes``) are ignored."""
    kept = {k: v for k, v in config.items() if k in _CONFIG_FIELDS}
    return {k: v for k, v in sorted(flatten(kept).items()) if not is_operational(k)}


def fingerprint(payload: Any, length: int = 16) -> str:
    """A stable hex hash of a JSON-able value (keys sorted, so dict order never matters)."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def config_fingerprint(config: Mapping[str, Any]) -> str:
    """The identity of a run's configuration (see the module docstring)."""
    return fingerprint(science(config))


def replicate_fingerprint(science_keys: Mapping[str, Any], lineage: Mapping[str, Any]) -> str:
    """What a run must share with another to be averaged with it: its science keys but the seed, and the lineage
    entries in ``REPLICATE_LINEAGE``."""
    payload = {k: v for k, v in science_keys.items() if k != "seed"}
    payload.update({f"lineage.{k}": lineage.get(k) for k in REPLICATE_LINEAGE})
    return fingerprint(payload)


def differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 12) -> list[str]:
    """``"key: old -> new"`` for every key whose value differs between two flat mappings (a missing key is
    ``<unset>``), sorted; at most ``limit`` lines, then a count of the rest."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<unset>"), new.get(key, "<unset>")
        if a != b:
            lines.append(f"{key}: {a!r} -> {b!r}")
    return lines[:limit] + ([f"... and {len(lines) - limit} more"] if len(lines) > limit else [])


def agent_ids(environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """``(sweep_id, run_id)`` when `wandb agent` launched this process, else None."""
    env = os.environ if environ is None else environ
    sweep, run = env.get(AGENT_SWEEP_ENV), env.get(AGENT_RUN_ENV)
    return (sweep, run) if sweep and run else None


def data_fingerprint(manifests: Iterable[os.PathLike | str]) -> str | None:
    """A hash of the bytes of the data manifests a run reads (None when it reads none): the same path rebuilt from
    another corpus, or with other mining settings, is other data."""
    digest = hashlib.sha256()
    seen = False
    for path in manifests:
        digest.update(storage.read_bytes(path))  # a local path or a bucket URL (shards on object storage)
        seen = True
    return digest.hexdigest()[:16] if seen else None
