"""The labels table: label rows validated all-or-nothing, imported, and the labels in force.

Labels arrive as files (:mod:`~curation_assets.lib.classify.label_files` parses them) and are
appended to the ``labels`` table (:data:`LABELS`); the next materialization of the classifiers
retrains on them.

Import (:func:`import_labels`) is all-or-nothing: unknown images, unknown categories, invalid
label values and contradictions (within the file, or against labels already imported) make
it raise :class:`LabelImportError` with a readable report and import nothing. Exact repeats of
labels already imported are dropped. To correct an earlier label, import with
``allow_relabel=True``: the new row is appended and :func:`current_labels` (latest
``labeled_at`` wins) is what training reads.
"""

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from curation_assets.lib.errors import PermanentError
from curation_assets.lib.tables import LABELS

logger = logging.getLogger(__name__)


PROBLEMS_SCHEMA = pl.Schema(
    {
        "kind": pl.String,
        "where": pl.String,
        "image_id": pl.String,
        "source_uri": pl.String,
        "category": pl.String,
        "label_raw": pl.String,
        "detail": pl.String,
    }
)

PROBLEM_KINDS: dict[str, str] = {
    "missing_image": "the row names neither an image_id nor a source_uri/path",
    "unknown_image": "no ingested image has this image_id / source_uri",
    "ambiguous_path": "the path suffix matches several ingested images; give the full path",
    "conflicting_image": "image_id and source_uri name different images",
    "missing_category": "the row has no category",
    "unknown_category": "the category is not in the category spec",
    "invalid_label": "the label is not one of 1/0, true/false, yes/no, pos/neg",
    "contradiction_in_file": "the file gives this image and category both labels",
    "contradiction_with_existing": "an earlier import gave this image and category the other label",
}
"""Problem kinds reported by :func:`validate_labels`, with what they mean."""


EXAMPLES_PER_PROBLEM = 5


class LabelImportError(PermanentError, ValueError):
    """A label import was refused; nothing was imported.

    Attributes:
        problems: One row per problem (:data:`PROBLEMS_SCHEMA`).
    """

    def __init__(self, message: str, problems: pl.DataFrame) -> None:
        super().__init__(message)
        self.problems = problems


def _normalize_uri(uri: str) -> str:
    """Absolute, normalized path (the tar part of ``tar#member``); other URIs unchanged."""
    if "://" in uri:
        return uri
    head, sep, member = uri.partition("#")
    return os.path.normpath(os.path.abspath(os.path.expanduser(head))) + sep + member


class _Resolver:
    """source_uri → image_id against the ingested images (exact, normalized, unique suffix).

    Memory: only the known rows whose id or uri the label file names are materialized
    (``is_in`` filters), so a corpus of millions of images costs one scan, not a dict.
    """

    def __init__(self, known_images: pl.DataFrame, new: pl.DataFrame) -> None:
        known = known_images.select("image_id", "source_uri")
        self.known = known.drop_nulls("source_uri")
        wanted_ids = new["image_id"].drop_nulls().unique().to_list()
        self.ids = set(known.filter(pl.col("image_id").is_in(wanted_ids))["image_id"].to_list())
        uris = new["source_uri"].drop_nulls().unique().to_list()
        candidates = set(uris) | {_normalize_uri(u) for u in uris}
        hits = self.known.filter(pl.col("source_uri").is_in(list(candidates)))
        self.exact = dict(zip(hits["source_uri"], hits["image_id"], strict=True))

    def resolve(self, uri: str) -> tuple[str | None, str | None]:
        """Return ``(image_id, problem_kind)``."""
        for candidate in (uri, _normalize_uri(uri)):
            if candidate in self.exact:
                return self.exact[candidate], None
        suffix = uri.replace(os.sep, "/")
        while suffix.startswith("./"):
            suffix = suffix[2:]
        if not suffix or os.path.isabs(uri) or "://" in uri:
            return None, "unknown_image"
        found = self.known.filter(
            pl.col("source_uri").str.ends_with("/" + suffix)
            | pl.col("source_uri").str.ends_with("#" + suffix)
        )["image_id"].unique()
        if found.len() == 1:
            return str(found[0]), None
        return None, "ambiguous_path" if found.len() > 1 else "unknown_image"


def current_labels(labels: pl.DataFrame) -> pl.DataFrame:
    """The label in force per (image_id, category): the latest ``labeled_at`` wins.

    Args:
        labels: Rows of :data:`LABELS` (any order).

    Returns:
        One row per (image_id, category), sorted by category then image_id.
    """
    if labels.is_empty():
        return LABELS.empty()
    return (
        labels.with_row_index("_i")
        .sort("labeled_at", "_i", nulls_last=False)
        .unique(["image_id", "category"], keep="last")
        .drop("_i")
        .sort("category", "image_id")
        .select(LABELS.column_names)
    )


def validate_labels(
    new: pl.DataFrame,
    *,
    known_images: pl.DataFrame,
    categories: Iterable[str],
    existing: pl.DataFrame,
    allow_relabel: bool = False,
    now: datetime | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Resolve and check parsed label rows.

    Args:
        new: Parsed rows
            (:data:`~curation_assets.lib.classify.label_files.PARSED_LABELS_SCHEMA`).
        known_images: Ingested images: ``image_id`` and ``source_uri`` (from ``raw_images``).
        categories: Category names of the spec.
        existing: Labels already imported (:data:`LABELS`).
        allow_relabel: Accept a label that differs from an existing one (a correction)
            instead of reporting a contradiction.
        now: Time stamped on rows without ``labeled_at`` (default: now, UTC).

    Returns:
        ``(valid_rows, problems)``: valid rows in the :data:`LABELS` schema (blank-label rows
        dropped; exact repeats kept, see :func:`import_labels`), and one row per problem
        (:data:`PROBLEMS_SCHEMA`, kinds in :data:`PROBLEM_KINDS`).
    """
    cats = set(categories)
    stamp = now or datetime.now(UTC)
    resolver = _Resolver(known_images, new)
    problems: list[dict[str, Any]] = []
    candidates: list[dict[str, Any]] = []

    def report(rec: dict[str, Any], kind: str, detail: str) -> None:
        problems.append(
            {k: rec.get(k) for k in ("where", "image_id", "source_uri", "category", "label_raw")}
            | {"kind": kind, "detail": detail}
        )

    for rec in new.iter_rows(named=True):
        if rec["label_raw"] is None:
            continue  # not labelled yet
        bad = False
        image_id = rec["image_id"]
        if image_id is not None:
            if image_id not in resolver.ids:
                report(rec, "unknown_image", f"image_id {image_id!r} is not in raw_images")
                bad = True
            elif rec["source_uri"] is not None:
                other, _ = resolver.resolve(rec["source_uri"])
                if other is not None and other != image_id:
                    report(rec, "conflicting_image", f"source_uri is image {other[:12]}…")
                    bad = True
        elif rec["source_uri"] is not None:
            image_id, kind = resolver.resolve(rec["source_uri"])
            if kind == "ambiguous_path":
                report(rec, kind, "several ingested images end with this path; give more of it")
                bad = True
            elif kind is not None:
                report(rec, kind, "no raw_images row has this source_uri (or a path ending so)")
                bad = True
        else:
            report(rec, "missing_image", PROBLEM_KINDS["missing_image"])
            bad = True
        if rec["category"] is None:
            report(rec, "missing_category", PROBLEM_KINDS["missing_category"])
            bad = True
        elif rec["category"] not in cats:
            report(
                rec,
                "unknown_category",
                f"category {rec['category']!r} is not one of {sorted(cats)}",
            )
            bad = True
        if rec["label"] is None:
            report(
                rec,
                "invalid_label",
                "expected 1/0, true/false, yes/no or pos/neg (or empty: not labelled yet)",
            )
            bad = True
        if not bad:
            candidates.append(rec | {"image_id": image_id})

    # Contradictions within the file.
    seen: dict[tuple[str, str], dict[int, list[dict[str, Any]]]] = {}
    for rec in candidates:
        seen.setdefault((rec["image_id"], rec["category"]), {}).setdefault(rec["label"], []).append(
            rec
        )
    contradicted: set[tuple[str, str]] = set()
    for key, by_label in seen.items():
        if len(by_label) > 1:
            contradicted.add(key)
            places = {
                lab: ", ".join(r["where"] for r in rs[:3]) + (", …" if len(rs) > 3 else "")
                for lab, rs in by_label.items()
            }
            for rs in by_label.values():
                for rec in rs:
                    report(
                        rec,
                        "contradiction_in_file",
                        f"label 1 at {places[1]} but label 0 at {places[0]}",
                    )
    candidates = [r for r in candidates if (r["image_id"], r["category"]) not in contradicted]

    # Contradictions with labels imported before.
    if candidates and not existing.is_empty():
        before = current_labels(existing)
        lookup = {
            (i, c): (lab, src)
            for i, c, lab, src in before.select(
                "image_id", "category", "label", "source"
            ).iter_rows()
        }
        kept = []
        for rec in candidates:
            prev = lookup.get((rec["image_id"], rec["category"]))
            if prev is not None and prev[0] != rec["label"] and not allow_relabel:
                report(
                    rec,
                    "contradiction_with_existing",
                    f"labelled {prev[0]} before (from {prev[1]}), {rec['label']} now; "
                    "pass allow_relabel=True if this is a correction",
                )
                continue
            kept.append(rec)
        candidates = kept

    valid = LABELS.empty()
    if candidates:
        records = [
            {
                "image_id": r["image_id"],
                "category": r["category"],
                "label": r["label"],
                "source": r["source"],
                "labeled_at": r["labeled_at"] or stamp,
            }
            for r in candidates
        ]
        valid = pl.DataFrame(records, schema=LABELS.schema, orient="row")
    problem_frame = (
        pl.DataFrame(problems, schema=PROBLEMS_SCHEMA, orient="row")
        if problems
        else pl.DataFrame(schema=PROBLEMS_SCHEMA)
    )
    return valid, problem_frame


@dataclass
class LabelImport:
    """Rows to append to ``labels`` and what happened to the file's rows.

    Attributes:
        rows: New rows (:data:`LABELS` schema), to append.
        n_rows: Rows parsed from the file.
        n_blank: Rows without a label (not labelled yet), skipped.
        n_repeats_in_file: Exact repeats within the file, dropped.
        n_already_labelled: Labels identical to the label in force, dropped.
        n_relabelled: Rows that change an existing label (only with ``allow_relabel``).
    """

    rows: pl.DataFrame
    n_rows: int
    n_blank: int
    n_repeats_in_file: int
    n_already_labelled: int
    n_relabelled: int = 0
    per_category: dict[str, dict[str, int]] = field(default_factory=dict)


def format_problems(problems: pl.DataFrame, *, n_rows: int, source: str) -> str:
    """A readable multi-line report: counts per kind and the first examples of each."""
    lines = [
        f"label import from {source} refused: {problems.height} problems in {n_rows} rows; "
        "nothing was imported."
    ]
    for kind in PROBLEM_KINDS:
        sub = problems.filter(pl.col("kind") == kind)
        if sub.is_empty():
            continue
        lines.append(f"  {kind} ({sub.height}): {PROBLEM_KINDS[kind]}")
        for rec in sub.head(EXAMPLES_PER_PROBLEM).iter_rows(named=True):
            ref = rec["image_id"] or rec["source_uri"] or "?"
            ref = ref[:16] + "…" if rec["image_id"] and len(ref) > 16 else ref
            lines.append(
                f"    {rec['where']}: image {ref}, category {rec['category']!r}, "
                f"label {rec['label_raw']!r} — {rec['detail']}"
            )
        if sub.height > EXAMPLES_PER_PROBLEM:
            lines.append(f"    … and {sub.height - EXAMPLES_PER_PROBLEM} more")
    lines.append("Fix these rows in the file and import it again.")
    return "\n".join(lines)


def import_labels(
    new: pl.DataFrame,
    *,
    known_images: pl.DataFrame,
    categories: Iterable[str],
    existing: pl.DataFrame,
    allow_relabel: bool = False,
    now: datetime | None = None,
) -> LabelImport:
    """Validate a parsed label file and return the rows to append — all or nothing.

    Args:
        new: Parsed rows (``parse_labels_csv`` / ``parse_label_studio`` of
            :mod:`~curation_assets.lib.classify.label_files`).
        known_images: ``image_id``, ``source_uri`` of ingested images.
        categories: Category names of the spec.
        existing: The ``labels`` table so far.
        allow_relabel: Accept changes to existing labels (appended; latest wins).
        now: Time stamped on rows without ``labeled_at``.

    Returns:
        The :class:`LabelImport`; its ``rows`` exclude exact repeats (within the file and of
        the label already in force).

    Raises:
        LabelImportError: If any row has a problem; its message lists counts and examples
            per kind, ``.problems`` holds them all. Nothing is to be written then.
    """
    valid, problems = validate_labels(
        new,
        known_images=known_images,
        categories=categories,
        existing=existing,
        allow_relabel=allow_relabel,
        now=now,
    )
    sources = sorted(set(new["source"].drop_nulls().to_list())) or ["<empty file>"]
    if not problems.is_empty():
        msg = format_problems(problems, n_rows=new.height, source=", ".join(sources))
        raise LabelImportError(msg, problems)
    n_blank = int(new["label_raw"].is_null().sum())
    unique = valid.unique(["image_id", "category", "label"], keep="first", maintain_order=True)
    n_repeats = valid.height - unique.height
    n_already = n_relabelled = 0
    if not existing.is_empty() and not unique.is_empty():
        before = current_labels(existing).select(
            "image_id", "category", pl.col("label").alias("_prev")
        )
        joined = unique.join(before, on=["image_id", "category"], how="left")
        same = pl.col("_prev") == pl.col("label")
        n_already = int(joined.filter(same).height)
        n_relabelled = int(joined.filter(pl.col("_prev").is_not_null() & ~same).height)
        unique = joined.filter(pl.col("_prev").is_null() | ~same).select(LABELS.column_names)
    per_category = {
        str(cat): {"positive": int(pos), "negative": int(n - pos)}
        for cat, n, pos in unique.group_by("category")
        .agg(pl.len(), pl.col("label").cast(pl.Int64).sum())
        .sort("category")
        .iter_rows()
    }
    logger.info(
        "labels from %s: %d rows, %d new, %d blank, %d repeats, %d already labelled, %d relabelled",
        ", ".join(sources),
        new.height,
        unique.height,
        n_blank,
        n_repeats,
        n_already,
        n_relabelled,
    )
    return LabelImport(
        rows=LABELS.conform(unique),
        n_rows=new.height,
        n_blank=n_blank,
        n_repeats_in_file=n_repeats,
        n_already_labelled=n_already,
        n_relabelled=n_relabelled,
        per_category=per_category,
    )
