"""The home's dagster.yaml: embedded sqlite by default, PostgreSQL when $CURATION_PG_URL is set."""

import hashlib

import dagster as dg
import pytest

from curation_assets.instance import (
    PG_URL_ENV,
    InstanceConfigError,
    check_instance_storage,
    check_postgres,
    describe_pg_url,
    install_dagster_yaml,
    install_instance_config,
    instance_template,
    libpq_url,
    storage_env,
)
from curation_assets.runner import prepare_home
from curation_assets.tools.pgserver import free_port

SECRET = "s3cr3t-pw"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for var in (PG_URL_ENV, "DAGSTER_HOME", "CURATION_HOME"):
        monkeypatch.delenv(var, raising=False)


def test_the_postgres_variant_is_the_default_plus_a_storage_block_naming_the_variable():
    lite, pg = instance_template(False), instance_template(True)
    assert storage_env(lite) is None and storage_env(pg) == PG_URL_ENV
    assert pg.startswith(lite)  # concurrency, run retries, run monitoring unchanged
    assert "postgresql" not in pg.split("storage:")[-1].replace("postgres:", "")


def test_the_default_stays_sqlite_and_the_variable_selects_postgres(tmp_path, monkeypatch):
    target = tmp_path / "dagster.yaml"
    assert install_dagster_yaml(target) is None
    assert target.read_text() == instance_template(False)
    check_instance_storage(target)  # nothing to check

    url = f"postgresql+psycopg2://curator:{SECRET}@127.0.0.1:{free_port()}/curation"
    monkeypatch.setenv(PG_URL_ENV, url)
    note = install_dagster_yaml(target)  # our sqlite copy: switched
    assert note is not None and "PostgreSQL" in note
    assert target.read_text() == instance_template(True) and SECRET not in target.read_text()

    monkeypatch.delenv(PG_URL_ENV)
    assert install_dagster_yaml(target) is None  # not switched back behind the user's back
    assert storage_env(target.read_text()) == PG_URL_ENV
    with pytest.raises(InstanceConfigError, match=f"{PG_URL_ENV} is not set"):
        check_instance_storage(target)


def test_a_user_file_is_kept_and_an_earlier_shipped_one_replaced(tmp_path, monkeypatch):
    target = tmp_path / "dagster.yaml"
    own = instance_template(False) + "\n# mine\n"
    target.write_text(own)
    monkeypatch.setenv(PG_URL_ENV, "postgresql+psycopg2://u@127.0.0.1:1/db")
    note = install_dagster_yaml(target)
    assert note is not None and "your own file" in note and target.read_text() == own

    shipped = {hashlib.sha256(own.encode()).hexdigest()}
    monkeypatch.setattr("curation_assets.instance.SHIPPED_INSTANCE_CONFIGS", shipped)
    assert "updated" in (install_dagster_yaml(target) or "")
    assert target.read_text() == instance_template(True)


def test_an_unreachable_server_is_named_without_its_password(tmp_path, monkeypatch):
    port = free_port()  # nothing listens there
    url = f"postgresql+psycopg2://curator:{SECRET}@127.0.0.1:{port}/curation"
    assert describe_pg_url(url) == f"127.0.0.1:{port}/curation as curator"
    assert libpq_url(url) == f"postgresql://curator:{SECRET}@127.0.0.1:{port}/curation"
    with pytest.raises(InstanceConfigError) as err:
        check_postgres(url, timeout_s=2)
    assert f"127.0.0.1:{port}/curation" in str(err.value) and SECRET not in str(err.value)

    monkeypatch.setenv(PG_URL_ENV, url)
    with pytest.raises(InstanceConfigError, match=f"127.0.0.1:{port}") as err:
        prepare_home(str(tmp_path / "home"))
    assert SECRET not in str(err.value)
    assert SECRET not in (tmp_path / "home" / "dagster" / "dagster.yaml").read_text()
    with pytest.raises(InstanceConfigError, match="postgresql\\+psycopg2://"):
        check_postgres(f"mysql://curator:{SECRET}@127.0.0.1:{port}/curation")


def test_the_embedded_home_opens_a_sqlite_instance(tmp_path, monkeypatch):
    dagster_home = install_instance_config(tmp_path / "home")
    assert storage_env((dagster_home / "dagster.yaml").read_text()) is None
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        assert type(instance.run_storage).__name__ == "SqliteRunStorage"
