"""Components and the keep policy: chains, policy order, bad policies."""

import numpy as np
import pytest

from curation_assets.lib.dedup import (
    choose_kept,
    connected_components,
    dedup,
    pairs_within_clusters,
)
from curation_assets_tests.lib.dedup.helpers import TAU, chain, pair_set


def test_chain_forms_one_component_with_one_kept_image_and_honest_similarity():
    x = chain()
    assert x[0] @ x[2] < TAU <= min(x[0] @ x[1], x[1] @ x[2])
    p = pairs_within_clusters(x, np.zeros(4, np.int32), TAU)
    assert pair_set(p) == {(0, 1), (1, 2)}
    comp = connected_components(4, p)
    assert comp.tolist() == [0, 0, 0, 3]
    meta = {
        "width": [1000, 200, 200, 50],
        "height": [1000, 200, 200, 50],
        "ingested_at": [5, 1, 2, 0],
    }
    result = dedup(x, ["c", "b", "a", "d"], meta, [np.zeros(4, np.int32)], TAU)
    assert result.kept.tolist() == [True, False, False, True]  # highest resolution
    assert result.duplicate_of.tolist() == [-1, 0, 0, -1]
    assert result.similarity[2] == pytest.approx(float(x[2] @ x[0]), abs=1e-6)
    assert result.similarity[2] < TAU and result.stats["removed_below_tau"] == 1
    assert result.component_size.tolist() == [3, 3, 3, 1]
    frame = result.images_frame()
    assert frame["duplicate_of"].to_list() == [None, "c", "c", None]
    assert frame["similarity"].null_count() == 2
    pairs = result.pairs_frame()
    assert pairs["image_id_i"].to_list() == ["c", "b"] and pairs["found_by"].to_list() == [1, 1]


@pytest.mark.parametrize(
    ("width", "ingested_at", "ids", "policy", "kept_row"),
    [
        ([100, 300, 200], [0, 1, 2], ["a", "b", "c"], None, 1),  # highest resolution
        ([100, 100, 100], [5, 3, 4], ["a", "b", "c"], None, 1),  # then earliest
        ([100, 100, 100], [1, 1, 1], ["z", "y", "x"], None, 2),  # then smallest id
        ([100, 300, 200], [0, 1, 2], ["a", "b", "c"], ("earliest", "resolution"), 0),
        ([100, 300, 200], [0, 1, 2], ["b", "c", "a"], ("smallest_id",), 2),
    ],
)
def test_keep_policy_order(width, ingested_at, ids, policy, kept_row):
    x = chain()[:3]
    kwargs = {} if policy is None else {"policy": policy}
    choice = choose_kept(
        np.zeros(3, np.int64),
        x=x,
        width=np.array(width),
        height=np.ones(3),
        ingested_at=np.array(ingested_at),
        image_id=np.array(ids),
        **kwargs,
    )
    assert np.flatnonzero(choice.kept).tolist() == [kept_row]
    others = [r for r in range(3) if r != kept_row]
    assert (choice.duplicate_of[others] == kept_row).all()
    np.testing.assert_allclose(choice.similarity[others], x[others] @ x[kept_row], atol=1e-6)


def test_bad_policy_and_tau_are_rejected_with_the_fix():
    x = chain()
    with pytest.raises(ValueError, match="policy="):
        choose_kept(
            np.zeros(4),
            x=x,
            width=np.ones(4),
            height=np.ones(4),
            ingested_at=np.zeros(4),
            image_id=np.array(list("abcd")),
            policy=("biggest",),
        )
    with pytest.raises(ValueError, match="tau=1.5"):
        pairs_within_clusters(x, np.zeros(4, np.int32), 1.5)
