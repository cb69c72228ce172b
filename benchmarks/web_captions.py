"""A web-caption corpus generator: real clip-art (Debian corpora) wrapped in invented web-caption templates.

    python benchmarks/web_captions.py --half tune --out data/web_tune        # the corpus rules are developed on
    python benchmarks/web_captions.py --half heldout --out data/web_heldout  # the corpus they are measured on
    python benchmarks/web_captions.py --half fresh --out data/web_fresh      # written after the rules were final
    python benchmarks/web_captions.py --half blind --out data/web_blind      # a fourth set, written blind to the rules
    python benchmarks/web_captions.py --half blind5 --out data/web_blind5    # a fifth set, also written blind
    python benchmarks/web_captions.py --half blind6 --out data/web_blind6    # a sixth set, also written blind

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

A third set, ``TEMPLATES["fresh"]`` (12 templates and a series, with its own sites ``FRESH_SITES`` and uploaders),
was written by someone who had not read the label rules, after the rules had been adjusted on both halves above:
it is the one set nobody tuning the rules has seen. There is no third content pool, so it draws from the held-out
hash half, taking the held-out corpus's shuffled lists from the other end (with the default sizes, 227 of its 1,360
drawings are also in the held-out corpus).

A fourth set, ``TEMPLATES["blind"]`` (14 templates and a series, its own sites ``BLIND_SITES`` and uploaders), was
written by an evaluator who read neither the label rules nor their docs, tests or results, in caption styles the
three sets above do not use (shop-title scaffolds, SKUs and prices, breadcrumbs, attribution lines, bare file names,
non-English boilerplate and dates, all-caps spam, ratings, navigation lists, CDN URLs, screenshot names, forum
furniture, print-on-demand titles with junk tags). It takes the tune pool from the other end (``CONTENT_HALF``):
with the default sizes it shares no drawing with the held-out and fresh corpora, and 209 of 1,360 with the tune one.

A fifth set, ``TEMPLATES["blind5"]`` (14 templates and a series, its own sites ``BLIND5_SITES`` and uploaders), was
written by another evaluator blind to the rules, their docs, tests and results, in caption styles the four sets above
do not use (news-wire photo credits, museum/archive records, recipe steps, real-estate listings, app-store screenshot
captions, academic figure captions, auto-generated alt text, template-engine leftovers such as ``{{product_name}}``,
``undefined`` and ``[object Object]``, emoji-heavy social captions, listicles, Italian/Portuguese/Dutch/Polish
boilerplate, mixed-case cut-file SEO titles, Pinterest pin lines, watermark text; a "Day N of 365" series with a
Roman-numeral counter). It is wired as the blind set is, taking the tune pool from the other end, so with the default
sizes it draws the same drawings as the blind corpus: only the captions differ.

A sixth set, ``TEMPLATES["blind6"]`` (14 templates and a series, its own sites ``BLIND6_SITES`` and uploaders), was
written by a third evaluator blind to the rules, their docs, tests and results, in caption styles the five sets above
do not use (wedding/event photography credits, print-shop ordering text, die-cut sticker specs, school worksheet
listings, tattoo flash sheets, knitting/embroidery pattern shops, parish/school newsletters, device-named wallpaper
resolution lists, mockup-generator credits, NFT token listings, greeting-card specs, Swedish/Norwegian/Turkish/Japanese
romaji boilerplate and dates, volunteer image descriptions, a stock site appending one of 12 rotating promotional
phrases; a batch-render series stamped "14-May-23 2:22p"). It takes the held-out pool from the other end, as the fresh
set does, so it draws the fresh corpus's drawings and none of the blind and blind-5 corpora's.

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


def _ago(r: random.Random) -> str:
    n, unit = r.randint(1, 11), r.choice(["minute", "hour", "day", "week", "month", "year"])
    return f"{n} {unit}{'s' if n > 1 else ''} ago"


def _views(r: random.Random) -> str:
    n = r.randint(3, 250_000)
    return f"{n / 1000:.1f}k" if n >= 1000 else str(n)


def _hashtags(c: Content, r: random.Random) -> str:
    own = ["#" + "".join(k.split()).lower() for k in (c.keywords or c.title.split())[: r.randint(1, 3)]]
    generic = r.sample(
        ["#vectorart", "#freebie", "#illustrationoftheday", "#instaart", "#digitalart", "#artoftheday"], 2
    )
    return " ".join(own + generic)


# Fresh half: written after the rules were final, by someone who had not seen them; used only to report figures.
FRESH = [
    Template(
        "f1_stock_id",
        "stock-site ID + UPPERCASE site suffix",
        _t(
            lambda c, r, u: (
                f"{c.title} - {r.choice(['stock illustration', 'stock vector'])} ID "
                f"{r.randint(100_000, 999_999_999)} | STOCKWAVE"
            )
        ),
    ),
    Template(
        "f2_site_colon",
        "site-name prefix with colon (mixed case, domain)",
        _t(lambda c, r, u: f"ArtVault.net: {c.title}"),
    ),
    Template(
        "f3_free_vector",
        "download wrapper (Free vector ...) + mixed-case site suffix",
        _t(lambda c, r, u: f"Free vector {c.title} | ClipArtBEST"),
    ),
    Template(
        "f4_png_transparent",
        "format/background scaffold + pixel size",
        _t(
            lambda c, r, u: (
                f"{c.title} Clipart PNG Image - Transparent Background, "
                f"{r.choice([512, 800, 1024, 2400])}x{r.choice([512, 600, 768, 1600])}px"
            )
        ),
    ),
    Template(
        "f5_by_on", "uploader + site (by <uploader> on <site>)", _t(lambda c, r, u: f"{c.title} by {u} on Doodleverse")
    ),
    Template(
        "f6_image_result",
        "search-result scrape (keywords) + json page title with site suffix",
        _t(lambda c, r, u: f"Image result for {_kws(c, r, ' ')}", lambda c: {"title": f"{c.title} | ClipArtBEST"}),
    ),
    Template(
        "f7_4k_wallpaper",
        "4k wallpaper wrapper + resolution",
        _t(lambda c, r, u: f"{c.title} - 4k HD wallpaper - {r.choice(['3840x2160', '2560x1600', '5120x2880'])}"),
    ),
    Template(
        "f8_royalty_free",
        "licence line (royalty free, CC0)",
        _t(lambda c, r, u: f"Royalty free {c.title} - CC0 Public Domain, no attribution required"),
    ),
    Template(
        "f9_relative_time",
        "timestamp (relative: 3 days ago) + view count",
        _t(lambda c, r, u: f"{c.title} • {_ago(r)} • {_views(r)} views"),
    ),
    Template(
        "f10_dotted_date",
        "timestamp (dd.mm.yyyy, HH:MM) + camera file name",
        _t(
            lambda c, r, u: (
                lambda d: (
                    f"{c.title} · {d['d']:02d}.{d['m']:02d}.{d['y']}, {d['hh']:02d}:{d['mm']:02d} · "
                    f"DSC_{r.randint(1, 9999):04d}.JPG"
                )
            )(_date(r)),
            _tags,
        ),
    ),
    Template(
        "f11_hashtags",
        "emoji + hashtags (own and generic)",
        _t(lambda c, r, u: f"{c.title} {r.choice(['✨', '🎨', '🔥', '😍'])} {_hashtags(c, r)}"),
    ),
    Template(
        "f12_glued",
        "site name glued to the content (scraped spans without a separator)",
        _t(lambda c, r, u: f"{c.title}Clipart Look"),
    ),
]
FRESH_SERIES = Template(
    "f_series",
    "generated series (re-saved file names)",
    _t(lambda c, r, u: f"[{u}] {c.title} edit_{r.randint(1, 9999):04d} final.jpg"),
)
# Blind half: a fourth set, written by an evaluator who never read the label rules, their docs, tests or results,
# nor the discussion. It covers caption styles none of the sets above use: shop-title scaffolds (pack
# counts, sizes, colour lists, shipping, SKU/model codes, prices), breadcrumbs, attribution lines with licence
# abbreviations and URLs, bare file names, non-English download/licence boilerplate and dates, all-caps SEO spam,
# star ratings, "Related:/See also" navigation lists, CDN URLs with query strings, phone/screenshot file names,
# forum/social post furniture and print-on-demand product titles with junk json tags.
_COLOURS = ["Black", "White", "Red", "Navy", "Olive", "Mustard", "Heather Grey", "Pink"]
_SIZES = ["S/M/L", "S, M, L, XL", "Small / Medium / Large", "XS-XXL", "One Size"]
_NAV = ["Coloring Pages", "Frames & Borders", "Backgrounds", "Fonts", "Greeting Cards", "Mockups", "Logos", "Icons"]
_JUNK_TAGS = ["gift idea", "trendy", "aesthetic", "cute gift", "bestseller", "for him", "for her", "vintage retro"]
_BADGES = ["Bestseller", "Star Seller", "Editor's Pick"]
_MONTHS_FR = "janvier février mars avril mai juin juillet août septembre octobre novembre décembre".split()
_MONTHS_DE = "Januar Februar März April Mai Juni Juli August September Oktober November Dezember".split()
_MONTHS_ES = "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre".split()


def _price(r: random.Random) -> str:
    cents = r.choice(["99", "95", "49", "00"])
    return r.choice(
        [
            f"${r.randint(2, 49)}.{cents} USD",
            f"€{r.randint(2, 49)},{cents} inkl. MwSt.",
            f"£{r.randint(2, 49)}.{cents}",
            f"US ${r.randint(2, 49)}.{cents} – {r.randint(10, 70)}% OFF",
        ]
    )


def _slug(c: Content, r: random.Random) -> str:
    sep = r.choice(["_", "-"])
    base = sep.join(c.title.lower().split())
    suffix = r.choice(["_final_v2", "-icon", "_copy", "-01", "_hires", " (1)", "-min", "_export"])
    return f"{base}{suffix}.{r.choice(['svg', 'png', 'eps', 'ai', 'webp'])}"


def _foreign_download(c: Content, r: random.Random) -> str:
    return r.choice(
        [
            f"{c.title} - descargar gratis en alta calidad | Imágenes Gratis",
            f"Télécharger {c.title} gratuitement – dessin vectoriel libre de droits",
            f"{c.title} kostenlos herunterladen – lizenzfreie Vektorgrafik",
        ]
    )


def _foreign_date(c: Content, r: random.Random) -> str:
    d = _date(r)
    return r.choice(
        [
            f"{c.title} — publié le {d['d']} {_MONTHS_FR[d['m'] - 1]} {d['y']} à {d['hh']}h{d['mm']:02d}",
            f"{c.title} (hochgeladen am {d['d']}. {_MONTHS_DE[d['m'] - 1]} {d['y']}, {d['hh']:02d}:{d['mm']:02d} Uhr)",
            f"{c.title}, subido el {d['d']} de {_MONTHS_ES[d['m'] - 1]} de {d['y']}",
        ]
    )


def _device_file(r: random.Random) -> str:
    d = _date(r)
    return r.choice(
        [
            f"Screenshot {d['y']}-{d['m']:02d}-{d['d']:02d} at {d['hh']:02d}.{d['mm']:02d}.{d['ss']:02d}",
            f"Screen Shot {d['y']}-{d['m']:02d}-{d['d']:02d} at {d['h12']}.{d['mm']:02d}.{d['ss']:02d} {d['ampm']}",
            f"IMG_{d['y']}{d['m']:02d}{d['d']:02d}_{d['hh']:02d}{d['mm']:02d}{d['ss']:02d}.jpg",
            f"WhatsApp Image {d['y']}-{d['m']:02d}-{d['d']:02d} at {d['h12']}.{d['mm']:02d}.{d['ss']:02d} {d['ampm']}",
            f"IMG_{r.randint(1, 9999):04d}.JPG",
        ]
    )


def _hex(r: random.Random, n: int) -> str:
    return "".join(r.choice("0123456789abcdef") for _ in range(n))


BLIND = [
    Template(
        "b1_shop_title",
        "e-commerce title scaffold: Buy ... (Pack of N) – sizes – colour list | Free Shipping | shop",
        _t(
            lambda c, r, u: (
                f"Buy {c.title} Vinyl Decal (Pack of {r.choice([2, 3, 5, 10])}) – {r.choice(_SIZES)} – "
                f"{', '.join(r.sample(_COLOURS, r.randint(2, 4)))} | Free Shipping | ShopNest"
            )
        ),
    ),
    Template(
        "b2_sku_price",
        "SKU/model code + price and currency + stock note",
        _t(
            lambda c, r, u: (
                f"{c.title} | SKU {r.choice(['SN', 'TR', 'XK', 'MD'])}-{r.randint(10000, 99999)}-"
                f"{r.choice(['BLK', 'WHT', 'RED', 'NVY'])} | Model No. {r.choice('ABCDEFGH')}{r.randint(100, 999)} | "
                f"{_price(r)} | {r.choice(['In stock', 'Only 3 left', 'Sold out', 'Pre-order'])}"
            ),
            _tags,
        ),
    ),
    Template(
        "b3_breadcrumb",
        "breadcrumb / pagination path before the title",
        _t(
            lambda c, r, u: (lambda sep: f"Home{sep}Gallery{sep}Clip Art{sep}Page {r.randint(2, 480)}{sep}{c.title}")(
                r.choice([" > ", " » ", " / ", " › "])
            )
        ),
    ),
    Template(
        "b4_attribution",
        "attribution line (Photo by X on Y) + licence abbreviation + licence URL",
        _t(
            lambda c, r, u: (
                lambda lic: (
                    f"{c.title}. Photo by {u} on MediaCommons, {lic[0]} "
                    f"(https://creativecommons.org/licenses/{lic[1]}/)"
                )
            )(r.choice([("CC BY-SA 4.0", "by-sa/4.0"), ("CC BY-NC 3.0", "by-nc/3.0"), ("CC BY-ND 2.0", "by-nd/2.0")]))
        ),
    ),
    Template(
        "b5_filename",
        "bare file name: underscores/hyphens, version suffix, extension",
        _t(lambda c, r, u: _slug(c, r)),
    ),
    Template(
        "b6_foreign_download",
        "non-English download/licence boilerplate (es, fr, de)",
        _t(lambda c, r, u: _foreign_download(c, r)),
    ),
    Template(
        "b7_caps_spam",
        "ALL-CAPS SEO spam around an upper-cased title",
        _t(
            lambda c, r, u: (
                f"★ {c.title.upper()} ★ 100% FREE ★ NO SIGN UP ★ BEST QUALITY {r.randint(2019, 2025)} ★ "
                f"{r.choice(['NEW!!!', 'HOT!!', 'TRENDING NOW!!!', 'MUST SEE!!'])}"
            )
        ),
    ),
    Template(
        "b8_rating",
        "star rating, review count, bestseller badge, shipping time",
        _t(
            lambda c, r, u: (
                lambda s: (
                    f"{c.title} – {'★' * int(s)}{'☆' * (5 - int(s))} {s} out of 5 stars ({r.randint(3, 9999):,}) – "
                    f"{r.choice(_BADGES)} – ships in 1-3 business days"
                )
            )(r.choice([3.5, 4.0, 4.5, 4.6, 4.8, 5.0]))
        ),
    ),
    Template(
        "b9_see_also",
        "'Related:' and 'See also' navigation lists after the title",
        _t(
            lambda c, r, u: (lambda nav: f"{c.title}. Related: {', '.join(nav[:3])}. See also: {', '.join(nav[3:])}")(
                r.sample(_NAV, 5)
            ),
            _tags,
        ),
    ),
    Template(
        "b10_cdn_url",
        "CDN URL fragment with query-string junk after the title",
        _t(
            lambda c, r, u: (
                f"{c.title} https://i.pincdn.example/{r.choice(['236x', '474x', '736x', 'originals'])}/"
                f"{_hex(r, 2)}/{_hex(r, 2)}/{_hex(r, 2)}/{_hex(r, 32)}.jpg?utm_source=pinterest&utm_medium=social"
                f"&utm_campaign=board_{r.randint(1, 99999)}&w={r.choice([236, 474, 736])}&q=80"
            )
        ),
    ),
    Template(
        "b11_device_file",
        "phone/screenshot file name (Screenshot ... at 10.22.31, IMG_..., WhatsApp Image ...) before the title",
        _t(lambda c, r, u: f"{_device_file(r)} - {c.title}"),
    ),
    Template(
        "b12_forum_post",
        "forum/social post furniture (Re:, page, board, points, comments)",
        _t(
            lambda c, r, u: r.choice(
                [
                    f"Re: {c.title} - Page {r.randint(2, 40)} - Show Your Work - DoodleBoard Forums",
                    f"[SOLVED] {c.title} (reply #{r.randint(2, 300)}) :: DoodleBoard Community",
                    f"u/{u} · r/ClipArtShare · {r.randint(1, 9000)} points · {r.randint(0, 800)} comments — {c.title}",
                ]
            )
        ),
    ),
    Template(
        "b13_pod_product",
        "print-on-demand product title + json page title (by uploader | site) + junk json tags",
        lambda c, r, u: (
            f"{c.title} | Essential T-Shirt, Mug, Tote Bag & Phone Case",
            {
                "title": f"{c.title} by {u} | TeeRiffic",
                "tags": [*c.keywords, *r.sample(_JUNK_TAGS, 3)],
            },
        ),
    ),
    Template(
        "b14_foreign_date",
        "timestamp in French/German/Spanish words (publié le, hochgeladen am, subido el)",
        _t(lambda c, r, u: _foreign_date(c, r)),
    ),
]
BLIND_SERIES = Template(
    "b_series",
    "generated series (print-on-demand variants: colour / size / design number)",
    _t(
        lambda c, r, u: (
            f"{c.title} Unisex Tee – {r.choice(_COLOURS)} / {r.choice(['S', 'M', 'L', 'XL', '2XL'])} – "
            f"Design #{r.randint(1, 99999):05d} | {u}"
        )
    ),
)
# Blind-5 half: a fifth set, written by an evaluator who never read the label rules, their docs, tests or results,
# nor the discussion. Caption styles none of the four sets above use: news-wire photo credits, museum/archive
# records, recipe step captions, real-estate listing scaffolds, app-store screenshot captions, academic figure
# captions, auto-generated alt text, template-engine leftovers, emoji-heavy social captions, numbered listicles,
# Italian/Portuguese/Dutch/Polish boilerplate and dates, cut-file SEO titles in mixed case, Pinterest pin lines and
# watermark text; the series is a "Day N of 365" doodle challenge re-uploaded with a Roman-numeral counter.
_PHOTOGS = ["Dado Ruvic", "Jane Holloway", "Marek Nowicki", "Priya Raman", "Tom Okafor", "Lucia Ferreira"]
_DONORS = [
    "Mr. and Mrs. Harold Whitcombe",
    "the Estate of Edith Marlowe",
    "Dr. Anselm Krüger",
    "Friends of the Library",
]
_JOURNALS = ["J. Appl. Vis.", "Proc. Graph. Soc.", "Annals of Illustration", "Int. J. Design Stud."]
_BOARDS = ["Kids Crafts", "Teaching Ideas", "Bullet Journal Doodles", "Party Printables", "Classroom Decor", "DIY Home"]
_MONTHS_IT = "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre dicembre".split()
_MONTHS_PT = "janeiro fevereiro março abril maio junho julho agosto setembro outubro novembro dezembro".split()
_MONTHS_NL = "januari februari maart april mei juni juli augustus september oktober november december".split()
_MONTHS_PL = (
    "stycznia lutego marca kwietnia maja czerwca lipca sierpnia września października listopada grudnia".split()
)


def _roman(n: int) -> str:
    out = ""
    for v, s in ((1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"), (40, "XL")):
        while n >= v:
            out, n = out + s, n - v
    for v, s in ((10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")):
        while n >= v:
            out, n = out + s, n - v
    return out


def _news(c: Content, r: random.Random) -> str:
    d, p = _date(r), r.choice(_PHOTOGS)
    return r.choice(
        [
            f"FILE PHOTO: {c.title} is seen in this illustration taken {d['month']} {d['d']}, {d['y']}. "
            f"REUTERS/{p}/Illustration/File Photo",
            f"{c.title}. Credit: Getty Images / iStockphoto",
            f"{c.title} (AP Photo/{p}, File)",
            f"{c.title}. Photograph: {p}/The Daily Ledger",
        ]
    )


def _museum(c: Content, r: random.Random) -> str:
    y = r.randint(1890, 2015)
    return r.choice(
        [
            f"{c.title}. Accession no. {y}.{r.randint(1, 99)}.{r.randint(1, 40)}. Gift of {r.choice(_DONORS)}, {y}. "
            "Public domain, via Wikimedia Commons",
            f"{c.title} | Object number RP-T-{y}-{r.randint(1, 999)} | Bequest of {r.choice(_DONORS)} | "
            "CC0 1.0 Universal Public Domain Dedication",
            f"{c.title}; catalogue raisonné no. {r.randint(1, 900)}; medium: pen and ink on paper; "
            f"dimensions: {r.randint(10, 60)} x {r.randint(10, 60)} cm",
        ]
    )


def _multilingual(c: Content, r: random.Random) -> str:
    d = _date(r)
    day, m, y = d["d"], d["m"] - 1, d["y"]
    return r.choice(
        [
            f"{c.title} – scarica gratis, immagine vettoriale senza diritti d'autore (caricato il {day} "
            f"{_MONTHS_IT[m]} {y})",
            f"{c.title} | baixar grátis – imagem vetorial livre de direitos, publicado em {day} de {_MONTHS_PT[m]} "
            f"de {y}",
            f"{c.title} gratis downloaden – rechtenvrije vectorafbeelding, geplaatst op {day} {_MONTHS_NL[m]} {y}",
            f"{c.title} – pobierz za darmo, grafika wektorowa bez tantiem, dodano {day} {_MONTHS_PL[m]} {y}",
        ]
    )


def _leftovers(c: Content, r: random.Random) -> tuple[str, dict]:
    caption = r.choice(
        [
            f"{c.title} - {{{{product_name}}}} | {{{{store_name}}}}",
            f"undefined - {c.title} - undefined",
            f"{c.title} [object Object] N/A",
            f"null | {c.title} | Price: NaN | Color: N/A",
        ]
    )
    return caption, {"title": r.choice(["undefined", "null", "%TITLE% - %SITENAME%", "${page.title}"])}


def _mixed_case(s: str, r: random.Random) -> str:
    return "".join(ch.upper() if i % 2 else ch.lower() for i, ch in enumerate(s)) if r.random() < 0.5 else s.title()


BLIND5 = [
    Template(
        "k1_news_credit",
        "news-wire photo credit (FILE PHOTO ... REUTERS/name, AP Photo/name, Credit: Getty Images / iStockphoto)",
        _t(lambda c, r, u: _news(c, r)),
    ),
    Template(
        "k2_museum_record",
        "museum/archive record (accession no., gift/bequest of, public domain via Wikimedia, medium, dimensions)",
        _t(lambda c, r, u: _museum(c, r)),
    ),
    Template(
        "k3_recipe_step",
        "recipe/blog alt text (Easy ... recipe step 3 of 8, prep time, serves, jump to recipe)",
        _t(
            lambda c, r, u: (
                lambda k, n: r.choice(
                    [
                        f"Easy {c.title} recipe – step {k} of {n} | Prep {r.choice([5, 10, 15, 20, 30])} mins · "
                        f"Serves {r.randint(2, 8)}",
                        f"{c.title} (step-by-step photo {k}/{n}) – Jump to Recipe · Print Recipe",
                    ]
                )
            )(r.randint(1, 6), r.randint(6, 12))
        ),
    ),
    Template(
        "k4_listing",
        "real-estate listing scaffold (bd/ba/sqft, MLS number, listed by uploader, open house, photo N of M)",
        _t(
            lambda c, r, u: r.choice(
                [
                    f"{c.title} — {r.randint(1, 5)} bd | {r.randint(1, 4)} ba | {r.randint(600, 4200):,} sqft · "
                    f"MLS® #{r.randint(1_000_000, 9_999_999)} · Listed by {u} · Open House Sat {r.randint(10, 11)}am–"
                    f"{r.randint(1, 5)}pm",
                    f"Just listed! {c.title} · Price reduced · Virtual tour available · Photo {r.randint(1, 9)} of "
                    f"{r.randint(10, 40)}",
                ]
            )
        ),
    ),
    Template(
        "k5_app_store",
        "app-store screenshot caption (Screenshot 2 of 5 — ... for iOS and Android, Rated E, in-app purchases)",
        _t(
            lambda c, r, u: r.choice(
                [
                    f"Screenshot {r.randint(1, 5)} of {r.randint(5, 8)} — {c.title} for iOS and Android · "
                    "Rated E for Everyone · Contains ads · In-app purchases",
                    f"{c.title} - Apps on Google Play | Rated {r.choice(['4+', '9+', '12+'])} | Version "
                    f"{r.randint(1, 5)}.{r.randint(0, 9)}.{r.randint(0, 20)}",
                ]
            )
        ),
    ),
    Template(
        "k6_figure",
        "academic figure caption (Fig. 3.2 — ..., Source: author's own work, reproduced with permission)",
        _t(
            lambda c, r, u: r.choice(
                [
                    f"Fig. {r.randint(1, 9)}.{r.randint(1, 12)} — {c.title}. Source: author's own work "
                    f"(adapted from {r.choice(_PHOTOGS).split()[1]} et al., {r.randint(1995, 2024)}).",
                    f"Figure {r.randint(1, 14)}: {c.title} (n = {r.randint(12, 900)}). Reproduced with permission "
                    f"from {r.choice(_JOURNALS)}",
                    f"Supplementary Figure S{r.randint(1, 20)}. {c.title}. Scale bar, {r.choice([5, 10, 50])} mm.",
                ]
            ),
            _tags,
        ),
    ),
    Template(
        "k7_auto_alt",
        "auto-generated alt text (May be an image of ... and text that says '...', Image may contain: ...)",
        _t(
            lambda c, r, u: r.choice(
                [
                    f"May be an image of {_kws(c, r, ' and ')} and text that says '{c.title.upper()}'",
                    f"May be a cartoon of {c.title.lower()}",
                    f"Image may contain: {_kws(c, r)}, text",
                ]
            )
        ),
    ),
    Template(
        "k8_leftovers",
        "template-engine leftovers ({{product_name}}, undefined, null, N/A, NaN, [object Object]) + junk json title",
        lambda c, r, u: _leftovers(c, r),
    ),
    Template(
        "k9_emoji_social",
        "emoji-heavy social caption (link in bio, double tap, tag a friend, DM to order) without hashtags",
        _t(
            lambda c, r, u: r.choice(
                [
                    f"OMG 😍😍 just finished this {c.title.lower()}!!! 🙌✨ link in bio 👉 @{u} 💯",
                    f"{c.title} 💖💖 double tap if you love it 👇 tag a friend 🤗",
                    f"✨ new drop ✨ {c.title} 🛒 DM to order 📩 shipping worldwide 🌍",
                ]
            )
        ),
    ),
    Template(
        "k10_listicle",
        "numbered listicle (17 Best ... Ideas for 2025 #12, #4. ... — 30 Cute ... You'll Love)",
        _t(
            lambda c, r, u: r.choice(
                [
                    f"{r.randint(12, 75)} Best {c.title} Ideas for {r.randint(2019, 2025)} #{r.randint(1, 12)}",
                    f"#{r.randint(1, 40)}. {c.title} — {r.randint(20, 60)} Cute Ideas You'll Love "
                    f"({r.randint(2019, 2025)} Edition)",
                ]
            )
        ),
    ),
    Template(
        "k11_multilingual",
        "Italian/Portuguese/Dutch/Polish download/licence boilerplate with a date in words",
        _t(lambda c, r, u: _multilingual(c, r)),
    ),
    Template(
        "k12_cutfile_seo",
        "cut-file SEO title: file formats, Cricut/Silhouette, mixed-case pipes and dashes, site suffix",
        _t(
            lambda c, r, u: r.choice(
                [
                    f"{c.title} SVG, PNG, DXF, EPS – Cut File for Cricut & Silhouette – Instant Download – "
                    "Commercial Use OK",
                    f"{_mixed_case(c.title, r)} Svg | Layered SVG Bundle | CrIcUt CuT FiLe | Digital Download - "
                    "CutFileCorner",
                ]
            )
        ),
    ),
    Template(
        "k13_pinterest",
        "Pinterest pin line (Pin on <board>) + json title (Saved by <uploader>, N saves)",
        lambda c, r, u: r.choice(
            [
                (f"{c.title} - Pin on {r.choice(_BOARDS)}", {}),
                (f"Pin on {r.choice(_BOARDS)}", {"title": f"{c.title} · Saved by {u} · {r.randint(2, 900)} saves"}),
            ]
        ),
    ),
    Template(
        "k14_watermark",
        "watermark text (© dreamstime.com ID n, Alamy Stock Vector Image ID, preview – do not copy)",
        _t(
            lambda c, r, u: r.choice(
                [
                    f"{c.title} © dreamstime.com ID {r.randint(10_000_000, 299_999_999)} | Preview – watermarked",
                    f"{c.title} – Alamy Stock Vector, Image ID: {r.randint(2, 3)}{r.choice('ABCDEFGHJK')}"
                    f"{r.randint(10, 99)}{r.choice('MNPQRTWXY')}{r.randint(1, 9)}{r.choice('ABCDEF')}, www.alamy.com",
                    f"[WATERMARK] {c.title} © {u} – do not copy – 123RF preview",
                ]
            )
        ),
    ),
]
BLIND5_SERIES = Template(
    "k_series",
    "generated series (Day N of 365 doodle challenge, re-upload counter in Roman numerals)",
    _t(
        lambda c, r, u: (lambda n: f"Day {n} of 365 ✏️ {c.title} (re-upload {_roman(r.randint(1, 250))}) — {u}")(
            r.randint(1, 365)
        )
    ),
)
# Blind-6 half: a sixth set, written by an evaluator who never read the label rules, their docs, tests or results, nor
# the discussion. Caption styles none of the five sets above use: wedding/event photography credits, print-shop
# ordering text (paper sizes, framed/unframed), die-cut sticker specs, school worksheet listings, tattoo flash sheets,
# knitting/embroidery pattern shops, parish/school newsletters, device-named wallpaper resolution lists, mockup-generator
# credits, NFT/token listings, greeting-card shop specs, Swedish/Norwegian/Turkish/Japanese (romaji) boilerplate and
# dates, volunteer screen-reader image descriptions, and a stock site appending a rotating promotional phrase; the series
# is a batch render with a "14-May-23 2:22p" stamp.
_STUDIOS = ["Willow & Pine", "Golden Hour", "Evermore", "Lantern Lane", "Silver Fern"]
_VENUES = ["The Old Granary", "Hollyhock Barn", "Castle Kerrow", "Riverside Pavilion", "St. Anselm's Chapel"]
_PAPER = ["A5", "A4", "A3", "A2", "8x10 in", "11x14 in", "50x70 cm"]
_CRAFTS = ["knitting chart", "cross-stitch chart", "embroidery pattern", "crochet pattern", "amigurumi pattern"]
_DEVICES = ["iPhone 15 Pro Max", "Galaxy S24 Ultra", "Pixel 8", "iPad Pro 12.9", "MacBook Air", "ultrawide monitor"]
_RES_X = ["1179×2556", "1440×3120", "1080×2400", "2048×2732", "2560×1664", "3440×1440"]
_CHAINS = ["Ethereum", "Polygon", "Solana", "Tezos"]
_PROMOS = [
    "Get 10 free images today",
    "Limited time: 20% off annual plans",
    "New content added daily",
    "Join 2 million creatives",
    "Unlimited downloads with Pro",
    "Try it free for 30 days, cancel anytime",
    "Save big on credit packs",
    "Trending this week",
    "Exclusive to members",
    "Black Friday deal: 3 months free",
    "Refer a friend, earn credits",
    "Student discount available",
]
_VOLUNTEERS = ["Maren", "Theo B.", "Ayşe", "Kenji", "the DescribeIt team", "Rosa"]
_MONTHS_SV = "januari februari mars april maj juni juli augusti september oktober november december".split()
_MONTHS_NO = "januar februar mars april mai juni juli august september oktober november desember".split()
_MONTHS_TR = "Ocak Şubat Mart Nisan Mayıs Haziran Temmuz Ağustos Eylül Ekim Kasım Aralık".split()


def _nordic_turkish_japanese(c: Content, r: random.Random) -> str:
    d = _date(r)
    day, m, y = d["d"], d["m"] - 1, d["y"]
    return r.choice(
        [
            f"{c.title} – gratis nedladdning, fri att använda, uppladdad den {day} {_MONTHS_SV[m]} {y} kl. "
            f"{d['hh']:02d}.{d['mm']:02d}",
            f"{c.title} | last ned gratis – fri vektorgrafikk, lastet opp {day}. {_MONTHS_NO[m]} {y}",
            f"{c.title} – ücretsiz indir, telifsiz vektör çizim, {day} {_MONTHS_TR[m]} {y} tarihinde yüklendi",
            f"{c.title} – muryou daunroodo, shouyou riyou kanou, {y}-nen {d['m']}-gatsu {day}-nichi toukou",
        ]
    )


def _image_description(c: Content, r: random.Random, u: str) -> str:
    return r.choice(
        [
            f"[Image description: a drawing of {c.title.lower()}. End description.] #ImageDescription #AltText",
            f"ID: {c.title}. Described by {r.choice(_VOLUNTEERS)}, volunteer describer for {u}'s accessible feed.",
            f"Alt text: a simple illustration showing {_kws(c, r, ', ')}. (Screen-reader friendly description)",
        ]
    )


def _stamp6(r: random.Random) -> str:
    d = _date(r)
    return f"{d['d']:02d}-{d['mon3']}-{d['y'] % 100:02d} {d['h12']}:{d['mm']:02d}{'a' if d['ampm'] == 'AM' else 'p'}"


BLIND6 = [
    Template(
        "s1_event_credit",
        "wedding/event photography credit (Captured by ... Photography | Venue: ... | Second shooter)",
        _t(
            lambda c, r, u: r.choice(
                [
                    f"{c.title} | Captured by {r.choice(_STUDIOS)} Photography | Venue: {r.choice(_VENUES)}",
                    f"{c.title} — photographed by {u} for {r.choice(_STUDIOS)} Weddings & Events · second shooter "
                    "gallery · all images retouched",
                ]
            )
        ),
    ),
    Template(
        "s2_print_shop",
        "print-shop ordering text (Available as A4/A3 poster, framed or unframed, matte or gloss, ships rolled)",
        _t(
            lambda c, r, u: (
                f"{c.title} Art Print – Available as {' / '.join(r.sample(_PAPER, 3))} poster, framed or unframed, "
                f"{r.choice(['matte', 'gloss', 'satin'])} finish – ships rolled in a tube | PrintParlour"
            )
        ),
    ),
    Template(
        "s3_sticker",
        "die-cut sticker spec (waterproof, dishwasher safe, UV resistant, size in mm/inches)",
        _t(
            lambda c, r, u: r.choice(
                [
                    f"{c.title} die-cut vinyl sticker – waterproof, dishwasher safe, UV resistant, "
                    f"{r.choice([50, 75, 100])}mm",
                    f"Holographic {c.title} decal | {r.choice(['2', '3', '4'])} inch | weatherproof laminate | "
                    "laptop, water bottle & car window",
                ]
            )
        ),
    ),
    Template(
        "s4_worksheet",
        "school worksheet listing (Grade N worksheet, printable PDF, answer key included) + json page title",
        lambda c, r, u: (
            f"Grade {r.randint(1, 6)} worksheet: {c.title} – printable PDF, answer key included, "
            f"{r.choice(['aligned to Common Core', 'no prep', 'homeschool friendly'])}",
            {"title": f"{c.title} Worksheet | TeachersAisle"},
        ),
    ),
    Template(
        "s5_tattoo_flash",
        "tattoo flash sheet (flash sheet, walk-in special $N, books open <month>, DM to claim)",
        _t(
            lambda c, r, u: (
                f"{c.title} flash sheet ✦ walk-in special ${r.choice([60, 80, 100, 120, 150])} ✦ books open "
                f"{r.choice(MONTHS)} ✦ DM to claim · @{u}"
            )
        ),
    ),
    Template(
        "s6_pattern_shop",
        "knitting/embroidery pattern shop (PDF pattern, instant download, beginner friendly, US & UK terms)",
        _t(
            lambda c, r, u: (
                f"{c.title} {r.choice(_CRAFTS)} – PDF pattern, instant download, beginner friendly, US & UK terms, "
                f"{r.randint(2, 24)} pages"
            ),
            _tags,
        ),
    ),
    Template(
        "s7_newsletter",
        "parish/school newsletter furniture (Vol./No., bake sale, PTA bulletin, term and week)",
        _t(
            lambda c, r, u: r.choice(
                [
                    f"St. Brigid's Parish Newsletter, Vol. {r.randint(3, 40)} No. {r.randint(1, 12)} — {c.title} — "
                    "bake sale after Mass, Sunday school resumes next week",
                    f"Maplewood Elementary PTA Bulletin: {c.title} (Term {r.randint(1, 3)}, Week {r.randint(1, 12)})",
                ]
            )
        ),
    ),
    Template(
        "s8_device_wallpaper",
        "wallpaper for named devices + resolution list with ×",
        _t(
            lambda c, r, u: (
                f"{c.title} wallpapers for {', '.join(r.sample(_DEVICES, 3))} — resolutions: "
                f"{', '.join(r.sample(_RES_X, 3))}"
            )
        ),
    ),
    Template(
        "s9_mockup",
        "mockup-generator credit (on a heather crewneck — Mockup by Placeit / Smartmockups template #N)",
        _t(
            lambda c, r, u: (
                f"{c.title} on a {r.choice(['heather grey crewneck', 'white tote', 'ceramic mug', 'framed canvas'])}"
                f" — Mockup by {r.choice(['Placeit', 'Smartmockups', 'Mockup World'])}, template #{r.randint(100, 9999)}"
            )
        ),
    ),
    Template(
        "s10_nft",
        "NFT/token listing (Token ID #N, minted on <chain> <date>, floor price, verified collection)",
        _t(
            lambda c, r, u: (
                lambda d, n: (
                    f"{c.title} #{n} — Token ID {n}, minted on {r.choice(_CHAINS)} {d['mon3']} {d['d']} '"
                    f"{d['y'] % 100:02d} · Floor {r.randint(1, 900) / 1000:.3f} ETH · verified collection by {u}"
                )
            )(_date(r), r.randint(1, 9999))
        ),
    ),
    Template(
        "s11_greeting_card",
        "greeting-card shop spec (blank inside, kraft envelope included, 5x7 in, recycled card stock)",
        _t(
            lambda c, r, u: (
                f"{c.title} greeting card – blank inside, {r.choice(['kraft', 'white', 'pastel'])} envelope included, "
                f"{r.choice(['5x7 in', 'A6', '4.25x5.5 in'])}, recycled card stock"
            )
        ),
    ),
    Template(
        "s12_nordic_turkish_japanese",
        "Swedish/Norwegian/Turkish/Japanese (romaji) download/licence boilerplate with a date in words",
        _t(lambda c, r, u: _nordic_turkish_japanese(c, r)),
    ),
    Template(
        "s13_image_description",
        "volunteer screen-reader image description ([Image description: ... End description.], ID: ..., Alt text:)",
        _t(lambda c, r, u: _image_description(c, r, u)),
    ),
    Template(
        "s14_rotating_promo",
        "stock site appending one of 12 rotating promotional phrases + site suffix",
        _t(lambda c, r, u: f"{c.title} – {r.choice(_PROMOS)} | StockSpree"),
    ),
]
BLIND6_SERIES = Template(
    "s_series",
    "generated series (batch render N of M, stamped dd-Mon-yy h:mma/p)",
    _t(
        lambda c, r, u: (
            f"{c.title} · render {r.randint(1, 500)} of batch {r.choice('ABCDEFGH')}{r.randint(1, 40)} · "
            f"stamp {_stamp6(r)} · {u}"
        )
    ),
)
TEMPLATES = {
    "tune": (TUNE, TUNE_SERIES),
    "heldout": (HELDOUT, HELDOUT_SERIES),
    "fresh": (FRESH, FRESH_SERIES),
    "blind": (BLIND, BLIND_SERIES),
    "blind5": (BLIND5, BLIND5_SERIES),
    "blind6": (BLIND6, BLIND6_SERIES),
}
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

# The fresh half's own sites (other domains, sizes and template mixes; several templates span sites).
FRESH_SITES = [
    ("stockwave.example", 0.24, [0, 7]),
    ("artvault.example", 0.16, [1, 9]),  # the series' site
    ("clipartbest.example", 0.12, [2, 5]),
    ("doodleverse.example", 0.09, [4, 8]),
    ("wallpaperaccess.example", 0.07, [6]),
    ("clipartlook.example", 0.05, [11, 3]),
    ("flagsoftheworld.example", 0.09, [10, 7]),  # topical: flags
    ("kidstamps.example", 0.12, [3, 8]),  # Tux Paint stamps
    ("photos.example", 0.13, [None]),
]
FRESH_UPLOADERS = [
    f"{a}{b}"
    for a in ("PixelPete", "inky_studio", "RetroGuy", "doodle.queen", "vectoria", "MrSketch", "neonlab", "kat_art")
    for b in ("", "88", "_official", "2019", "x")
]

# The blind half's own sites: a marketplace, a print-on-demand shop (the series' site), a forum, a social/CDN host,
# a media archive, an SEO clip-art farm, a Spanish/French/German image site, a topical flag shop, a kids' craft
# site with the Tux Paint stamps and a site with plain captions. Template indices point into ``BLIND``.
BLIND_SITES = [
    ("shopnest.example", 0.20, [0, 1, 7]),
    ("teeriffic.example", 0.12, [12, 1]),  # the series' site
    ("doodleboard.example", 0.10, [11, 4]),
    ("pincdn.example", 0.12, [9, 10]),
    ("imagenes-bilder.example", 0.07, [5, 13]),
    ("mediacommons.example", 0.10, [3, 2]),
    ("topfreeclipart.example", 0.09, [6, 8]),
    ("flaggen-shop.example", 0.09, [0, 5, 13]),  # topical: flags
    ("kidscraft.example", 0.12, [2, 4, 10]),  # Tux Paint stamps
    ("archive.example", 0.11, [None]),
]
BLIND_UPLOADERS = [
    f"{a}{b}"
    for a in ("lucia.dibuja", "HansZeichnet", "printmaster", "zoe_makes", "TeeGuru", "ananya.art", "le_crayon", "ObiK")
    for b in ("", "_shop", "99", ".studio", "2020")
]


# The blind-5 half's own sites: a news wire, a museum/archive, a recipe blog, a real-estate portal, an app-store mirror,
# a thesis repository, a social network (the series' site), a cut-file shop, a pin board, an Italian/Dutch flag site
# (topical), a kids' app site with the Tux Paint stamps and a catalogue with plain captions. Indices point into
# ``BLIND5``.
BLIND5_SITES = [
    ("wirephotos.example", 0.14, [0, 13]),
    ("museo-archivio.example", 0.10, [1, 10]),
    ("bakersdozen.example", 0.08, [2, 9]),
    ("homefinder.example", 0.07, [3, 7]),
    ("appmirror.example", 0.08, [4]),
    ("thesis-repo.example", 0.09, [5, 1]),
    ("friendface.example", 0.12, [6, 8]),  # the series' site
    ("cutfilecorner.example", 0.09, [11, 7]),
    ("pinboard.example", 0.10, [12, 9]),
    ("vlaggen-bandiere.example", 0.09, [10, 0, 1]),  # topical: flags
    ("kidsapps.example", 0.12, [4, 8, 9]),  # Tux Paint stamps
    ("catalogue.example", 0.10, [None]),
]
BLIND5_UPLOADERS = [
    f"{a}{b}"
    for a in ("giulia.disegna", "joao_pinto", "Bakker_NL", "kasia.rysuje", "DrFigures", "HomeSweetRealty", "mo_snaps")
    for b in ("", "_ig", "1987", ".pl", "_official")
]


# The blind-6 half's own sites: a stock site with rotating promos, a wedding studio, a print shop, a sticker shop, a
# teachers' marketplace, a tattoo/embroidery studio, a phone-wallpaper site, an NFT marketplace (the series' site), a
# Swedish/Norwegian/Turkish/Japanese image site, an accessibility-first feed, a topical flag shop, a classroom site with
# the Tux Paint stamps and a scrapbook with plain captions. Indices point into ``BLIND6``.
BLIND6_SITES = [
    ("stockspree.example", 0.18, [13]),
    ("evermore-weddings.example", 0.07, [0, 12]),
    ("printparlour.example", 0.10, [1, 10]),
    ("stickerbarn.example", 0.08, [2, 8]),
    ("teachersaisle.example", 0.09, [3, 6]),
    ("inkandneedle.example", 0.07, [4, 5]),
    ("lockscreens.example", 0.06, [7]),
    ("chainmint.example", 0.07, [9, 8]),  # the series' site
    ("nordbild-resim.example", 0.08, [11, 13]),
    ("accessiblefeed.example", 0.06, [12, 6]),
    ("flaggor-bayrak.example", 0.09, [11, 2, 10]),  # topical: flags
    ("kidsclass.example", 0.12, [3, 12, 6]),  # Tux Paint stamps
    ("scrapbook.example", 0.09, [None]),
]
BLIND6_UPLOADERS = [
    f"{a}{b}"
    for a in ("astrid.ritar", "mehmet_cizer", "yuki.e", "InkedByNils", "craftymarta", "TeachWithTara", "0xPixelMint")
    for b in ("", "_no", "2024", ".art", "_tr")
]


@dataclass(frozen=True)
class Layout:
    """Where a half's captions come from: sites ``(domain, share, template indices)``, which of them is the topical
    (flags) and the stamp site, the series' site and uploader, and the other uploaders."""

    sites: list
    topical: str
    stamps: str
    series_site: str
    series_uploader: str
    uploaders: list


_OLD_LAYOUT = Layout(
    SITES, "flagshelf.example", "stampbox.example", SERIES_SITE, SERIES_UPLOADER, [f"user{i:03d}" for i in range(40)]
)
LAYOUTS = {
    "tune": _OLD_LAYOUT,
    "heldout": _OLD_LAYOUT,
    "fresh": Layout(
        FRESH_SITES,
        "flagsoftheworld.example",
        "kidstamps.example",
        "artvault.example",
        "AutoVector_Studio",
        FRESH_UPLOADERS,
    ),
    "blind": Layout(
        BLIND_SITES,
        "flaggen-shop.example",
        "kidscraft.example",
        "teeriffic.example",
        "PODfactory_bot",
        BLIND_UPLOADERS,
    ),
    "blind5": Layout(
        BLIND5_SITES,
        "vlaggen-bandiere.example",
        "kidsapps.example",
        "friendface.example",
        "daily_doodler_365",
        BLIND5_UPLOADERS,
    ),
    "blind6": Layout(
        BLIND6_SITES,
        "flaggor-bayrak.example",
        "kidsclass.example",
        "chainmint.example",
        "mintbot_batch",
        BLIND6_UPLOADERS,
    ),
}
# The fresh half draws its content from the held-out hash half (no third pool exists), taking the held-out
# corpus's shuffled lists from the other end, so that the two corpora share as few drawings as the pools allow.
# The blind half likewise takes the tune pool from the other end: with the default sizes it shares no drawing with the
# held-out and fresh corpora, and 157 of its 1,050 clip-art drawings and 52 of its 150 flags with the tune corpus.
# The blind-6 half takes the held-out pool from the other end, as the fresh half does (same drawings as the fresh
# corpus, different captions), so that it does not draw the blind and blind-5 corpora's drawings.
CONTENT_HALF = {
    "tune": "tune",
    "heldout": "heldout",
    "fresh": "heldout",
    "blind": "tune",
    "blind5": "tune",
    "blind6": "heldout",
}


def _half_of(uid: str) -> str:
    return "tune" if hashlib.sha1(uid.encode()).digest()[0] % 2 == 0 else "heldout"


def load_content(half: str, n_clipart: int, n_stamps: int, short_side: int = 96, cache: Path | None = None) -> dict:
    """Drawings for ``half``: ``{"clipart": [...], "topical": [...], "stamps": [...]}``; tune and held-out content is
    disjoint, "fresh" takes the held-out pool and "blind" and "blind5" the tune pool from the other end
    (``CONTENT_HALF``).

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

    pool_half = CONTENT_HALF[half]
    rng = random.Random(f"content:{pool_half}")
    units = [u for u in iter_openclipart(OPENCLIPART) if u.skip is None and u.signals.get("title")]
    units = [u for u in units if _half_of(u.uid) == pool_half and len(u.data) < 150_000]
    # Openclipart's own series (1,375 gramastars, the lemon icon theme) are left out: the corpus's one series is
    # the generated one, so that the benchmark can tell it apart.
    units = [u for u in units if u.signals["title"][0].lower() != "gramastar" and "lemon-theme" not in u.uid]
    # The topical site: flags (the site is about them; "flag" must stay a label there).
    topical = [u for u in units if u.uid.startswith("signs_and_symbols/flags/")]
    other = [u for u in units if not u.uid.startswith(("computer/", "signs_and_symbols/flags/"))]
    rng.shuffle(topical)
    rng.shuffle(other)
    if pool_half != half:  # the other end of the same shuffled lists
        topical.reverse()
        other.reverse()
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
    stamps = [u for u in stamps if _half_of(u.uid) == pool_half and u.ext == "png"]
    rng.shuffle(stamps)
    if pool_half != half:
        stamps.reverse()
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
    layout = LAYOUTS[half]
    clipart = list(pools["clipart"])
    series_src = clipart.pop(0) if series_size else None
    general = [s for s in layout.sites if s[0] not in (layout.topical, layout.stamps)]
    total = sum(s[1] for s in general)
    assigned: list[tuple[str, list, Content]] = []
    start = 0
    for i, (site, share, tids) in enumerate(general):
        n = len(clipart) - start if i == len(general) - 1 else round(len(clipart) * share / total)
        assigned += [(site, tids, c) for c in clipart[start : start + n]]
        start += n
    by_site = {s[0]: s for s in layout.sites}
    assigned += [(layout.topical, by_site[layout.topical][2], c) for c in pools["topical"]]
    assigned += [(layout.stamps, by_site[layout.stamps][2], c) for c in pools["stamps"]]
    uploaders = layout.uploaders
    out = []
    for site, tids, c in assigned:
        tid = rng.choice(tids)
        t = PLAIN if tid is None else templates[tid]
        up = rng.choice(uploaders)
        caption, extras = t.make(c, rng, up)
        out.append((site, t.name, up, c, c.jpg, caption, extras, False))
    if series_src is not None:
        for _ in range(series_size):
            caption, extras = series_t.make(series_src, rng, layout.series_uploader)
            jpg = resave(series_src.jpg, rng)
            out.append(
                (layout.series_site, series_t.name, layout.series_uploader, series_src, jpg, caption, extras, True)
            )
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
    ap.add_argument("--half", choices=sorted(TEMPLATES), required=True)
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
