"""Optional: verify the candidate band [τ_min, τ) with local features and promote what verifies.

With ``verify`` on, a dedup run checks every stored pair in the band with ORB keypoints +
RANSAC + aligned agreement (:mod:`~curation_assets.lib.dedup.verify`); a verified band pair
joins the groups like a pair ≥ τ (so the copy is removed), an unverified one stays a
candidate. ``duplicate_pairs`` still holds only pairs ≥ τ; the promoted pairs are the rows of
``verified_pairs`` with ``verified`` true and a similarity below τ.

Verdicts are a pure function of the two images and the parameters, so ``verified_pairs`` is a
cache keyed by (pair, parameters): a run verifies only band pairs it has no verdict for (new
shards' pairs, or pairs a raised τ moved into the band), reading those images' bytes through
their ``source_uri`` (one ``raw_images`` read per shard they sit in). Cost: ~5–8 ms a pair on
one core (``curation bench verify``), proportional to the new band pairs, never to N. The
table keeps the verdicts of the stored pairs only (∝ pairs).
"""

import json
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import polars as pl

from curation_assets.lib.dedup.verify import VerifyParams, verify_pairs
from curation_assets.lib.images import SourceReader
from curation_assets.lib.memory import MemoryBudget
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import RAW_IMAGES, VERIFIED_PAIRS

PAIR = ["image_id_a", "image_id_b"]

#: The ``verify`` value a commit records when verification is off.
OFF = "off"


def params_key(params: VerifyParams | None) -> str:
    """The parameters as a stable string (``off`` when None): what a verdict was made with."""
    if params is None:
        return OFF
    return json.dumps(asdict(params), sort_keys=True)


def params_from_key(key: str) -> VerifyParams:
    """The parameters a :func:`params_key` string names."""
    return VerifyParams(**json.loads(key))


class BandVerifier:
    """Promotes the verified band pairs; remembers every verdict for ``verified_pairs``.

    Args:
        store: Where ``raw_images`` (source uris) and the verdict cache live.
        params: Verification parameters.
        budget: Memory budget (the feature cache takes a quarter of it).
        reader: ``uri -> bytes`` (default: a :class:`~curation_assets.lib.images.SourceReader`).
        cached: Verdicts already known (``verified_pairs``); only those made with ``params``
            are reused.
    """

    def __init__(
        self,
        store: DeltaStore,
        params: VerifyParams,
        *,
        budget: MemoryBudget | None = None,
        reader: Callable[[str], bytes] | None = None,
        cached: pl.DataFrame | None = None,
    ) -> None:
        self.store, self.params, self.budget, self.reader = store, params, budget, reader
        self.key = params_key(params)
        old = cached if cached is not None else VERIFIED_PAIRS.empty()
        self.cached = old.filter(pl.col("params") == self.key)
        self.verdicts = VERIFIED_PAIRS.empty()
        self.stats: dict[str, Any] = {"verified_new": 0, "verify_errors": 0, "verify_seconds": 0.0}

    def __call__(self, band: pl.DataFrame) -> pl.DataFrame:
        """The band pairs that verify (rows of ``band``); records every band pair's verdict."""
        known = self.cached.join(band.select(PAIR), on=PAIR, how="semi")
        todo = band.join(known.select(PAIR), on=PAIR, how="anti")
        new = self._verify(todo) if todo.height else VERIFIED_PAIRS.empty()
        self.verdicts = pl.concat([known, new]).sort(PAIR)
        self.stats.update(
            verified_new=new.height,
            verify_errors=int(self.verdicts["error"].is_not_null().sum()),
            verified_band_pairs=int(self.verdicts["verified"].sum()),
        )
        ok = self.verdicts.filter(pl.col("verified")).select(PAIR)
        return band.join(ok, on=PAIR, how="semi")

    def table(self, stored: pl.DataFrame) -> pl.DataFrame:
        """``verified_pairs`` to write: every verdict of a pair still stored (≥ τ_min).

        Verdicts of pairs now ≥ τ are kept too: a later τ that moves them back into the band
        reuses them.
        """
        every = pl.concat([self.verdicts, self.cached]).unique(PAIR, keep="first")
        return every.join(stored.select(PAIR), on=PAIR, how="semi").sort(PAIR)

    def _verify(self, todo: pl.DataFrame) -> pl.DataFrame:
        shards = sorted(set(todo["shard_a"].to_list()) | set(todo["shard_b"].to_list()))
        uris = self.store.read(RAW_IMAGES, shards=shards, columns=["image_id", "source_uri"])
        where = dict(zip(uris["image_id"].to_list(), uris["source_uri"].to_list(), strict=True))
        rows = todo.select(PAIR).with_columns(
            uri_a=pl.col("image_id_a").replace_strict(where, default=None),
            uri_b=pl.col("image_id_b").replace_strict(where, default=None),
        )
        rows = rows.sort("uri_a", "uri_b", nulls_last=True)  # consecutive pairs share images
        known = rows.filter(pl.col("uri_a").is_not_null() & pl.col("uri_b").is_not_null())
        out = []
        with SourceReader() as source:
            read = self.reader or source.read
            pairs = zip(known["uri_a"].to_list(), known["uri_b"].to_list(), strict=True)
            results = verify_pairs(pairs, read, params=self.params, budget=self.budget)
            for (a, b), v in zip(known.select(PAIR).iter_rows(), results, strict=True):
                self.stats["verify_seconds"] += v.seconds
                out.append((a, b, v.verified, v.inliers, v.agreement, v.flipped, v.error))
        for a, b in (
            rows.filter(pl.col("uri_a").is_null() | pl.col("uri_b").is_null())
            .select(PAIR)
            .iter_rows()
        ):
            out.append((a, b, False, 0, 0.0, False, "no source_uri in raw_images"))
        schema = {k: v for k, v in VERIFIED_PAIRS.schema.items() if k != "params"}
        frame = pl.DataFrame(out, schema=schema, orient="row")
        return VERIFIED_PAIRS.conform(frame.with_columns(params=pl.lit(self.key)))
