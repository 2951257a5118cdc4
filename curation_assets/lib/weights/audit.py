r"""Bias audit: how much did filtering shift each attribute, and do the weights undo it?

For every attribute value the audit reports three shares — in the unfiltered images, in the
filtered (kept) images, and in the kept images under the sample weights — and the two shifts
from the unfiltered share in percentage points. DALL·E 2 did this for caption keywords
("woman", "man", ...) and found that filtering sexual content under-represented women; the
weights are meant to bring the weighted share back to the unfiltered one.

Attributes come from three builders, each returning one row per image (``image_id`` plus one
column per attribute):

* :func:`metadata_attributes` — categorical metadata: format, orientation (from width/height),
  size bucket (shorter side), whether there is a caption, and any other columns named.
* :func:`keyword_attributes` — caption keywords: a Boolean column ``keyword:<name>`` per
  keyword group, True when the caption contains any of the group's words as a *whole word*,
  case-insensitively (``\b`` word boundaries). Words are matched exactly as listed: "man"
  does not match "woman", "mango" or "men", and "woman" does not match "women" — plurals are
  listed as their own forms in the same group (the default group ``woman`` is "woman",
  "women"), so one group counts a caption once however many forms it contains. Captionless
  images are null (they leave the keyword's denominator).
* :func:`concept_attributes` — zero-shot concepts, when a text encoder in the image
  embedding's space is given: ``concept:<name>`` is True when the image's cosine to the
  concept prompt(s) is higher than its cosine to a neutral baseline prompt ("a photo."), i.e.
  when CLIP's two-way softmax between the concept and the baseline picks the concept. This is
  a coarse detector; the audit compares shares of one fixed rule across the three sets, so
  its shifts are informative even where its absolute shares are not.

:func:`audit_attributes` joins the three for the ``bias_audit`` asset.

:func:`bias_audit` turns attributes + weights into the share table (:data:`BIAS_AUDIT`, the
``bias_audit`` Delta table); :func:`flag_shifts` keeps the rows whose weighted share is still far
from the unfiltered one; :func:`audit_markdown` renders a compact markdown table with unicode
bars (the Dagster UI renders markdown).

Share definitions: for a categorical column, the share of a value among all rows (nulls are
the value ``(missing)``); for a Boolean column, the share of True among its non-null rows.
``share_weighted = Σ_{kept, value} w / Σ_{kept, non-null} w``.

Determinism: :func:`bias_audit` sorts the rows by id before summing and sums weights with
numpy in that order (not a parallel group-by, whose partial sums may combine in any order),
so the same attributes and weights give bit-identical shares in any row order;
:func:`concept_attributes` computes each image's cosines on their own (no BLAS block product,
whose last bit can depend on the row's position in the batch), so the True/False decision of
an image does not depend on the other images.
"""

import logging
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import polars as pl

from curation_assets.lib.tables import BIAS_AUDIT

logger = logging.getLogger(__name__)

TextEncoder = Callable[[list[str]], np.ndarray]
"""texts -> (m, d) float32, L2-normalized, in the same space as the image embeddings."""

MISSING = "(missing)"
DEFAULT_MAX_SHIFT_PTS = 2.0
DEFAULT_MIN_SUPPORT = 100
DEFAULT_BASELINE_PROMPT = "a photo."

#: Keyword groups counted in captions: gendered and people words (as DALL·E 2 counted), and a
#: few words around the content a safety filter removes. Every form is matched as a whole word.
DEFAULT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "woman": ("woman", "women"),
    "man": ("man", "men"),
    "girl": ("girl", "girls"),
    "boy": ("boy", "boys"),
    "female": ("female", "females"),
    "male": ("male", "males"),
    "lady": ("lady", "ladies"),
    "person": ("person", "persons", "people"),
    "child": ("child", "children", "kid", "kids"),
    "baby": ("baby", "babies"),
    "couple": ("couple", "couples"),
    "family": ("family", "families"),
    "face": ("face", "faces", "portrait", "portraits"),
    "bikini": ("bikini", "bikinis", "swimsuit", "swimsuits", "swimwear"),
    "dress": ("dress", "dresses"),
}

#: Shorter-side size buckets (pixels): label -> lower bound; a row takes the largest bound ≤ it.
SIZE_BUCKETS: tuple[tuple[str, int], ...] = (
    ("<256", 0),
    ("256-511", 256),
    ("512-1023", 512),
    (">=1024", 1024),
)
SQUARE_TOLERANCE = 0.05
"""Orientation is ``square`` when ``|width/height - 1| ≤`` this."""

_REGEX_META = set("\\.+*?()|[]{}^$#&-~")


AUDIT_COLUMNS = tuple(BIAS_AUDIT.column_names)

# --------------------------------------------------------------------------------------------
# Attribute builders
# --------------------------------------------------------------------------------------------


def metadata_attributes(
    images: pl.DataFrame, *, categorical: Sequence[str] = ("format",), id_col: str = "image_id"
) -> pl.DataFrame:
    """Categorical metadata attributes of images (``raw_images``-like rows).

    Args:
        images: One row per image with ``id_col`` and any of ``width``, ``height``, ``caption``
            and the ``categorical`` columns (missing ones are skipped).
        categorical: Columns used as they are (cast to string), e.g. ``format``.
        id_col: The id column.

    Returns:
        ``id_col`` + ``orientation`` (landscape / portrait / square, when width and height
        exist), ``size`` (shorter-side bucket, :data:`SIZE_BUCKETS`), ``has_caption`` (yes /
        no, when there is a caption column) and the categorical columns, all String.

    Raises:
        ValueError: If ``id_col`` is missing.
    """
    if id_col not in images.columns:
        msg = f"images lack the id column {id_col!r}; it has {images.columns}"
        raise ValueError(msg)
    exprs: list[pl.Expr] = [pl.col(id_col)]
    if "width" in images.columns and "height" in images.columns:
        w, h = pl.col("width").cast(pl.Float64), pl.col("height").cast(pl.Float64)
        ratio = w / h
        exprs.append(
            pl.when(w.is_null() | h.is_null() | (h <= 0))
            .then(None)
            .when((ratio - 1.0).abs() <= SQUARE_TOLERANCE)
            .then(pl.lit("square"))
            .when(ratio > 1.0)
            .then(pl.lit("landscape"))
            .otherwise(pl.lit("portrait"))
            .alias("orientation")
        )
        short = (
            pl.when(w.is_null() | h.is_null())
            .then(None)
            .otherwise(pl.min_horizontal(pl.col("width"), pl.col("height")))
        )
        size = pl.when(short.is_null()).then(None)
        for label, bound in reversed(SIZE_BUCKETS):
            size = size.when(short >= bound).then(pl.lit(label))
        exprs.append(size.otherwise(None).alias("size"))
    if "caption" in images.columns:
        has = pl.col("caption").is_not_null() & (pl.col("caption").str.strip_chars() != "")
        exprs.append(pl.when(has).then(pl.lit("yes")).otherwise(pl.lit("no")).alias("has_caption"))
    for c in categorical:
        if c in images.columns and c != id_col:
            exprs.append(pl.col(c).cast(pl.String))
    return images.select(exprs)


def _escape(word: str) -> str:
    """Escape a literal for the (Rust) regex engine polars uses; spaces match any whitespace."""
    parts = [("\\" + ch) if ch in _REGEX_META else ch for ch in word.strip()]
    return re.sub(r"\s+", r"\\s+", "".join(parts))


def keyword_pattern(forms: Sequence[str]) -> str:
    """Case-insensitive whole-word regex matching any of ``forms`` (e.g. ``("man", "men")``).

    Raises:
        ValueError: If a form is empty.
    """
    if not forms or any(not f.strip() for f in forms):
        msg = f"keyword forms {list(forms)!r}: expected non-empty words"
        raise ValueError(msg)
    alternatives = "|".join(_escape(f) for f in forms)
    return rf"(?i)\b(?:{alternatives})\b"


def _keyword_groups(
    keywords: Mapping[str, Sequence[str]] | Sequence[str],
) -> dict[str, tuple[str, ...]]:
    if isinstance(keywords, Mapping):
        groups = {str(k): tuple(v) for k, v in keywords.items()}
    else:
        if isinstance(keywords, str):
            msg = f"keywords={keywords!r}: expected a list of words or a mapping name -> forms"
            raise ValueError(msg)
        groups = {str(k): (str(k),) for k in keywords}
    if not groups:
        msg = "no keywords given; pass a list of words or use DEFAULT_KEYWORDS"
        raise ValueError(msg)
    return groups


def keyword_attributes(
    images: pl.DataFrame,
    keywords: Mapping[str, Sequence[str]] | Sequence[str] = DEFAULT_KEYWORDS,
    *,
    caption_col: str = "caption",
    id_col: str = "image_id",
) -> pl.DataFrame:
    """Caption-keyword attributes: ``keyword:<name>`` True when the caption has a form of it.

    Args:
        images: Rows with ``id_col`` and ``caption_col``.
        keywords: A mapping group name -> word forms (all matched as whole words,
            case-insensitively), or a list of words (each its own group).
        caption_col: Caption column.
        id_col: The id column.

    Returns:
        ``id_col`` + one Boolean column per group, null where the caption is null or blank.

    Raises:
        ValueError: If a column is missing or the keywords are malformed.
    """
    missing = [c for c in (id_col, caption_col) if c not in images.columns]
    if missing:
        msg = f"images lack columns {missing}; it has {images.columns}"
        raise ValueError(msg)
    cap = pl.col(caption_col).cast(pl.String)
    has = cap.is_not_null() & (cap.str.strip_chars() != "")
    exprs = [pl.col(id_col)]
    for name, forms in _keyword_groups(keywords).items():
        hit = cap.str.contains(keyword_pattern(forms))
        exprs.append(pl.when(has).then(hit).otherwise(None).alias(f"keyword:{name}"))
    return images.select(exprs)


def _encode(encoder: TextEncoder, prompts: list[str], what: str) -> np.ndarray:
    emb = np.asarray(encoder(prompts), dtype=np.float64)
    if emb.ndim != 2 or emb.shape[0] != len(prompts):
        msg = (
            f"text encoder returned shape {emb.shape} for {len(prompts)} {what} prompts; "
            "expected (n_prompts, d)"
        )
        raise ValueError(msg)
    mean = emb.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    if not np.isfinite(norm) or norm == 0:
        msg = f"{what} prompt embeddings average to zero or are not finite; check the encoder"
        raise ValueError(msg)
    return mean / norm


def concept_attributes(
    x: np.ndarray,
    image_ids: Sequence[str],
    concepts: Mapping[str, str | Sequence[str]],
    text_encoder: TextEncoder,
    *,
    baseline: str | Sequence[str] = DEFAULT_BASELINE_PROMPT,
    id_col: str = "image_id",
    batch_size: int = 65_536,
) -> pl.DataFrame:
    """Zero-shot concept attributes: ``concept:<name>`` True when the concept beats a baseline.

    The rule: with ``c`` the normalized mean embedding of the concept's prompts and ``b`` that
    of the baseline prompt(s), an image is "showing the concept" when ``x·c > x·b``.

    Args:
        x: (n, d) float32, L2-normalized image embeddings (a memmap is fine).
        image_ids: n ids aligned with ``x``.
        concepts: name -> prompt or prompts, e.g. ``{"woman": "a photo of a woman."}``.
        text_encoder: The image model's text tower (texts -> (m, d) normalized).
        baseline: The neutral prompt(s) every concept competes with.
        id_col: Name of the id column of the result.
        batch_size: Rows per matrix product (memory ``batch_size · d · 8`` bytes).

    Returns:
        ``id_col`` + one Boolean column per concept.

    Raises:
        ValueError: On shape mismatches or unusable encoder output.
    """
    arr = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if arr.ndim != 2 or arr.shape[0] != len(image_ids):
        msg = f"x has shape {arr.shape} for {len(image_ids)} image_ids; expected (n, d)"
        raise ValueError(msg)
    if not concepts:
        msg = "no concepts given; pass a mapping name -> prompt(s)"
        raise ValueError(msg)
    base_prompts = [baseline] if isinstance(baseline, str) else list(baseline)
    b = _encode(text_encoder, base_prompts, "baseline")
    names = list(concepts)
    dirs = []
    for name in names:
        p = concepts[name]
        prompts = [p] if isinstance(p, str) else list(p)
        dirs.append(_encode(text_encoder, prompts, f"concept {name!r}") - b)
    diff = np.stack(dirs, axis=1)  # (d, k): x·c - x·b
    if diff.shape[0] != arr.shape[1]:
        msg = (
            f"text embeddings have dim {diff.shape[0]} but image embeddings {arr.shape[1]}; "
            "the text encoder must be the image model's own text tower"
        )
        raise ValueError(msg)
    out = np.zeros((arr.shape[0], len(names)), dtype=bool)
    for start in range(0, arr.shape[0], batch_size):
        xb = np.asarray(arr[start : start + batch_size], dtype=np.float64)
        # per-row sums (einsum, no BLAS): a row's decision does not depend on its batch
        out[start : start + xb.shape[0]] = np.einsum("nd,dk->nk", xb, diff) > 0
    cols: dict[str, object] = {id_col: list(image_ids)}
    for j, name in enumerate(names):
        cols[f"concept:{name}"] = out[:, j]
    return pl.DataFrame(cols, schema_overrides={id_col: pl.String})


def audit_attributes(
    images: pl.DataFrame,
    x: np.ndarray,
    *,
    keywords: Sequence[str] = (),
    concepts: Mapping[str, str | Sequence[str]] | None = None,
    text_encoder: TextEncoder | None = None,
) -> pl.DataFrame:
    """Every attribute the audit compares, one row per image: the three builders joined.

    Args:
        images: One row per unfiltered image with ``image_id``, ``width``, ``height``,
            ``caption`` and ``format`` (``raw_images`` columns), aligned with ``x``.
        x: (n, d) image embeddings of those rows (read only for concepts).
        keywords: Extra caption words, each its own group, beside :data:`DEFAULT_KEYWORDS`.
        concepts: Zero-shot concepts, name -> prompt(s); audited only with ``text_encoder``.
        text_encoder: The image model's text tower, or None (no concepts).

    Returns:
        ``image_id`` + the :func:`metadata_attributes`, :func:`keyword_attributes` and (with
        concepts and an encoder) :func:`concept_attributes` columns.
    """
    attributes = metadata_attributes(
        images.select("image_id", "width", "height", "caption", "format")
    )
    groups = {**DEFAULT_KEYWORDS, **{k: (k,) for k in keywords}}
    attributes = attributes.join(
        keyword_attributes(images.select("image_id", "caption"), groups), on="image_id"
    )
    if concepts and text_encoder is not None:
        ids = images["image_id"].to_list()
        attributes = attributes.join(
            concept_attributes(x, ids, concepts, text_encoder), on="image_id"
        )
    return attributes


# --------------------------------------------------------------------------------------------
# Shares
# --------------------------------------------------------------------------------------------


def _split_name(col: str) -> tuple[str, str]:
    attribute, sep, value = col.partition(":")
    return (attribute, value) if sep else (col, "true")


def bias_audit(
    attributes: pl.DataFrame,
    weights: pl.DataFrame,
    *,
    id_col: str = "image_id",
    weight_col: str = "weight",
    columns: Sequence[str] | None = None,
) -> pl.DataFrame:
    """Shares of every attribute value in the unfiltered, filtered and weighted filtered data.

    Args:
        attributes: One row per *unfiltered* image: ``id_col`` + attribute columns (from the
            builders above, joined on ``id_col``). Boolean columns named ``group:value`` are
            reported as attribute ``group``, value ``value`` (share of True among non-null);
            other Boolean columns as value ``true``; any other column is categorical.
        weights: The kept images with their weight (``sample_weights`` rows): ``id_col`` and
            ``weight_col``. Kept = present here.
        id_col: The id column of both frames.
        weight_col: The weight column of ``weights``.
        columns: Attribute columns to audit (default: every column of ``attributes`` but
            ``id_col``).

    Returns:
        :data:`BIAS_AUDIT` rows (shares in [0, 1], shifts in percentage points,
        ``n_*`` = rows with the value), sorted by attribute, then unfiltered share descending.
        Shares of an attribute without any non-null row are null.

    Raises:
        ValueError: On missing columns, duplicate ids, weighted images that are not among the
            unfiltered ones, or non-finite / negative weights.
    """
    for frame, need, what in (
        (attributes, [id_col], "attributes"),
        (weights, [id_col, weight_col], "weights"),
    ):
        missing = [c for c in need if c not in frame.columns]
        if missing:
            msg = f"{what} lack columns {missing}; it has {frame.columns}"
            raise ValueError(msg)
    cols = [c for c in (attributes.columns if columns is None else columns) if c != id_col]
    missing = [c for c in cols if c not in attributes.columns]
    if missing:
        msg = f"attribute columns {missing} are not in the attributes frame ({attributes.columns})"
        raise ValueError(msg)
    if attributes[id_col].n_unique() != attributes.height:
        msg = f"attributes have duplicate {id_col}s; pass one row per unfiltered image"
        raise ValueError(msg)
    w = weights.select(pl.col(id_col), pl.col(weight_col).cast(pl.Float64).alias("__w"))
    if w[id_col].n_unique() != w.height:
        msg = f"weights have duplicate {id_col}s; pass one row per kept image"
        raise ValueError(msg)
    wv = w["__w"].to_numpy()
    if w.height and not (np.isfinite(wv).all() and (wv >= 0).all()):
        msg = f"weights column {weight_col!r} has non-finite or negative values"
        raise ValueError(msg)
    strays = w.join(attributes.select(id_col), on=id_col, how="anti").height
    if strays:
        msg = (
            f"{strays} weighted images are not among the {attributes.height} unfiltered "
            "images; compute the attributes on the same snapshot the weights were fitted on"
        )
        raise ValueError(msg)
    df = (
        attributes.join(w, on=id_col, how="left")
        .with_columns(pl.col("__w").is_not_null().alias("__kept"))
        .sort(id_col)  # canonical order for every sum below
    )
    frames = []
    for col in cols:
        dtype = df.schema[col]
        if dtype == pl.Boolean:
            attribute, value = _split_name(col)
            frames.append(_boolean_shares(df, col, attribute, value))
        else:
            frames.append(_categorical_shares(df, col))
    if not frames:
        return BIAS_AUDIT.empty()
    out = pl.concat(frames, how="vertical_relaxed").with_columns(
        ((pl.col("share_filtered") - pl.col("share_unfiltered")) * 100).alias("shift_filtered_pts"),
        ((pl.col("share_weighted") - pl.col("share_unfiltered")) * 100).alias("shift_weighted_pts"),
    )
    return BIAS_AUDIT.conform(out).sort(
        ["attribute", "share_unfiltered", "value"], descending=[False, True, False]
    )


def _ratio(num: pl.Expr, den: float | int | None) -> pl.Expr:
    if not den:
        return pl.lit(None, dtype=pl.Float64)
    return num.cast(pl.Float64) / float(den)


def _wsum(w: np.ndarray) -> float:
    """Sum in the given (canonical) order: numpy's pairwise sum, fixed for a fixed order."""
    return float(np.sum(w, dtype=np.float64))


def _categorical_shares(df: pl.DataFrame, col: str) -> pl.DataFrame:
    n_u = df.height
    n_k = int(df["__kept"].sum())
    w = df["__w"].fill_null(0.0).to_numpy().astype(np.float64)
    w_total = _wsum(w)
    values = df[col].cast(pl.String).fill_null(MISSING).to_numpy().astype(str)
    uniq, code = np.unique(values, return_inverse=True)
    kept = df["__kept"].to_numpy().astype(np.int64)
    by_value = np.argsort(code, kind="stable")  # rows of each value, in canonical order
    starts = np.searchsorted(code[by_value], np.arange(uniq.size))
    wsums = np.add.reduceat(w[by_value], starts) if w.size else np.zeros(0)
    grouped = pl.DataFrame(
        {
            "value": uniq.tolist(),
            "n_unfiltered": np.bincount(code, minlength=uniq.size).astype(np.int64),
            "n_filtered": np.bincount(code, weights=kept, minlength=uniq.size).astype(np.int64),
            "__wsum": wsums.astype(np.float64),
        },
        schema={
            "value": pl.String,
            "n_unfiltered": pl.Int64,
            "n_filtered": pl.Int64,
            "__wsum": pl.Float64,
        },
    )
    return grouped.select(
        pl.lit(col).alias("attribute"),
        "value",
        _ratio(pl.col("n_unfiltered"), n_u).alias("share_unfiltered"),
        _ratio(pl.col("n_filtered"), n_k).alias("share_filtered"),
        _ratio(pl.col("__wsum"), w_total).alias("share_weighted"),
        "n_unfiltered",
        "n_filtered",
    )


def _boolean_shares(df: pl.DataFrame, col: str, attribute: str, value: str) -> pl.DataFrame:
    sub = df.filter(pl.col(col).is_not_null())
    hit = sub[col]
    kept = sub["__kept"]
    w = sub["__w"].fill_null(0.0).to_numpy().astype(np.float64)
    n_u, n_k, w_total = sub.height, int(kept.sum()), _wsum(w)
    hits_u = int(hit.sum())
    hits_k = int((hit & kept).sum())
    w_hit = _wsum(w[hit.to_numpy().astype(bool)])
    return pl.DataFrame(
        {
            "attribute": [attribute],
            "value": [value],
            "share_unfiltered": [hits_u / n_u if n_u else None],
            "share_filtered": [hits_k / n_k if n_k else None],
            "share_weighted": [w_hit / w_total if w_total else None],
            "n_unfiltered": [hits_u],
            "n_filtered": [hits_k],
        },
        schema_overrides={
            "share_unfiltered": pl.Float64,
            "share_filtered": pl.Float64,
            "share_weighted": pl.Float64,
            "n_unfiltered": pl.Int64,
            "n_filtered": pl.Int64,
        },
    )


def flag_shifts(
    audit: pl.DataFrame,
    *,
    max_shift_pts: float = DEFAULT_MAX_SHIFT_PTS,
    min_support: int = DEFAULT_MIN_SUPPORT,
) -> pl.DataFrame:
    """Attribute values whose weighted share is still far from the unfiltered share.

    A row is flagged when ``|shift_weighted_pts| > max_shift_pts`` and at least
    ``min_support`` unfiltered images have the value (so that tiny groups, whose shares move a
    lot by chance, do not flap). A value the filter removed entirely (weighted share 0 or
    null with ``n_filtered = 0``) is flagged too when it has the support.

    Args:
        audit: :func:`bias_audit` output.
        max_shift_pts: Largest acceptable distance, in percentage points.
        min_support: Fewest unfiltered images with the value for it to be judged.

    Returns:
        The flagged rows, largest absolute weighted shift first, with ``weights_helped``
        (True when the weights moved the share toward the unfiltered one).

    Raises:
        ValueError: On a negative distance or support.
    """
    if max_shift_pts < 0 or min_support < 0:
        msg = f"max_shift_pts={max_shift_pts}, min_support={min_support}: expected both >= 0"
        raise ValueError(msg)
    shift = pl.col("shift_weighted_pts").fill_null(-100.0 * pl.col("share_unfiltered"))
    return (
        audit.filter(
            (pl.col("n_unfiltered") >= min_support)
            & pl.col("share_unfiltered").is_not_null()
            & (shift.abs() > max_shift_pts)
        )
        .with_columns(
            (shift.abs() < pl.col("shift_filtered_pts").fill_null(shift).abs()).alias(
                "weights_helped"
            )
        )
        .sort(shift.abs(), descending=True)
    )


_EIGHTHS = " ▏▎▍▌▋▊▉"


def share_bar(share: float | None, scale: float, width: int) -> str:
    """A unicode bar of ``share / scale · width`` cells (eighth-cell resolution)."""
    if share is None or scale <= 0:
        return ""
    cells = max(0.0, min(1.0, share / scale)) * width
    full = int(cells)
    rest = int(round((cells - full) * 8))
    if rest == 8:
        full, rest = full + 1, 0
    return "█" * full + (_EIGHTHS[rest] if rest else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def audit_markdown(
    audit: pl.DataFrame,
    *,
    flagged: pl.DataFrame | None = None,
    max_rows: int = 40,
    bar_width: int = 12,
) -> str:
    """Render the audit as a compact markdown table with unicode bars for the three shares.

    Rows are ordered by the absolute shift the filter caused (largest first), so a truncated
    table shows what moved most. Bars of all three shares share one scale (the largest share
    shown), so they can be compared by eye across columns and rows. Flagged rows (see
    :func:`flag_shifts`) are marked ⚠.

    Args:
        audit: :func:`bias_audit` output.
        flagged: :func:`flag_shifts` output (optional).
        max_rows: Rows shown at most; a last line says how many were left out.
        bar_width: Cells of a bar at the largest share.

    Returns:
        Markdown text.
    """
    if audit.height == 0:
        return "_No attributes to audit._"
    marks: set[tuple[str, str]] = set()
    if flagged is not None and flagged.height:
        marks = set(zip(flagged["attribute"], flagged["value"], strict=True))
    shown = audit.sort(
        pl.col("shift_filtered_pts").abs().fill_null(0.0),
        "attribute",
        "value",
        descending=[True, False, False],
    ).head(max_rows)
    scale = max(
        (
            float(v)
            for c in ("share_unfiltered", "share_filtered", "share_weighted")
            for v in shown[c]
            if v is not None
        ),
        default=0.0,
    )

    def fmt(share: float | None) -> str:
        if share is None:
            return "–"
        return f"`{share_bar(share, scale, bar_width):<{bar_width}}` {100 * share:.1f}%"

    def pts(v: float | None) -> str:
        return "–" if v is None else f"{v:+.1f}"

    lines = [
        "| attribute | value | unfiltered | filtered | weighted | Δ filt (pts) | Δ wtd (pts) |",
        "|---|---|---|---|---|---:|---:|",
    ]
    for row in shown.iter_rows(named=True):
        mark = " ⚠" if (row["attribute"], row["value"]) in marks else ""
        lines.append(
            f"| {_cell(row['attribute'])} | {_cell(str(row['value']))}{mark} "
            f"| {fmt(row['share_unfiltered'])} | {fmt(row['share_filtered'])} "
            f"| {fmt(row['share_weighted'])} | {pts(row['shift_filtered_pts'])} "
            f"| {pts(row['shift_weighted_pts'])} |"
        )
    if audit.height > shown.height:
        lines.append("")
        lines.append(f"_{audit.height - shown.height} more rows not shown (smaller shifts)._")
    return "\n".join(lines)
