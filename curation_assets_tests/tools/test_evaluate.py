"""Evaluation against ground truth, on tiny hand-made tables whose figures are worked out by hand.

Each test writes the few Delta rows a stage would have written for a handful of planted inputs
(``source_uri`` ``a1`` ..., image ids ``i-a1`` ...) and checks every figure of the report.
"""

import polars as pl
import pytest

from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DEDUPLICATED_IMAGES,
    DUPLICATE_FILES,
    FILTER_REJECTIONS,
    FILTERED_IMAGES,
    QUARANTINE,
    RAW_IMAGES,
    SAMPLE_WEIGHTS,
    TableSpec,
)
from curation_assets.tools.demo import ITEM_SCHEMA
from curation_assets.tools.evaluate import (
    evaluate_dedup,
    evaluate_filter,
    evaluate_ingest,
    evaluate_weights,
)


def ground_truth(*rows: dict) -> pl.DataFrame:
    """A ground-truth frame (the columns of ``load_ground_truth``); unnamed fields are null."""
    full = [{"shard": "s", "special": [], **row} for row in rows]
    return pl.DataFrame(full, schema=ITEM_SCHEMA)


def put(store: DeltaStore, spec: TableSpec, **columns: list) -> None:
    """Append rows given column-wise; the table's other columns are null."""
    n = len(next(iter(columns.values())))
    data = {c: columns.get(c, [None] * n) for c in spec.column_names}
    if "shard" in data and columns.get("shard") is None:
        data["shard"] = ["s"] * n
    store.append(spec, pl.DataFrame(data, schema=spec.schema))


def ids(*uris: str) -> list[str]:
    return [f"i-{u}" for u in uris]


@pytest.fixture
def store(tmp_path) -> DeltaStore:
    return DeltaStore(str(tmp_path / "delta"))


def test_ingest_traces_inputs_checks_reasons_and_duplicate_groups(store):
    gt = ground_truth(
        {"source_uri": "a1", "kind": "original", "base_id": 1},
        {"source_uri": "a2", "kind": "near_duplicate", "base_id": 1, "duplicate_of": "a1"},
        {"source_uri": "b1", "kind": "original", "base_id": 2},
        {"source_uri": "b2", "kind": "exact_duplicate", "base_id": 2, "duplicate_of": "b1"},
        {"source_uri": "e1", "kind": "original", "base_id": 5},
        {"source_uri": "e2", "kind": "exact_duplicate", "base_id": 5, "duplicate_of": "e1"},
        {"source_uri": "d1", "kind": "original", "base_id": 4},
        {"source_uri": "x1", "kind": "corrupt", "corrupt": "truncated"},
        {"source_uri": "x2", "kind": "corrupt", "corrupt": "zero_byte"},
        {"source_uri": "x3", "kind": "corrupt", "corrupt": "zero_byte"},
    )
    # e2 was not collapsed (kept as an image of its own); d1, clean, was quarantined; x2 is in
    # no table at all; x3 was quarantined for the wrong reason.
    kept = ["a1", "a2", "b1", "e1", "e2"]
    put(store, RAW_IMAGES, image_id=ids(*kept[:4]) + ["i-e2-copy"], source_uri=kept)
    put(store, DUPLICATE_FILES, image_id=ids("b1"), source_uri=["b2"])
    put(
        store,
        QUARANTINE,
        source_uri=["x1", "x3", "d1"],
        reason=["truncated", "not_an_image", "truncated"],
        stage=["ingest"] * 3,
    )
    assert evaluate_ingest(gt, store) == {
        "inputs_planted": 10,
        "inputs_traced_to_one_table": 9,  # all but x2
        "corrupt_planted": 3,
        "corrupt_quarantined": 2,  # x1, x3
        "corrupt_with_expected_reason": 1,  # x1
        "clean_inputs_wrongly_quarantined": 1,  # d1
        "exact_duplicate_groups_planted": 2,  # {b1, b2}, {e1, e2}
        "exact_duplicate_groups_collapsed": 1,  # {b1, b2}
    }


def test_filter_recall_precision_and_the_attribute_shift(store):
    gt = ground_truth(
        {"source_uri": "p1", "kind": "original", "attr_source": "photo", "attr_palette": "warm"},
        {"source_uri": "p2", "kind": "original", "attr_source": "photo", "attr_palette": "warm"},
        {"source_uri": "p3", "kind": "original", "attr_source": "photo", "attr_palette": "cool"},
        {
            "source_uri": "q1",
            "kind": "original",
            "attr_source": "procedural",
            "attr_palette": "warm",
        },
        {
            "source_uri": "q2",
            "kind": "original",
            "attr_source": "procedural",
            "attr_palette": "cool",
        },
        {
            "source_uri": "q3",
            "kind": "original",
            "attr_source": "procedural",
            "attr_palette": "cool",
        },
        {"source_uri": "x1", "kind": "corrupt", "corrupt": "truncated"},
    )
    uris = ["p1", "p2", "p3", "q1", "q2", "q3", "z-not-in-ground-truth"]
    put(store, RAW_IMAGES, image_id=ids(*uris), source_uri=uris)
    put(
        store,
        FILTER_REJECTIONS,
        image_id=ids("p1", "p2", "q1", "q2"),
        category=["photo", "photo", "photo", "another_category"],
    )
    put(store, FILTERED_IMAGES, image_id=ids("p3", "q3"))
    report = evaluate_filter(
        gt,
        store,
        category="photo",
        positive=("attr_source", "photo"),
        attribute=("attr_palette", "warm"),
    )
    assert report == {
        "images_with_ground_truth": 6,  # z has none, x1 is corrupt
        "true_positives_planted": 3,
        "removed": 3,  # q2 went to another category
        "recall": 0.6667,  # p1, p2 of p1..p3
        "precision": 0.6667,  # p1, p2 of p1, p2, q1
        "attr_palette=warm_share_unfiltered_pct": 50.0,  # p1, p2, q1 of 6
        "attr_palette=warm_share_filtered_pct": 0.0,  # p3, q3 are cool
    }


def test_dedup_pairs_and_removals_against_planted_groups(store):
    gt = ground_truth(
        {"source_uri": "o1", "kind": "original", "base_id": 1},
        {"source_uri": "n1", "kind": "near_duplicate", "base_id": 1, "duplicate_of": "o1"},
        {"source_uri": "n2", "kind": "near_duplicate", "base_id": 1, "duplicate_of": "o1"},
        {"source_uri": "o2", "kind": "original", "base_id": 2},
        {"source_uri": "n3", "kind": "near_duplicate", "base_id": 2, "duplicate_of": "o2"},
        {"source_uri": "o3", "kind": "original", "base_id": 3},
    )
    uris = ["o1", "n1", "n2", "o2", "n3", "o3"]
    put(store, RAW_IMAGES, image_id=ids(*uris), source_uri=uris)
    # components: {o1, n1} (n2 missed, alone), {o2, n3, o3} (o3 wrongly joined)
    put(
        store,
        DEDUPLICATED_IMAGES,
        image_id=ids(*uris),
        kept=[True, False, True, True, False, False],
        duplicate_of=[None, "i-o1", None, None, "i-o2", "i-o2"],
        component_id=ids("o1", "o1", "n2", "o2", "o2", "o2"),
    )
    assert evaluate_dedup(gt, store) == {
        "images_deduplicated": 6,
        "planted_groups": 2,  # bases 1 and 2 have copies
        "pair_recall": 0.5,  # true pairs: 3 (base 1) + 1 (base 2); found o1-n1, o2-n3
        "pair_precision": 0.5,  # predicted pairs: 1 + 3
        "removed": 3,  # n1, n3, o3
        "removal_precision": 0.6667,  # n1, n3 share their kept image's base; o3 does not
        "removal_recall": 0.6667,  # 2 of the 3 removals called for (2 in base 1, 1 in base 2)
    }


def test_weights_shares_from_unfiltered_to_weighted(store):
    gt = ground_truth(
        {"source_uri": "w1", "kind": "original", "attr_palette": "warm"},
        {"source_uri": "w2", "kind": "original", "attr_palette": "warm"},
        {"source_uri": "w3", "kind": "original", "attr_palette": "cool"},
        {"source_uri": "w4", "kind": "original", "attr_palette": "cool"},
    )
    uris = ["w1", "w2", "w3", "w4"]
    put(store, RAW_IMAGES, image_id=ids(*uris), source_uri=uris)
    put(store, FILTERED_IMAGES, image_id=ids("w1", "w3", "w4"))  # w2 filtered out
    put(store, SAMPLE_WEIGHTS, image_id=ids("w1", "w3"), weight=[2.0, 1.0])  # w4: a duplicate
    assert evaluate_weights(gt, store, attribute=("attr_palette", "warm")) == {
        "attr_palette=warm_share_unfiltered_pct": 50.0,
        "attr_palette=warm_share_filtered_pct": 33.33,
        "attr_palette=warm_share_kept_pct": 50.0,
        "attr_palette=warm_share_weighted_pct": 66.67,  # 2 of weight 3
        "weighted_minus_unfiltered_pts": 16.67,
    }
