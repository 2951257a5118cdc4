"""Training-ready export: the curated manifest, Soft Cap Sampling and WebDataset shards.

Stage 8 of the pipeline (see DESIGN.md):

* :data:`CURATED_DATASET` — one row per kept image with its weight (:func:`curated_rows`
  builds it from the kept images and ``sample_weights``).
* :func:`soft_cap_sampling` — FLYT's Soft Cap Sampling (Shechter & Carmon, "Filter Like You
  Test", 2025): turn per-example weights into a sampled *multiset* by repeatedly sampling from
  ``softmax(log w)`` while a repetition penalty lowers the logit of an example each time it is
  drawn, so that high-weight examples are repeated but cannot dominate.
* :func:`write_webdataset` — WebDataset ``.tar`` shards (``KEY.<ext>`` original bytes,
  ``KEY.txt`` caption, ``KEY.json`` metadata), written atomically and deterministically; a row
  whose bytes cannot be read is reported with its reason, never silently dropped.
"""

import io
import json
import logging
import math
import os
import re
import shutil
import tarfile
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.images import SourceReader
from curation_assets.lib.tables import Column, TableSpec

logger = logging.getLogger(__name__)

DEFAULT_PENALTY = 0.15
DEFAULT_SHARD_SIZE = 10_000
DEFAULT_PREFIX = "curated"
TAR_MTIME = 0
"""Modification time written into every tar header (fixed, so shards are byte-reproducible)."""

CURATED_DATASET = TableSpec(
    name="curated_dataset",
    description="The training manifest: one row per kept image with its sample weight.",
    partition_by=(),
    columns=(
        Column("image_id", pl.String, "sha256 of the image bytes; the WebDataset key."),
        Column("source_uri", pl.String, "Where to read the bytes: path, or tar path#member."),
        Column("caption", pl.String, "Caption, if any."),
        Column("weight", pl.Float64, "Sample weight (mean 1 over the dataset)."),
        Column("shard", pl.String, "Shard it was ingested from."),
        Column("width", pl.Int32, "Width in pixels."),
        Column("height", pl.Int32, "Height in pixels."),
    ),
)


def curated_rows(images: pl.DataFrame, weights: pl.DataFrame) -> pl.DataFrame:
    """Join the kept images with their weights into :data:`CURATED_DATASET` rows.

    Args:
        images: The kept images (``filtered_images`` columns: image_id, shard, source_uri,
            caption, width, height), one row per image.
        weights: ``sample_weights`` rows (image_id, weight).

    Returns:
        :data:`CURATED_DATASET` rows sorted by ``image_id``.

    Raises:
        ValueError: If an image has no weight or a weight no image (the two tables come from
            different snapshots: re-materialize sample_weights), or ids repeat.
    """
    for frame, what in ((images, "images"), (weights, "weights")):
        if "image_id" not in frame.columns:
            msg = f"{what} lack an image_id column; it has {frame.columns}"
            raise ValueError(msg)
        if frame["image_id"].n_unique() != frame.height:
            msg = f"{what} have duplicate image_ids; expected one row per kept image"
            raise ValueError(msg)
    w = weights.select("image_id", "weight")
    no_weight = images.join(w, on="image_id", how="anti").height
    no_image = w.join(images.select("image_id"), on="image_id", how="anti").height
    if no_weight or no_image:
        msg = (
            f"{no_weight} kept images have no weight and {no_image} weights have no kept image; "
            "sample_weights is stale: re-materialize it after deduplicated_images"
        )
        raise ValueError(msg)
    return CURATED_DATASET.conform(images.join(w, on="image_id", how="inner")).sort("image_id")


# --------------------------------------------------------------------------------------------
# Soft Cap Sampling
# --------------------------------------------------------------------------------------------


def soft_cap_sampling(
    scores: np.ndarray,
    n_samples: int,
    *,
    log_scale: bool = False,
    penalty: float = DEFAULT_PENALTY,
    temperature: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """FLYT's Soft Cap Sampling: draw ``n_samples`` times with a repetition penalty.

    The process sampled is the sequential one: draw one example from
    ``softmax(logits / temperature)``; subtract ``penalty`` from the drawn example's logit;
    repeat ``n_samples`` times. An example drawn ``c`` times has been made ``exp(c · penalty /
    temperature)`` times less likely, so high-weight examples repeat while no example takes
    over the multiset. ``penalty = 0`` is multinomial sampling; a very large penalty draws
    without replacement (in weight-biased order) until every example is drawn once, then again.

    Implementation — exact, not a batched approximation. Drawing one example from a softmax
    is an exponential race: give example ``i`` an exponential clock of rate ``exp(logit_i)``;
    the first to ring wins. By memorylessness the sequential process is the sequence of rings
    of independent per-example processes whose rate drops by ``exp(-penalty / temperature)``
    after each of their own rings; the first ``n_samples`` rings over all examples are the
    sample. Rings are simulated in rounds: each round picks a time horizon (the k-th smallest
    next ring, ``k = ⌈remaining / 2⌉`` capped at N, pulled in when a fluid estimate says a few
    fast examples would ring far more often than needed), takes every ring up to it (an
    example can ring several times in a round) and accepts them all while they fit in the
    remaining count; in the last round only the earliest rings are kept. Horizons depend only
    on the state so far and every drawn clock is used, so the result has exactly the
    sequential process's distribution. Ring times are kept as logarithms (gaps grow like
    ``exp(penalty · count)``). Cost: O(N) per round, about ``n / N + log n`` rounds;
    memory a few (N,) arrays plus the rings of one round (≲ 2 · remaining).

    Args:
        scores: (N,) weights (≥ 0; 0 = never drawn), or log-weights with ``log_scale=True``
            (-inf = never drawn).
        n_samples: Total draws (the size of the multiset).
        log_scale: Whether ``scores`` are logits (log-weights).
        penalty: Repetition penalty subtracted from an example's logit per draw (FLYT's
            default 0.15 is used here), ≥ 0.
        temperature: Logits are divided by it (> 0).
        seed: Seed of the random clocks (same inputs and seed → same counts).

    Returns:
        (N,) int64 counts: how many times each example is in the multiset; they sum to
        ``n_samples``.

    Raises:
        ValueError: On negative / non-finite weights, no drawable example, or bad settings.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        msg = f"scores have shape {s.shape}; expected (N,) weights or log-weights"
        raise ValueError(msg)
    if n_samples < 0:
        msg = f"n_samples={n_samples}: expected a count >= 0"
        raise ValueError(msg)
    if not (penalty >= 0 and math.isfinite(penalty)):
        msg = f"penalty={penalty}: expected a finite repetition penalty >= 0, e.g. 0.15"
        raise ValueError(msg)
    if not (temperature > 0 and math.isfinite(temperature)):
        msg = f"temperature={temperature}: expected a positive, finite temperature, e.g. 1.0"
        raise ValueError(msg)
    if log_scale:
        if np.isnan(s).any() or np.isposinf(s).any():
            msg = "log-weights contain NaN or +inf; expected finite values (or -inf to exclude)"
            raise ValueError(msg)
        logits = s / temperature
    else:
        if not (np.isfinite(s).all() and (s >= 0).all()):
            msg = "weights must be finite and >= 0 (pass log_scale=True for log-weights)"
            raise ValueError(msg)
        with np.errstate(divide="ignore"):
            logits = np.log(s) / temperature
    n_items = s.size
    counts = np.zeros(n_items, dtype=np.int64)
    if n_samples == 0:
        return counts
    live = np.isfinite(logits)
    if not live.any():
        msg = "no example can be drawn: every weight is 0 (or every log-weight -inf)"
        raise ValueError(msg)
    step = penalty / temperature
    rng = np.random.default_rng(seed)
    # Ring times are kept as logarithms: with a penalty the gaps grow like exp(step · count),
    # which would overflow float64 for an example drawn thousands of times.
    log_rate = np.where(live, logits - logits[live].max(), -np.inf)
    with np.errstate(divide="ignore"):
        log_next = np.log(rng.standard_exponential(n_items)) - log_rate
    remaining = int(n_samples)
    n_live = int(live.sum())
    while remaining > 0:
        k = min(n_live, (remaining + 1) // 2)
        horizon = float(np.partition(log_next, k - 1)[k - 1])
        expected = _expected_rings(log_next, log_rate, counts, step, horizon)
        if expected > 2 * remaining or (k == n_live and expected < remaining / 4):
            # The k-th next ring is a poor horizon: a few fast examples would ring far more
            # often than needed before it, or (few examples, many draws) far too few rings
            # would fit. Move it to where about half the remaining rings are expected — a
            # choice based only on the present state, so sampling stays exact.
            horizon = _horizon_for(log_next, log_rate, counts, step, horizon, remaining / 2)
        ring_items: list[np.ndarray] = []
        ring_times: list[np.ndarray] = []
        active = np.flatnonzero(log_next <= horizon)
        rings = 0
        # Take every ring up to the horizon; each pass advances the examples that rang.
        while active.size:
            ring_items.append(active)
            ring_times.append(log_next[active])
            rings += active.size
            c = counts[active] + 1
            counts[active] = c
            log_gap = np.log(rng.standard_exponential(active.size)) - log_rate[active] + step * c
            log_next[active] = np.logaddexp(log_next[active], log_gap)
            active = active[log_next[active] <= horizon]
        if rings <= remaining:
            remaining -= rings
            continue
        # Overshoot: keep only the earliest `remaining` rings of this round.
        items = np.concatenate(ring_items)
        times = np.concatenate(ring_times)
        drop = np.argpartition(times, remaining - 1)[remaining:]
        np.subtract.at(counts, items[drop], 1)
        remaining = 0
    return counts


def _expected_rings(
    log_next: np.ndarray, log_rate: np.ndarray, counts: np.ndarray, step: float, horizon: float
) -> float:
    """Fluid estimate of the number of rings up to time ``exp(horizon)``.

    Each example due before the horizon rings once, then ``N(t)`` more times with
    ``dN/dt = rate · exp(-step · N)``, i.e. ``log1p(step · rate · t) / step`` (``rate · t``
    without a penalty).
    """
    due = np.flatnonzero(log_next <= horizon)
    if due.size == 0:
        return 0.0
    with np.errstate(divide="ignore"):
        log_dt = horizon + np.log1p(-np.exp(log_next[due] - horizon))
    log_u = log_rate[due] - step * (counts[due] + 1) + log_dt
    if step > 0:
        more = np.logaddexp(0.0, math.log(step) + log_u) / step  # log1p(step·u) without overflow
    else:
        with np.errstate(over="ignore"):
            more = np.exp(log_u)
    return float(due.size + more.sum())


def _horizon_for(
    log_next: np.ndarray,
    log_rate: np.ndarray,
    counts: np.ndarray,
    step: float,
    start: float,
    target: float,
) -> float:
    """A log-time horizon with about ``target`` expected rings (at least the first ring)."""

    def rings(h: float) -> float:
        return _expected_rings(log_next, log_rate, counts, step, h)

    lo, hi = float(log_next.min()), start
    if rings(hi) < target:
        lo, span = hi, 1.0
        hi = lo + span
        while rings(hi) < target and span < 1e6:
            lo, span = hi, 2 * span
            hi = lo + span
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        r = rings(mid)
        if 0.5 * target <= r <= 1.5 * target:
            return mid  # close enough: the horizon only sets the size of a round
        if r > target:
            hi = mid
        else:
            lo = mid
    return max(lo, float(log_next.min()))


def sampling_stats(counts: np.ndarray, weights: np.ndarray | None = None) -> dict[str, Any]:
    """Summary of a sampled multiset for metadata.

    Args:
        counts: (N,) draw counts from :func:`soft_cap_sampling`.
        weights: (N,) weights it was drawn from (optional: adds the count–weight correlation).

    Returns:
        ``n_samples, n_items, n_distinct, distinct_share, max_count, mean_count_drawn``,
        ``count_histogram`` (count -> items, up to the largest count) and, with weights,
        ``spearman_count_weight``.
    """
    c = np.asarray(counts, dtype=np.int64)
    n_drawn = int((c > 0).sum())
    hist = np.bincount(c) if c.size else np.zeros(1, np.int64)
    out: dict[str, Any] = {
        "n_samples": int(c.sum()),
        "n_items": int(c.size),
        "n_distinct": n_drawn,
        "distinct_share": n_drawn / c.size if c.size else None,
        "max_count": int(c.max()) if c.size else 0,
        "mean_count_drawn": float(c[c > 0].mean()) if n_drawn else None,
        "count_histogram": {str(i): int(v) for i, v in enumerate(hist) if v},
    }
    if weights is not None and c.size > 1:
        from scipy.stats import rankdata

        rw, rc = rankdata(np.asarray(weights, dtype=np.float64)), rankdata(c)
        rho = float(np.corrcoef(rw, rc)[0, 1]) if rw.std() > 0 and rc.std() > 0 else math.nan
        out["spearman_count_weight"] = rho if math.isfinite(rho) else None
    return out


# --------------------------------------------------------------------------------------------
# Reading source bytes
# --------------------------------------------------------------------------------------------


_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "jpg"),
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
    (b"WEBP", 8, "webp"),
    (b"BM", 0, "bmp"),
    (b"II*\x00", 0, "tiff"),
    (b"MM\x00*", 0, "tiff"),
)
"""Magic numbers: (bytes, offset, extension); WEBP also needs ``RIFF`` at offset 0."""

_EXT_ALIASES = {"jpeg": "jpg", "jpe": "jpg", "tif": "tiff"}
IMAGE_EXTENSIONS = frozenset({"jpg", "png", "gif", "webp", "bmp", "tiff"})


def image_extension(data: bytes, source_uri: str = "") -> str | None:
    """The true file extension of image bytes (from their magic number, else the uri's suffix).

    Returns:
        ``jpg``, ``png``, ``gif``, ``webp``, ``bmp`` or ``tiff``; None when neither the bytes
        nor the uri say which.
    """
    for magic, offset, ext in _MAGIC:
        if data[offset : offset + len(magic)] == magic and (ext != "webp" or data[:4] == b"RIFF"):
            return ext
    suffix = source_uri.rpartition("/")[2].rpartition(".")[2].lower()
    suffix = _EXT_ALIASES.get(suffix, suffix)
    return suffix if suffix in IMAGE_EXTENSIONS else None


# --------------------------------------------------------------------------------------------
# WebDataset writer
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportFailure:
    """A row that could not be exported.

    Attributes:
        image_id: The row's id.
        source_uri: Where its bytes should have been.
        reason: ``read_error``, ``zero_byte`` or ``unknown_format``.
        detail: The error message.
    """

    image_id: str
    source_uri: str
    reason: str
    detail: str


@dataclass
class WebDatasetExport:
    """What :func:`write_webdataset` wrote.

    Attributes:
        shards: ``(path, n_samples)`` per shard written, in order.
        failures: Rows not written, each with its reason.
        removed_stale: Old shards of the same prefix beyond the new last one, deleted.
    """

    shards: list[tuple[Path, int]] = field(default_factory=list)
    failures: list[ExportFailure] = field(default_factory=list)
    removed_stale: list[Path] = field(default_factory=list)

    @property
    def n_written(self) -> int:
        """Samples written over all shards."""
        return sum(n for _, n in self.shards)

    def failures_frame(self) -> pl.DataFrame:
        """The failures as a frame (image_id, source_uri, reason, detail)."""
        return pl.DataFrame(
            {
                "image_id": [f.image_id for f in self.failures],
                "source_uri": [f.source_uri for f in self.failures],
                "reason": [f.reason for f in self.failures],
                "detail": [f.detail for f in self.failures],
            },
            schema={c: pl.String for c in ("image_id", "source_uri", "reason", "detail")},
        )


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = TAR_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def write_webdataset(
    rows: pl.DataFrame | Iterable[Mapping[str, Any]],
    read_bytes: Callable[[str], bytes] | None,
    out_dir: str | Path,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    prefix: str = DEFAULT_PREFIX,
    overwrite: bool = False,
) -> WebDatasetExport:
    """Write the rows' images, captions and metadata as WebDataset tar shards.

    Each sample ``KEY`` (= ``image_id``) is three members: ``KEY.<ext>`` with the original bytes
    under their true extension (:func:`image_extension`), ``KEY.txt`` with the caption (empty
    when there is none) and ``KEY.json`` with ``image_id``, ``weight``, ``source_uri``,
    ``caption`` and whichever of ``shard``, ``width``, ``height`` the rows have. Rows are
    written sorted by ``image_id`` and tar headers carry fixed times and owners, so the same
    rows and bytes give byte-identical shards. Each shard is written to ``NAME.tmp`` and
    renamed into place when complete. ``shard_size`` counts written samples: a row whose
    bytes cannot be read (the reader raises, the bytes are empty, or they are no known image
    format) is returned in ``failures`` with its reason, and the other rows are written.

    Args:
        rows: :data:`CURATED_DATASET`-like rows (at least ``image_id``, ``source_uri``,
            ``caption``, ``weight``), as a frame or mappings.
        read_bytes: ``source_uri -> bytes``; None uses a :class:`SourceReader` (paths and
            ``tar_path#member``).
        out_dir: Folder for the shards (created).
        shard_size: Samples per shard (the last may be smaller).
        prefix: Shard names are ``{prefix}-{index:06d}.tar``.
        overwrite: Replace shards of this prefix already in ``out_dir`` (and delete old ones
            beyond the new last shard). False: refuse when any exist.

    Returns:
        :class:`WebDatasetExport` with the shard paths and counts and the failures.

    Raises:
        ValueError: On missing columns, duplicate ids, ids unusable as keys, bad settings.
        FileExistsError: If shards of this prefix exist and ``overwrite`` is False.

    Memory: one sample's bytes at a time (plus the rows' metadata).
    """
    if shard_size < 1:
        msg = f"shard_size={shard_size}: expected at least 1 sample per shard"
        raise ValueError(msg)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_\-]*", prefix):
        msg = f"prefix={prefix!r}: use letters, digits, '_' and '-' (no dots or slashes)"
        raise ValueError(msg)
    df: pl.DataFrame = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(list(rows))
    need = ["image_id", "source_uri", "caption", "weight"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        msg = f"rows lack columns {missing}; they have {df.columns} (pass curated_dataset rows)"
        raise ValueError(msg)
    if df["image_id"].null_count() or df["image_id"].n_unique() != df.height:
        msg = "rows have null or duplicate image_ids; every sample needs a unique key"
        raise ValueError(msg)
    bad_keys = df.filter(~pl.col("image_id").cast(pl.String).str.contains(r"^[A-Za-z0-9_\-]+$"))
    if bad_keys.height:
        msg = (
            f"{bad_keys.height} image_ids cannot be WebDataset keys (e.g. "
            f"{bad_keys['image_id'][0]!r}); keys may hold letters, digits, '_' and '-' only"
        )
        raise ValueError(msg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d{{6}})\.tar$")
    existing = sorted(p for p in out.iterdir() if pattern.match(p.name))
    if existing and not overwrite:
        msg = (
            f"{out} already holds {len(existing)} shards named {prefix}-NNNNNN.tar; pass "
            "overwrite=True to replace them, or choose another out_dir / prefix"
        )
        raise FileExistsError(msg)
    extra = [c for c in ("shard", "width", "height") if c in df.columns]
    df = df.sort("image_id")

    result = WebDatasetExport()
    own_reader = read_bytes is None
    reader: Callable[[str], bytes] = SourceReader() if read_bytes is None else read_bytes
    tar: tarfile.TarFile | None = None
    tmp: Path | None = None
    in_shard = 0

    def finish() -> None:
        nonlocal tar, tmp, in_shard
        if tar is None or tmp is None:
            return
        tar.close()
        final = tmp.with_suffix("")  # drop ".tmp"
        os.replace(tmp, final)
        result.shards.append((final, in_shard))
        tar, tmp, in_shard = None, None, 0

    try:
        for row in df.iter_rows(named=True):
            image_id, uri = str(row["image_id"]), str(row["source_uri"])
            try:
                data = reader(uri)
            except Exception as exc:  # bad data: reported per row, never fatal to the others
                detail = f"{type(exc).__name__}: {exc}"
                result.failures.append(ExportFailure(image_id, uri, "read_error", detail))
                continue
            if not data:
                result.failures.append(ExportFailure(image_id, uri, "zero_byte", "empty bytes"))
                continue
            ext = image_extension(data, uri)
            if ext is None:
                detail = f"bytes start {data[:8]!r}; no known image magic or file suffix"
                result.failures.append(ExportFailure(image_id, uri, "unknown_format", detail))
                continue
            if tar is None:
                tmp = out / (_shard_name(prefix, len(result.shards)) + ".tmp")
                tar = tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT)
            caption = row["caption"]
            meta = {
                "image_id": image_id,
                "weight": _json_value(row["weight"]),
                "source_uri": uri,
                "caption": caption,
                **{c: _json_value(row[c]) for c in extra},
            }
            _add_member(tar, f"{image_id}.{ext}", data)
            _add_member(tar, f"{image_id}.txt", (caption or "").encode("utf-8"))
            _add_member(tar, f"{image_id}.json", json.dumps(meta, sort_keys=True).encode())
            in_shard += 1
            if in_shard == shard_size:
                finish()
        finish()
    finally:
        if tar is not None:
            tar.close()
        if tmp is not None and tmp.exists():
            tmp.unlink()
        if own_reader and isinstance(reader, SourceReader):
            reader.close()
    written = {p.name for p, _ in result.shards}
    for old in existing:
        if old.name not in written:
            old.unlink()
            result.removed_stale.append(old)
    if result.failures:
        logger.warning(
            "webdataset export: %d of %d rows not written (%s)",
            len(result.failures),
            df.height,
            ", ".join(sorted({f.reason for f in result.failures})),
        )
    return result


# --------------------------------------------------------------------------------------------
# Publishing files atomically
# --------------------------------------------------------------------------------------------


def write_file_atomic(path: Path, write: Callable[[Path], Any]) -> Path:
    """Write a file under a temporary name in its folder, then rename it into place.

    A reader sees the old file or the complete new one, never a partial file; a process
    killed while writing leaves only a ``.NAME.*.tmp`` file, removed by the next call.

    Args:
        path: Final path.
        write: Called with the temporary path; writes the whole file there.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def staging_dir(link: Path) -> Path:
    """A fresh folder beside ``link`` to build a new version of its content in.

    Folders of earlier builds that were never published (a killed run) are deleted first.
    """
    link.parent.mkdir(parents=True, exist_ok=True)
    current = link.resolve() if link.is_symlink() else None
    for old in link.parent.glob(f".{link.name}-*"):
        if old.is_dir() and old.resolve() != current:
            shutil.rmtree(old, ignore_errors=True)
    staged = link.with_name(f".{link.name}-{uuid.uuid4().hex[:12]}")
    staged.mkdir()
    return staged


def publish_dir(staged: Path, link: Path) -> Path:
    """Make ``link`` point at the complete folder ``staged``, atomically (a symlink swap).

    Readers that open ``link/...`` see the previous version or the new one, never a mix. The
    previous version is deleted afterwards. A real folder at ``link`` (from an older layout) is
    moved aside and deleted.

    Returns:
        ``link``.
    """
    tmp = link.with_name(f".{link.name}.{os.getpid()}.link")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(staged.name, tmp)  # relative: the export folder can be moved as a whole
    previous: Path | None = None
    if link.is_symlink():
        previous = link.resolve()
    elif link.exists():
        previous = link.with_name(f".{link.name}-legacy-{uuid.uuid4().hex[:12]}")
        link.rename(previous)
    os.replace(tmp, link)
    if previous is not None and previous != staged.resolve():
        shutil.rmtree(previous, ignore_errors=True)
    return link


def file_stamps(paths: Iterable[Path]) -> dict[str, list[int]]:
    """``path → [size, mtime_ns]`` (a folder or symlink: of what it resolves to)."""
    out = {}
    for p in paths:
        st = p.resolve().stat()
        out[str(p)] = [int(st.st_size), int(st.st_mtime_ns)]
    return out


def files_unchanged(stamps: Mapping[str, Sequence[int]]) -> bool:
    """Whether every file still has the size and modification time :func:`file_stamps` saw."""
    for path, stamp in stamps.items():
        try:
            st = Path(path).resolve().stat()
        except OSError:
            return False
        if [int(st.st_size), int(st.st_mtime_ns)] != list(stamp):
            return False
    return True
