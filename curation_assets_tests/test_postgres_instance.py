"""`curation run` on a PostgreSQL instance: same tables as on sqlite, nothing kept in sqlite.

A throwaway server (:mod:`curation_assets_tests.servers_postgres`) and the demo corpus (40
base images): one `curation run --home` with ``$CURATION_PG_URL`` set, one without, on the
same source. The PostgreSQL run must complete, leave its runs, materializations and shard
partitions in the database (read back through the instance and with SQL), write no sqlite file
under its DAGSTER_HOME nor the password anywhere, and produce Delta tables equal to the sqlite
run's. `curation dev` on the same variable serves the PostgreSQL instance and its daemon's
sensor ticks land in the database.
"""

import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import psycopg2
import pytest

from curation_assets.defs.partitions import SHARDS_PARTITION
from curation_assets.instance import PG_URL_ENV, libpq_url, storage_env
from curation_assets.tools.demo import build_demo_corpus
from curation_assets_tests.servers_postgres import postgres_url  # noqa: F401 (fixture)
from curation_assets_tests.tables_compare import converged, read_tables

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SHARDS = "shard-000,shard-001.tar"


def _curation_run(home: Path, src: Path, pg: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in {PG_URL_ENV, "DAGSTER_HOME"}}
    if pg:
        env[PG_URL_ENV] = pg
    cmd = [sys.executable, "-m", "curation_assets.cli", "run", "--home", str(home)]
    proc = subprocess.run(
        [*cmd, "--source", str(src), "--shards", SHARDS],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if proc.returncode != 0:
        pytest.fail(f"curation run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def _sqlite_files(folder: Path) -> list[Path]:
    """Files under ``folder`` that are sqlite databases (by their header)."""
    found = []
    for p in folder.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                if f.read(16) == b"SQLite format 3\x00":
                    found.append(p)
    return found


def _materializations(instance: dg.DagsterInstance) -> Counter:
    """(asset, partition) -> materializations, over every asset of ``instance``."""
    made: Counter = Counter()
    for key in instance.get_asset_keys():
        records = instance.fetch_materializations(key, limit=10_000).records
        for r in records:
            made[(key.to_user_string(), r.partition_key)] += 1
    return made


def _runs(instance: dg.DagsterInstance) -> Counter:
    """(job, status) -> runs."""
    return Counter((r.job_name, r.status.value) for r in instance.get_runs())


def test_curation_run_on_postgres_equals_sqlite(tmp_path, postgres_url, monkeypatch):  # noqa: F811
    src = tmp_path / "src"
    build_demo_corpus(src, n_base=40)
    lite, pg = tmp_path / "sqlite", tmp_path / "postgres"
    _curation_run(lite, src, None)
    proc = _curation_run(pg, src, postgres_url)

    password = urlsplit(postgres_url).password
    assert password and password not in proc.stdout + proc.stderr
    installed = (pg / "dagster" / "dagster.yaml").read_text()
    assert storage_env(installed) == PG_URL_ENV and "postgresql://" not in installed
    for p in pg.rglob("*"):  # the URL's password is nowhere under the home
        if p.is_file():
            assert password.encode() not in p.read_bytes(), p
    assert _sqlite_files(pg / "dagster") == []
    assert _sqlite_files(lite / "dagster"), "control: the default instance keeps sqlite files"

    monkeypatch.setenv(PG_URL_ENV, postgres_url)
    with dg.DagsterInstance.from_config(str(pg / "dagster")) as on_pg:
        assert type(on_pg.run_storage).__name__ == "PostgresRunStorage"
        assert type(on_pg.event_log_storage).__name__ == "PostgresEventLogStorage"
        pg_runs, pg_made = _runs(on_pg), _materializations(on_pg)
        pg_shards = on_pg.get_dynamic_partitions(SHARDS_PARTITION)
    monkeypatch.delenv(PG_URL_ENV)
    with dg.DagsterInstance.from_config(str(lite / "dagster")) as on_lite:
        assert type(on_lite.run_storage).__name__ == "SqliteRunStorage"
        lite_runs, lite_made = _runs(on_lite), _materializations(on_lite)
        lite_shards = on_lite.get_dynamic_partitions(SHARDS_PARTITION)

    assert {status for _, status in pg_runs} == {"SUCCESS"}
    assert pg_runs == lite_runs and pg_made == lite_made and pg_shards == lite_shards
    assert ("image_embeddings", "shard-000") in pg_made and ("deduplicated_images", None) in pg_made
    # the rows are in Postgres
    with psycopg2.connect(libpq_url(postgres_url)) as conn, conn.cursor() as cur:
        cur.execute("select count(*) from runs")
        assert cur.fetchone()[0] == sum(pg_runs.values())
        cur.execute(
            "select count(*) from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION'"
        )
        assert cur.fetchone()[0] == sum(pg_made.values())

    lost, equal, differ = converged(read_tables(pg / "delta"), read_tables(lite / "delta"))
    assert (lost, equal, differ) == (0, True, [])


@pytest.mark.daemon
def test_curation_dev_serves_the_postgres_instance(tmp_path, postgres_url):  # noqa: F811
    """`curation dev` on the variable: webserver and daemon on PostgreSQL, ticks stored there."""
    from curation_assets.tools.devserver import free_port, graphql, stop_process_group

    home, port = tmp_path / "home", free_port()
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env[PG_URL_ENV] = postgres_url
    log = tmp_path / "dev.log"
    cmd = [sys.executable, "-m", "curation_assets.cli", "dev", "--home", str(home)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    query = "{ instance { info } assetNodes { id } }"
    try:
        deadline, info = time.monotonic() + 300, ""
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                data = graphql(port, query)
                if data["assetNodes"]:
                    info = data["instance"]["info"]
                    break
            except (OSError, ValueError, KeyError, RuntimeError):
                pass
            time.sleep(1)
        assert "run_storage: PostgresRunStorage" in info, log.read_text()[-3000:]
        assert "event_log_storage: PostgresEventLogStorage" in info
        ticks = 0
        while time.monotonic() < deadline and not ticks:  # the daemon's sensors tick
            with psycopg2.connect(libpq_url(postgres_url)) as conn, conn.cursor() as cur:
                cur.execute("select count(*) from job_ticks")
                ticks = cur.fetchone()[0]
            time.sleep(1)
        assert ticks > 0
    finally:
        stop_process_group(proc)
    assert urlsplit(postgres_url).password not in log.read_text(errors="replace")
    assert _sqlite_files(home / "dagster") == []
