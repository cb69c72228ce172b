"""The label-quality report's suspect marker (labels.report.scaffold_suspect): a safety net that flags head labels
looking like a few sites' scaffolding, with known answers on a small synthetic corpus of five sites."""

from __future__ import annotations

import json

from labels.report import scaffold_suspect, suspects_warning, write_quality_report

# Five sites of 100 written images each (500 in all).
SITES = {"printshop": 100, "flagshop": 100, "kids": 100, "stock": 100, "blog": 100}
LABELS = {
    # On half of the print shop's images, rarely elsewhere: the shop's scaffolding.
    "envelope included": {"printshop": 50, "stock": 5, "blog": 5},
    # On 35% of two sites' images (a template two sites share): bound to both, 70 of its 80 images from 40% of the
    # corpus (lift 2.2).
    "week": {"kids": 35, "blog": 35, "stock": 10},
    # Content spread over the sites: no site carries it on 30% of its images.
    "cat": {s: 20 for s in SITES},
    # The flag shop's subject: on 60% of its images. The counts cannot tell it from the print shop's scaffolding, so
    # it is flagged too (a false alarm by design: the report names the site and says to keep a site's subject).
    "flag": {"flagshop": 60, "stock": 5, "blog": 5},
    # On a quarter of the flag shop's images: under the 30% cover, not bound, not flagged.
    "france": {"flagshop": 25},
}


def _stats(written: int) -> dict:
    return {
        "name": "synthetic",
        "counts": {"read": written, "written": written, "skipped": {}},
        "coverage": {"considered": written},
        "unlabelled": {},
        "dropped": {
            "templates": {"words": {}, "terms": 0, "head": []},
            "boilerplate_phrases": {},
            "df_ceiling": {"dropped": []},
        },
    }


def _report(tmp_path, labels: dict, sites: dict) -> dict:
    names = list(labels)
    counts = [sum(o.values()) for o in labels.values()]
    origins = {i: o for i, o in enumerate(labels.values())}
    return write_quality_report(str(tmp_path), _stats(sum(sites.values())), names, counts, origins, sites)


def test_site_scaffolding_is_suspect_and_content_spread_over_sites_is_not(tmp_path):
    q = _report(tmp_path, LABELS, SITES)
    head = {h["label"]: h for h in q["head"]}
    assert q["suspects"]["labels"] == ["week", "flag", "envelope included"]  # in head order (images, then id)
    assert head["envelope included"]["bound_origins"] == [["printshop", 50, 0.5]]
    assert head["week"]["bound_origins"] == [["blog", 35, 0.35], ["kids", 35, 0.35]]
    assert not head["cat"]["suspect"] and head["cat"]["bound_origins"] == []
    assert not head["france"]["suspect"] and head["france"]["bound_origins"] == []
    assert head["flag"]["suspect"]  # a topical site's subject: flagged, left to the reader
    assert q["suspects"]["written_by_origin"] == SITES
    md = (tmp_path / "label_quality.md").read_text()
    assert "## Suspect head labels (site scaffolding?): 3" in md
    assert (
        "| envelope included | 60 | 12.0% | printshop 50 (83%); blog 5 (8%); stock 5 (8%) | site scaffolding? |" in md
    )
    assert "| cat | 100 | 20.0% |" in md and "text.stop_terms" in md
    warning = suspects_warning(str(tmp_path))
    assert warning.startswith("warning: 3 of the 5 head labels look like site scaffolding")
    assert "'week' (on 35% of blog's images and 1 more sites')" in warning
    assert str(tmp_path / "label_quality.md") in warning


def test_one_origin_or_a_dominant_one_is_never_suspect(tmp_path):
    """A corpus of one source (Open Clip Art alone) has nothing to compare with: its labels are on its images at any
    share (lift 1). A source that is 90% of the corpus cannot give a label twice its share either."""
    assert scaffold_suspect(400, {"openclipart": 400}, {"openclipart": 1000}, 1000) == (
        False,
        [["openclipart", 400, 0.4]],
    )
    assert not scaffold_suspect(400, {"openclipart": 395, "tuxpaint": 5}, {"openclipart": 900, "tuxpaint": 100}, 1000)[
        0
    ]
    q = _report(tmp_path, {"computer": {"openclipart": 500}}, {"openclipart": 1000})
    assert q["suspects"]["labels"] == [] and suspects_warning(str(tmp_path)) is None
    assert "(none: one origin, nothing to compare it with)" in (tmp_path / "label_quality.md").read_text()


def test_the_thresholds_are_inclusive():
    """On exactly 30% of a site's images, exactly half the label's images, exactly twice the site's share."""
    sizes = {"a": 100, "c": 300}  # a: a quarter of the 400 written images
    assert scaffold_suspect(60, {"a": 30, "c": 30}, sizes, 400)[0]  # 30/60 = 0.5 = 2 * 100/400
    assert not scaffold_suspect(60, {"a": 29, "c": 31}, sizes, 400)[0]  # on 29% of a: not bound
    assert not scaffold_suspect(62, {"a": 30, "c": 32}, sizes, 400)[0]  # 30/62 < 0.5
    assert not scaffold_suspect(60, {"a": 30, "c": 30}, {"a": 100, "c": 299}, 399)[0]  # 0.5 < 2 * 100/399


def test_the_report_records_its_rule(tmp_path):
    _report(tmp_path, LABELS, SITES)
    assert json.loads((tmp_path / "label_quality.json").read_text())["suspects"]["rule"] == {
        "concentration": 0.5,
        "lift": 2.0,
        "cover": 0.3,
    }
