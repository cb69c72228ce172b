"""Content keys and the hash that assigns samples to the split and to nested scale buckets.

Both are defined in docs/ARCHITECTURE.md and read by other parts of the repo; keep them exact.
"""

from __future__ import annotations

import hashlib

KEY_HEX_CHARS = 16


def hash_unit(s: str) -> float:
    """Map a string to [0, 1): the first 8 bytes of its SHA-1 as an unsigned big-endian int / 2**64."""
    digest = hashlib.sha1(s.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def content_key(data: bytes) -> str:
    """Sample key: the first 16 hex chars of the SHA-1 of the source image bytes."""
    return hashlib.sha1(data).hexdigest()[:KEY_HEX_CHARS]


def split_of(key: str, val_fraction: float) -> str:
    """``"val"`` when ``hash_unit("split:" + key) < val_fraction``, else ``"train"``."""
    return "val" if hash_unit("split:" + key) < val_fraction else "train"


def scale_bucket(key: str, scales: list[float]) -> int:
    """Index ``i`` of the nested scale bucket of a train sample: ``scales[i-1] <= u < scales[i]``.

    ``u = hash_unit("scale:" + key)``; ``scales`` is increasing and ends at 1.0, so every key has a
    bucket, and the subset at scale ``s`` (all buckets with ``scales[i] <= s``) grows with ``s``.
    """
    u = hash_unit("scale:" + key)
    for i, upper in enumerate(scales):
        if u < upper:
            return i
    return len(scales) - 1  # unreachable when scales[-1] == 1.0 (u < 1 always)
