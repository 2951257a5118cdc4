"""The rules of ``shard_automation``: which per-shard assets an update makes due, and where."""

from curation_assets.lib.shards.followups import ASSIGNMENTS, Update, due_followups

PER_SHARD = "per_shard"
ASSIGNED = "assigned"


def due(*updates: Update, centroids: bool = True, quantizer: bool = True):
    return due_followups(
        updates,
        centroids=centroids,
        quantizer=quantizer,
        per_shard_tag=PER_SHARD,
        assigned_tag=ASSIGNED,
    )


def test_a_retrained_classifier_rescores_refilters_and_reassigns_every_embedded_shard():
    out = due(Update(1, "safety_classifiers", None))
    assert not out.shards
    assert out.every == {
        "classifier_scores": "image_embeddings",
        "filtered_images": "image_embeddings",
        "filter_rejections": "image_embeddings",
        **dict.fromkeys(ASSIGNMENTS, "image_embeddings"),
    }
    # before any centroids exist nothing is assigned
    assert set(due(Update(1, "safety_classifiers", None), centroids=False).every) == {
        "classifier_scores",
        "filtered_images",
        "filter_rejections",
    }


def test_a_classifier_trained_with_the_scores_in_one_run_triggers_nothing():
    ran = frozenset({"safety_classifiers", "classifier_scores"})
    assert not due(Update(1, "safety_classifiers", None, {}, ran))


def test_new_centroids_reassign_every_filtered_shard():
    out = due(Update(3, "cluster_centroids_2", None))
    assert out.every == dict.fromkeys(ASSIGNMENTS, "filtered_images")
    ran = frozenset({"cluster_centroids_2", *ASSIGNMENTS})
    assert not due(Update(3, "cluster_centroids_2", None, {}, ran))


def test_scores_from_the_per_shard_job_are_not_filtered_again_but_a_manual_rescore_is():
    assert not due(Update(1, "classifier_scores", "s1", {PER_SHARD: "true"}))
    out = due(Update(1, "classifier_scores", "s1"))
    assert out.shards == dict.fromkeys(
        ["filtered_images", "filter_rejections", *ASSIGNMENTS], {"s1"}
    )
    # a run that scored and filtered the shard: nothing left to do
    ran = frozenset({"classifier_scores", "filtered_images", "filter_rejections"})
    assert not due(Update(1, "classifier_scores", "s1", {}, ran))


def test_a_shard_filtered_without_an_assignment_is_assigned_once_centroids_exist():
    update = Update(5, "filtered_images", "s2", {PER_SHARD: "true"})
    assert due(update).shards == dict.fromkeys(ASSIGNMENTS, {"s2"})
    assert not due(update, centroids=False)
    assigned = Update(5, "filtered_images", "s2", {PER_SHARD: "true", ASSIGNED: "true"})
    assert not due(assigned)


def test_an_embedded_shard_is_indexed_then_scored_for_uniqueness():
    update = Update(7, "image_embeddings", "s3", {PER_SHARD: "true"})
    assert due(update).shards == {"similarity_index": {"s3"}, "image_uniqueness": {"s3"}}
    assert not due(update, quantizer=False)
    assert due(Update(8, "similarity_index", "s3")).shards == {"image_uniqueness": {"s3"}}
    ran = frozenset({"similarity_index", "image_uniqueness"})
    assert not due(Update(8, "similarity_index", "s3", {}, ran))
    assert due(Update(9, "similarity_quantizer", None)).every == {
        "similarity_index": "image_embeddings",
        "image_uniqueness": "image_embeddings",
    }


def test_many_updates_of_one_tick_become_one_set_per_asset():
    updates = [Update(i, "similarity_index", f"s{i % 3}") for i in range(30)]
    assert due(*updates).shards == {"image_uniqueness": {"s0", "s1", "s2"}}
