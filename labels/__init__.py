"""Weak-label mining: text signals -> annotation terms -> raw and clustered label spaces -> webdataset shards.

Entry point: ``python mine_labels.py --config configs/labels/openclipart.yaml``; library entry:
``labels.pipeline.run(cfg)``. Modules: ``sources`` (input adapters), ``text`` (normalization and
terms), ``scoring`` (signal weights, per-image labels), ``vocab`` (document frequency, cuts),
``cluster`` (long-tail clustering), ``images`` (render/decode), ``shards`` (ShardWriter + manifest),
``report`` (stats and plots), ``hashing`` (keys, split and scale buckets), ``pipeline`` (the run).
This package imports nothing heavy at import time: image workers import only what they use.
"""

from labels.hashing import content_key, hash_unit

__all__ = ["content_key", "hash_unit"]
