"""Image preparation for the writing pass: read bytes by locator, render SVG or decode raster,
bound the resolution, encode RGB JPEG. Runs in worker processes, so it imports nothing heavy.

Rules: the short side becomes ``short_side`` for SVGs (rendered at that size on white) and is
reduced to at most ``short_side`` for rasters (never enlarged); the long side is capped at
``max_aspect * short_side`` (a centre crop) so a 1:50 strip cannot produce a huge image. A JPEG that
already fits and is RGB is passed through unchanged (no second lossy encode).
"""

from __future__ import annotations

import hashlib
import io
import re
import signal
import threading
from dataclasses import dataclass

from PIL import Image, ImageOps

from labels import inputs
from storage import StorageError


@dataclass(frozen=True)
class ImageJob:
    """Where one sample's image lives and how to prepare it."""

    seq: int
    key: str
    path: str
    offset: int
    size: int
    ext: str


@dataclass(frozen=True)
class ImageSettings:
    short_side: int = 256
    quality: int = 90
    max_aspect: float = 4.0
    render_timeout_s: float = 0.0  # 0 disables the per-image render timeout
    max_svg_bytes: int = 8_000_000


class RenderTimeout(Exception):
    pass


def read_bytes(path: str, offset: int = 0, size: int = -1) -> bytes:
    """``size`` bytes at ``offset`` of ``path`` (the whole file when size < 0); ``path`` may be a URL
    (``labels.inputs.read_range``)."""
    return inputs.read_range(path, offset, size)


def _svg_aspect(data: bytes) -> float:
    """Width / height from the root element's width/height or viewBox (1.0 when unknown)."""
    head = data[:4096].decode("utf-8", "replace")
    match = re.search(r"<svg\b[^>]*>", head, re.S)
    if not match:
        return 1.0
    tag = match.group(0)

    def number(attr: str) -> float | None:
        m = re.search(rf'\s{attr}\s*=\s*["\']\s*([0-9.]+)\s*(px|pt|mm|cm|in|pc)?\s*["\']', tag)
        return float(m.group(1)) if m else None

    w, h = number("width"), number("height")
    if not (w and h):
        vb = re.search(r'viewBox\s*=\s*["\']\s*[-0-9.e]+[\s,]+[-0-9.e]+[\s,]+([0-9.e]+)[\s,]+([0-9.e]+)', tag)
        if vb:
            w, h = float(vb.group(1)), float(vb.group(2))
    return w / h if w and h else 1.0


_TEXT_RE = re.compile(rb"<(?:[\w-]+:)?text\b")


def _reset_font_state() -> None:
    """Return cairo's font caches to a fresh process's state.

    How cairo rasterizes text depends on which fonts the process loaded before (its font-face and
    scaled-font caches), so with several workers a drawing's pixels would depend on which worker drew
    it and what it drew first. Resetting after every drawing with text makes each one render as in a
    fresh process: the shards are byte-identical whatever the worker count. The reset is only safe
    with no cairo object alive, hence the collection first.
    """
    import gc

    import cairocffi

    gc.collect()
    reset = getattr(cairocffi.cairo, "cairo_debug_reset_static_data", None)
    if reset is not None:
        reset()


def render_svg(data: bytes, short_side: int) -> Image.Image:
    """Rasterize SVG bytes on white with the short side at ``short_side`` (cairosvg, safe mode:
    no external files, no XML entities)."""
    import cairosvg

    aspect = _svg_aspect(data)
    size = {"output_height": short_side} if aspect >= 1.0 else {"output_width": short_side}
    png = cairosvg.svg2png(bytestring=data, background_color="white", unsafe=False, **size)
    return Image.open(io.BytesIO(png))


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with any transparency composited onto white."""
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
        canvas.alpha_composite(im)
        return canvas.convert("RGB")
    return im.convert("RGB")


def bound(im: Image.Image, short_side: int, max_aspect: float, enlarge: bool) -> Image.Image:
    """Resize so the short side is ``short_side`` (or at most, when not ``enlarge``) and crop the long
    side to ``max_aspect`` times the short side."""
    w, h = im.size
    s = min(w, h)
    if s <= 0:
        raise ValueError("empty image")
    if s > short_side or (enlarge and s < short_side):
        scale = short_side / s
        im = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC, reducing_gap=3.0)
    w, h = im.size
    limit = int(max_aspect * min(w, h))
    if max(w, h) > limit:
        left, top = (w - min(w, limit)) // 2, (h - min(h, limit)) // 2
        im = im.crop((left, top, left + min(w, limit), top + min(h, limit)))
    return im


def encode_jpeg(im: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _raster(data: bytes, st: ImageSettings) -> bytes:
    with Image.open(io.BytesIO(data)) as src:
        fmt = src.format
        if fmt == "JPEG":
            if src.mode == "RGB" and min(src.size) <= st.short_side and max(src.size) <= st.max_aspect * min(src.size):
                if src.getexif().get(0x0112, 1) == 1:  # no rotation to apply: keep the original bytes
                    src.load()  # a truncated file fails here rather than in training
                    return data
            src.draft("RGB", (st.short_side, st.short_side))  # DCT-domain downscale: much faster decode
        im = ImageOps.exif_transpose(src)
        im.load()
        im = to_rgb(im)
    return encode_jpeg(bound(im, st.short_side, st.max_aspect, enlarge=False), st.quality)


def _on_alarm(signum, frame):
    raise RenderTimeout()


def prepare(job: ImageJob, st: ImageSettings) -> tuple[int, bytes | None, str | None]:
    """Prepare one image.

    Returns:
        ``(seq, jpeg_bytes, None)`` or ``(seq, None, reason)`` with reason ``render_failed``,
        ``render_timeout``, ``svg_too_large``, ``corrupt_image``, ``image_too_large``, ``missing_image`` or
        ``input_changed`` (the bytes no longer hash to the key read in the first pass).
    """
    try:
        data = read_bytes(job.path, job.offset, job.size)
    except StorageError:
        raise  # the store kept failing: not a missing image; the task fails, a rerun redoes it
    except OSError:
        return job.seq, None, "missing_image"
    if hashlib.sha1(data).hexdigest()[: len(job.key)] != job.key:
        return job.seq, None, "input_changed"
    if job.ext == "svg":
        if len(data) > st.max_svg_bytes:
            return job.seq, None, "svg_too_large"
        timed = st.render_timeout_s > 0 and threading.current_thread() is threading.main_thread()
        if timed:
            old = signal.signal(signal.SIGALRM, _on_alarm)
            signal.setitimer(signal.ITIMER_REAL, st.render_timeout_s)
        try:
            im = to_rgb(render_svg(data, st.short_side))
            result = job.seq, encode_jpeg(bound(im, st.short_side, st.max_aspect, enlarge=True), st.quality), None
        except RenderTimeout:
            result = job.seq, None, "render_timeout"
        except Exception:  # cairosvg raises anything from parse errors to cairo errors
            result = job.seq, None, "render_failed"
        finally:
            if timed:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)
        # Here no exception (nor its frames) keeps a cairo object of this drawing alive.
        if _TEXT_RE.search(data) is not None:
            _reset_font_state()
        return result
    try:
        return job.seq, _raster(data, st), None
    except Image.DecompressionBombError:
        return job.seq, None, "image_too_large"
    except Exception:  # truncated or garbage bytes: PIL raises OSError, SyntaxError, ValueError, ...
        return job.seq, None, "corrupt_image"


class Preparer:
    """Picklable ``job -> prepare(job, settings)`` for ``Pool.imap``."""

    def __init__(self, settings: ImageSettings) -> None:
        self.settings = settings

    def __call__(self, job: ImageJob) -> tuple[int, bytes | None, str | None]:
        return prepare(job, self.settings)


SERIES_HASH_SIZE = 6  # a 36-bit pHash: measured stabler under re-saves than 64 bits (docs/labels.md)
SERIES_COLOUR_LEVELS = 16  # the mean colour, per channel, in 16 levels


def series_key(data: bytes) -> str | None:
    """The key that groups near-identical re-saves of one raster image into a series: ``imagehash.phash`` with
    ``SERIES_HASH_SIZE`` (structure, grey) followed by the image's mean colour in ``SERIES_COLOUR_LEVELS`` levels per
    channel (a recoloured copy is another image; so is every flat image of another colour), as hex; None when the
    bytes do not decode.

    A library hash rather than a hand-written dHash: imagehash's pHash (a DCT of a 32x32 grey thumbnail, thresholded
    at its median) is the common reference implementation. Decoded at a reduced JPEG scale (the hash reads a 32x32
    thumbnail anyway); transparency is composited onto white first, as the write pass does.
    """
    import imagehash

    try:
        with Image.open(io.BytesIO(data)) as src:
            src.draft("RGB", (64, 64))
            im = to_rgb(src).convert("RGB")
        mean = im.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
        step = 256 // SERIES_COLOUR_LEVELS
        return str(imagehash.phash(im, hash_size=SERIES_HASH_SIZE)) + "".join(f"{c // step:x}" for c in mean)
    except Exception:  # garbage bytes: the header check or the write pass names the reason
        return None
