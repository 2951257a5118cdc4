"""A deterministic demo corpus: four shards of real and procedural images with ground truth.

:func:`build_demo_corpus` writes a source root that exercises every path of the pipeline:

* ``shard-000/`` — a folder shard (``.jpg``/``.png``/a few ``.webp`` plus specials), with a
  nested ``sub/`` folder, ``name.txt`` caption sidecars and a ``_SUCCESS`` marker;
* ``shard-001.tar`` — a WebDataset-style tar (``sampleNNNNNN.jpg`` + optional ``.txt``/``.json``);
* ``shard-002.csv`` / ``shard-003.parquet`` — manifests (``path``, ``caption``) whose images
  live under ``_manifest_images/<shard stem>/`` (ignored by shard discovery);
* ``ground_truth.json`` — one record per enumerable input (see :func:`load_ground_truth`).

Content: ``n_base`` distinct base images (about a third cut from the photographs bundled with
scikit-image, the rest procedural), planted near duplicates (crop, re-encode, flip, colour
shift, rotate, resize), planted byte-identical duplicates, planted corrupt inputs (truncated,
empty, not an image, missing, orphan sidecar, decompression bomb) and a few unusual but valid
encodings (EXIF-rotated JPEG, animated GIF, RGBA, palette, grayscale and 16-bit PNG).

Nothing is downloaded: only image files present in the installed scikit-image wheel's data
folder are read (missing ones are skipped). The same ``seed`` gives byte-identical files.

The steps, one module each: :mod:`~.layout` (shard names, item kinds, planting rates),
:mod:`~.bases` (the distinct base images), :mod:`~.plan` (every item: shard, kind, edit,
format, caption, order) and :mod:`~.render` (bytes, shards on disk, ``ground_truth.json``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation_assets.tools.demo.bases import make_bases
from curation_assets.tools.demo.layout import (
    CORRUPT_KINDS,
    EDITS,
    GENERATOR_VERSION,
    GROUND_TRUTH_FILE,
    ITEM_KINDS,
    MANIFEST_IMAGES_DIR,
    MIN_N_BASE,
    SHARDS,
    SPECIAL_TAGS,
)
from curation_assets.tools.demo.plan import plan_items
from curation_assets.tools.demo.render import (
    name_items,
    render_items,
    write_ground_truth,
    write_shards,
)

__all__ = [
    "CORRUPT_KINDS",
    "DEMO_CATEGORY",
    "EDITS",
    "GENERATOR_VERSION",
    "ITEM_KINDS",
    "ITEM_SCHEMA",
    "MIN_N_BASE",
    "SHARDS",
    "SPECIAL_TAGS",
    "DemoCorpus",
    "build_demo_corpus",
    "load_ground_truth",
    "write_seed_labels",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoCorpus:
    """A demo source root built by :func:`build_demo_corpus`.

    Attributes:
        root: The source root (absolute).
        ground_truth_path: Path of ``ground_truth.json``.
        shards: Shard names (entries under ``root``), sorted.
    """

    root: Path
    ground_truth_path: Path
    shards: list[str]

    def load_items(self) -> pl.DataFrame:
        """The ground-truth items as a frame (see :func:`load_ground_truth`)."""
        return load_ground_truth(self.ground_truth_path)

    @property
    def items(self) -> pl.DataFrame:
        """The ground-truth items as a frame (same as :meth:`load_items`)."""
        return self.load_items()


ITEM_SCHEMA: dict[str, Any] = {
    "shard": pl.String,
    "source_uri": pl.String,
    "relpath": pl.String,
    "kind": pl.String,
    "base_id": pl.Int64,
    "edit": pl.String,
    "duplicate_of": pl.String,
    "corrupt": pl.String,
    "caption": pl.String,
    "attr_source": pl.String,
    "attr_palette": pl.String,
    "attr_orientation": pl.String,
    "special": pl.List(pl.String),
}
"""Columns of the frame returned by :func:`load_ground_truth`."""


def load_ground_truth(path: Path) -> pl.DataFrame:
    """Load ``ground_truth.json`` as one row per enumerable input.

    Columns are :data:`ITEM_SCHEMA`: the JSON item fields, with ``attributes`` flattened into
    ``attr_source``, ``attr_palette`` and ``attr_orientation`` (null for corrupt items) and
    ``special`` as a list of strings. ``relpath`` is the input relative to the root
    (``shard-001.tar#member`` for tar members).

    Args:
        path: Path of a ``ground_truth.json`` written by :func:`build_demo_corpus`.

    Returns:
        The items in enumeration order (shard by shard).
    """
    doc = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for item in doc["items"]:
        attrs = item.get("attributes") or {}
        rows.append(
            {
                "shard": item["shard"],
                "source_uri": item["source_uri"],
                "relpath": item.get("relpath"),
                "kind": item["kind"],
                "base_id": item.get("base_id"),
                "edit": item.get("edit"),
                "duplicate_of": item.get("duplicate_of"),
                "corrupt": item.get("corrupt"),
                "caption": item.get("caption"),
                "attr_source": attrs.get("source"),
                "attr_palette": attrs.get("palette"),
                "attr_orientation": attrs.get("orientation"),
                "special": list(item.get("special") or []),
            }
        )
    return pl.DataFrame(rows, schema=ITEM_SCHEMA)


def build_demo_corpus(dest: Path, *, seed: int = 0, n_base: int = 360) -> DemoCorpus:
    """Create (or reuse) the demo source root ``dest``.

    When ``dest/ground_truth.json`` already records the same generator version, ``seed`` and
    ``n_base`` (and all shards exist), nothing is rewritten. Otherwise the corpus's own entries
    (the four shards, ``_manifest_images`` and ``ground_truth.json``) are replaced; other
    entries under ``dest`` are left alone. Shards are written under temporary names and renamed
    when complete; ``ground_truth.json`` is written last.

    Args:
        dest: Source root to create.
        seed: Non-negative seed of every random choice; the same seed gives byte-identical
            files.
        n_base: Number of distinct base images (at least 24).

    Returns:
        The corpus.

    Raises:
        ValueError: If ``seed`` is negative or ``n_base`` too small to plant every kind of item.
    """
    if seed < 0:
        msg = f"seed={seed} must be non-negative"
        raise ValueError(msg)
    if n_base < MIN_N_BASE:
        msg = f"n_base={n_base} is too small; use at least {MIN_N_BASE}"
        raise ValueError(msg)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    gt_path = root / GROUND_TRUTH_FILE
    corpus = DemoCorpus(root, gt_path, sorted(SHARDS))
    if _is_complete(root, seed=seed, n_base=n_base):
        logger.info(
            "demo corpus at %s is complete (seed=%d, n_base=%d); reusing", root, seed, n_base
        )
        return corpus
    started = time.perf_counter()
    _remove_own_entries(root)
    bases = make_bases(seed, n_base)
    specs = plan_items(seed, bases)
    render_items(seed, bases, specs)
    name_items(root, specs)
    write_shards(root, specs)
    write_ground_truth(root, seed, n_base, specs)
    logger.info(
        "built demo corpus at %s: %d bases, %d items in %.1fs",
        root,
        n_base,
        len(specs),
        time.perf_counter() - started,
    )
    return corpus


# ------------------------------------------------------------------------------ helpers


def _is_complete(root: Path, *, seed: int, n_base: int) -> bool:
    gt = root / GROUND_TRUTH_FILE
    if not gt.is_file():
        return False
    try:
        doc = json.loads(gt.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    same = (
        isinstance(doc, dict)
        and doc.get("generator_version") == GENERATOR_VERSION
        and doc.get("seed") == seed
        and doc.get("n_base") == n_base
    )
    if not same:
        logger.info("demo corpus at %s was built with other settings; rebuilding", root)
        return False
    return all((root / s).exists() for s in SHARDS)


def _remove_own_entries(root: Path) -> None:
    names = [*SHARDS, MANIFEST_IMAGES_DIR, GROUND_TRUTH_FILE]
    names += [f"{n}.tmp" for n in names]
    # The ground truth goes first so that a half-removed corpus is never taken as complete.
    for name in sorted(names, key=lambda n: not n.startswith(GROUND_TRUTH_FILE)):
        p = root / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


DEMO_CATEGORY = "demo_photograph"
"""The demo's stand-in unwanted category (see configs/categories.yaml): real photographs."""


def write_seed_labels(
    corpus: DemoCorpus, *, n_pos: int = 80, n_neg: int = 200, seed: int = 0
) -> Path:
    """Write a CSV of seed labels for :data:`DEMO_CATEGORY`, drawn from the ground truth.

    Labels are taken only from original images (not their copies), ``n_pos`` photographs and
    ``n_neg`` procedural images chosen at random with ``seed``. The file lives under
    ``<root>/_labels/`` (ignored by shard discovery) and has the columns ``source_uri,
    category, label`` that ``curation labels import`` reads.

    Returns:
        The CSV path.
    """
    gt = corpus.load_items().filter(pl.col("kind") == "original")
    rng = np.random.default_rng(seed)
    picks = []
    for source, n, label in (("photo", n_pos, 1), ("procedural", n_neg, 0)):
        pool = gt.filter(pl.col("attr_source") == source)["source_uri"].unique().sort()
        chosen = rng.choice(pool.len(), size=min(n, pool.len()), replace=False)
        picks.append(pl.DataFrame({"source_uri": pool.gather(np.sort(chosen)), "label": label}))
    out = corpus.root / "_labels" / "seed_labels.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    labels = pl.concat(picks).select("source_uri", category=pl.lit(DEMO_CATEGORY), label="label")
    labels.write_csv(out)
    return out
