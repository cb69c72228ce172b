"""Source adapters, image preparation and the pipeline config schema (plus a few real Debian files)."""

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from configs.compose import ConfigError
from configs.labels_schema import load_labels_config
from labels.images import ImageJob, ImageSettings, bound, prepare
from labels.sources import InputError
from labels.sources.img2dataset import iter_img2dataset
from labels.sources.manifest import manifest_format
from labels.sources.openclipart import iter_openclipart, parse_metadata
from labels.sources.tuxpaint import iter_tuxpaint, read_description
from tests.fixtures_labels import SVG_RENDER_FAILS, jpeg_bytes, png_bytes, svg_bytes, write_tar

OPENCLIPART = "/usr/share/openclipart/svg"
TUXPAINT = "/usr/share/tuxpaint/stamps"


def test_parse_openclipart_metadata():
    sig = parse_metadata(svg_bytes("Full Moon", ["moon", "space"], description="Bright &amp; round", creator="Dan G"))
    assert sig == {
        "title": ["Full Moon"],
        "description": ["Bright & round"],
        "keywords": ["moon", "space"],
        "author": ["Dan G"],
    }
    assert parse_metadata(b'<svg xmlns="http://www.w3.org/2000/svg"/>') == {}


def test_openclipart_walk_order_category_and_bad_xml(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").mkdir(parents=True)
    (tmp_path / "b" / "1.svg").write_bytes(svg_bytes("One", ["k"]))
    (tmp_path / "a" / "x" / "2.svg").write_bytes(svg_bytes("Two", []))
    (tmp_path / "a" / "bad.svg").write_bytes(b"<svg")
    (tmp_path / "a" / "notes.txt").write_text("ignored")
    units = list(iter_openclipart(str(tmp_path)))
    assert [u.uid for u in units] == ["a/bad.svg", "a/x/2.svg", "b/1.svg"]
    assert units[0].skip == "unreadable_svg"
    assert units[1].signals["category"] == ["a/x"] and units[1].signals["title"] == ["Two"]
    assert units[2].data == (tmp_path / "b" / "1.svg").read_bytes()
    assert [u.uid for u in iter_openclipart(str(tmp_path), limit=2)] == ["a/bad.svg", "a/x/2.svg"]


def test_tuxpaint_stamps(tmp_path):
    d = tmp_path / "animals" / "birds"
    d.mkdir(parents=True)
    (d / "owl.png").write_bytes(png_bytes((10, 20, 30, 255)))
    (d / "owl.svg").write_bytes(svg_bytes("Owl", []))  # png wins, svg is not a second unit
    (d / "owl.txt").write_text("A wise owl.\nfr.utf8=Un hibou.\n", encoding="utf-8")
    (d / "owl_mirror.png").write_bytes(png_bytes((30, 20, 10, 255)))
    (d / "crow.svg").write_bytes(svg_bytes("Crow", []))
    units = list(iter_tuxpaint(str(tmp_path)))
    assert [(u.uid, u.ext, u.skip) for u in units] == [
        ("animals/birds/crow.svg", "svg", None),
        ("animals/birds/owl.png", "png", None),
        ("animals/birds/owl_mirror.png", "png", "mirror_variant"),
    ]
    assert units[0].signals == {"category": ["animals/birds"]}
    assert units[1].signals == {"description": ["A wise owl."], "category": ["animals/birds"]}
    (d / "only_fr.txt").write_text("fr.utf8=Bonjour\n")
    assert read_description(str(d / "only_fr.txt")) == ""


def test_img2dataset_groups_members_and_records_offsets(tmp_path):
    img = jpeg_bytes((5, 6, 7))
    tar = write_tar(
        tmp_path / "a.tar",
        [
            {"__key__": "k1", "jpg": img, "txt": "a caption", "json": {"title": "T", "tags": ["x", "y"], "n": 3}},
            {"__key__": "k2", "txt": "no image"},
            {"__key__": "k3", "png": png_bytes((1, 1, 1, 0)), "json": "{bad"},
        ],
    )
    units = list(iter_img2dataset(str(tmp_path), fields={"title": "title", "tags": "keywords", "n": "title"}))
    assert [u.uid for u in units] == ["a.tar:k1", "a.tar:k2", "a.tar:k3"]
    k1 = units[0]
    assert k1.signals == {"description": ["a caption"], "title": ["T", "3"], "keywords": ["x", "y"]}
    with open(tar, "rb") as f:
        f.seek(k1.offset)
        assert f.read(k1.size) == img == k1.data
    assert units[1].skip == "missing_image"
    assert units[2].skip == "bad_metadata" and units[2].ext == "png"
    with pytest.raises(InputError, match="not found"):
        list(iter_img2dataset(str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no .tar files"):
        list(iter_img2dataset(str(tmp_path / "empty")))


def test_manifest_format_detection():
    assert manifest_format("x.jsonl") == "jsonl" and manifest_format("x.CSV") == "csv"
    assert manifest_format("x.parquet") == "parquet" and manifest_format("x.txt", "csv") == "csv"
    with pytest.raises(InputError, match="cannot tell the format"):
        manifest_format("x.txt")


def test_prepare_images(tmp_path):
    st = ImageSettings(short_side=32, quality=90, max_aspect=2.0, render_timeout_s=10)
    svg = tmp_path / "a.svg"
    svg.write_bytes(svg_bytes("Wide", [], color="blue"))  # 60 x 40
    from labels.hashing import content_key

    def job(path, ext):
        data = Path(path).read_bytes()
        return ImageJob(0, content_key(data), str(path), 0, -1, ext)

    _, out, reason = prepare(job(svg, "svg"), st)
    assert reason is None
    with Image.open(io.BytesIO(out)) as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (48, 32)
        r, g, b = im.getpixel((0, 0))
        assert min(r, g, b) > 240  # rendered on white
        r, g, b = im.getpixel((24, 16))
        assert b > 200 and r < 40  # the blue rectangle
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes((0, 255, 0, 0), size=(300, 100)))  # fully transparent, 3:1
    _, out, reason = prepare(job(big, "png"), st)
    with Image.open(io.BytesIO(out)) as im:
        assert im.size == (64, 32)  # short side 32, long side cropped to 2 x 32
        assert min(im.getpixel((5, 5))) > 240  # transparency composited onto white
    small = tmp_path / "small.jpg"
    small.write_bytes(jpeg_bytes((200, 10, 10), size=(20, 16)))
    _, out, _ = prepare(job(small, "jpg"), st)
    assert out == small.read_bytes()  # small RGB JPEG passes through unchanged (never enlarged)
    tiny_cap = ImageSettings(short_side=32, max_svg_bytes=100)
    assert prepare(job(svg, "svg"), tiny_cap)[2] == "svg_too_large"
    broken = tmp_path / "broken.svg"
    broken.write_bytes(SVG_RENDER_FAILS)
    assert prepare(job(broken, "svg"), st)[2] == "render_failed"
    changed = ImageJob(0, "0" * 16, str(small), 0, -1, "jpg")
    assert prepare(changed, st)[2] == "input_changed"
    assert prepare(ImageJob(0, "0" * 16, str(tmp_path / "gone.jpg"), 0, -1, "jpg"), st)[2] == "missing_image"
    assert bound(Image.new("RGB", (10, 1000)), 8, 4.0, enlarge=False).size == (8, 32)


def test_config_schema_validation(tmp_path):
    cfg = load_labels_config("configs/labels/openclipart.yaml")
    assert [s.type for s in cfg.sources] == ["openclipart", "tuxpaint"]
    assert cfg.output == "data/openclipart" and cfg.split.scales == [0.01, 0.1, 0.25, 0.5, 1.0]
    cfg = load_labels_config("configs/labels/openclipart.yaml", ["vocab.min_df=7", "sources.1.limit=5"])
    assert cfg.vocab.min_df == 7 and cfg.sources[1].limit == 5
    cases = [
        (["vocab.min_dff=2"], "unknown config key 'vocab.min_dff'.*Did you mean 'vocab.min_df'"),
        (["vocab.min_df=abc"], "bad value for config key 'vocab.min_df'"),
        (["sources.0.pathh=x"], "unknown config key 'sources\\[0\\].pathh'"),
        (["split.scales=[0.5,0.1,1.0]"], "split.scales"),
        (["split.scales=[0.1,0.5]"], "must end at 1.0"),
        (["cluster.embedder=word2vec"], "cluster.embedder"),
        (["signals.weights.title=1.5"], "signals.weights.title"),
    ]
    for overrides, pattern in cases:
        with pytest.raises(ConfigError, match=pattern):
            load_labels_config("configs/labels/openclipart.yaml", overrides)
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources:\n  - {type: manifest, path: m.jsonl, fields: {t: board}}\n")
    with pytest.raises(ConfigError, match="sources\\[0\\].fields.t.*signal 'board' has no weight"):
        load_labels_config(bad)
    bad.write_text("sources:\n  - {type: flickr, path: x}\n")
    with pytest.raises(ConfigError, match="sources\\[0\\].type"):
        load_labels_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_labels_config(tmp_path / "missing.yaml")
    for name in ("img2dataset", "manifest"):
        assert load_labels_config(f"configs/labels/{name}.yaml").output == f"data/{name}"


@pytest.mark.data
@pytest.mark.skipif(not os.path.isdir(OPENCLIPART), reason=f"Debian openclipart-svg not installed ({OPENCLIPART})")
def test_real_openclipart_files(tmp_path):
    """A few real drawings: metadata parses, renders at the short side, and a symlinked copy merges."""
    from labels.pipeline import run
    from tests.fixtures_labels import labels_config, read_shards

    units = list(iter_openclipart(os.path.join(OPENCLIPART, "science"), limit=20))
    assert len(units) == 20
    titled = [u for u in units if u.signals.get("title")]
    assert len(titled) >= 15
    for u in units:  # the folder below the walk root is the category (none for files at the root)
        folder = os.path.dirname(u.uid)
        assert u.skip or u.signals.get("category") == ([folder] if folder else None)
    # Build a tiny corpus of real files, one of them filed twice (same bytes).
    root = tmp_path / "svg"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    picked = [u for u in units if not u.skip][:6]
    for i, u in enumerate(picked):
        (root / "a" / f"{i}.svg").write_bytes(u.data)
    (root / "b" / "copy.svg").write_bytes(picked[0].data)
    cfg = labels_config(
        tmp_path, [{"type": "openclipart", "path": str(root)}], ["vocab.min_df=1", "image.short_side=64"]
    )
    result = run(cfg)
    c = result.counts
    assert c["read"] == 7 and c["skipped"].get("duplicate_merged") == 1
    assert c["read"] == c["written"] + sum(c["skipped"].values())
    import json

    m = json.loads((Path(cfg.output) / "manifest.json").read_text())
    urls = [s["url"] for sp in ("train", "val") for s in m["splits"][sp]["shards"]]
    samples = read_shards(Path(cfg.output), urls)
    assert len(samples) == c["written"]
    for s in samples:
        with Image.open(io.BytesIO(s["jpg"])) as im:
            assert min(im.size) == 64 and im.mode == "RGB"
    merged = [s for s in samples if len(s["json"]["uids"]) == 2]
    if merged:  # unless the duplicated drawing itself failed to render
        assert merged[0]["json"]["text"]["category"] == ["a", "b"]


@pytest.mark.data
@pytest.mark.skipif(not os.path.isdir(TUXPAINT), reason=f"Debian tuxpaint-stamps-default not installed ({TUXPAINT})")
def test_real_tuxpaint_descriptions():
    units = list(iter_tuxpaint(os.path.join(TUXPAINT, "symbols", "money", "us"), limit=10))
    quarter = next(u for u in units if u.uid.endswith("025quarter.png"))
    assert quarter.signals["description"] == ["A US 25 cent piece ($.25) called a quarter."]
    assert quarter.signals["category"] == ["coins"]
