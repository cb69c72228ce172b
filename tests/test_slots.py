"""The slot plans of an each-sample-once pass (``datamodules.slots``) under topology changes, without processes.

A small model of what the readers do: a rank's DataLoader hands out its workers' batches round robin (a worker that runs
out drops out of the turn), a worker serves its lane of the plan piece after piece, and a piece reads ``count`` batches
of its slot from raw index ``raw`` (no sample skipped: raw advances by the batch size). On it, the known answers are:
every rank yields the same number of batches, and over an interrupted pass (before the cut + after it, any number of
cuts) each slot's raw stream is read as one contiguous run from 0, each raw index once, covering the slot's quota and
past it only by the plan's ``padded`` batches.
"""

from __future__ import annotations

import math
from collections import Counter

from hypothesis import example, given
from hypothesis import strategies as st

from datamodules.slots import Plan, cut_plan, fresh_plan, pass_batches


def rank_order(plan: Plan, rank: int, rotation: int = 0, done: list[int] | None = None) -> list[tuple[int, int]]:
    """``(piece index, batch index within the piece)`` in the order rank ``rank`` hands them out: physical worker
    ``p`` plays logical worker ``(p + rotation) % workers`` and yields what is left of its pieces after ``done``
    batches each; the DataLoader's round robin skips a worker that ended."""
    w = plan.workers
    done = done or [0] * len(plan.pieces)
    queues = []
    for p in range(w):
        lw = (p + rotation) % w
        queues.append([(i, b) for i in plan.lane(rank, lw) for b in range(done[i], plan.pieces[i].count)])
    out, active = [], list(range(w))
    pos = [0] * w
    while active:
        for p in list(active):
            if pos[p] == len(queues[p]):
                active.remove(p)
                continue
            out.append(queues[p][pos[p]])
            pos[p] += 1
    return out


def run(plan: Plan, steps: int | None, progress=None, rotation: int = 0):
    """Every rank hands out ``steps`` batches (all when None) of ``plan`` from ``progress``; returns the raw
    intervals read per slot, the batches per rank and the progress after them."""
    progress = [list(p) for p in (progress or [[0, p.raw] for p in plan.pieces])]
    start = [d for d, _ in progress]
    reads: dict[int, list[tuple[int, int]]] = {}
    counts = []
    for rank in range(plan.ranks):
        order = rank_order(plan, rank, rotation, start)
        order = order if steps is None else order[:steps]
        counts.append(len(order))
        for i, b in order:
            piece = plan.pieces[i]
            assert b == progress[i][0], "a piece's batches are read in order"
            raw = progress[i][1]
            reads.setdefault(piece.slot, []).append((raw, raw + BATCH))
            progress[i] = [b + 1, raw + BATCH]
    return reads, counts, progress


BATCH = 4


def check_coverage(reads: dict[int, list[tuple[int, int]]], quotas: dict[int, int], extra: int) -> None:
    """Each slot's raw indices ``[0, quota x B)`` are read at least once, and over all slots the reads exceed the
    quotas by exactly ``extra`` batches (the plans' ``padded``): nothing skipped, nothing else read twice."""
    over = 0
    for slot, q in quotas.items():
        seen = Counter(r for lo, hi in reads.get(slot, []) for r in range(lo, hi))
        missing = [r for r in range(q * BATCH) if not seen[r]]
        assert not missing, f"slot {slot}: raw {missing[:8]}... never read"
        over += sum(seen.values()) - q * BATCH
    assert set(reads) <= set(quotas)
    assert over == extra * BATCH, (over, extra)


topologies = st.tuples(st.integers(1, 5), st.integers(1, 3))


@given(
    n=st.integers(1, 300),
    slots=st.integers(1, 40),
    first=topologies,
    cuts=st.lists(st.tuples(topologies, st.floats(0, 1)), min_size=1, max_size=3),
)
@example(n=150, slots=37, first=(4, 2), cuts=[((2, 2), 0.4), ((3, 2), 0.5)])  # 4 -> 2 -> 3 in one epoch
@example(n=150, slots=1, first=(4, 2), cuts=[((5, 3), 0.9)])  # one slot, more ranks than batches left
@example(n=3, slots=8, first=(2, 2), cuts=[((1, 1), 0.0)])  # fewer samples than slots; resume at position 0
def test_every_slot_continues_where_it_stopped_over_any_chain_of_topology_changes(n, slots, first, cuts):
    ranks, workers = first
    total = pass_batches(n, BATCH, ranks)
    plan = fresh_plan(slots, ranks, workers, total, BATCH)
    quotas: dict[int, int] = {}
    for p in plan.pieces:
        quotas[p.slot] = quotas.get(p.slot, 0) + p.count
    assert sum(quotas.values()) == total
    all_reads: dict[int, list[tuple[int, int]]] = {}
    padded = 0
    steps_done, length = 0, total // ranks  # what TrainLoader counts: steps of the epoch, the epoch's length
    for (new_ranks, new_workers), fraction in cuts:
        left_steps = plan.rank_batches(0)  # every rank yields the same number
        assert all(plan.rank_batches(r) == left_steps for r in range(plan.ranks))
        k = min(left_steps - 1, int(fraction * left_steps)) if left_steps else 0
        reads, counts, progress = run(plan, k)
        assert counts == [k] * plan.ranks
        for slot, spans in reads.items():
            all_reads.setdefault(slot, []).extend(spans)
        steps_done += k
        # TrainLoader.load_state_dict: the rest of the epoch on the new cluster.
        left = math.ceil((length - steps_done) * plan.ranks / new_ranks)
        plan = cut_plan(plan.remaining(progress), new_ranks, new_workers, BATCH)
        padded += plan.padded
        assert all(plan.rank_batches(r) == left for r in range(new_ranks)), "epoch length != what each rank yields"
        length = steps_done + left
    reads, counts, _ = run(plan, None)
    assert counts == [plan.rank_batches(0)] * plan.ranks
    for slot, spans in reads.items():
        all_reads.setdefault(slot, []).extend(spans)
    check_coverage(all_reads, quotas, padded)


@given(n=st.integers(1, 300), slots=st.integers(1, 40), topo=topologies, fraction=st.floats(0, 1))
def test_a_resume_on_the_same_cluster_yields_the_uninterrupted_batches_in_order(n, slots, topo, fraction):
    """Same world size and worker count: the plan continues with worker roles rotated by the batches done, so each
    rank hands out exactly the batches (piece, index) of the uninterrupted pass, in its order."""
    ranks, workers = topo
    total = pass_batches(n, BATCH, ranks)
    plan = fresh_plan(slots, ranks, workers, total, BATCH)
    per_rank = plan.rank_batches(0)
    k = min(per_rank, int(fraction * per_rank))
    _, _, progress = run(plan, k)
    assert progress == [list(p) for p in plan.progress_after(k, BATCH)]
    for rank in range(ranks):
        whole = rank_order(plan, rank)
        done = [d for d, _ in progress]
        rest = rank_order(plan, rank, rotation=k % workers, done=done)
        assert rest == whole[k:]
