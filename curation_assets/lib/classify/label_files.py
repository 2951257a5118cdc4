"""Label files: CSV and Label Studio exports parsed into label rows (nothing validated yet).

Two formats are read (:func:`read_label_file` picks one by suffix):

* **CSV** (:func:`parse_labels_csv`): a header row with ``image_id`` *or* ``source_uri`` /
  ``path`` (the image's location as ingested; a path relative to the source root or any
  unambiguous path suffix also resolves), ``category`` and ``label`` (``1/0``, ``true/false``,
  ``yes/no``, ``pos/neg``, ``positive/negative``; case-insensitive). A row with an empty label
  is *not labelled yet* and is skipped, so a half-filled queue CSV imports cleanly. Other
  columns are ignored.
* **Label Studio JSON export** (:func:`parse_label_studio`) of tasks made by
  :func:`~curation_assets.lib.classify.queue_export.export_queue_label_studio` and labelled
  with :func:`~curation_assets.lib.classify.queue_export.label_studio_config`'s interface.
  Each non-cancelled annotation gives labels from its ``choices``:

  - a bare category name (``"hat"``) — positive for that category;
  - ``"<category>:<label>"`` (``"hat:no"``) — that label for that category;
  - a bare label word (``"yes"`` / ``"no"``) in a ``<Choices name="<category>">`` block —
    that label for the block's category;
  - the task's queued category (``data.category``) when the annotation gives it no label —
    negative (the annotator looked for it and did not tick it).

  Several annotations of one task are several label rows: disagreements surface as
  contradictions.

The rows (:data:`PARSED_LABELS_SCHEMA`) go to
:func:`~curation_assets.lib.classify.labels.import_labels`, which validates them.
"""

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import polars as pl

from curation_assets.lib.errors import PermanentError
from curation_assets.lib.tables import LABELS

logger = logging.getLogger(__name__)

PARSED_LABELS_SCHEMA = pl.Schema(
    {
        "where": pl.String,
        "image_id": pl.String,
        "source_uri": pl.String,
        "category": pl.String,
        "label_raw": pl.String,
        "label": pl.Int8,
        "source": pl.String,
        "labeled_at": LABELS.schema["labeled_at"],
    }
)
"""Rows of a parsed label file, before validation: ``where`` locates the row in the file
(``line 7``, ``task 12 annotation 3``); ``label`` is null when ``label_raw`` is blank (not
labelled yet) or not a label word (reported by
:func:`~curation_assets.lib.classify.labels.validate_labels`)."""


POSITIVE_WORDS = frozenset({"1", "1.0", "true", "t", "yes", "y", "pos", "positive"})
NEGATIVE_WORDS = frozenset({"0", "0.0", "false", "f", "no", "n", "neg", "negative"})
IMAGE_ID_COLUMNS = ("image_id",)
SOURCE_COLUMNS = ("source_uri", "path", "uri", "image", "file", "filepath")


class LabelFileError(PermanentError, ValueError):
    """A label file as a whole cannot be read (missing columns, not JSON, wrong structure)."""


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
