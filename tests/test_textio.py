"""Line-safe text files: hostile values through every writer the repo uses, read back with several line splitters."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from studies.report import write_records_csv
from studies.tables import Cell, Table
from tracking.sample_keys import read_records
from tracking.textio import LINE_BREAKS, escape_cell, json_line, read_jsonl, split_lines, unescape_cell, write_jsonl

HOSTILE = ["a\x85b", "a\u2028b", "a\u2029b", "a\rb", "a\r\nb", "a\nb", "\x0b\x0c\x1c\x1d\x1e", "tab\there", "\\n", "\\"]
# Text biased towards line breaks, backslashes and the delimiters.
VALUE = st.text(
    alphabet=st.sampled_from(list(LINE_BREAKS) + list('\\|\t,"ab u0n')) | st.characters(codec="utf-8"), max_size=30
)


def _assert_every_splitter_sees(text: str, path: Path, n: int) -> None:
    assert len(text.splitlines()) == n  # every Unicode line boundary
    assert len(split_lines(text)) == n
    with open(path, encoding="utf-8") as f:  # universal newlines: \r and \r\n end a line too
        assert sum(1 for _ in f) == n
    with open(path, encoding="utf-8", newline="") as f:
        assert sum(1 for _ in f) == n
    assert not any(c in LINE_BREAKS.replace("\n", "") for c in text)


def test_json_line_escapes_what_json_dumps_leaves_raw():
    assert "\u2028" in json.dumps("\u2028", ensure_ascii=False)  # the bug class: json.dumps keeps it raw
    line = json_line({"t": "a\x85b\u2028c\u2029d", "n": 1}, sort_keys=True, separators=(",", ":"))
    assert line == '{"n":1,"t":"a\\u0085b\\u2028c\\u2029d"}\n'
    assert json_line({"k": "ünïcode 猫"}) == '{"k": "ünïcode 猫"}\n'  # other text stays readable
    assert split_lines("a\x85b\nc\n") == ["a\x85b", "c"] and split_lines("a\nb", keepends=True) == ["a\n", "b"]


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.dictionaries(VALUE, VALUE | st.lists(VALUE, max_size=3), max_size=3), max_size=5))
@example([{"desc": v} for v in HOSTILE])
def test_jsonl_records_round_trip_through_every_line_splitter(tmp_path, records):
    path = tmp_path / "x.jsonl"
    assert write_jsonl(path, records) == len(records)
    text = path.read_text(encoding="utf-8")
    _assert_every_splitter_sees(text, path, len(records))
    assert [json.loads(line) for line in text.splitlines()] == records
    assert list(read_jsonl(path)) == records
    assert read_records(path) == records  # tracking.sample_keys reads the same way


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(VALUE, min_size=3, max_size=3), max_size=5))
@example([HOSTILE[:3], HOSTILE[3:6], HOSTILE[6:9]])
def test_escaped_cells_round_trip_through_csv_tsv_and_line_splitters(tmp_path, rows):
    csv_path, tsv_path = tmp_path / "x.csv", tmp_path / "x.tsv"
    with open(csv_path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([[escape_cell(v) for v in row] for row in rows])
    tsv_path.write_text("".join("\t".join(escape_cell(v) for v in row) + "\n" for row in rows), encoding="utf-8")
    for path in (csv_path, tsv_path):
        _assert_every_splitter_sees(path.read_text(encoding="utf-8"), path, len(rows))
    with open(csv_path, encoding="utf-8", newline="") as f:
        assert [[unescape_cell(v) for v in row] for row in csv.reader(f)] == rows
    lines = tsv_path.read_text(encoding="utf-8").splitlines()
    assert [[unescape_cell(v) for v in line.split("\t")] for line in lines] == rows


@given(VALUE)
@example("model \\ data scale")
@example("\\\\u2028\\")
def test_escape_cell_is_reversible_and_leaves_plain_backslashes(value):
    for extra in ("", "|"):
        escaped = escape_cell(value, extra=extra)
        assert unescape_cell(escaped, extra=extra) == value
        assert not any(c in escaped for c in LINE_BREAKS + "\t")
    assert escape_cell("model \\ data scale") == "model \\ data scale"


@pytest.mark.parametrize("label", HOSTILE)
def test_report_tables_and_records_csv_keep_one_row_per_line(tmp_path, label):
    table = Table(name="t", title="T", row_header="model", columns=["0.1"])
    table.rows = [(label, [Cell((0.5,))]), ("plain", [None])]
    markdown = table.to_markdown()
    rows = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(rows) == 4 and all(line.count(" | ") == 1 for line in rows[2:])  # header, rule, 2 rows of 2 cells
    assert len(table.to_csv().splitlines()) == 3
    with io.StringIO(table.to_csv(), newline="") as f:
        assert [unescape_cell(r[0]) for r in csv.reader(f)] == ["model", label, "plain"]
    path = write_records_csv([{"model": label, "eval/m": 0.5}, {"model": "b"}], tmp_path / "records.csv")
    assert len(path.read_text(encoding="utf-8").splitlines()) == 3
    with open(path, encoding="utf-8", newline="") as f:
        got = list(csv.DictReader(f))
    assert [unescape_cell(r["model"]) for r in got] == [label, "b"] and got[0]["eval/m"] == "0.5"
