import os
import subprocess
import sys
from collections.abc import Mapping

import dagster as dg

from curation_assets.definitions import defs as load_defs
from curation_assets.lib.tables import N_CLUSTERINGS, TABLES, TableSpec

defs = load_defs()

PER_SHARD = {
    "raw_images",
    "quarantine",
    "exact_duplicates",
    "ingest_notes",
    "image_quality",
    "image_embeddings",
    "classifier_scores",
    "filtered_images",
    "filter_rejections",
}
SIMILAR = {"similarity_index", "image_uniqueness"}
ASSIGNMENTS = {f"cluster_assignments_{c}" for c in range(N_CLUSTERINGS)}
CENTROIDS = {f"cluster_centroids_{c}" for c in range(N_CLUSTERINGS)}
GLOBAL = {
    "labels",
    "safety_classifiers",
    "label_queue",
    *CENTROIDS,
    "deduplicated_images",
    "duplicate_pairs",
    "sample_weights",
    "bias_audit",
    "curated_dataset",
    "similarity_quantizer",
}

ON_DEMAND = {"image_explanation"}
"""Assets a person launches with config; never automated, no Delta table of their own."""


def test_asset_keys_partitions_and_dependencies():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == PER_SHARD | ASSIGNMENTS | SIMILAR | GLOBAL | ON_DEMAND
    for key in PER_SHARD | ASSIGNMENTS | SIMILAR:
        node = graph.get(dg.AssetKey(key))
        assert isinstance(node.partitions_def, dg.DynamicPartitionsDefinition)
        assert node.partitions_def.name == "shards"
        assert node.description and node.group_name in {
            "ingest",
            "embed",
            "classify",
            "dedup",
            "similar",
        }
    for key in GLOBAL:
        node = graph.get(dg.AssetKey(key))
        assert node.partitions_def is None and node.description
    parents = {k: {p.to_user_string() for p in graph.get(dg.AssetKey(k)).parent_keys} for k in keys}
    assert parents["image_embeddings"] == {"raw_images"}
    assert parents["safety_classifiers"] == {"labels", "image_embeddings"}
    assert parents["classifier_scores"] == {"image_embeddings", "safety_classifiers"}
    assert parents["filtered_images"] == {"classifier_scores", "raw_images", "image_quality"}
    for c in range(N_CLUSTERINGS):
        assert f"cluster_centroids_{c}" in parents[f"cluster_assignments_{c}"]
    assert ASSIGNMENTS <= parents["deduplicated_images"]
    # the index's quantizer is trained on all embeddings, not on the filtered images, so
    # uniqueness can become a filter signal without a cycle
    assert parents["similarity_quantizer"] == {"image_embeddings"}
    assert parents["similarity_index"] == {"image_embeddings", "similarity_quantizer"}
    assert parents["image_uniqueness"] == {"similarity_index"}


def test_automation_conditions():
    graph = defs.resolve_asset_graph()

    def label(key: str) -> str | None:
        cond = graph.get(dg.AssetKey(key)).automation_condition
        return cond.get_label() if cond else None

    # new shards come from shard_sensor's per_shard_job; per-shard follow-ups from
    # shard_automation: no per-shard asset has a condition (their cost would grow with N)
    from curation_assets.defs.shard_inputs import PER_SHARD_ASSETS

    partitioned = {
        k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).partitions_def
    }
    assert partitioned == set(PER_SHARD_ASSETS)
    assert all(label(key) is None for key in partitioned)
    assert label("safety_classifiers") == "eager on labels"
    assert label("cluster_centroids_0") == "weekly retrain or missing"
    assert label("deduplicated_images").startswith("eager on cluster_assignments_0")
    assert label("curated_dataset") == "eager on sample_weights"
    assert label("similarity_quantizer") == "weekly retrain or missing"
    assert label("image_explanation") is None  # launched by a person, never by the sensor
    shard_automation = defs.resolve_sensor_def("shard_automation")
    assert shard_automation.default_status == dg.DefaultSensorStatus.RUNNING
    sensor = defs.resolve_sensor_def("curation_automation")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    # per_shard_job's runs carry the tag that keeps them from re-triggering the filter
    from curation_assets.defs.automation import PER_SHARD_TAG

    assert defs.resolve_job_def("per_shard_job").tags[PER_SHARD_TAG] == "true"
    # per_shard_assign_job's runs also carry the tag that keeps them from re-assigning
    from curation_assets.defs.automation import ASSIGNED_TAG

    assign = defs.resolve_job_def("per_shard_assign_job")
    assert assign.tags[PER_SHARD_TAG] == "true" and assign.tags[ASSIGNED_TAG] == "true"
    assert ASSIGNED_TAG not in defs.resolve_job_def("per_shard_job").tags


def test_per_shard_assets_share_one_multi_shard_backfill_policy():
    """Dagster groups assets into one run only when their backfill policies are equal."""
    from curation_assets.defs.partitions import SHARDS_PER_RUN

    graph = defs.resolve_asset_graph()
    partitioned = [
        graph.get(k) for k in graph.materializable_asset_keys if graph.get(k).is_partitioned
    ]
    assert len(partitioned) == 5 + 1 + 1 + 2 + N_CLUSTERINGS + 2
    assert {n.backfill_policy for n in partitioned} == {
        dg.BackfillPolicy.multi_run(max_partitions_per_run=SHARDS_PER_RUN)
    }
    assert SHARDS_PER_RUN > 1


def _table_specs() -> Mapping[str, TableSpec]:
    """Every Delta table spec of the pipeline, by table (= asset) name: the registry."""
    return TABLES


def test_column_lineage_names_real_upstream_columns():
    from curation_assets.defs.lineage import COLUMN_LINEAGE, column_lineage

    graph = defs.resolve_asset_graph()
    specs = _table_specs()
    assert {"curated_dataset", "filtered_images", "deduplicated_images"} <= set(COLUMN_LINEAGE)
    for asset, deps in COLUMN_LINEAGE.items():
        key = dg.AssetKey(asset)
        upstream = {k.to_user_string() for k in graph.upstream_key_iterator(key)}
        own = {c.name for c in specs[asset].columns}
        assert set(deps) <= own, (asset, set(deps) - own)
        # parents and grandparents: a lineage dep is a direct or indirect upstream asset
        ancestors = upstream | {
            a.to_user_string()
            for u in upstream
            for a in graph.upstream_key_iterator(dg.AssetKey(u))
        }
        for column, sources in deps.items():
            assert sources, (asset, column)
            for dep_asset, dep_column in sources:
                assert dep_asset in ancestors, (asset, column, dep_asset)
                dep_columns = {c.name for c in specs[dep_asset].columns}
                assert dep_column in dep_columns, (asset, column, dep_asset, dep_column)
        lineage = column_lineage(asset)["dagster/column_lineage"]
        assert set(lineage.deps_by_column) == set(deps)


def test_checks_are_declared_and_blocking():
    checks = {
        (k.asset_key.to_user_string(), k.name) for k in defs.resolve_asset_graph().asset_check_keys
    }
    assert checks == {
        ("raw_images", "every_input_accounted_for"),
        ("raw_images", "image_ids_unique"),
        ("image_quality", "every_image_measured"),
        ("image_embeddings", "dims_and_norms"),
        ("image_embeddings", "every_image_embedded"),
        ("safety_classifiers", "every_category_has_a_classifier"),
        ("safety_classifiers", "recall_target_met"),
        ("classifier_scores", "classifiers_available"),
        ("classifier_scores", "one_finite_score_per_image_and_classifier"),
        ("filtered_images", "every_image_kept_or_rejected"),
        ("cluster_assignments_0", "every_filtered_image_assigned"),
        ("deduplicated_images", "pair_recall_target"),
        ("deduplicated_images", "one_kept_per_group"),
        ("deduplicated_images", "every_filtered_image_deduplicated"),
        ("duplicate_pairs", "no_pair_below_tau"),
        ("sample_weights", "weights_finite_positive"),
        ("sample_weights", "weights_mean_one"),
        ("sample_weights", "weights_within_bounds"),
        ("sample_weights", "weights_ess_ratio"),
        ("bias_audit", "weighted_shares_near_unfiltered"),
        ("curated_dataset", "one_row_per_kept_image"),
        ("curated_dataset", "every_image_exported"),
        ("similarity_index", "every_embedding_indexed"),
        ("image_uniqueness", "every_image_scored"),
        ("image_explanation", "tables_agree_on_the_image"),
    }


def test_sensor_job_and_resources():
    sensor = defs.resolve_sensor_def("shard_sensor")
    assert {j.name for j in sensor.jobs} == {"per_shard_job", "per_shard_assign_job"}
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    job = defs.resolve_job_def("per_shard_job")
    assert job.partitions_def is not None and job.partitions_def.name == "shards"
    assert {"delta", "shard_source", "embedder", "categories"} <= set(defs.resources or {})
    selected = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert selected == PER_SHARD
    assign = defs.resolve_job_def("per_shard_assign_job")
    selected = {k.to_user_string() for k in assign.asset_layer.selected_asset_keys}
    assert selected == PER_SHARD | {f"cluster_assignments_{c}" for c in range(N_CLUSTERINGS)}
    classifiers = defs.resolve_job_def("classifiers_job")
    assert {k.to_user_string() for k in classifiers.asset_layer.selected_asset_keys} == {
        "safety_classifiers",
        "label_queue",
    }


def test_embedding_runs_in_the_gpu_pool():
    node = defs.resolve_assets_def("image_embeddings")
    assert node.op.pool == "gpu"
    assert defs.resolve_assets_def("raw_images").op.pool is None  # a lock, not a pool


def test_definitions_load_lazily_and_dagster_finds_them():
    """Importing the module builds nothing and cannot fail; Dagster's loader calls ``defs``."""
    code = (
        "import sys\n"
        "import curation_assets.definitions as d\n"
        "assert not [m for m in sys.modules if m.startswith('curation_assets.defs.')]\n"
        "from dagster._core.workspace.autodiscovery import loadable_targets_from_python_module\n"
        "(target,) = loadable_targets_from_python_module('curation_assets.definitions', None)\n"
        "assert target.attribute == 'defs', target\n"
        "try:\n"
        "    d.defs()\n"
        "except ValueError as exc:\n"
        "    print(exc)\n"
    )
    env = {**os.environ, "CURATION_EXECUTOR": "bogus"}  # an error at load time, not at import
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "CURATION_EXECUTOR='bogus': expected one of" in proc.stdout
