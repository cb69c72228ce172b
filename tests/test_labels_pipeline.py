"""End-to-end runs of the label pipeline on small generated inputs, read back with plain webdataset."""

import io
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from labels.hashing import hash_unit, scale_bucket, split_of
from labels.pipeline import run
from labels.shards import manifest_urls
from labels.sources import InputError
from tests.fixtures_labels import (
    SVG_RENDER_FAILS,
    img2dataset_samples,
    jpeg_bytes,
    labels_config,
    read_shards,
    svg_bytes,
    write_tar,
)

pytestmark = pytest.mark.slow
I2D = {"type": "img2dataset", "fields": {"tags": "keywords", "title": "title"}}


def load_manifest(cfg) -> dict:
    return json.loads((Path(cfg.output) / "manifest.json").read_text())


def all_urls(manifest) -> list[str]:
    return [s["url"] for split in ("train", "val") for s in manifest["splits"][split]["shards"]]


def test_img2dataset_end_to_end(tmp_path):
    src = tmp_path / "i2d"
    write_tar(src / "00000.tar", img2dataset_samples(24))
    write_tar(src / "00001.tar", img2dataset_samples(16, offset=24))
    cfg = labels_config(tmp_path, [{**I2D, "path": str(src)}])
    result = run(cfg)
    m = load_manifest(cfg)
    assert result.counts == {"read": 40, "written": 40, "skipped": {}}
    assert m["counts"] == result.counts and m["format_version"] == 1
    assert m["input_fingerprint"].startswith("sha256:")
    assert m["pipeline_config"]["sources"][0]["path"] == str(src)

    samples = read_shards(Path(cfg.output), all_urls(m))
    assert len(samples) == 40 == m["splits"]["train"]["num_samples"] + m["splits"]["val"]["num_samples"]
    raw_names = m["label_spaces"]["raw"]["names"]
    clustered = m["label_spaces"]["clustered"]
    assert m["label_spaces"]["raw"]["num_classes"] == len(raw_names)
    assert clustered["num_classes"] == len(clustered["names"]) == len(clustered["members"])
    assert sorted(t for ms in clustered["members"] for t in ms) == sorted(raw_names)
    for s in samples:
        meta = s["json"]
        assert s["__key__"] == meta["key"] and len(meta["key"]) == 16
        assert meta["source"] == "img2dataset"
        assert meta["terms"] == [raw_names[i] for i in meta["labels"]["raw"]]
        assert len(meta["scores"]["raw"]) == len(meta["labels"]["raw"]) >= 1
        # Clustered labels are the clusters of the raw labels.
        members = [set(clustered["members"][c]) for c in meta["labels"]["clustered"]]
        assert set(meta["terms"]) <= set().union(*members)
        assert all(m & set(meta["terms"]) for m in members)
        with Image.open(io.BytesIO(s["jpg"])) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and min(im.size) <= 32
        # Split and bucket follow the documented hash rule.
        split = "val" if s["__url__"].startswith("val-") else "train"
        assert split == split_of(meta["key"], 0.2)
    # Known answers: every "cat" caption (indices 0, 2, 5 of 8) is labelled "cat" with keyword confidence.
    by_uid = {s["json"]["uids"][0]: s["json"] for s in samples}
    cat = by_uid["00000.tar:000000000"]
    assert cat["terms"][0] == "cat" and cat["scores"]["raw"][0] == 1.0
    assert cat["text"] == {"description": "a black cat on a sofa", "keywords": ["cat", "pet"]}
    assert "car" in by_uid["00000.tar:000000001"]["terms"]
    counts = dict(zip(raw_names, m["label_spaces"]["raw"]["counts"]))
    assert counts["cat"] == 15  # 3 of every 8 samples, 40 samples
    # The report exists and agrees with the manifest.
    stats = json.loads((Path(cfg.output) / "report" / "stats.json").read_text())
    assert stats["counts"] == result.counts and stats["coverage"]["labelled_share"] == 1.0
    assert stats["vocab"]["raw"] == len(raw_names)
    assert (Path(cfg.output) / "report" / "freq_by_rank.png").stat().st_size > 1000
    assert (Path(cfg.output) / "report" / "labels_per_image.png").stat().st_size > 1000


def test_count_identity_with_bad_inputs(tmp_path):
    src = tmp_path / "i2d"
    good = img2dataset_samples(10)
    truncated = jpeg_bytes((1, 2, 3), size=(64, 64))[:-30]  # a valid header, cut-off data
    bad = [
        {"__key__": "bad_garbage", "jpg": b"not an image at all", "txt": "a red car"},
        {"__key__": "bad_truncated", "jpg": truncated, "txt": "a red car"},
        {"__key__": "bad_notext", "jpg": jpeg_bytes((9, 9, 9))},
        {"__key__": "bad_noimage", "txt": "a red car"},
        {"__key__": "bad_json", "jpg": jpeg_bytes((8, 8, 8)), "txt": "a red car", "json": "{oops"},
        {"__key__": "bad_nolabel", "jpg": jpeg_bytes((7, 7, 7)), "txt": "zebra"},  # zebra is too rare
    ]
    write_tar(src / "00000.tar", good[:5] + bad + good[5:])
    svg = tmp_path / "svg"
    (svg / "animals").mkdir(parents=True)
    (svg / "animals" / "ok_cat.svg").write_bytes(svg_bytes("Cat", ["cat", "pet"]))
    (svg / "animals" / "broken.svg").write_bytes(SVG_RENDER_FAILS)
    (svg / "animals" / "not_xml.svg").write_bytes(b"<svg <<< nonsense")
    cfg = labels_config(tmp_path, [{**I2D, "path": str(src)}, {"type": "openclipart", "path": str(svg)}])
    result = run(cfg)
    c = result.counts
    assert c["read"] == 16 + 3
    assert c["skipped"] == {
        "bad_metadata": 1,
        "corrupt_image": 2,  # garbage bytes (read pass) + truncated JPEG (decode in the write pass)
        "missing_image": 1,
        "no_label": 1,
        "no_text": 1,
        "render_failed": 1,
        "unreadable_svg": 1,
    }
    assert c["written"] == 11
    assert c["read"] == c["written"] + sum(c["skipped"].values())
    m = load_manifest(cfg)
    samples = read_shards(Path(cfg.output), all_urls(m))
    assert len(samples) == 11
    assert sum(s["num_samples"] for sp in ("train", "val") for s in m["splits"][sp]["shards"]) == 11


def test_duplicates_merge_into_one_sample(tmp_path):
    svg = tmp_path / "svg"
    same = svg_bytes("Tabby cat", ["cat", "pet"], creator="Jane Doe")
    files = {
        "animals/cats/tabby.svg": same,
        "people/pets/tabby_copy.svg": same,  # the same drawing filed twice
        "animals/dog.svg": svg_bytes("Dog", ["dog", "pet"], color="blue"),
        "animals/cat2.svg": svg_bytes("Black cat", ["cat"], color="black"),
        "animals/dog2.svg": svg_bytes("Dog", ["dog"], color="green"),
    }
    for rel, data in files.items():
        (svg / rel).parent.mkdir(parents=True, exist_ok=True)
        (svg / rel).write_bytes(data)
    # Split every sample to val or train by hash; the test checks both halves of the rule below.
    cfg = labels_config(tmp_path, [{"type": "openclipart", "path": str(svg)}], ["split.val_fraction=0.5"])
    result = run(cfg)
    assert result.counts["read"] == 5 and result.counts["written"] == 4
    assert result.counts["skipped"] == {"duplicate_merged": 1}
    m = load_manifest(cfg)
    samples = read_shards(Path(cfg.output), all_urls(m))
    keys = [s["__key__"] for s in samples]
    assert len(keys) == len(set(keys)) == 4  # one sample per content key, in exactly one split
    tabby = next(s["json"] for s in samples if "animals/cats/tabby.svg" in s["json"]["uids"])
    assert tabby["uids"] == ["animals/cats/tabby.svg", "people/pets/tabby_copy.svg"]
    assert tabby["text"]["category"] == ["animals/cats", "people/pets"]
    assert tabby["text"]["author"] == "Jane Doe"
    assert {"cat", "pet"} <= set(tabby["terms"])
    assert not {"jane", "doe"} & set(tabby["terms"])  # the author signal is excluded
    # Split by the key hash: a merged duplicate cannot be in both splits.
    for s in samples:
        split = "val" if s["__url__"].startswith("val-") else "train"
        assert split == split_of(s["__key__"], 0.5)


def test_nested_scales_and_exact_shard_counts(tmp_path):
    src = tmp_path / "i2d"
    write_tar(src / "00000.tar", img2dataset_samples(120))
    cfg = labels_config(tmp_path, [{**I2D, "path": str(src)}], ["shards.maxcount=7", "split.val_fraction=0.1"])
    run(cfg)
    m = load_manifest(cfg)
    out = Path(cfg.output)
    assert m["scales"] == [0.1, 0.5, 1.0]
    keys_at = {}
    for scale in m["scales"]:
        urls = manifest_urls(m, "train", scale)
        assert urls == [s["url"] for s in m["splits"]["train"]["shards"] if s["scale_bucket"] <= scale]
        keys_at[scale] = {s["__key__"] for s in read_shards(out, urls)}
        assert len(keys_at[scale]) == m["splits"]["train"]["num_samples_by_scale"][repr(scale)]
    assert keys_at[0.1] <= keys_at[0.5] <= keys_at[1.0]
    assert 0 < len(keys_at[0.1]) < len(keys_at[0.5]) < len(keys_at[1.0])
    for shard in m["splits"]["train"]["shards"] + m["splits"]["val"]["shards"]:
        got = read_shards(out, [shard["url"]])
        assert len(got) == shard["num_samples"] <= 7  # per-shard counts are the real counts
        for s in got:
            if "scale_bucket" in shard:
                i = m["scales"].index(shard["scale_bucket"])
                assert scale_bucket(s["__key__"], m["scales"]) == i
                assert (m["scales"][i - 1] if i else 0) <= hash_unit("scale:" + s["__key__"]) < m["scales"][i]
            else:
                assert hash_unit("split:" + s["__key__"]) < 0.1
    assert sorted(p.name for p in out.glob("*.tar")) == sorted(all_urls(m))


def test_rerun_is_byte_identical(tmp_path):
    src = tmp_path / "i2d"
    write_tar(src / "00000.tar", img2dataset_samples(30))
    svg = tmp_path / "svg"
    (svg / "animals").mkdir(parents=True)
    for i, (title, kw) in enumerate([("Cat", ["cat"]), ("Red car", ["car"]), ("Cat", ["cat", "pet"])]):
        (svg / "animals" / f"{i}.svg").write_bytes(svg_bytes(title, kw, color=["red", "green", "blue"][i]))
    sources = [{**I2D, "path": str(src)}, {"type": "openclipart", "path": str(svg)}]
    cfg = labels_config(tmp_path, sources)
    run(cfg)
    out = Path(cfg.output)
    first = {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}
    manifest = (out / "manifest.json").read_bytes()
    labels_first = [s["json"] for s in read_shards(out, all_urls(load_manifest(cfg)))]
    run(cfg)
    assert {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))} == first
    assert (out / "manifest.json").read_bytes() == manifest
    assert [s["json"] for s in read_shards(out, all_urls(load_manifest(cfg)))] == labels_first
    # With two worker processes (ordered imap) the shards are the same bytes too.
    cfg2 = labels_config(tmp_path, sources, ["run.workers=2"], out="out2")
    run(cfg2)
    assert {p.name: p.read_bytes() for p in sorted(Path(cfg2.output).glob("*.tar"))} == first


def test_manifest_source_text_only_and_with_images(tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    rows = []
    for i in range(12):
        (imgs / f"{i}.jpg").write_bytes(jpeg_bytes((i * 20, 100, 50)))
        rows.append({"image": f"imgs/{i}.jpg", "title": ["Red car", "Black cat", "Green tree"][i % 3], "tags": ["x"]})
    rows.append({"title": "Red car"})  # no image path
    rows.append({"image": "imgs/missing.jpg", "title": "Red car"})
    man = tmp_path / "manifest.jsonl"
    man.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    src = {"type": "manifest", "path": str(man), "fields": {"title": "title", "tags": "keywords"}}
    result = run(labels_config(tmp_path, [src]))
    assert result.counts["skipped"] == {"missing_image": 1, "missing_image_field": 1}
    assert result.counts["written"] == 12
    text_cfg = labels_config(tmp_path, [src], ["run.text_only=true"], out="text")
    text = run(text_cfg)
    assert text.manifest_path is None and text.counts["written"] == 14  # no image checks in text-only runs
    lines = [json.loads(x) for x in (Path(text_cfg.output) / "samples.jsonl").read_text().splitlines()]
    assert len(lines) == 14 and {"red car", "cat", "tree"} <= {t for x in lines for t in x["terms"]}
    assert not list(Path(text_cfg.output).glob("*.tar"))


TITLES = ["Red car", "Black cat", "Red car", "Black cat"]


def _text_only_manifest_run(tmp_path, name):
    src = {"type": "manifest", "path": str(tmp_path / name), "fields": {"title": "title"}}
    r = run(labels_config(tmp_path, [src], ["run.text_only=true"], out=f"out_{name}"))
    assert r.counts == {"read": 4, "written": 4, "skipped": {}}
    assert r.vocab_sizes["raw"] == 6  # red, red car, car, black, black cat, cat


def test_csv_manifest(tmp_path):
    (tmp_path / "m.csv").write_text("image,title\n" + "".join(f"{i}.jpg,{t}\n" for i, t in enumerate(TITLES)))
    _text_only_manifest_run(tmp_path, "m.csv")


def test_parquet_manifest(tmp_path):
    why = "pyarrow is not importable here (this pyarrow build needs a newer numpy)"
    pa = pytest.importorskip("pyarrow", reason=why, exc_type=ImportError)
    pq = pytest.importorskip("pyarrow.parquet", reason=why, exc_type=ImportError)
    pq.write_table(pa.table({"image": [f"{i}.jpg" for i in range(4)], "title": TITLES}), tmp_path / "m.parquet")
    _text_only_manifest_run(tmp_path, "m.parquet")


def test_bad_inputs_fail_at_once_naming_file_and_line(tmp_path):
    with pytest.raises(InputError, match="not found.*nowhere"):
        run(labels_config(tmp_path, [{"type": "openclipart", "path": str(tmp_path / "nowhere")}]))
    man = tmp_path / "bad.jsonl"
    man.write_text('{"image": "a.jpg", "title": "ok"}\n\n{"image": "b.jpg", "title": oops}\n')
    src = {"type": "manifest", "path": str(man), "fields": {"title": "title"}}
    with pytest.raises(InputError, match=r"bad\.jsonl:3: malformed JSON"):
        run(labels_config(tmp_path, [src]))
    csv = tmp_path / "bad.csv"
    csv.write_text("image,title\na.jpg,ok\nb.jpg,ok,extra\n")
    with pytest.raises(InputError, match=r"bad\.csv:3: CSV row has 3 fields"):
        run(labels_config(tmp_path, [{**src, "path": str(csv)}]))
    csv.write_text("img,title\na.jpg,ok\n")
    with pytest.raises(InputError, match=r"bad\.csv:1: manifest header lacks column\(s\) \['image'\]"):
        run(labels_config(tmp_path, [{**src, "path": str(csv)}]))


def test_cli_reports_errors_and_summary(tmp_path, capsys):
    import mine_labels

    src = tmp_path / "i2d"
    write_tar(src / "00000.tar", img2dataset_samples(8))
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(json.dumps({"name": "t", "sources": [{**I2D, "path": str(src)}]}))
    common = [f"output={tmp_path / 'cli'}", "run.workers=0", "run.progress=false", "cluster.embedder=ppmi"]
    assert mine_labels.main(["--config", str(cfg_file), *common, "vocab.min_df=2"]) == 0
    out = capsys.readouterr().out
    assert "read 8  written 8  skipped 0" in out
    assert mine_labels.main(["--config", str(cfg_file), *common, "sources.0.path=/no/such/dir"]) == 2
    assert "input path not found: /no/such/dir" in capsys.readouterr().err
    assert mine_labels.main(["--config", str(cfg_file), "vocab.min_dff=2"]) == 2
    assert "Did you mean 'vocab.min_df'" in capsys.readouterr().err


def test_labels_per_image_cap_and_keep_unlabeled(tmp_path):
    src = tmp_path / "i2d"
    samples = img2dataset_samples(16)
    samples.append({"__key__": "zzz", "jpg": jpeg_bytes((3, 3, 3)), "txt": "zebra"})
    write_tar(src / "00000.tar", samples)
    cfg = labels_config(
        tmp_path, [{**I2D, "path": str(src)}], ["vocab.max_labels_per_image=2", "vocab.keep_unlabeled=true"]
    )
    r = run(cfg)
    assert r.counts["written"] == 17 and r.counts["skipped"] == {}
    metas = [s["json"] for s in read_shards(Path(cfg.output), all_urls(load_manifest(cfg)))]
    assert max(len(x["labels"]["raw"]) for x in metas) == 2
    zebra = next(x for x in metas if x["text"].get("description") == "zebra")
    assert zebra["labels"] == {"raw": [], "clustered": []}
    assert Counter(len(x["labels"]["raw"]) for x in metas)[0] == 1


def test_empty_vocabulary_fails_clearly(tmp_path):
    src = tmp_path / "i2d"
    write_tar(src / "00000.tar", img2dataset_samples(3))
    with pytest.raises(InputError, match="no term labels vocab.min_df=50 images"):
        run(labels_config(tmp_path, [{**I2D, "path": str(src)}], ["vocab.min_df=50"]))


def test_a_work_folder_of_an_older_work_format_is_started_afresh(tmp_path):
    """Work files written by code of another format (e.g. write tasks without the per-origin counts the quality report
    now sums) are never read: the folder's fingerprint covers ``WORK_FORMAT``."""
    import hashlib

    from labels import pipeline

    work = tmp_path / "_work"
    work.mkdir()
    cfg, parts = {"a": 1}, []
    old = hashlib.sha256(json.dumps({"config": cfg, "partitions": []}, sort_keys=True).encode()).hexdigest()
    (work / "run.json").write_text(json.dumps({"fingerprint": old}))
    (work / "write").mkdir()
    (work / "write" / "stats.json").write_text("{}")  # a finished task of the old format
    assert pipeline._prepare_work(str(work), cfg, parts) == str(work)
    assert not (work / "write").exists()  # discarded, so its tasks run again
    assert pipeline._prepare_work(str(work), cfg, parts) == str(work)
    (work / "write").mkdir()
    pipeline._prepare_work(str(work), cfg, parts)
    assert (work / "write").exists()  # the same format and config: reused
