"""Small generated inputs for the label-pipeline tests (img2dataset tars, SVG folders, manifests)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import yaml
from PIL import Image

from configs.labels_schema import load_labels_config


def jpeg_bytes(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    """A small solid-colour JPEG (distinct colours give distinct bytes, hence distinct keys)."""
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG", quality=90)
    return out.getvalue()


def png_bytes(color: tuple[int, int, int, int], size: tuple[int, int] = (30, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", size, color).save(out, format="PNG")
    return out.getvalue()


def write_tar(path: Path, samples: list[dict]) -> Path:
    """An img2dataset-style tar: each sample dict maps an extension (``jpg``, ``txt``, ``json``) to
    bytes / str / dict, plus ``__key__``. Members are written in key order, extensions sorted."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for sample in samples:
            key = sample["__key__"]
            for ext in sorted(k for k in sample if k != "__key__"):
                value = sample[ext]
                if isinstance(value, dict):
                    value = json.dumps(value)
                if isinstance(value, str):
                    value = value.encode("utf-8")
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(value)
                tf.addfile(info, io.BytesIO(value))
    return path


# Captions with known terms: "cat" appears in 4 images, "car" in 3, "red" in 3 ...
CAPTIONS = [
    ("a black cat on a sofa", {"tags": ["cat", "pet"]}),
    ("the red car", {"tags": ["car", "vehicle"], "title": "Red car"}),
    ("two cats playing", {"tags": ["cat"]}),
    ("red apple on the table", {"tags": ["apple", "fruit"]}),
    ("an old car", {"tags": ["car"], "title": "Old car"}),
    ("kitten and cat", {"tags": ["cat", "kitten"]}),
    ("green apple", {"tags": ["apple", "fruit"]}),
    ("red bicycle", {"tags": ["bicycle", "vehicle"]}),
]


def img2dataset_samples(n: int, offset: int = 0) -> list[dict]:
    """``n`` well-formed samples cycling through ``CAPTIONS``, each with a distinct image."""
    out = []
    for i in range(n):
        caption, meta = CAPTIONS[i % len(CAPTIONS)]
        j = i + offset
        out.append(
            {
                "__key__": f"{j:09d}",
                "jpg": jpeg_bytes((j * 37 % 256, j * 91 % 256, j * 53 % 256 if j < 256 else (j // 256) * 17 % 256)),
                "txt": caption,
                "json": {**meta, "key": f"{j:09d}", "status": "success"},
            }
        )
    return out


def svg_bytes(
    title: str, keywords: list[str], description: str = "", creator: str = "Some Artist", color: str = "red"
) -> bytes:
    """An OpenClipArt-style SVG with RDF metadata."""
    lis = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
     width="60" height="40" viewBox="0 0 60 40">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title><dc:description>{description}</dc:description>
    <dc:subject><rdf:Bag>{lis}</rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>{creator}</dc:title></cc:Agent></dc:creator>
  </cc:Work></rdf:RDF></metadata>
  <rect x="5" y="5" width="50" height="30" fill="{color}"/>
</svg>""".encode()


# Well-formed XML that cairosvg's safe mode refuses to render (it forbids entity declarations).
SVG_RENDER_FAILS = b"""<?xml version="1.0"?>
<!DOCTYPE svg [ <!ENTITY ns_flows "http://ns.adobe.com/Flows/1.0/"> ]>
<svg xmlns="http://www.w3.org/2000/svg" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="http://web.resource.org/cc/" xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
     width="10" height="10"><metadata><rdf:RDF><cc:Work rdf:about=""><dc:title>Broken cat</dc:title>
  <dc:subject><rdf:Bag><rdf:li>cat</rdf:li></rdf:Bag></dc:subject></cc:Work></rdf:RDF></metadata>
  <rect width="10" height="10"/></svg>"""


def labels_config(tmp_path: Path, sources: list[dict], overrides: list[str] = (), out: str = "out"):
    """A validated pipeline config for ``sources`` writing to ``tmp_path/out``: inline image work, no
    progress bars, the PPMI embedder (no model load), small shards."""
    cfg_path = tmp_path / f"labels_{out}.yaml"
    cfg_path.write_text(yaml.safe_dump({"name": "test", "sources": sources}))
    base = [
        f"output={tmp_path / out}",
        "run.workers=0",
        "run.progress=false",
        "cluster.embedder=ppmi",
        "vocab.min_df=2",
        "image.short_side=32",
        "shards.maxcount=20",
        "split.scales=[0.1,0.5,1.0]",
        "split.val_fraction=0.2",
    ]
    return load_labels_config(cfg_path, base + list(overrides))


def read_shards(folder: Path, urls: list[str]) -> list[dict]:
    """Every sample of the given shards, read with plain webdataset (no decoders, no pickle)."""
    import webdataset as wds

    samples = []
    for url in urls:
        ds = wds.WebDataset(str(folder / url), shardshuffle=False, empty_check=False)
        for s in ds:
            samples.append({"__key__": s["__key__"], "__url__": url, "jpg": s["jpg"], "json": json.loads(s["json"])})
    return samples
