"""On-disk work tables (SQLite) that keep the pipeline's memory flat however large the corpus.

``units``: every readable unit of the first pass (key, locator, signals), indexed by key so
duplicates come out grouped (SQLite sorts on disk). ``samples``: one row per distinct key after the
duplicate merge, keyed by the sequence number of its first unit so later passes replay the input
order. Texts and term scores are stored with :mod:`marshal` (several times faster than JSON for these
plain dicts and lists); the file is this run's scratch space, written and read by this process only.
"""

from __future__ import annotations

import marshal
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass
class SampleRow:
    seq: int
    key: str
    source: str
    uids: list[str]
    path: str | None
    offset: int
    size: int
    ext: str
    text: dict[str, list[str]]
    terms: dict[str, float]


class WorkStore:
    """The pass tables in ``<work_dir>/work.sqlite`` (recreated on open)."""

    def __init__(self, work_dir: str) -> None:
        os.makedirs(work_dir, exist_ok=True)
        self.path = os.path.join(work_dir, "work.sqlite")
        for suffix in ("", "-journal", "-wal"):
            if os.path.exists(self.path + suffix):
                os.remove(self.path + suffix)
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("PRAGMA temp_store=FILE")
        self.db.execute("PRAGMA cache_size=-32000")  # ~32 MB page cache, whatever the corpus size
        self.db.execute(
            "CREATE TABLE units (seq INTEGER PRIMARY KEY, key TEXT, source TEXT, uid TEXT, path TEXT,"
            " offset INTEGER, size INTEGER, ext TEXT, signals BLOB)"
        )
        self.db.execute(
            "CREATE TABLE samples (seq INTEGER PRIMARY KEY, key TEXT, source TEXT, uids TEXT, path TEXT,"
            " offset INTEGER, size INTEGER, ext TEXT, text BLOB, terms BLOB)"
        )
        self._pending: list[tuple] = []

    # ---------------------------------------------------------------- units
    def add_unit(self, seq, key, source, uid, path, offset, size, ext, signals: dict[str, list[str]]) -> None:
        """Queue one unit with its (canonical) signals."""
        self._pending.append((seq, key, source, uid, path, offset, size, ext, marshal.dumps(signals)))
        if len(self._pending) >= 5000:
            self._flush_units()

    def _flush_units(self) -> None:
        if self._pending:
            self.db.executemany("INSERT INTO units VALUES (?,?,?,?,?,?,?,?,?)", self._pending)
            self._pending = []

    def finish_units(self) -> None:
        self._flush_units()
        self.db.execute("CREATE INDEX units_key ON units (key, seq)")
        self.db.commit()

    def units_by_key(self) -> Iterator[tuple[str, list[tuple]]]:
        """``(key, [(seq, source, uid, path, offset, size, ext, signals_blob), ...])`` grouped by key,
        in key order, each group in input order (``load`` decodes a blob)."""
        cur = self.db.execute(
            "SELECT key, seq, source, uid, path, offset, size, ext, signals FROM units ORDER BY key, seq"
        )
        key, group = None, []
        for row in cur:
            if row[0] != key and group:
                yield key, group
                group = []
            key = row[0]
            group.append(row[1:])
        if group:
            yield key, group

    # -------------------------------------------------------------- samples
    def add_sample(self, s: SampleRow, text_blob: bytes | None = None) -> None:
        """Queue one merged sample; ``text_blob`` is ``s.text`` already encoded, when at hand."""
        self._pending.append(
            (
                s.seq,
                s.key,
                s.source,
                marshal.dumps(s.uids),
                s.path,
                s.offset,
                s.size,
                s.ext,
                text_blob if text_blob is not None else marshal.dumps(s.text),
                marshal.dumps(s.terms),
            )
        )
        if len(self._pending) >= 5000:
            self._flush_samples()

    def _flush_samples(self) -> None:
        if self._pending:
            self.db.executemany("INSERT INTO samples VALUES (?,?,?,?,?,?,?,?,?,?)", self._pending)
            self._pending = []

    def finish_samples(self) -> None:
        self._flush_samples()
        self.db.commit()

    def samples(self) -> Iterator[SampleRow]:
        """Every merged sample in input order (the sequence number of its first unit)."""
        cur = self.db.execute("SELECT * FROM samples ORDER BY seq")
        for seq, key, source, uids, path, offset, size, ext, text, terms in cur:
            load = marshal.loads
            yield SampleRow(seq, key, source, load(uids), path, offset, size, ext, load(text), load(terms))

    def sample_terms(self) -> Iterator[dict[str, float]]:
        """Each sample's eligible terms, in input order (what the label-count passes need)."""
        for (terms,) in self.db.execute("SELECT terms FROM samples ORDER BY seq"):
            yield marshal.loads(terms)

    @staticmethod
    def load(blob: bytes):
        """Decode a stored blob."""
        return marshal.loads(blob)

    def num_samples(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM samples").fetchone()[0]

    def close(self, remove: bool = True) -> None:
        self.db.close()
        if remove and os.path.exists(self.path):
            os.remove(self.path)
