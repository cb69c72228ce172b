"""Label quality on web captions, measured on templates the rules never saw (benchmarks/web_captions.py).

    python benchmarks/bench_web_labels.py --half heldout                       # the reported figures
    python benchmarks/bench_web_labels.py --half tune                          # what the rules were developed on
    python benchmarks/bench_web_labels.py --half fresh                         # templates written blind to the rules
    python benchmarks/bench_web_labels.py --half blind                         # a fourth set, also written blind
    python benchmarks/bench_web_labels.py --half blind5                        # a fifth set, also written blind
    python benchmarks/bench_web_labels.py --half blind6                        # a sixth set, also written blind
    python benchmarks/bench_web_labels.py --half heldout --old /tmp/old        # + the code before, side by side
    python benchmarks/bench_web_labels.py --half heldout --parity              # + local vs Ray, kill -9 + rerun
    python benchmarks/bench_web_labels.py --speed-rows 100000 --old /tmp/old   # text-pass speed/memory, old vs new

Each run mines ``configs/labels/img2dataset.yaml`` (PPMI embedder, short side 32, the rest as shipped) over the
generated corpus and reads the output shards back:

- template share: written images carrying a label that is not a term of their content (the clean caption:
  title + keywords of the drawing) -> aim <= 2%; ``by_template`` breaks it down per caption template;
- content lost: images that reached labelling (not a merged duplicate, not capped) whose caption or json shows a
  term of their content that is in the oracle vocabulary (content terms shown by at least 3 images) and
  that end with no label -> aim <= 5%;
- the generated series: copies read, written (<= ``curation.max_per_series`` per perceptual-hash variant), and
  written copies labelled with a term of its content;
- written + skipped = read, by reason (from the report);
- with ``--parity``: the shards and manifest byte-identical between the local pool and Ray, and after kill -9 of the
  driver mid-run + rerun;
- with ``--speed-rows``: benchmarks/bench_labels.py's corpus, text passes only, old and new code alternating in one
  process (1 and 2 workers): whole-run seconds, per-pass seconds and peak worker memory.

The content-lost and template-share figures need the truth the generator writes beside the corpus; the pipeline
never reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.web_captions import TEMPLATES, build_samples, load_content, write_corpus  # noqa: E402

PRESET = REPO / "configs" / "labels" / "img2dataset.yaml"
ORACLE_MIN_DF = 3  # a content word: shown by at least 3 images (the same oracle for every code under test)
RUN = ["cluster.embedder=ppmi", "image.short_side=32", "run.progress=false", "run.reduce_partitions=0"]


EXTRA: list[str] = []  # --set: config overrides for every mining run


def mine(repo: Path, corpus: Path, out: Path, overrides: list[str], workers: int = 2) -> tuple[dict, float]:
    """One ``mine_labels.py`` run of ``repo``'s code in a fresh process; its report stats and wall seconds."""
    cmd = [sys.executable, str(repo / "mine_labels.py"), "--config", str(repo / "configs/labels/img2dataset.yaml")]
    cmd += [f"sources.0.path={corpus}", f"output={out}", f"run.workers={workers}", *RUN, *EXTRA, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((out / "report" / "stats.json").read_text()), time.perf_counter() - t


def written_samples(out: Path) -> list[dict]:
    """The json of every written sample (shards read back with plain tarfile)."""
    import tarfile

    manifest = json.loads((out / "manifest.json").read_text())
    metas = []
    for split in ("train", "val"):
        for sh in manifest["splits"][split]["shards"]:
            with tarfile.open(out / sh["url"]) as tf:
                metas += [json.loads(tf.extractfile(m).read()) for m in tf if m.name.endswith(".json")]
    return metas


def quality(out: Path, truth: list[dict], stats: dict, max_series: int) -> dict:
    """The figures of the module docstring for one run (written with ``vocab.keep_unlabeled=true``)."""
    from labels.text import TermExtractor

    plain = TermExtractor(max_words=3)  # no boilerplate cut: every term a clean caption could give
    by_key = {t["key"]: t for t in truth}
    content_terms = {k: set(t for c in t["content"] for t in plain.terms(c)) for k, t in by_key.items()}
    # What the caption and json actually show of the content (a template may show the title alone).
    shown = {k: content_terms[k] & set(t for c in t["shown"] for t in plain.terms(c)) for k, t in by_key.items()}
    min_df = ORACLE_MIN_DF
    oracle_df = Counter(t for k, terms in shown.items() if not by_key[k]["series"] for t in terms)
    oracle = {t for t, n in oracle_df.items() if n >= min_df}
    samples = written_samples(out)
    template_hits: Counter[str] = Counter()
    by_template: dict[str, list] = {}  # template -> [written, with a label, with a non-content label, Counter]
    with_template = unlabelled_content = has_content = 0
    series_written = series_labelled = 0
    for meta in samples:
        key = meta["uids"][0].split(":", 1)[1]
        t = by_key[key]
        labels = meta["terms"]
        foreign = [x for x in labels if x not in content_terms[key]]
        row = by_template.setdefault(t["template"], [0, 0, 0, Counter()])
        row[0] += 1
        row[1] += bool(labels)
        if foreign:
            with_template += 1
            template_hits.update(foreign)
            row[2] += 1
            row[3].update(foreign)
        if shown[key] & oracle:
            has_content += 1
            unlabelled_content += not labels
        if t["series"]:
            series_written += 1
            series_labelled += bool(set(labels) & content_terms[key])
    labelled = sum(1 for m in samples if m["terms"])
    c = stats["counts"]
    # The report's suspect marker (labels.report.scaffold_suspect) against the oracle: a head label is a template word
    # when fewer than half of the written images carrying it have it among their content terms.
    carried: Counter[str] = Counter()
    as_content: Counter[str] = Counter()
    for meta in samples:
        key = meta["uids"][0].split(":", 1)[1]
        for x in meta["terms"]:
            carried[x] += 1
            as_content[x] += x in content_terms[key]
    head = json.loads((out / "report" / "label_quality.json").read_text())["head"]
    template_head = [h for h in head if as_content[h["label"]] < carried[h["label"]] / 2]
    content_head = [h for h in head if as_content[h["label"]] >= carried[h["label"]] / 2]
    return {
        "read": c["read"],
        "written_with_label": labelled,
        "skipped": c["skipped"],
        "identity_ok": c["read"] == c["written"] + sum(c["skipped"].values()),
        "template_share": round(with_template / max(labelled, 1), 4),
        "template_labels_top": template_hits.most_common(12),
        # per caption template: written, with a label, with a non-content label, its top non-content labels
        "by_template": {k: [*v[:3], v[3].most_common(4)] for k, v in sorted(by_template.items())},
        "content_lost_share": round(unlabelled_content / max(has_content, 1), 4),
        "content_lost": [unlabelled_content, has_content],
        "series": {
            "read": sum(1 for t in truth if t["series"]),
            "written": series_written,
            "labelled_by_content": series_labelled,
            "cap_per_variant": max_series,
        },
        "vocab": stats["vocab"]["raw"],
        "head": [t for t, _ in stats["top_labels"]["raw"][:12]],
        "suspects": {
            "head_labels": len(head),
            "template_flagged": [sum(h["suspect"] for h in template_head), len(template_head)],
            "content_flagged": [sum(h["suspect"] for h in content_head), len(content_head)],
            "template_missed": [h["label"] for h in template_head if not h["suspect"]],
            "content_flagged_labels": [h["label"] for h in content_head if h["suspect"]],
            # written images carrying at least one flagged template label, of those carrying a template label
            "template_images_flagged": _flagged_images(
                samples, content_terms, {h["label"] for h in head if h["suspect"]}
            ),
            "grid": _suspect_grid(samples, by_key, head, template_head),
        },
    }


SUSPECT_GRID = [(0.2, 0.5, 2.0), (0.25, 0.5, 2.0), (0.3, 0.5, 2.0), (0.3, 0.4, 2.0), (0.3, 0.5, 3.0), (0.4, 0.5, 2.0)]


def _suspect_grid(samples: list[dict], by_key: dict, head: list[dict], template_head: list[dict]) -> dict:
    """The suspect rule under other thresholds (cover, concentration, lift), from exact per-site counts of the written
    samples (the truth's site): "cover/concentration/lift" -> [template head labels flagged, content head labels
    flagged]."""
    from labels.report import scaffold_suspect

    site_written: Counter[str] = Counter()
    label_sites: dict[str, Counter] = {}
    for meta in samples:
        site = by_key[meta["uids"][0].split(":", 1)[1]]["site"]
        site_written[site] += 1
        for x in meta["terms"]:
            label_sites.setdefault(x, Counter())[site] += 1
    templates = {h["label"] for h in template_head}
    grid = {}
    for cover, conc, lift in SUSPECT_GRID:
        flagged = {
            h["label"]
            for h in head
            if scaffold_suspect(
                h["images"], label_sites.get(h["label"], {}), site_written, len(samples), cover, conc, lift
            )[0]
        }
        grid[f"{cover}/{conc}/{lift}"] = [len(flagged & templates), len(flagged - templates)]
    return grid


def _flagged_images(samples: list[dict], content_terms: dict, flagged: set[str]) -> list[int]:
    """[written images with a flagged non-content label, written images with any non-content label]."""
    hit = total = 0
    for meta in samples:
        key = meta["uids"][0].split(":", 1)[1]
        foreign = {x for x in meta["terms"] if x not in content_terms[key]}
        total += bool(foreign)
        hit += bool(foreign & flagged)
    return [hit, total]


def run_quality(repo: Path, corpus: Path, truth: list[dict], tmp: Path, name: str) -> dict:
    overrides = ["vocab.keep_unlabeled=true"]
    stats, wall = mine(repo, corpus, tmp / name, overrides)
    stats["pipeline"] = json.loads((tmp / name / "manifest.json").read_text())["pipeline_config"]
    max_series = int(stats["pipeline"]["curation"].get("max_per_series", 0))
    q = quality(tmp / name, truth, stats, max_series)
    default, _ = mine(repo, corpus, tmp / f"{name}_default", [])  # the preset as shipped: skips by reason
    q["default_counts"] = default["counts"]
    q["default_identity_ok"] = default["counts"]["read"] == default["counts"]["written"] + sum(
        default["counts"]["skipped"].values()
    )
    q["wall_s"] = round(wall, 1)
    return q


def output_bytes(out: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file()}
    if "manifest.json" in files:
        files["manifest.json"] = files["manifest.json"].replace(json.dumps(str(out)).encode(), b'"OUT"')
    return files


def parity(corpus: Path, tmp: Path) -> dict:
    """Local pool vs Ray, and kill -9 of the driver mid-run + rerun, against an uninterrupted local run."""
    res = {}
    mine(REPO, corpus, tmp / "p_local", [])
    ref = output_bytes(tmp / "p_local")
    mine(REPO, corpus, tmp / "p_ray", ["run.engine=ray"])
    res["local_vs_ray_identical"] = output_bytes(tmp / "p_ray") == ref
    for kill_in in ("map", "reduce", "write"):
        out = tmp / f"p_kill_{kill_in}"
        cmd = [sys.executable, str(REPO / "mine_labels.py"), "--config", str(PRESET), f"sources.0.path={corpus}"]
        cmd += [f"output={out}", "run.workers=2", *RUN]
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if list((out / "_work" / kill_in).glob("*/stats.json")):
                break
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        killed = proc.wait() == -signal.SIGKILL
        time.sleep(2)  # leftover pool workers of the killed driver finish (their writes are atomic)
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
        res[f"kill9_in_{kill_in}_then_rerun_identical"] = killed and output_bytes(out) == ref
    return res


def speed(old: Path, rows: int, tmp: Path, reps: int = 3) -> list[str]:
    """bench_labels.py's text-pass corpus, old and new code alternating, each run in one process (``run.workers=0``):
    CPU seconds of the whole run (the child's user + system time, which a loaded machine disturbs far less than wall
    time), per-pass task seconds and peak memory. Best of ``reps`` each."""
    import resource

    import benchmarks.bench_labels as bl

    corpus = tmp / "speed_corpus"
    bl.make_corpus(corpus, rows)
    results: dict[str, list[dict]] = {"old": [], "new": []}
    for rep in range(reps):
        for name, repo in (("old", old), ("new", REPO)):
            bl.REPO = repo  # run_cli starts repo/mine_labels.py in a fresh process
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            st = bl.run_cli(corpus, tmp / f"speed_{name}_{rep}", ["run.workers=0"])
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            st["cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            results[name].append(st)
            shutil.rmtree(tmp / f"speed_{name}_{rep}", ignore_errors=True)
    bl.REPO = REPO
    lines = []
    for name in ("old", "new"):
        runs = results[name]
        best = min(runs, key=lambda st: st["cpu_s"])
        passes = ", ".join(f"{k} {v['task_s']:.1f}s" for k, v in best["distributed"]["passes"].items())
        cpus = "/".join(f"{st['cpu_s']:.1f}" for st in runs)
        lines.append(
            f"  {name}: CPU {cpus} s (best {rows / best['cpu_s']:,.0f} samples per CPU-second; task seconds {passes});"
            f" peak memory {best['peak_rss_mb']:.0f} MB (one process: driver and tasks)"
        )
    o = min(st["cpu_s"] for st in results["old"])
    n = min(st["cpu_s"] for st in results["new"])
    lines.append(f"  new / old CPU seconds (best of {reps} each) = {n / o:.3f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--half", choices=sorted(TEMPLATES), default="heldout")
    ap.add_argument("--clipart", type=int, default=1200)
    ap.add_argument("--stamps", type=int, default=160)
    ap.add_argument("--old", type=Path, help="a checkout of the code before (git worktree add /tmp/old main)")
    ap.add_argument("--parity", action="store_true")
    ap.add_argument("--speed-rows", type=int, default=0)
    ap.add_argument("--no-quality", action="store_true")
    ap.add_argument("--set", action="append", default=[], help="a config override for every mining run (repeatable)")
    ap.add_argument("--cache", type=Path, default=REPO / "data" / "web_captions_cache")
    args = ap.parse_args()
    EXTRA.extend(args.set)
    print(f"cores: {os.cpu_count()}  python {sys.version.split()[0]}  load avg {os.getloadavg()[0]:.1f}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_web_") as d:
        tmp = Path(d)
        if not args.no_quality or args.parity:
            pools = load_content(args.half, args.clipart, args.stamps, cache=args.cache)
            samples = build_samples(args.half, pools)
            corpus = tmp / "corpus"
            write_corpus(corpus, samples)
            truth = [t for _, t in samples]
            print(f"corpus: {len(samples):,} samples, {args.half} templates, tars of 500", flush=True)
        if not args.no_quality:
            for name, repo in (("new", REPO), ("old", args.old)):
                if repo is None:
                    continue
                q = run_quality(repo, corpus, truth, tmp, name)
                print(f"\n[{name} code] {args.half} templates", flush=True)
                print(json.dumps(q, ensure_ascii=False))
                if "suspects" in q:
                    sus = q["suspects"]
                    print(
                        f"suspects ({args.half}, head {sus['head_labels']}): template labels flagged"
                        f" {sus['template_flagged'][0]}/{sus['template_flagged'][1]}, content labels flagged"
                        f" {sus['content_flagged'][0]}/{sus['content_flagged'][1]} {sus['content_flagged_labels']};"
                        f" images with a template label that carry a flagged one {sus['template_images_flagged'][0]}/"
                        f"{sus['template_images_flagged'][1]}; grid cover/concentration/lift -> [template, content]"
                        f" flagged {sus['grid']}",
                        flush=True,
                    )
        if args.parity:
            print("\nparity:", json.dumps(parity(corpus, tmp), indent=1), flush=True)
        if args.speed_rows:
            if args.old is None:
                raise SystemExit("--speed-rows needs --old")
            print(f"\ntext passes, {args.speed_rows:,} rows (bench_labels.py corpus), old vs new alternating:")
            print("\n".join(speed(args.old, args.speed_rows, tmp)), flush=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
