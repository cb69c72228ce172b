"""Is a word drawn from a closed pool of contexts? An offline diagnosis of one idea for issue 22: boilerplate that
varies (one of three download lines, one of five size notations, "{x} included" for a few x) leaves each variant under
the template rule's evidence floor, but the word's contexts, counted together, come from a small closed set, while a
content word keeps meeting new ones. Good-Turing's estimate of the chance that the next occurrence brings a context
never seen is the share of occurrences whose context was seen once: ``novelty(w) = N1 / P`` over w's pair records
(``=L R``, labels/templates.py), P their total. Not a rule of the pipeline: docs/labels.md ("Weighed and not adopted")
records what it showed.

    OMP_NUM_THREADS=2 python benchmarks/analyse_context_novelty.py tune heldout fresh blind blind5 blind6

Each set is mined in this process (the repo's img2dataset preset, ``vocab.keep_unlabeled=true``, into
/tmp/context_novelty/<set>) while the reduce task's merged context records are kept. Then, per threshold, the words
with ``P >= floor`` and ``novelty <= T`` are removed from the written labels (a label holding one is removed: harsher
than the pipeline's term rule, which keeps a rigid compound with a free word) and the bench's figures are recomputed:
template share of labelled images, and images with a content label that end with none.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
import bench_web_labels as B  # noqa: E402
from web_captions import TEMPLATES, build_samples, load_content, write_corpus  # noqa: E402

from configs.labels_schema import load_labels_config  # noqa: E402
from labels import passes, pipeline  # noqa: E402
from labels.text import TermExtractor  # noqa: E402

GRID = [(10, 0.02), (20, 0.02), (10, 0.05), (20, 0.05), (20, 0.1)]


def mine_with_contexts(half: str) -> tuple[list[dict], list[dict], dict[str, int]]:
    """The set's truth, its written images' json and the merged context records of the template statistic."""
    tmp = Path(f"/tmp/context_novelty/{half}")
    samples = build_samples(half, load_content(half, 1200, 160, cache=REPO / "data" / "web_captions_cache"))
    write_corpus(tmp / "corpus", samples)
    records: dict[str, int] = {}
    decide = passes.template_words

    def keep_records(counts, *args, **kwargs):
        records.update(counts)
        return decide(counts, *args, **kwargs)

    passes.template_words = keep_records  # the run's tasks run in this process (run.workers=0)
    try:
        overrides = [f"sources.0.path={tmp / 'corpus'}", f"output={tmp / 'out'}", *B.RUN, "run.workers=0"]
        pipeline.run(load_labels_config(B.PRESET, [*overrides, "vocab.keep_unlabeled=true"]))
    finally:
        passes.template_words = decide
    return [t for _, t in samples], B.written_samples(tmp / "out"), records


def novelty(records: dict[str, int]) -> dict[str, tuple[int, float]]:
    """word -> (P, N1 / P) over its pair records."""
    pairs: dict[str, list[int]] = defaultdict(list)
    for rec, n in records.items():
        word, _, side = rec.partition("\t")
        if side.startswith("="):
            pairs[word].append(n)
    return {w: (sum(c), sum(1 for x in c if x == 1) / sum(c)) for w, c in pairs.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sets", nargs="+", choices=sorted(TEMPLATES), help="caption sets of benchmarks/web_captions.py")
    for half in ap.parse_args().sets:
        truth, metas, records = mine_with_contexts(half)
        nov = novelty(records)
        plain = TermExtractor(max_words=3)
        content = {t["key"]: {x for c in t["content"] for x in plain.terms(c)} for t in truth}
        print(half)
        for floor, thr in GRID:
            pool = {w for w, (p, g) in nov.items() if p >= floor and g <= thr}
            labelled = with_t = has_c = lost = 0
            as_template, as_content = Counter(), Counter()
            for meta in metas:
                key = meta["uids"][0].split(":", 1)[1]
                for x in meta["terms"]:
                    (as_content if x in content[key] else as_template).update(x.split())
                kept = [x for x in meta["terms"] if not set(x.split()) & pool]
                labelled += bool(kept)
                with_t += bool(kept) and any(x not in content[key] for x in kept)
                if content[key] & set(meta["terms"]):
                    has_c += 1
                    lost += not kept
            hit = sorted(((as_content[w], w) for w in pool if as_content[w] >= max(as_template[w], 1)), reverse=True)
            print(
                f"  P >= {floor}, novelty <= {thr}: template share {with_t / max(labelled, 1):.3f}  labelled {labelled}"
                f"  lost-ish {lost}/{has_c} ({lost / max(has_c, 1):.3f})  content words taken: {hit[:8]}",
                flush=True,
            )


if __name__ == "__main__":
    main()
