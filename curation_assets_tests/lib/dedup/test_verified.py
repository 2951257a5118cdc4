"""Band verification inside the dedup run: promoted pairs, the verdict cache, equal results.

The verifier is replaced by a deterministic stand-in (a pair verifies when the sha256 of its
two uris starts with an even byte): these tests are about the run's bookkeeping, not about ORB
(``test_verify.py`` tests the verifier on images).
"""

import hashlib

import polars as pl
import pytest

from curation_assets.lib.dedup import verified
from curation_assets.lib.dedup.verify import Verification, VerifyParams
from curation_assets.lib.tables import DEDUPLICATED_IMAGES, DUPLICATE_PAIRS, VERIFIED_PAIRS
from curation_assets_tests.lib.dedup.helpers import run_and_write
from curation_assets_tests.lib.dedup.test_scale import N_SHARDS, _add, _store, corpus

__all__ = ["corpus"]

FLOOR, TAU = 0.9, 0.95
PARAMS = VerifyParams()


@pytest.fixture
def calls(monkeypatch):
    """Every pair the stand-in verifier was asked about (by uri)."""
    seen: list[tuple[str, str]] = []

    def fake(pairs, reader, *, params, budget=None):
        for a, b in pairs:
            seen.append((a, b))
            ok = hashlib.sha256(f"{min(a, b)}|{max(a, b)}".encode()).digest()[0] % 2 == 0
            yield Verification(ok, 30 if ok else 3, 40, 0.5, 0.9 if ok else 0.1, False, 0.001)

    monkeypatch.setattr(verified, "verify_pairs", fake)
    return seen


def _uris(store):
    """Raw images of the test corpus point nowhere: give each a uri named by its id."""
    from curation_assets.lib.tables import RAW_IMAGES

    for shard, group in store.read(RAW_IMAGES).group_by("shard"):
        rows = group.with_columns(source_uri=pl.lit("/fake/") + pl.col("image_id"))
        store.replace_shard(RAW_IMAGES, shard[0], RAW_IMAGES.conform(rows))


def _state(store):
    return (
        store.read(DEDUPLICATED_IMAGES).sort("image_id"),
        store.read(DUPLICATE_PAIRS).sort("image_id_a", "image_id_b"),
        store.read(VERIFIED_PAIRS).drop("params").sort("image_id_a", "image_id_b"),
    )


def test_verified_band_pairs_join_groups_and_every_path_agrees(tmp_path, corpus, calls):
    full = _store(tmp_path / "full", corpus)
    _add(full, corpus, range(N_SHARDS))
    _uris(full)
    plain = run_and_write(full, tau=TAU, tau_min=FLOOR)
    removed_plain = plain.stats["removed"]
    out = run_and_write(full, tau=TAU, tau_min=FLOOR, verify=PARAMS)
    assert out.plan.mode == "retune" and "band verification on" in out.plan.reason
    assert out.stats["units"] == 0 and len(calls) == plain.merged.band.height
    assert 0 < out.stats["promoted_pairs"] < plain.merged.band.height
    assert out.stats["removed"] > removed_plain
    # duplicate_pairs keeps only pairs ≥ τ; the promoted ones are verified rows below τ
    images, pairs, verdicts = _state(full)
    assert pairs["similarity"].min() >= TAU
    assert (
        verdicts.height == plain.merged.band.height
        and verdicts["verified"].sum() == (out.stats["promoted_pairs"])
    )
    # a second run with verification on: nothing to do; off again: the plain decisions back,
    # and on again: every verdict comes from the cache
    assert run_and_write(full, tau=TAU, tau_min=FLOOR, verify=PARAMS).plan.mode == "current"
    assert run_and_write(full, verify="keep").plan.mode == "current"  # as automation runs it
    off = run_and_write(full, tau=TAU, tau_min=FLOOR)
    assert off.plan.mode == "retune" and off.stats["removed"] == removed_plain
    asked = len(calls)
    again = run_and_write(full, tau=TAU, tau_min=FLOOR, verify=PARAMS)
    assert len(calls) == asked and again.stats["verified_new"] == 0
    expected = _state(full)

    # incremental with verification on from the start gives the same tables
    inc = _store(tmp_path / "inc", corpus)
    _add(inc, corpus, range(N_SHARDS - 2))
    _uris(inc)
    run_and_write(inc, tau=TAU, tau_min=FLOOR, verify=PARAMS)
    _add(inc, corpus, range(N_SHARDS - 2, N_SHARDS))
    _uris(inc)
    last = run_and_write(inc, tau=TAU, tau_min=FLOOR, verify=PARAMS)
    assert last.plan.mode == "incremental"
    for left, right, name in zip(
        _state(inc), expected, ("images", "pairs", "verdicts"), strict=True
    ):
        assert left.equals(right), name


def test_an_unreadable_image_is_an_unverified_pair_with_its_reason(tmp_path, corpus):
    store = _store(tmp_path / "s", corpus)
    _add(store, corpus, range(2))  # uris point to /nowhere: the real verifier cannot read them
    out = run_and_write(store, tau=TAU, tau_min=FLOOR, verify=PARAMS)
    verdicts = store.read(VERIFIED_PAIRS)
    assert verdicts.height == out.merged.band.height > 0
    assert not verdicts["verified"].any() and verdicts["error"].is_not_null().all()
    assert "unreadable" in verdicts["error"][0] and out.stats["promoted_pairs"] == 0
