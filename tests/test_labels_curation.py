"""Label quality on web captions and curation: boilerplate, the document-frequency ceiling and the
per-group cap, with known answers on small generated corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from labels.pipeline import run
from tests.fixtures_labels import jpeg_bytes, labels_config, svg_bytes, write_tar

pytestmark = pytest.mark.slow


def web_captions(n: int) -> list[dict]:
    """Stock-site captions: every one carries scaffolding; 'car' in half, 'dog' in a quarter, 'blue' in all."""
    out = []
    for i in range(n):
        thing = "car" if i % 2 == 0 else ("dog" if i % 4 == 1 else "tree")
        caption = f"Stock photo: image of a blue {thing}, vector free download. Tags: {thing}, blue"
        out.append({"__key__": f"{i:09d}", "jpg": jpeg_bytes((i * 7 % 256, i * 13 % 256, 200)), "txt": caption})
    return out


def test_boilerplate_and_df_ceiling_never_make_the_head(tmp_path):
    src = tmp_path / "web"
    write_tar(src / "00000.tar", web_captions(40))
    source = {"type": "img2dataset", "path": str(src)}
    cfg = labels_config(tmp_path, [source], ["run.text_only=true", "vocab.max_df_share=0.6"])
    result = run(cfg)
    names = {t for t, _ in result.stats["top_labels"]["raw"]}
    assert names == {"car", "dog", "tree", "blue car", "blue dog", "blue tree"}
    assert not names & {"stock photo", "stock", "photo", "image", "vector", "download", "free", "tag"}
    dropped = result.stats["dropped"]
    # 'blue' is in every caption: above the 60% ceiling, dropped and listed with its share.
    assert dropped["df_ceiling"]["dropped"] == [{"term": "blue", "df": 40, "share": 1.0}]
    assert dropped["boilerplate_phrases"] == {
        "free download": 40,
        "image of": 40,
        "stock photo": 40,
        "tags:": 40,
        "vector": 40,
    }
    # Without the ceiling 'blue' is the top label; without the phrase list the scaffolding is a label.
    loose = run(labels_config(tmp_path, [source], ["run.text_only=true", "text.boilerplate=[]"], out="loose"))
    top = [t for t, _ in loose.stats["top_labels"]["raw"]]
    assert top[0] == "blue" and {"stock photo", "vector", "free download"} <= set(top)


def test_group_cap_limits_a_series_and_the_report_shows_the_head_before_and_after(tmp_path):
    svg = tmp_path / "svg"
    (svg / "shapes" / "stars").mkdir(parents=True)
    (svg / "animals").mkdir(parents=True)
    for i in range(12):  # one creator's generated series
        data = svg_bytes("Gramastar", ["gramastar", "star"], creator="Series Bot", color=f"#{i:02x}0000")
        (svg / "shapes" / "stars" / f"g{i:02d}.svg").write_bytes(data)
    for i, (title, kw) in enumerate([("Cat", ["cat", "pet"]), ("Dog", ["dog", "pet"]), ("Cat", ["cat"])] * 2):
        data = svg_bytes(title, kw, creator=f"Artist {i}", color=f"#00{i:02x}00")
        (svg / "animals" / f"a{i}.svg").write_bytes(data)
    overrides = ["run.text_only=true", "curation.group_by=[author]", "curation.max_per_group=3", "run.partition_size=5"]
    cfg = labels_config(tmp_path, [{"type": "openclipart", "path": str(svg)}], overrides)
    result = run(cfg)
    assert result.counts["skipped"] == {"group_cap": 9}
    assert result.counts["written"] == 6 + 3
    s = result.stats
    assert s["head_before_curation"][:3] == [["gramastar", 12], ["shape", 12], ["star", 12]]
    after = dict(s["top_labels"]["raw"])
    assert after["gramastar"] == 3 and after["pet"] == 4 and after["cat"] == 4
    assert s["dropped"]["curation"]["dropped_by_group"] == {"author=Series Bot": 9}
    # The kept three are the series' three smallest cap ranks: the same whatever the partitioning.
    kept = {json.loads(x)["key"] for x in Path(cfg.output, "samples.jsonl").read_text().split("\n") if x}
    other = labels_config(
        tmp_path, [{"type": "openclipart", "path": str(svg)}], [*overrides[:3], "run.partition_size=2"], out="o2"
    )
    run(other)
    assert {json.loads(x)["key"] for x in Path(other.output, "samples.jsonl").read_text().split("\n") if x} == kept
