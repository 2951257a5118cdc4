"""Uniqueness as an input to the sample weights (opt-in, stage 7).

With ``uniqueness_power = α ≠ 0`` every kept image's weight becomes

    ``weight = clip(scale · ratio(x) · m(x), w_min, w_max)``,
    ``m(x) = (max(u(x), floor) / u_ref) ^ α``,

where ``u`` is the image's ``image_uniqueness`` score (cosine distance to its k-th nearest
other image) and ``u_ref`` the median floored score of the kept images in the probe's
training sample. α > 0 up-weights outliers / rare images (FiftyOne's uniqueness as a sampling
weight), α < 0 favours typical images (down-weights fastdup's outliers). ``scale`` is solved
with the multiplier in place, so the mean-1 normalisation, the bounds, the ESS and the
closed-form rescale work on ``ratio · m`` exactly as they do on ``ratio`` alone.

**Fixed per probe.** ``u_ref`` is set when the probe is fitted (a full run) from its bounded
sample, stored with the probe's scale in the commit summary and in every stats row, and
reused by incremental runs: a shard scored incrementally gets the multiplier a full re-score
with that probe would give. Dividing by ``u_ref`` does not change the weights of scored images
(the scale absorbs any constant); it makes ``m = 1`` mean "as unique as the median image",
which is what an image without a score gets.

**Missing scores.** An image whose shard has no ``image_uniqueness`` rows yet (similarity runs
beside the weights, not before them) gets ``m = 1`` and is counted (``n_uniqueness_missing``
per shard, ``uniqueness_missing`` in the metadata); when its shard is scored later, the next
weights run re-weights that shard (the stage's commit records the ``image_uniqueness`` version
and the plan re-scores the shards changed since).

Reads: only the ``image_uniqueness`` rows of the shards being scored (two columns), or of the
probe sample's shards at a fit.
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_UNIQUENESS

DEFAULT_UNIQUENESS_POWER = 0.0
"""Off: the weights do not depend on uniqueness."""
DEFAULT_UNIQUENESS_FLOOR = 0.01
"""Scores below this count as this (0 — k exact copies — would give m = 0, or ∞ for α < 0)."""


@dataclass(frozen=True)
class UniquenessTerm:
    """The uniqueness multiplier ``m = (max(u, floor) / reference) ^ power``.

    Attributes:
        power: α (≠ 0).
        floor: Lower bound of a score, > 0.
        reference: ``u_ref``, the median floored score of the probe sample's kept images.
    """

    power: float
    floor: float
    reference: float

    def record(self) -> dict[str, float]:
        """JSON-compatible, as stored in the commit summary."""
        return {"power": self.power, "floor": self.floor, "reference": self.reference}

    def multipliers(
        self, image_ids: Sequence[str], scores: pl.DataFrame | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Multipliers of ``image_ids`` from their ``image_uniqueness`` rows.

        Args:
            image_ids: (m,) ids, in the caller's order.
            scores: ``image_id, uniqueness`` rows (others are ignored); None: no rows.

        Returns:
            ``(m, missing)``: (m,) float64 multipliers (1.0 where missing), (m,) bool.
        """
        u = scores_for(image_ids, scores)
        missing = np.isnan(u)
        m = np.ones(u.size)
        have = ~missing
        m[have] = (np.maximum(u[have], self.floor) / self.reference) ** self.power
        return m, missing


def uniqueness_settings(settings: Mapping[str, Any]) -> dict[str, float] | None:
    """The uniqueness settings a commit records (None when the term is off).

    Off (power 0) records nothing, so that a commit made before this setting existed and one
    made with it off compare equal (no spurious full re-score after an upgrade).

    Raises:
        ValueError: On a non-finite power or a floor outside (0, 2].
    """
    power = float(settings.get("uniqueness_power", DEFAULT_UNIQUENESS_POWER))
    floor = float(settings.get("uniqueness_floor", DEFAULT_UNIQUENESS_FLOOR))
    if not math.isfinite(power):
        msg = f"uniqueness_power={power}: expected a finite number (0 = off, e.g. 0.5 or 1)"
        raise ValueError(msg)
    if not 0.0 < floor <= 2.0:
        msg = (
            f"uniqueness_floor={floor}: expected 0 < floor <= 2 (uniqueness is a cosine "
            "distance in [0, 2]), e.g. 0.01"
        )
        raise ValueError(msg)
    if power == 0.0:
        return None
    return {"power": power, "floor": floor}


def require_uniqueness(store: DeltaStore, power: float) -> None:
    """Fail with a fix when the weights use uniqueness and the table was never written.

    Raises:
        ValueError: If ``image_uniqueness`` does not exist.
    """
    if not store.exists(IMAGE_UNIQUENESS.name):
        msg = (
            f"uniqueness_power={power:g} weights the images by their uniqueness, but "
            "image_uniqueness was never materialized: run similarity_job (similarity_index + "
            "image_uniqueness; `curation run` does it after the weights) and re-run "
            "sample_weights, or set uniqueness_power: 0"
        )
        raise ValueError(msg)


def read_uniqueness(store: DeltaStore, shards: Sequence[str]) -> dict[str, pl.DataFrame]:
    """``image_id, uniqueness`` of ``shards`` (one pruned read), shard → rows.

    Shards without rows are absent from the result. Memory: two columns of those shards.
    """
    if not shards:
        return {}
    rows = store.read(
        IMAGE_UNIQUENESS, shards=list(shards), columns=["image_id", "shard", "uniqueness"]
    )
    return {
        str(key[0]): part.drop("shard")
        for key, part in rows.partition_by("shard", as_dict=True).items()
    }


def scores_for(image_ids: Sequence[str], scores: pl.DataFrame | None) -> np.ndarray:
    """(m,) float64 scores of ``image_ids`` (NaN where there is no row), in their order."""
    if not len(image_ids):
        return np.zeros(0)
    if scores is None or scores.is_empty():
        return np.full(len(image_ids), np.nan)
    ids = pl.DataFrame({"image_id": list(image_ids)}, schema={"image_id": pl.String})
    one = scores.select("image_id", "uniqueness").unique("image_id", keep="first")
    joined = ids.join(one, on="image_id", how="left", maintain_order="left")
    return joined["uniqueness"].cast(pl.Float64).fill_null(float("nan")).to_numpy()


def sample_term(
    store: DeltaStore,
    shards: Sequence[str],
    image_ids: Sequence[str],
    kept: np.ndarray,
    settings: Mapping[str, Any],
) -> tuple[UniquenessTerm, np.ndarray]:
    """The term of a new probe and the multipliers of its sample's rows.

    ``u_ref`` is the median floored score of the sample's kept images that have one.

    Args:
        store: Delta store.
        shards: The probe sample's shards (only their scores are read).
        image_ids: (n,) the sample's ids.
        kept: (n,) bool, the sample's kept rows.
        settings: :func:`uniqueness_settings` (not None).

    Returns:
        ``(term, m)``: m is (n,) float64, 1.0 where a row has no score.

    Raises:
        ValueError: If none of the kept images has a score (the shards were never scored).
    """
    by_shard = read_uniqueness(store, shards)
    scores = pl.concat(list(by_shard.values())) if by_shard else None
    u = scores_for(image_ids, scores)
    kept_u = u[np.asarray(kept, bool)]
    have = kept_u[~np.isnan(kept_u)]
    if not have.size:
        msg = (
            f"uniqueness_power={settings['power']:g}: none of the {kept_u.size} kept images "
            f"in the probe's sample ({len(shards)} shards) has an image_uniqueness score; "
            "materialize image_uniqueness for those shards (similarity_job) first, or set "
            "uniqueness_power: 0"
        )
        raise ValueError(msg)
    reference = float(np.median(np.maximum(have, settings["floor"])))
    term = UniquenessTerm(float(settings["power"]), float(settings["floor"]), reference)
    m, _ = term.multipliers(image_ids, scores)
    return term, m
