"""Full deduplication on synthetic embeddings with planted near duplicates; input checks."""

import numpy as np
import pytest

from curation_assets.lib.dedup import (
    DedupState,
    dedup,
    dedup_incremental,
    exhaustive_pairs,
    pair_recall,
)
from curation_assets_tests.lib.dedup.helpers import (
    TAU,
    chain,
    clustered_data,
    random_meta,
    scrambled_ids,
)


@pytest.fixture(scope="module")
def data():
    return clustered_data()


def test_planted_duplicates_are_found_and_no_pair_is_below_tau(data):
    x, group, assignments = data
    result = dedup(x, scrambled_ids(len(x)), random_meta(len(x), 0), assignments, TAU)
    assert result.pairs.sim.min() >= TAU and (result.pairs.i < result.pairs.j).all()
    truth = exhaustive_pairs(x, TAU)
    assert pair_recall(result.pairs, truth) >= 0.97
    planted = group[truth.i] == group[truth.j]
    assert planted.mean() > 0.99  # the synthetic data has (almost) no accidental pairs
    # Planted groups whose members are all >= tau apart collapse to one kept image.
    one_cluster = dedup(
        x, scrambled_ids(len(x)), random_meta(len(x), 0), [np.zeros(len(x), np.int32)], TAU
    )
    collapsed, exact, tight = 0, 0, 0
    for g in np.unique(group[group >= 0]):
        rows = np.flatnonzero(group == g)
        if (x[rows] @ x[rows].T).min() < TAU:
            continue
        tight += 1
        collapsed += result.kept[rows].sum() == 1 and len(set(result.component_id[rows])) == 1
        exact += one_cluster.kept[rows].sum() == 1
    assert tight > 100 and exact == tight and collapsed >= 0.95 * tight
    assert result.stats["removed"] == len(x) - result.stats["components"]


def test_full_and_incremental_runs_share_their_input_checks():
    x = chain()
    one = [np.zeros(4, np.int32)]
    meta = {"width": [1] * 4, "height": [1] * 4, "ingested_at": [0] * 4}
    with pytest.raises(ValueError, match="meta has 3 rows but x has 4"):
        dedup(x, list("abcd"), {k: v[:3] for k, v in meta.items()}, one, TAU)
    with pytest.raises(ValueError, match=r"image_id has shape \(3,\); expected \(4,\)"):
        dedup(x, list("abc"), meta, one, TAU)
    two = [np.zeros(2, np.int32)]
    state = DedupState.initial(x[:2], list("ab"), {k: v[:2] for k, v in meta.items()}, two, TAU)
    with pytest.raises(ValueError, match="new_meta has 1 rows but new_x has 2"):
        dedup_incremental(state, x[2:], list("cd"), {k: v[:1] for k, v in meta.items()}, two, TAU)
    with pytest.raises(ValueError, match="tau=1.5"):
        dedup_incremental(state, x[2:], list("cd"), {k: v[:2] for k, v in meta.items()}, two, 1.5)
