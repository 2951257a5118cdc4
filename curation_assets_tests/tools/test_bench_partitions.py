import pytest

from curation_assets.tools.bench_partitions import bench_partitions
from curation_assets_tests.servers_postgres import postgres_skip_reason


def _check(report: dict, backend: str, n: int, new: int) -> dict:
    figures = report[backend]
    assert figures["registered"] == n and figures["tick_new_shards"] == new
    assert figures["register_one_call_s"] is not None  # far below sqlite's variable limit
    for key in ("get_dynamic_partitions_s", "tick_first_full_s", "tick_idle_median_s"):
        assert figures[key] >= 0, key
    return figures


def test_the_partitions_bench_on_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    report = bench_partitions(
        300, backends=("sqlite",), new=7, repeats=1, graphql=False, workdir=tmp_path
    )
    figures = _check(report, "sqlite", 300, 7)
    assert figures["storage"] == "SqliteRunStorage"


@pytest.mark.cluster
def test_the_partitions_bench_on_postgres(tmp_path):
    why = postgres_skip_reason()
    if why:
        pytest.skip(why)
    report = bench_partitions(
        300, backends=("postgres",), new=7, repeats=1, graphql=False, workdir=tmp_path
    )
    assert _check(report, "postgres", 300, 7)["storage"] == "PostgresRunStorage"
