"""A small web-caption corpus for the label tests: benchmarks/web_captions.py's templates and series around
generated content (drawn images, two-word titles), so that no test renders an SVG."""

from __future__ import annotations

import io
import random
from pathlib import Path

from PIL import Image, ImageDraw

from benchmarks.web_captions import TEMPLATES, Content, build_samples, write_corpus

NOUNS = ["flower", "cat", "house", "car", "tree", "boat", "apple", "bird", "cloud", "guitar", "lamp", "horse"]
ADJECTIVES = ["red", "blue", "small", "old", "happy", "green", "striped", "wooden", "tall", "shiny"]


def drawing(seed: int, size: int = 48) -> bytes:
    """A JPEG of a few random shapes: distinct seeds give distinct perceptual hashes."""
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), (255, 255, 255))
    d = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rng.randrange(size - 8), rng.randrange(size - 8)
        x1, y1 = x0 + rng.randrange(6, size // 2), y0 + rng.randrange(6, size // 2)
        colour = tuple(rng.randrange(256) for _ in range(3))
        (d.rectangle if rng.random() < 0.5 else d.ellipse)([x0, y0, x1, y1], fill=colour)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def contents(n: int, seed: int = 0) -> list[Content]:
    """``n`` drawings titled "<adjective> <noun>" (every noun in many contexts) with keyword lists."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        noun, adj = NOUNS[i % len(NOUNS)], rng.choice(ADJECTIVES)
        title = f"{adj} {noun}" if rng.random() < 0.7 else f"{noun} with {rng.choice(NOUNS)}"
        out.append(Content(f"c{i:04d}", drawing(seed * 100_000 + i), title, [noun, adj]))
    return out


def web_corpus(root: Path, n: int = 240, half: str = "tune", series: int = 30, seed: int = 0) -> list[dict]:
    """img2dataset tars of ``n`` generated drawings wrapped in ``half``'s templates plus a series of ``series``
    near-identical re-saves; returns the truth records (benchmarks/web_captions.py)."""
    pools = {"clipart": contents(n, seed), "topical": [], "stamps": []}
    samples = build_samples(half, pools, series_size=series, seed=seed)
    write_corpus(root, samples, per_tar=100)
    return [t for _, t in samples]


__all__ = ["TEMPLATES", "web_corpus", "contents", "drawing"]
