"""Label-queue export for people: a CSV to fill in, Label Studio tasks, an HTML contact sheet.

The label queue (:func:`~curation_assets.lib.classify.active.build_label_queue`) is exported
as a CSV (:func:`export_queue_csv`), a Label Studio task file
(:func:`export_queue_label_studio`, interface :func:`label_studio_config`) and a
self-contained HTML contact sheet (:func:`export_queue_html`); the filled files come back
through :mod:`~curation_assets.lib.classify.label_files`.
"""

import base64
import csv
import html
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.sax.saxutils import quoteattr

import polars as pl

from curation_assets.lib.images import THUMBNAIL_PX, SourceReader, make_thumbnail

logger = logging.getLogger(__name__)

LOCAL_FILES_PREFIX = "/data/local-files/?d="
"""Label Studio's URL for local-storage files; needs ``LOCAL_FILES_SERVING_ENABLED=true``."""


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
    """Label Studio labeling interface matching ``label_files.parse_label_studio``.

    One image, a header with the queued category and why it was queued, and one
    multiple-choice block named ``categories`` whose values are the category names. Tick every
    category the image shows; the queued category left unticked is read as a negative.

    Args:
        categories: Category names, or objects with ``name`` and ``description``
            (:class:`~curation_assets.lib.classify.spec.CategorySpec`); descriptions become hints.

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
    into a CSV (fill in the label) for
    :func:`~curation_assets.lib.classify.label_files.parse_labels_csv`. An image that cannot be
    read or decoded gets a card saying why; it does not stop the export.

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
