"""The work of one training pass of a shard stream, as a plan that any cluster can take over: ``data.stream_slots``
logical slots, served whole by the (rank, loader worker) pairs of the run that starts the pass, and cut anew over the
pairs of a run that resumes it on another world size or worker count (mosaicml streaming's canonical nodes, for
sequential tar streams instead of random access).

Vocabulary (used by ``datamodules.streams`` and ``datamodules.resume``):

* **slot**: one of ``S = data.stream_slots`` sequential streams of a pass. What a slot reads (its range of the pass's
  sample sequence, its shuffle and the seeds of its augmentations) depends on the seed, epoch, pass, manifest, batch
  size, S and the pass's layout, never on which rank or worker reads it.
* **layout**: the batches of each slot in a pass (``layout_quotas``): the pass's ``ceil(N / B)`` batches, rounded up to a
  multiple of the ranks that start it (``pass_batches``), dealt so that each (rank, worker) chunk of that cluster is a
  run of whole slots. It is fixed when the pass starts and stored with the position, so a resumed pass keeps it.
* **piece**: consecutive batches of one slot, starting at raw index ``raw`` of the slot's stream, served by one chunk.
* **plan**: the pieces of a pass, each with its chunk ``rank * workers + worker``. A fresh pass has one piece per
  non-empty slot. A pass resumed on another cluster gets a new plan over what is left (``cut_plan``): the remaining
  batches in slot order, cut into equal runs per rank and near-equal runs per worker. A slot cut in two continues
  at ``raw + batches x B`` in the second piece: exact unless samples before the cut were skipped as undecodable (then
  the second piece re-reads as many samples as were skipped).
* **position**: the plan plus each piece's progress ``(batches done, raw index after them)``: O(S) integers whatever
  the cluster, never one per sample.

Equal batch counts: every rank's chunks hold the same number of batches. When what is left of a resumed pass does not
divide by the new world size, the last piece reads up to ``ranks - 1`` batches more than are left (``Plan.padded``:
samples seen again, counted; past its slot's quota, or, after a second cut, batches of its slot already read) so that no
rank waits at a collective.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Piece", "Plan", "chunk_sizes", "cut_plan", "fresh_plan", "layout_quotas", "pass_batches"]


def pass_batches(num_samples: int, batch_size: int, ranks: int) -> int:
    """Batches of a fresh pass over all ranks: ``ceil(N / B)`` rounded up to a multiple of ``ranks`` (equal counts)."""
    return ranks * math.ceil(math.ceil(num_samples / batch_size) / ranks)


def chunk_sizes(total: int, ranks: int, workers: int) -> list[int]:
    """Batches of each chunk (rank-major) when ``total`` (a multiple of ``ranks``) is split evenly over ranks and,
    within a rank, over its workers (the first ``per_rank % workers`` workers one more: the DataLoader's round robin
    then hands them out in order)."""
    per_rank = total // ranks
    return [per_rank // workers + (1 if w < per_rank % workers else 0) for _ in range(ranks) for w in range(workers)]


def _even(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def layout_quotas(slots: int, ranks: int, workers: int, total: int) -> list[int]:
    """Batches of each slot in a fresh pass of ``total`` batches started on ``ranks`` x ``workers``.

    With at least as many slots as chunks, chunk ``c`` owns the slots ``[c*S//C, (c+1)*S//C)`` and its batches are split
    evenly over them, so no slot is shared; with fewer slots than chunks the batches are split evenly over the slots
    and ``cut_plan`` shares them."""
    chunks = ranks * workers
    if slots < chunks:
        return _even(total, slots)
    quotas: list[int] = []
    for c, size in enumerate(chunk_sizes(total, ranks, workers)):
        quotas.extend(_even(size, (c + 1) * slots // chunks - c * slots // chunks))
    return quotas


@dataclass(frozen=True)
class Piece:
    """Batches ``[first, first + count)`` of slot ``slot``, reading from raw index ``raw`` of the slot's stream, served
    by chunk ``chunk`` (``rank * workers + worker``)."""

    slot: int
    first: int
    count: int
    raw: int
    chunk: int


@dataclass(frozen=True)
class Plan:
    """The pieces of a pass on ``ranks`` x ``workers`` (see the module docstring); ``padded``: batches read past the
    slots' quotas to keep the ranks equal."""

    ranks: int
    workers: int
    pieces: tuple[Piece, ...]
    padded: int = 0

    def lane(self, rank: int, worker: int) -> list[int]:
        """Indices (into ``pieces``) that logical worker ``worker`` of ``rank`` serves, in order."""
        chunk = rank * self.workers + worker
        return [i for i, p in enumerate(self.pieces) if p.chunk == chunk]

    def rank_batches(self, rank: int = 0) -> int:
        """Batches each rank yields in this plan (the same on every rank)."""
        lo, hi = rank * self.workers, (rank + 1) * self.workers
        return sum(p.count for p in self.pieces if lo <= p.chunk < hi)

    def state(self) -> dict:
        return {
            "ranks": self.ranks,
            "workers": self.workers,
            "padded": self.padded,
            "pieces": [[p.slot, p.first, p.count, p.raw, p.chunk] for p in self.pieces],
        }

    @classmethod
    def from_state(cls, state: dict) -> Plan:
        pieces = tuple(Piece(*map(int, p)) for p in state["pieces"])
        return cls(int(state["ranks"]), int(state["workers"]), pieces, int(state.get("padded", 0)))

    def progress_after(self, batches: int, batch_size: int) -> list[list[int]]:
        """Each piece's ``[done, raw]`` once every rank consumed ``batches`` batches of this plan (its workers in turn,
        as the DataLoader hands them out), assuming no sample was skipped: a position for benchmarks and tests."""
        progress = [[0, p.raw] for p in self.pieces]
        for rank in range(self.ranks):
            for worker in range(self.workers):
                todo = batches // self.workers + (1 if worker < batches % self.workers else 0)
                for i in self.lane(rank, worker):
                    take = min(todo, self.pieces[i].count)
                    progress[i] = [take, self.pieces[i].raw + take * batch_size]
                    todo -= take
        return progress

    def remaining(self, progress: list[tuple[int, int]]) -> list[tuple[int, int, int, int]]:
        """What is left after ``progress`` (``(done, raw)`` per piece): ``(slot, first, count, raw)`` in slot order."""
        left = [
            (p.slot, p.first + done, p.count - done, raw if done else p.raw)
            for p, (done, raw) in zip(self.pieces, progress)
            if done < p.count
        ]
        return sorted(left)


def fresh_plan(slots: int, ranks: int, workers: int, total: int, batch_size: int) -> Plan:
    """The plan of a pass that starts on ``ranks`` x ``workers``: one piece per non-empty slot of ``layout_quotas``,
    in its chunk (or ``cut_plan`` over the slots when there are fewer slots than chunks)."""
    quotas = layout_quotas(slots, ranks, workers, total)
    chunks = ranks * workers
    if slots < chunks:
        return cut_plan([(s, 0, q, 0) for s, q in enumerate(quotas) if q], ranks, workers, batch_size)
    pieces = []
    for c in range(chunks):
        for s in range(c * slots // chunks, (c + 1) * slots // chunks):
            if quotas[s]:
                pieces.append(Piece(s, 0, quotas[s], 0, c))
    return Plan(ranks, workers, tuple(pieces))


def cut_plan(left: list[tuple[int, int, int, int]], ranks: int, workers: int, batch_size: int) -> Plan:
    """A plan for ``ranks`` x ``workers`` over ``left`` (``(slot, first, count, raw)`` runs, in order): the runs laid
    end to end and cut into equal runs per rank (the last run grows by the ``padded`` batches that make the total a
    multiple of ``ranks``), each cut into near-equal runs per worker (``chunk_sizes``). A run cut in two continues at
    ``raw + batches x batch_size`` (see the module docstring)."""
    total = sum(n for _, _, n, _ in left)
    per_rank = math.ceil(total / ranks) if total else 0
    padded = per_rank * ranks - total
    runs = [list(r) for r in left]
    if padded:
        runs[-1][2] += padded
    sizes = chunk_sizes(per_rank * ranks, ranks, workers)
    pieces: list[Piece] = []
    chunk, room = 0, sizes[0] if sizes else 0
    for slot, first, count, raw in runs:
        while count:
            while room == 0:
                chunk += 1
                room = sizes[chunk]
            take = min(room, count)
            pieces.append(Piece(slot, first, take, raw, chunk))
            first, count, raw, room = first + take, count - take, raw + take * batch_size, room - take
    return Plan(ranks, workers, tuple(pieces), padded)
