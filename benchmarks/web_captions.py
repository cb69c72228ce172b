"""A web-caption corpus generator: real clip-art (Debian corpora) wrapped in invented web-caption templates.

    python benchmarks/web_captions.py --half tune --out data/web_tune        # the corpus rules are developed on
    python benchmarks/web_captions.py --half heldout --out data/web_heldout  # the corpus they are measured on

Content comes from the Debian ``openclipart-svg`` drawings (title + keywords, rendered to JPEG) and the
``tuxpaint-stamps-default`` stamps (English description); each image is written as img2dataset writes it:
``{key}.jpg`` + ``{key}.txt`` (the caption) + ``{key}.json`` (``url``, ``uploader``, sometimes a page ``title``
and clean ``tags``). Captions wrap the content in web-caption templates (site suffixes, licence lines, keyword
scaffolds, download/HD/wallpaper wrappers, upload timestamps in several date formats, single-word affixes) that
are assigned per site; sites have different sizes, one is topical (flags), one has plain captions; one
uploader posts a generated series of ~200 near-identical re-saves of one drawing.

The templates are split in two fixed halves (``TEMPLATES["tune"]``, ``TEMPLATES["heldout"]``, documented in
docs/labels.md): label rules are developed on the tune half only; the held-out half, with different words and
formats, is what ``benchmarks/bench_web_labels.py`` reports. The two halves also draw disjoint content (by a
hash of the drawing's path), so no caption of the held-out corpus was seen while tuning.

Next to the tars, ``truth.jsonl`` records per sample its content text (what a clean caption would say), template,
site and whether it belongs to the series: the benchmark's ground truth, never read by the pipeline.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sys
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

OPENCLIPART = "/usr/share/openclipart/svg"
TUXPAINT = "/usr/share/tuxpaint/stamps"
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = "January February March April May June July August September October November December".split()


@dataclass
class Content:
    """One drawing: its image bytes (JPEG) and what a clean caption would say about it."""

    uid: str
    jpg: bytes
    title: str
    keywords: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Template:
    """A caption template: ``make(content, rng, uploader)`` -> (caption, json extras)."""

    name: str
    kind: str  # what it stands for: site suffix, licence line, keyword scaffold, wrapper, timestamp, affix
    make: Callable[[Content, random.Random, str], tuple[str, dict]]


def _kws(c: Content, rng: random.Random, sep: str = ", ") -> str:
    kws = c.keywords or c.title.lower().split()
    return sep.join(kws[: rng.randint(2, 5)])


def _date(rng: random.Random) -> dict:
    y, m, d = rng.randint(2012, 2024), rng.randint(1, 12), rng.randint(1, 28)
    hh, mm, ss = rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59)
    import datetime

    wd = datetime.date(y, m, d).weekday()
    return {
        "y": y,
        "m": m,
        "d": d,
        "hh": hh,
        "mm": mm,
        "ss": ss,
        "weekday": WEEKDAYS[wd],
        "wd3": WEEKDAYS[wd][:3],
        "month": MONTHS[m - 1],
        "mon3": MONTHS[m - 1][:3],
        "h12": (hh % 12) or 12,
        "ampm": "AM" if hh < 12 else "PM",
    }


def _t(fmt: Callable[[Content, random.Random, str], str], extras: Callable[[Content], dict] | None = None):
    return lambda c, rng, up: (fmt(c, rng, up), extras(c) if extras else {})


def _tags(c: Content) -> dict:
    return {"tags": list(c.keywords)} if c.keywords else {}


# Tune half: the rules were developed on captions made with these.
TUNE = [
    Template(
        "t1_site_download",
        "site suffix + download wrapper",
        _t(lambda c, r, u: f"{c.title} - Free Download PNG | ClipHub"),
    ),
    Template(
        "t2_licence",
        "licence line",
        _t(lambda c, r, u: f"{c.title}. Licensed under Creative Commons Attribution 4.0 - free for commercial use"),
    ),
    Template(
        "t3_keywords", "keyword scaffold", _t(lambda c, r, u: f"keywords - {_kws(c, r)}", lambda c: {"title": c.title})
    ),
    Template(
        "t4_hd_wallpaper",
        "HD/wallpaper wrapper",
        _t(lambda c, r, u: f"{c.title} HD Wallpaper {r.choice(['1920x1080', '2560x1440', '1280x720'])} download"),
    ),
    Template(
        "t5_uploaded_on",
        "timestamp (weekday, month day, year at h:mm AM)",
        _t(
            lambda c, r, u: (
                lambda d: (
                    f"{c.title} :: uploaded on {d['weekday']}, {d['month']} {d['d']}, {d['y']} at "
                    f"{d['h12']}:{d['mm']:02d} {d['ampm']}"
                )
            )(_date(r)),
            _tags,
        ),
    ),
    Template(
        "t6_posted_iso",
        "timestamp (ISO 8601) + uploader",
        _t(
            lambda c, r, u: (
                lambda d: (
                    f"{c.title} — posted {d['y']}-{d['m']:02d}-{d['d']:02d}T{d['hh']:02d}:{d['mm']:02d}:"
                    f"{d['ss']:02d}Z by {u}"
                )
            )(_date(r))
        ),
    ),
    Template("t7_sticker", "single-word affix", _t(lambda c, r, u: f"Sticker: {c.title}")),
]
TUNE_SERIES = Template(
    "t_series", "generated series", _t(lambda c, r, u: f"{c.title} variation #{r.randint(1, 999):03d} by {u}")
)

# Held-out half: different words and formats; never looked at while the rules were written.
HELDOUT = [
    Template(
        "h1_vector_download",
        "download wrapper + site suffix",
        _t(lambda c, r, u: f"Download {c.title} vector art for free – VectorHut"),
    ),
    Template(
        "h2_copyright",
        "licence line",
        _t(lambda c, r, u: f"© {r.randint(2010, 2024)} PixelBay. All rights reserved. {c.title}"),
    ),
    Template("h3_related", "keyword scaffold", _t(lambda c, r, u: f"{c.title} | related searches: {_kws(c, r)}")),
    Template(
        "h4_desktop_bg", "HD/wallpaper wrapper", _t(lambda c, r, u: f"{c.title} (4K Ultra HD desktop background)")
    ),
    Template(
        "h5_published",
        "timestamp (dd/mm/yyyy HH:MM, weekday day month year)",
        _t(
            lambda c, r, u: (
                lambda d: (
                    f"{c.title}, published {d['d']:02d}/{d['m']:02d}/{d['y']} {d['hh']:02d}:{d['mm']:02d} "
                    f"({d['wd3']} {d['d']} {d['mon3']} {d['y']})"
                )
            )(_date(r)),
            _tags,
        ),
    ),
    Template(
        "h6_added_gmt",
        "timestamp (RFC 1123) + uploader",
        _t(
            lambda c, r, u: (
                lambda d: (
                    f"{c.title} · added {d['wd3']}, {d['d']} {d['mon3']} {d['y']} {d['hh']:02d}:{d['mm']:02d}:"
                    f"{d['ss']:02d} GMT by {u}"
                )
            )(_date(r))
        ),
    ),
    Template("h7_poster", "single-word affix", _t(lambda c, r, u: f"{c.title} | Poster")),
]
HELDOUT_SERIES = Template(
    "h_series", "generated series", _t(lambda c, r, u: f"{c.title} remix {r.randint(1, 999)} (copy) - {u}")
)
TEMPLATES = {"tune": (TUNE, TUNE_SERIES), "heldout": (HELDOUT, HELDOUT_SERIES)}
PLAIN = Template("plain", "no template (the clean title)", _t(lambda c, r, u: c.title))

# Sites: (domain, share of the content, template indices into the half's list; None: plain captions).
SITES = [
    ("cliphub.example", 0.26, [0, 1]),
    ("pixelbay.example", 0.16, [2]),
    ("vectorhut.example", 0.13, [3, 4]),
    ("wallz.example", 0.10, [5]),
    ("stampbox.example", 0.12, [6]),  # Tux Paint stamps
    ("flagshelf.example", 0.09, [0, 4]),  # topical: flags
    ("plain.example", 0.14, [None]),
]
SERIES_SITE, SERIES_UPLOADER, SERIES_SIZE = "cliphub.example", "artbot3000", 213


def _half_of(uid: str) -> str:
    return "tune" if hashlib.sha1(uid.encode()).digest()[0] % 2 == 0 else "heldout"


def load_content(half: str, n_clipart: int, n_stamps: int, short_side: int = 96, cache: Path | None = None) -> dict:
    """Drawings for ``half`` (disjoint between halves): ``{"clipart": [...], "topical": [...], "stamps": [...]}``.

    OpenClipArt SVGs (under 150 kB, with a title) are rendered to JPEG with the pipeline's renderer; rendered bytes
    are cached under ``cache`` (keyed by path and size) so that reruns take seconds.
    """
    from labels.images import encode_jpeg, render_svg, to_rgb
    from labels.sources.openclipart import iter_openclipart
    from labels.sources.tuxpaint import iter_tuxpaint

    def jpeg_of(path: str, data: bytes | None, svg: bool) -> bytes | None:
        tag = hashlib.sha1(f"{path}:{short_side}".encode()).hexdigest()[:16]
        cached = cache / f"{tag}.jpg" if cache else None
        if cached is not None and cached.exists():
            return cached.read_bytes()
        try:
            if svg:
                im = to_rgb(render_svg(data, short_side))
            else:
                from PIL import Image

                with Image.open(path) as src:
                    im = to_rgb(src)
                    im.thumbnail((short_side * 2, short_side * 2))
            out = encode_jpeg(im, 90)
        except Exception:  # a drawing the renderer refuses: not part of the corpus
            return None
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_bytes(out)
        return out

    rng = random.Random(f"content:{half}")
    units = [u for u in iter_openclipart(OPENCLIPART) if u.skip is None and u.signals.get("title")]
    units = [u for u in units if _half_of(u.uid) == half and len(u.data) < 150_000]
    # Openclipart's own series (1,375 gramastars, the lemon icon theme) are left out: the corpus's one series is
    # the generated one, so that the benchmark can tell it apart.
    units = [u for u in units if u.signals["title"][0].lower() != "gramastar" and "lemon-theme" not in u.uid]
    # The topical site: flags (the site is about them; "flag" must stay a label there).
    topical = [u for u in units if u.uid.startswith("signs_and_symbols/flags/")]
    other = [u for u in units if not u.uid.startswith(("computer/", "signs_and_symbols/flags/"))]
    rng.shuffle(topical)
    rng.shuffle(other)
    out: dict[str, list[Content]] = {"clipart": [], "topical": [], "stamps": []}
    n_topical = n_clipart // 8
    for name, pool, n in (("topical", topical, n_topical), ("clipart", other, n_clipart - n_topical)):
        for u in pool:
            if len(out[name]) >= n:
                break
            jpg = jpeg_of(os.path.join(OPENCLIPART, u.uid), u.data, True)
            if jpg is None:
                continue
            kws = [k.replace("_", " ") for k in u.signals.get("keywords", []) if k.strip()]
            out[name].append(Content(u.uid, jpg, u.signals["title"][0], kws))
    stamps = [u for u in iter_tuxpaint(TUXPAINT) if u.skip is None and u.signals.get("description")]
    stamps = [u for u in stamps if _half_of(u.uid) == half and u.ext == "png"]
    rng.shuffle(stamps)
    for u in stamps[:n_stamps]:
        jpg = jpeg_of(u.path, None, False)
        if jpg is not None:
            title = u.signals["description"][0].rstrip(".")
            out["stamps"].append(Content(u.uid, jpg, title, []))
    return out


def resave(jpg: bytes, rng: random.Random) -> bytes:
    """A near-identical copy: rescaled by up to 8%, brightness within 4%, re-encoded at quality 60-95."""
    from PIL import Image, ImageEnhance

    with Image.open(io.BytesIO(jpg)) as im:
        w, h = im.size
        s = rng.uniform(0.92, 1.08)
        im2 = im.convert("RGB").resize((max(8, round(w * s)), max(8, round(h * s))))
    im2 = ImageEnhance.Brightness(im2).enhance(rng.uniform(0.96, 1.04))
    buf = io.BytesIO()
    im2.save(buf, format="JPEG", quality=rng.randint(60, 95))
    return buf.getvalue()


def build_samples(
    half: str, pools: dict[str, list[Content]], series_size: int = SERIES_SIZE, seed: int = 0
) -> list[tuple[dict, dict]]:
    """``(sample, truth)`` pairs: ``sample`` as ``tests.fixtures_labels.write_tar`` takes it (``__key__``, ``jpg``,
    ``txt``, ``json``), ``truth`` the ground truth (``content``: the clean texts, ``shown``: the caption and json
    texts the content was put in, ``template``, ``site``, ``series``).

    Sites take content in proportion to their share: the topical (flag) site takes ``pools["topical"]``, the stamp site
    ``pools["stamps"]``, the others the clip-art pool; the series is ``series_size`` re-saves of one clip-art drawing
    by one uploader on ``SERIES_SITE``.
    """
    rng = random.Random(f"{seed}:{half}")
    templates, series_t = TEMPLATES[half]
    clipart = list(pools["clipart"])
    series_src = clipart.pop(0) if series_size else None
    general = [s for s in SITES if s[0] not in ("flagshelf.example", "stampbox.example")]
    total = sum(s[1] for s in general)
    assigned: list[tuple[str, list, Content]] = []
    start = 0
    for i, (site, share, tids) in enumerate(general):
        n = len(clipart) - start if i == len(general) - 1 else round(len(clipart) * share / total)
        assigned += [(site, tids, c) for c in clipart[start : start + n]]
        start += n
    by_site = {s[0]: s for s in SITES}
    assigned += [("flagshelf.example", by_site["flagshelf.example"][2], c) for c in pools["topical"]]
    assigned += [("stampbox.example", by_site["stampbox.example"][2], c) for c in pools["stamps"]]
    uploaders = [f"user{i:03d}" for i in range(40)]
    out = []
    for site, tids, c in assigned:
        tid = rng.choice(tids)
        t = PLAIN if tid is None else templates[tid]
        up = rng.choice(uploaders)
        caption, extras = t.make(c, rng, up)
        out.append((site, t.name, up, c, c.jpg, caption, extras, False))
    if series_src is not None:
        for _ in range(series_size):
            caption, extras = series_t.make(series_src, rng, SERIES_UPLOADER)
            jpg = resave(series_src.jpg, rng)
            out.append((SERIES_SITE, series_t.name, SERIES_UPLOADER, series_src, jpg, caption, extras, True))
    rng.shuffle(out)
    samples = []
    for i, (site, tname, up, c, jpg, caption, extras, series) in enumerate(out):
        key = f"{i:09d}"
        sample_text = "\n".join([caption, extras.get("title", ""), *extras.get("tags", [])])
        meta = {"url": f"https://{site}/img/{hashlib.sha1(jpg).hexdigest()[:12]}.jpg", "uploader": up, **extras}
        samples.append(
            (
                {"__key__": key, "jpg": jpg, "txt": caption, "json": meta},
                {
                    "key": key,
                    "uid": c.uid,
                    "content": [c.title, *c.keywords],
                    "shown": [sample_text],
                    "template": tname,
                    "site": site,
                    "series": series,
                },
            )
        )
    return samples


def write_corpus(out: Path, samples: Sequence[tuple[dict, dict]], per_tar: int = 500) -> None:
    """img2dataset-style tars (``00000.tar`` ...) of ``per_tar`` samples, and ``truth.jsonl`` beside the folder."""
    out.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(samples), per_tar):
        with tarfile.open(out / f"{i // per_tar:05d}.tar", "w") as tf:
            for sample, _ in samples[i : i + per_tar]:
                for ext in ("jpg", "json", "txt"):
                    value = sample[ext]
                    data = json.dumps(value).encode() if ext == "json" else value if ext == "jpg" else value.encode()
                    info = tarfile.TarInfo(f"{sample['__key__']}.{ext}")
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    with open(out.parent / f"{out.name}.truth.jsonl", "w", encoding="utf-8") as f:
        for _, truth in samples:
            f.write(json.dumps(truth, ensure_ascii=False) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--half", choices=["tune", "heldout"], required=True)
    ap.add_argument("--out", type=Path, required=True, help="folder of tars; truth in <out>.truth.jsonl")
    ap.add_argument("--clipart", type=int, default=1200, help="Open Clip Art drawings")
    ap.add_argument("--stamps", type=int, default=160, help="Tux Paint stamps")
    ap.add_argument("--series", type=int, default=SERIES_SIZE, help="re-saves in the generated series")
    ap.add_argument("--cache", type=Path, default=REPO / "data" / "web_captions_cache")
    args = ap.parse_args()
    pools = load_content(args.half, args.clipart, args.stamps, cache=args.cache)
    samples = build_samples(args.half, pools, args.series)
    write_corpus(args.out, samples)
    print(f"{len(samples)} samples ({args.half} templates) -> {args.out}")


if __name__ == "__main__":
    main()
