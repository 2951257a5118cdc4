"""The table registry: one declaration per Delta table, used by the writers and the UI schemas."""

import ast
import importlib
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import curation_assets
import curation_assets.lib
from curation_assets.lib.tables import (
    CLUSTER_ASSIGNMENTS,
    CLUSTER_CENTROIDS,
    N_CLUSTERINGS,
    TABLES,
    TableSpec,
    assignments_spec,
    centroids_spec,
    table,
)

PACKAGE = Path(curation_assets.__file__).parent
REGISTRY_DIR = PACKAGE / "lib" / "tables"

SIDE_TABLES = {
    "dedup_runs",
    "dedup_members",
    "duplicate_members",
    "duplicate_vectors",
    "candidate_pairs",
    "verified_pairs",
    "stage_commits",
    "stage_settings",
    "weight_shard_stats",
    "audit_shard_counts",
    "weight_probes",
}
"""Tables written beside an asset (dedup's run log and candidate pairs, the multi-table commit
log, the per-shard stages' settings in force, the weights' per-shard sums and probes), not
assets."""


def test_names_are_unique_and_equal_to_the_spec_names():
    specs = list(TABLES.values())
    assert len({s.name for s in specs}) == len(specs)
    assert all(name == spec.name for name, spec in TABLES.items())
    assert len({id(s) for s in specs}) == len(specs)


def test_registry_is_in_pipeline_order_with_every_clustering():
    names = list(TABLES)
    assert names[:4] == ["raw_images", "quarantine", "exact_duplicates", "ingest_notes"]
    assert names[-2:] == ["stage_commits", "stage_settings"]
    # the order `curation run` printed before the registry, kept as a subsequence
    printed_before = [
        "raw_images",
        "quarantine",
        "exact_duplicates",
        "image_embeddings",
        "labels",
        "safety_classifiers",
        "label_queue",
        "classifier_scores",
        "filtered_images",
        "filter_rejections",
        "deduplicated_images",
        "duplicate_pairs",
        "sample_weights",
        "curated_dataset",
    ]
    assert [n for n in names if n in printed_before] == printed_before
    for c in range(N_CLUSTERINGS):
        assert TABLES[f"cluster_centroids_{c}"] is centroids_spec(c) is CLUSTER_CENTROIDS[c]
        assert TABLES[f"cluster_assignments_{c}"] is assignments_spec(c) is CLUSTER_ASSIGNMENTS[c]
        assert centroids_spec(c).partition_by == () and assignments_spec(c).partition_by == (
            "shard",
        )
    assert names.index("filter_rejections") < names.index("cluster_centroids_0")
    assert names.index(f"cluster_assignments_{N_CLUSTERINGS - 1}") < names.index(
        "deduplicated_images"
    )


def test_lookup_by_name():
    assert table("raw_images") is TABLES["raw_images"]
    with pytest.raises(KeyError, match="raw_images"):  # the message lists the known tables
        table("raw_image")
    with pytest.raises(ValueError, match=f"0..{N_CLUSTERINGS - 1}"):
        centroids_spec(N_CLUSTERINGS)


def test_every_spec_declares_its_columns_and_partitioning():
    for spec in TABLES.values():
        assert spec.description and spec.columns
        assert all(c.description for c in spec.columns), spec.name
        assert len(set(spec.column_names)) == len(spec.columns), spec.name
        assert set(spec.partition_by) <= set(spec.column_names), spec.name


def test_dagster_column_schemas_are_the_registrys():
    from curation_assets.definitions import defs
    from curation_assets.defs.metadata import table_schema

    assets = {s.key.to_user_string(): s for s in defs().resolve_all_asset_specs()}
    tables = {k for k in assets if k in TABLES}
    assert tables == set(TABLES) - SIDE_TABLES
    for name in tables:
        schema = assets[name].metadata["dagster/column_schema"]
        assert schema == table_schema(TABLES[name]), name
    # no asset declares a column schema the registry does not hold
    with_schema = {k for k, s in assets.items() if "dagster/column_schema" in s.metadata}
    assert with_schema <= set(TABLES)


def _table_spec_calls(path: Path) -> list[int]:
    """Lines of ``TableSpec(...)`` calls in ``path``, under any name it is imported as."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = {"TableSpec"} | {
        a.asname
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for a in node.names
        if a.name == "TableSpec" and a.asname
    }
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")) in names:
                lines.append(node.lineno)
    return lines


def test_every_table_spec_is_declared_in_the_registry():
    outside = {
        str(p.relative_to(PACKAGE)): lines
        for p in sorted(PACKAGE.rglob("*.py"))
        if REGISTRY_DIR not in p.parents and (lines := _table_spec_calls(p))
    }
    assert outside == {}, "declare tables in curation_assets/lib/tables"
    assert any(_table_spec_calls(p) for p in REGISTRY_DIR.glob("*.py"))


def _specs_in(value: object) -> list[TableSpec]:
    if isinstance(value, TableSpec):
        return [value]
    if isinstance(value, tuple | list | set | frozenset):
        return [v for v in value if isinstance(v, TableSpec)]
    if isinstance(value, dict):
        return [v for v in value.values() if isinstance(v, TableSpec)]
    return []


def test_every_spec_reachable_from_lib_is_a_registry_member():
    members = {id(s) for s in TABLES.values()}
    seen = 0
    for info in pkgutil.walk_packages(curation_assets.lib.__path__, "curation_assets.lib."):
        module = importlib.import_module(info.name)
        for attr, value in vars(module).items():
            for spec in _specs_in(value):
                seen += 1
                assert id(spec) in members, (info.name, attr, spec.name)
    assert seen >= len(TABLES)


def test_importing_the_registry_imports_no_heavy_library():
    code = (
        "import json, sys; import curation_assets.lib.tables; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    modules = set(json.loads(out))
    tops = {m.split(".")[0] for m in modules}
    assert not tops & {"torch", "faiss", "dagster", "open_clip", "timm", "sklearn", "PIL"}
    ours = {m for m in modules if m.startswith("curation_assets")}
    # lib's import sets pyarrow's pool before any module loads pyarrow (memory.use_arrow_pool;
    # memory imports the standard library only)
    allowed = {
        "curation_assets",
        "curation_assets.lib",
        "curation_assets.lib.memory",
        "curation_assets.lib.tables",
    }
    assert all(m in allowed or m.startswith("curation_assets.lib.tables.") for m in ours), ours


def test_the_stages_after_embed_read_their_tables_without_torch():
    """Specs and embedding_matrix live in light modules: reading a table loads no model code."""
    stages = ["classify", "filter", "cluster", "dedup", "weights.run", "export.run"]
    code = (
        "import sys; "
        + "; ".join(f"import curation_assets.lib.{s}" for s in stages)
        + "; print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
