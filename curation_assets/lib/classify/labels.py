"""Labels: parse label files, validate them all-or-nothing, export the label queue.

Labels arrive as files and are appended to the ``labels`` table (:data:`LABELS`); the next
materialization of the classifiers retrains on them. Two formats are read:

* **CSV** (:func:`parse_labels_csv`): a header row with ``image_id`` *or* ``source_uri`` /
  ``path`` (the image's location as ingested; a path relative to the source root or any
  unambiguous path suffix also resolves), ``category`` and ``label`` (``1/0``, ``true/false``,
  ``yes/no``, ``pos/neg``, ``positive/negative``; case-insensitive). A row with an empty label
  is *not labelled yet* and is skipped, so a half-filled queue CSV imports cleanly. Other
  columns are ignored.
* **Label Studio JSON export** (:func:`parse_label_studio`) of tasks made by
  :func:`export_queue_label_studio` and labelled with :func:`label_studio_config`'s
  interface. Each non-cancelled annotation gives labels from its ``choices``:

  - a bare category name (``"hat"``) — positive for that category;
  - ``"<category>:<label>"`` (``"hat:no"``) — that label for that category;
  - a bare label word (``"yes"`` / ``"no"``) in a ``<Choices name="<category>">`` block —
    that label for the block's category;
  - the task's queued category (``data.category``) when the annotation gives it no label —
    negative (the annotator looked for it and did not tick it).

  Several annotations of one task are several label rows: disagreements surface as
  contradictions.

Import (:func:`import_labels`) is all-or-nothing: unknown images, unknown categories, invalid
label values and contradictions (within the file, or against labels already imported) make
it raise :class:`LabelImportError` with a readable report and import nothing. Exact repeats of
labels already imported are dropped. To correct an earlier label, import with
``allow_relabel=True``: the new row is appended and :func:`current_labels` (latest
``labeled_at`` wins) is what training reads.

The label queue (``active.build_label_queue``) is exported for people as a CSV, a Label Studio
task file, and a self-contained HTML contact sheet (:func:`export_queue_html`).
"""

import base64
import csv
import html
import io
import json
import logging
import os
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlparse
from xml.sax.saxutils import quoteattr

import polars as pl
from PIL import Image

from curation_assets.lib.ingest import DecodeLimits, decode_image
from curation_assets.lib.tables import Column, TableSpec

logger = logging.getLogger(__name__)

_TS = pl.Datetime("us", "UTC")

LABELS = TableSpec(
    name="labels",
    description="One human (or seeded) label of one image for one category; append-only.",
    partition_by=(),
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes (joins raw_images)."),
        Column("category", pl.String, "Category name from the category spec."),
        Column("label", pl.Int8, "1 = shows the category (unwanted), 0 = does not."),
        Column(
            "source",
            pl.String,
            "Where the label came from: csv:<file>, label_studio:<file> or demo_seed.",
        ),
        Column("labeled_at", _TS, "When the label was given (annotation time) or imported (UTC)."),
    ),
)

PARSED_LABELS_SCHEMA = pl.Schema(
    {
        "where": pl.String,
        "image_id": pl.String,
        "source_uri": pl.String,
        "category": pl.String,
        "label_raw": pl.String,
        "label": pl.Int8,
        "source": pl.String,
        "labeled_at": _TS,
    }
)
"""Rows of a parsed label file, before validation: ``where`` locates the row in the file
(``line 7``, ``task 12 annotation 3``); ``label`` is null when ``label_raw`` is blank (not
labelled yet) or not a label word (reported by :func:`validate_labels`)."""

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

POSITIVE_WORDS = frozenset({"1", "1.0", "true", "t", "yes", "y", "pos", "positive"})
NEGATIVE_WORDS = frozenset({"0", "0.0", "false", "f", "no", "n", "neg", "negative"})
IMAGE_ID_COLUMNS = ("image_id",)
SOURCE_COLUMNS = ("source_uri", "path", "uri", "image", "file", "filepath")
LOCAL_FILES_PREFIX = "/data/local-files/?d="
"""Label Studio's URL for local-storage files; needs ``LOCAL_FILES_SERVING_ENABLED=true``."""
THUMBNAIL_PX = 160
EXAMPLES_PER_PROBLEM = 5


class LabelFileError(ValueError):
    """A label file as a whole cannot be read (missing columns, not JSON, wrong structure)."""


class LabelImportError(ValueError):
    """A label import was refused; nothing was imported.

    Attributes:
        problems: One row per problem (:data:`PROBLEMS_SCHEMA`).
    """

    def __init__(self, message: str, problems: pl.DataFrame) -> None:
        super().__init__(message)
        self.problems = problems


def parse_label_value(value: Any) -> int | None:
    """``1/0``, ``true/false``, ``yes/no``, ``pos/neg`` (any case) → 1/0; anything else None."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    word = str(value).strip().lower()
    if word in POSITIVE_WORDS:
        return 1
    if word in NEGATIVE_WORDS:
        return 0
    return None


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _clean(value: Any) -> str | None:
    return None if _blank(value) else str(value).strip()


def _row(
    where: str,
    image_id: Any,
    source_uri: Any,
    category: Any,
    label_raw: Any,
    source: str,
    labeled_at: datetime | None = None,
) -> dict[str, Any]:
    raw = _clean(label_raw)
    return {
        "where": where,
        "image_id": _clean(image_id),
        "source_uri": _clean(source_uri),
        "category": _clean(category),
        "label_raw": raw,
        "label": parse_label_value(raw),
        "source": source,
        "labeled_at": labeled_at,
    }


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    if not rows:
        return pl.DataFrame(schema=PARSED_LABELS_SCHEMA)
    return pl.DataFrame(rows, schema=PARSED_LABELS_SCHEMA, orient="row")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        ts = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return ts.astimezone(UTC) if ts.tzinfo else ts.replace(tzinfo=UTC)


def parse_labels_csv(path: str | Path, *, category: str | None = None) -> pl.DataFrame:
    """Parse a label CSV into rows of :data:`PARSED_LABELS_SCHEMA` (nothing validated yet).

    Args:
        path: CSV with a header: ``image_id`` or ``source_uri``/``path``, ``category``,
            ``label``; optional ``labeled_at`` (ISO-8601). Header names are case-insensitive.
        category: Category for every row when the file has no ``category`` column.

    Returns:
        One row per data line; ``where`` is ``line N`` (the header is line 1).

    Raises:
        LabelFileError: If the file is unreadable or lacks the needed columns.
    """
    p = Path(path)
    try:
        raw = pl.read_csv(p, infer_schema=False, raise_if_empty=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        msg = f"label CSV {p} could not be read: {type(exc).__name__}: {exc}"
        raise LabelFileError(msg) from exc
    raw = raw.rename({c: c.strip().lstrip("\ufeff").lower() for c in raw.columns})
    id_col = next((c for c in IMAGE_ID_COLUMNS if c in raw.columns), None)
    src_col = next((c for c in SOURCE_COLUMNS if c in raw.columns), None)
    problems = []
    if id_col is None and src_col is None:
        problems.append(f"an image column ({' or '.join(IMAGE_ID_COLUMNS + SOURCE_COLUMNS)})")
    if "category" not in raw.columns and category is None:
        problems.append("a 'category' column (or pass category=...)")
    if "label" not in raw.columns:
        problems.append("a 'label' column (1/0, yes/no, true/false, pos/neg)")
    if problems:
        msg = (
            f"label CSV {p} has columns {raw.columns} but needs {', '.join(problems)}; "
            "expected a header like 'image_id,category,label'"
        )
        raise LabelFileError(msg)
    source = f"csv:{p.name}"
    rows = []
    for i, rec in enumerate(raw.iter_rows(named=True)):
        rows.append(
            _row(
                f"line {i + 2}",
                rec.get(id_col) if id_col else None,
                rec.get(src_col) if src_col else None,
                rec.get("category") if "category" in raw.columns else category,
                rec.get("label"),
                source,
                _parse_time(rec.get("labeled_at")),
            )
        )
    return _frame(rows)


def _image_from_task_data(data: dict[str, Any]) -> str | None:
    """``source_uri`` of a Label Studio task: ``data.source_uri``, else ``data.image``."""
    uri = _clean(data.get("source_uri"))
    if uri:
        return uri
    image = _clean(data.get("image"))
    if image is None or image.startswith("data:"):
        return None
    if "/data/local-files/" in image:
        d = parse_qs(urlparse(image).query).get("d")
        return unquote(d[0]) if d else None
    return image


def parse_label_studio(path: str | Path) -> pl.DataFrame:
    """Parse a Label Studio JSON export (a list of tasks) into label rows.

    See the module docstring for how choices become labels.

    Args:
        path: The ``.json`` export (Label Studio's "JSON" format, not "JSON-MIN").

    Returns:
        Rows of :data:`PARSED_LABELS_SCHEMA`; ``labeled_at`` is the annotation's
        ``updated_at`` (or ``created_at``).

    Raises:
        LabelFileError: If the file is not JSON or not a list of tasks.
    """
    p = Path(path)
    try:
        tasks = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        msg = f"Label Studio export {p} could not be read as JSON: {exc}"
        raise LabelFileError(msg) from exc
    if not isinstance(tasks, list) or not all(
        isinstance(t, dict) and isinstance(t.get("data"), dict) for t in tasks
    ):
        msg = (
            f"Label Studio export {p} is not a list of tasks with 'data'; export the project "
            "in Label Studio's 'JSON' format (not JSON-MIN or CSV)"
        )
        raise LabelFileError(msg)
    source = f"label_studio:{p.name}"
    rows: list[dict[str, Any]] = []
    n_unannotated = 0
    for ti, task in enumerate(tasks):
        data = task["data"]
        image_id, uri = data.get("image_id"), _image_from_task_data(data)
        queued = _clean(data.get("category"))
        annotations = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not annotations:
            n_unannotated += 1
        for ai, ann in enumerate(annotations):
            where = f"task {task.get('id', ti + 1)} annotation {ann.get('id', ai + 1)}"
            when = _parse_time(ann.get("updated_at")) or _parse_time(ann.get("created_at"))
            labelled: set[str] = set()
            for result in ann.get("result") or []:
                value = result.get("value") or {}
                for choice in value.get("choices") or []:
                    text = str(choice).strip()
                    if ":" in text:
                        cat, raw = (s.strip() for s in text.split(":", 1))
                    elif parse_label_value(text) is not None and result.get("from_name"):
                        cat, raw = str(result["from_name"]), text
                    else:
                        cat, raw = text, "yes"
                    labelled.add(cat)
                    rows.append(_row(where, image_id, uri, cat, raw, source, when))
            if queued is not None and queued not in labelled:
                rows.append(_row(where, image_id, uri, queued, "no", source, when))
    if n_unannotated:
        logger.info("%s: %d tasks without a (non-cancelled) annotation skipped", p, n_unannotated)
    return _frame(rows)


def read_label_file(path: str | Path) -> pl.DataFrame:
    """Parse a label file by suffix: ``.csv`` → CSV, ``.json`` → Label Studio export.

    Raises:
        LabelFileError: On another suffix or an unreadable file.
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return parse_labels_csv(p)
    if suffix == ".json":
        return parse_label_studio(p)
    msg = f"label file {p} has suffix {suffix!r}; expected .csv or a Label Studio .json export"
    raise LabelFileError(msg)


# ----------------------------------------------------------------------------- validation


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
        new: Parsed rows (:data:`PARSED_LABELS_SCHEMA`).
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
        new: Parsed rows (:func:`parse_labels_csv` / :func:`parse_label_studio`).
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


# ----------------------------------------------------------------------------- image bytes


def _split_tar_uri(uri: str) -> tuple[str, str] | None:
    """``tarpath#member`` → (tarpath, member) when tarpath is an existing tar file."""
    start = 0
    while (i := uri.find("#", start)) != -1:
        head = uri[:i]
        if os.path.isfile(head) and tarfile.is_tarfile(head):
            return head, uri[i + 1 :]
        start = i + 1
    return None


class SourceReader:
    """Reads image bytes by ``source_uri``: a plain path or ``tarpath#member``.

    Keeps up to ``max_open_tars`` tar files open (member index in memory) so that many reads
    from one tar do not rescan it. Use as a context manager or call :meth:`close`.

    Args:
        max_bytes: Larger files/members raise instead of being read.
        max_open_tars: Tar files kept open.
    """

    def __init__(self, max_bytes: int = 64 << 20, max_open_tars: int = 4) -> None:
        self.max_bytes = max_bytes
        self.max_open_tars = max_open_tars
        self._tars: OrderedDict[str, tarfile.TarFile] = OrderedDict()

    def read(self, source_uri: str) -> bytes:
        """The bytes at ``source_uri``.

        Raises:
            FileNotFoundError: If the file (or tar member) does not exist.
            ValueError: If it is larger than ``max_bytes`` or a URL.
        """
        if "://" in source_uri and not source_uri.startswith("file://"):
            msg = f"{source_uri!r} is a URL; only local paths and tar members can be read"
            raise ValueError(msg)
        path = source_uri.removeprefix("file://")
        if os.path.isfile(path):
            size = os.path.getsize(path)
            if size > self.max_bytes:
                msg = f"{path} is {size} bytes, above the {self.max_bytes} byte limit"
                raise ValueError(msg)
            return Path(path).read_bytes()
        split = _split_tar_uri(path)
        if split is None:
            msg = f"{source_uri!r} is neither a file nor 'tarpath#member' of an existing tar"
            raise FileNotFoundError(msg)
        tar_path, member_name = split
        tar = self._tar(tar_path)
        try:
            member = tar.getmember(member_name)
        except KeyError as exc:
            msg = f"tar {tar_path} has no member {member_name!r}"
            raise FileNotFoundError(msg) from exc
        if member.size > self.max_bytes:
            msg = f"{source_uri} is {member.size} bytes, above the {self.max_bytes} byte limit"
            raise ValueError(msg)
        fh = tar.extractfile(member)
        if fh is None:
            msg = f"{source_uri} is not a regular file in the tar"
            raise FileNotFoundError(msg)
        return fh.read()

    def __call__(self, source_uri: str) -> bytes:
        """Same as :meth:`read` (the reader is a ``source_uri -> bytes`` callable)."""
        return self.read(source_uri)

    def _tar(self, path: str) -> tarfile.TarFile:
        if path in self._tars:
            self._tars.move_to_end(path)
            return self._tars[path]
        tar = tarfile.open(path, mode="r:*")
        self._tars[path] = tar
        while len(self._tars) > self.max_open_tars:
            _, old = self._tars.popitem(last=False)
            old.close()
        return tar

    def close(self) -> None:
        """Close the open tar files."""
        for tar in self._tars.values():
            tar.close()
        self._tars.clear()

    def __enter__(self) -> "SourceReader":
        """Enter: the reader itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Exit: close the tars."""
        self.close()


def read_source_bytes(source_uri: str, *, max_bytes: int = 64 << 20) -> bytes:
    """Read the bytes of one ``source_uri`` (a path, or ``tarpath#member``).

    Raises:
        FileNotFoundError: If it does not exist.
        ValueError: If it is too large or a remote URL.
    """
    with SourceReader(max_bytes=max_bytes) as reader:
        return reader.read(source_uri)


def make_thumbnail(data: bytes, max_px: int = THUMBNAIL_PX, quality: int = 80) -> bytes:
    """Decode safely (ingest's limits, EXIF orientation, RGB) and shrink to a JPEG.

    Raises:
        ValueError: If the bytes do not decode as an image (the reason is in the message).
    """
    decoded = decode_image(data, DecodeLimits())
    if decoded.image is None:
        reason, detail = decoded.error or ("not_an_image", "")
        msg = f"{reason}: {detail}"
        raise ValueError(msg)
    img = decoded.image.copy()
    img.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# ----------------------------------------------------------------------------- queue export


def _require_columns(queue: pl.DataFrame, needed: Sequence[str], what: str) -> None:
    missing = [c for c in needed if c not in queue.columns]
    if missing:
        msg = (
            f"{what} needs queue columns {missing}; the queue has {queue.columns}. "
            "Join raw_images on image_id to add source_uri."
        )
        raise ValueError(msg)


def export_queue_csv(queue: pl.DataFrame, path: str | Path) -> Path:
    """Write the queue as a CSV to fill in and re-import.

    Columns: ``image_id, category, label`` (empty: write 1 or 0) followed by ``rank``,
    ``reason``, ``score`` and, when present, ``source_uri``. Rows left with an empty label
    are skipped at import.

    Returns:
        The path written.
    """
    _require_columns(queue, ["image_id", "category"], "export_queue_csv")
    extra = [c for c in ("rank", "reason", "score", "similarity", "source_uri") if c in queue]
    out = queue.select("image_id", "category", pl.lit(None, dtype=pl.String).alias("label"), *extra)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    out.write_csv(p)
    return p


def label_studio_config(categories: Sequence[Any]) -> str:
    """Label Studio labeling interface matching :func:`parse_label_studio`.

    One image, a header with the queued category and why it was queued, and one
    multiple-choice block named ``categories`` whose values are the category names. Tick every
    category the image shows; the queued category left unticked is read as a negative.

    Args:
        categories: Category names, or objects with ``name`` and ``description``
            (:class:`~curation_assets.lib.classify.CategorySpec`); descriptions become hints.

    Returns:
        The XML to paste into Settings → Labeling Interface → Code.
    """
    choices = []
    for c in categories:
        name = c if isinstance(c, str) else c.name
        hint = "" if isinstance(c, str) else f" hint={quoteattr(c.description)}"
        choices.append(f"    <Choice value={quoteattr(name)}{hint}/>")
    return "\n".join(
        [
            "<View>",
            '  <Header value="Queued for: $category ($reason)"/>',
            '  <Image name="image" value="$image" maxWidth="640px"/>',
            '  <Header value="Tick every category this image shows (none = shows none)"/>',
            '  <Choices name="categories" toName="image" choice="multiple" showInline="true">',
            *choices,
            "  </Choices>",
            "</View>",
            "",
        ]
    )


def _data_uri(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def export_queue_label_studio(
    queue: pl.DataFrame,
    path: str | Path,
    image_url_prefix: str | None = None,
    *,
    inline_images: bool = False,
    inline_px: int = 512,
    predictions: bool = False,
) -> Path:
    """Write the queue as Label Studio tasks (JSON list) for :func:`label_studio_config`.

    ``data.image`` is, in order of preference: an inline JPEG data URI (``inline_images``;
    works for tar members and remote Label Studio instances, ≤ ``inline_px`` px), or
    ``image_url_prefix`` + the URL-quoted path without its leading ``/`` (for Label Studio's
    local files use ``image_url_prefix="/data/local-files/?d="`` with
    ``LOCAL_FILES_SERVING_ENABLED=true`` and ``LOCAL_FILES_DOCUMENT_ROOT=/``), or the plain
    ``source_uri``. ``data`` also carries ``image_id``, ``source_uri``, ``category``,
    ``reason``, ``score`` and ``rank``, which the import uses.

    Args:
        queue: The label queue with ``source_uri`` joined from raw_images.
        path: Destination ``.json``.
        image_url_prefix: Prefix turning a path into a URL Label Studio can load.
        inline_images: Embed downsized JPEGs in the tasks.
        inline_px: Longest side of inline images.
        predictions: Pre-select the queued category when ``score >= threshold`` (as a Label
            Studio prediction; it biases annotators, so off by default).

    Returns:
        The path written.
    """
    _require_columns(queue, ["image_id", "category", "source_uri"], "export_queue_label_studio")
    tasks = []
    n_unreadable = 0
    with SourceReader() as reader:
        for rec in queue.iter_rows(named=True):
            uri = rec["source_uri"]
            image = uri
            if inline_images:
                try:
                    image = _data_uri(make_thumbnail(reader.read(uri), inline_px, quality=88))
                except (OSError, ValueError) as exc:
                    n_unreadable += 1
                    logger.warning("label studio export: %s unreadable: %s", uri, exc)
            elif image_url_prefix is not None:
                image = image_url_prefix + quote(uri.lstrip("/"), safe="/")
            data = {
                "image": image,
                "image_id": rec["image_id"],
                "source_uri": uri,
                "category": rec["category"],
                "reason": rec.get("reason"),
                "score": rec.get("score"),
                "rank": rec.get("rank"),
            }
            task: dict[str, Any] = {"data": data}
            threshold = rec.get("threshold")
            score = rec.get("score")
            if predictions and threshold is not None and score is not None:
                chosen = [rec["category"]] if score >= threshold else []
                task["predictions"] = [
                    {
                        "model_version": "curation_assets",
                        "score": float(score),
                        "result": [
                            {
                                "from_name": "categories",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": chosen},
                            }
                        ]
                        if chosen
                        else [],
                    }
                ]
            tasks.append(task)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(tasks, indent=1, ensure_ascii=False), encoding="utf-8")
    if n_unreadable:
        logger.warning("label studio export: %d images could not be inlined", n_unreadable)
    return p


@dataclass
class ContactSheet:
    """What :func:`export_queue_html` wrote.

    Attributes:
        path: The HTML file.
        n_cards: Queue rows shown.
        n_thumbnails: Cards with a thumbnail.
        failed: ``(image_id, reason)`` of cards whose image could not be read or decoded.
    """

    path: Path
    n_cards: int
    n_thumbnails: int
    failed: list[tuple[str, str]] = field(default_factory=list)


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{width:172px;border:1px solid #ccc;border-radius:6px;padding:6px;font-size:11px}
.card img{display:block;margin:0 auto 4px;max-width:160px;max-height:160px}
.missing{height:100px;background:#eee;display:flex;align-items:center;justify-content:center;
text-align:center;color:#a00}
.id{font-family:monospace;font-size:12px}
.reason{color:#555;word-break:break-all}
pre,textarea{background:#f6f6f6;border:1px solid #ddd;padding:8px;font-size:12px}
textarea{width:100%;height:12em;font-family:monospace}
"""


def export_queue_html(
    queue: pl.DataFrame,
    path: str | Path,
    thumbnails: Callable[[str], bytes] | None = None,
    max_items: int = 200,
    *,
    title: str = "Label queue",
    thumb_px: int = THUMBNAIL_PX,
    import_hint: str = "then import it into the labels table (CSV label import).",
) -> ContactSheet:
    """Write one self-contained HTML contact sheet of the queue (inline base64 thumbnails).

    Each card shows the image, the image_id prefix, category, score, rank and reason. A text
    block explains how to label and holds ``image_id,category,label`` lines ready to paste
    into a CSV (fill in the label) for :func:`parse_labels_csv`. An image that cannot be read
    or decoded gets a card saying why; it does not stop the export.

    Memory: one image's bytes at a time plus the thumbnails (≈ 5–10 kB each).

    Args:
        queue: Label queue rows (``image_id``, ``category``; ``score``, ``rank``, ``reason``
            shown when present).
        path: Destination ``.html``.
        thumbnails: ``image_id -> image bytes`` (any size, re-thumbnailed); default reads the
            queue's ``source_uri`` column (a path or ``tarpath#member``).
        max_items: Cards shown (the first rows of the queue, in its order).
        title: Page title.
        thumb_px: Longest side of the thumbnails.
        import_hint: How to import the filled CSV in this deployment (shown to labellers).

    Returns:
        The :class:`ContactSheet` with counts.

    Raises:
        ValueError: If no ``thumbnails`` callable is given and the queue has no ``source_uri``.
    """
    _require_columns(queue, ["image_id", "category"], "export_queue_html")
    if thumbnails is None:
        _require_columns(queue, ["source_uri"], "export_queue_html without thumbnails=")
    rows = queue.head(max_items).to_dicts()
    failed: list[tuple[str, str]] = []
    cards: list[str] = []
    csv_buf = io.StringIO()
    writer = csv.writer(csv_buf, lineterminator="\n")
    writer.writerow(["image_id", "category", "label"])
    with SourceReader() as reader:
        for rec in rows:
            image_id = str(rec["image_id"])
            writer.writerow([image_id, rec["category"], ""])
            try:
                data = thumbnails(image_id) if thumbnails else reader.read(str(rec["source_uri"]))
                img_html = f'<img alt="" src="{_data_uri(make_thumbnail(data, thumb_px))}">'
            except (OSError, ValueError, KeyError) as exc:
                failed.append((image_id, f"{type(exc).__name__}: {exc}"))
                img_html = (
                    f'<div class="missing">image unavailable<br>{html.escape(str(exc))}</div>'
                )
            score = rec.get("score")
            score_txt = f"{score:.4f}" if isinstance(score, float) else html.escape(str(score))
            cards.append(
                '<div class="card">'
                f"{img_html}"
                f'<div class="id" title="{html.escape(image_id)}">'
                f"{html.escape(image_id[:12])}</div>"
                f"<div>#{html.escape(str(rec.get('rank', '')))} · "
                f"<b>{html.escape(str(rec['category']))}</b> · score {score_txt}</div>"
                f'<div class="reason">{html.escape(str(rec.get("reason", "")))}</div>'
                "</div>"
            )
    instructions = (
        "How to label: look at each image and decide whether it shows its category.\n"
        "Copy the CSV below into a file (e.g. labels.csv), write 1 (shows the category) or 0\n"
        "(does not) after the last comma of each line, and leave the label empty for images\n"
        f"you are unsure about (they are skipped); {import_hint}\n"
        "The import is all-or-nothing: unknown images or categories, values other than\n"
        "1/0/yes/no/true/false/pos/neg, or contradictions are reported and nothing is imported."
    )
    doc = "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>",
            f"<p>{len(rows)} of {queue.height} queued images, in queue order.</p>",
            f"<pre>{html.escape(instructions)}</pre>",
            f"<textarea readonly>{html.escape(csv_buf.getvalue())}</textarea>",
            f'<div class="grid">{"".join(cards)}</div>',
            "</body></html>",
            "",
        ]
    )
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(doc, encoding="utf-8")
    if failed:
        logger.warning("contact sheet %s: %d of %d images unavailable", p, len(failed), len(rows))
    return ContactSheet(p, len(rows), len(rows) - len(failed), failed)
