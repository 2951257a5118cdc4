"""The Dagster instance of a curation home: its ``dagster.yaml``, sqlite or PostgreSQL storage.

``curation run``, ``curation dev`` and every command that opens the instance install the
project's ``configs/dagster.yaml`` into ``$DAGSTER_HOME`` (:func:`install_dagster_yaml`). Two
variants of it exist, the same file but for one block:

* **embedded** (the default): no ``storage:`` block, so Dagster keeps runs, event logs and
  schedule state in sqlite files under ``$DAGSTER_HOME`` (one process at a time, no server);
* **PostgreSQL**, selected by the environment variable :data:`PG_URL_ENV`
  (``CURATION_PG_URL=postgresql+psycopg2://user:password@host:5432/db``; SQLAlchemy 2.1
  reads a bare ``postgresql://`` as psycopg 3, which the ``cluster`` extra does not install):
  the file gains ``storage: {postgres: {postgres_url: {env: CURATION_PG_URL}}}``. The URL,
  which holds the password, is never written to disk nor logged: every process that opens the
  instance (the CLI, ``dagster dev``'s webserver and daemon, run workers) reads it from its
  environment.
  Concurrency pools, run retries and run monitoring are those of the embedded variant.

A home's ``dagster.yaml`` that the user edited is never replaced; an unchanged copy of an
earlier version of the project's file (:data:`SHIPPED_INSTANCE_CONFIGS`) or of the other
variant is. The one exception: a home whose file stores runs in PostgreSQL is not switched back
to sqlite because ``CURATION_PG_URL`` is unset in this shell (its runs would silently vanish
from view); :func:`check_instance_storage` says so and how to switch deliberately.

Before the instance is opened :func:`check_instance_storage` connects to the server (a few
seconds at most) so that a wrong host, port, database or password is one clear error naming
``host:port/database`` and user, never the password.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

from curation_assets.lib.errors import ConfigError

PG_URL_ENV = "CURATION_PG_URL"
"""The environment variable that selects PostgreSQL instance storage and holds its URL."""

POSTGRES_STORAGE = f"""
# PostgreSQL instance storage, installed because ${PG_URL_ENV} was set (curation_assets/instance):
# runs, event logs (materializations, dynamic partitions, pool slots) and sensor/schedule state
# live in the database the URL names. The URL holds the password: it stays in the environment of
# every process that opens this instance and is never written here.
storage:
  postgres:
    postgres_url:
      env: {PG_URL_ENV}
"""
"""The block the PostgreSQL variant appends to ``configs/dagster.yaml``."""

SHIPPED_INSTANCE_CONFIGS = frozenset(
    {
        # before run monitoring: a killed run kept its pool slot forever
        "e37b0615f835d59b5869d8281a65ff2f30fd892ebb544679c98c7c4966698b11",
        # before the PostgreSQL variant (same settings, the storage comment changed)
        "05cff603276424add9d25c710a8b645364f368eb01d98ab084eb39e2e81f766c",
        # before ingest left its pool (the comment changed), sqlite and PostgreSQL variants
        "ec4e93636ff718317829fe69266ba1b92c8133da154f3238aeabd0f548156b05",
        "37d5e5a06631e3738e9c2fdf0b0e1ffcb0b011211e68c10a291be7e31b0c4066",
    }
)
"""sha256 of each earlier dagster.yaml of this package, replaced when found unchanged in a home."""


class InstanceConfigError(ConfigError):
    """The instance cannot be opened as configured (PostgreSQL unreachable, URL unset, ...)."""


def pg_url() -> str | None:
    """The PostgreSQL URL of :data:`PG_URL_ENV`, or None when unset or empty."""
    return os.environ.get(PG_URL_ENV) or None


def instance_template(postgres: bool) -> str:
    """The project's dagster.yaml: embedded (sqlite) or with PostgreSQL storage."""
    base = files("curation_assets").joinpath("configs/dagster.yaml").read_text()
    return base + POSTGRES_STORAGE if postgres else base


def describe_pg_url(url: str) -> str:
    """``host:port/database as user`` of a PostgreSQL URL: everything but the password."""
    try:
        parts = urlsplit(url)
        host, port, user = parts.hostname or "localhost", parts.port or 5432, parts.username
    except ValueError:
        return (
            "an unparseable URL (expected postgresql+psycopg2://user:password@host:port/database)"
        )
    database = unquote(parts.path.lstrip("/")) or "(no database)"
    return f"{host}:{port}/{database}" + (f" as {unquote(user)}" if user else "")


def storage_env(text: str) -> str | None:
    """The environment variable a dagster.yaml's ``storage`` block reads, or None."""
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        return None

    def find(node: Any) -> str | None:
        if isinstance(node, dict):
            if set(node) == {"env"} and isinstance(node["env"], str):
                return node["env"]
            return next((v for v in map(find, node.values()) if v), None)
        return None

    return find(config.get("storage")) if isinstance(config, dict) else None


def install_dagster_yaml(target: Path, template: str | None = None) -> str | None:
    """Write the project's dagster.yaml to ``target`` unless a file of the user's own is there.

    The variant is PostgreSQL when :data:`PG_URL_ENV` is set, embedded otherwise. A copy of an
    earlier version of the project's file, or of the other variant, unchanged, is replaced by
    the current one (a home keeps its dagster.yaml across upgrades otherwise); but a PostgreSQL
    copy is kept when the variable is unset (:func:`check_instance_storage` then fails).

    Args:
        target: ``$DAGSTER_HOME/dagster.yaml``.
        template: The file to install (default: :func:`instance_template` as selected).

    Returns:
        A note for the user when an existing file was replaced or lacks run monitoring.
    """
    if template is None:
        template = instance_template(postgres=pg_url() is not None)
    if not target.exists():
        target.write_text(template)
        return None
    current = target.read_text()
    if current == template:
        return None
    ours = {instance_template(postgres=False), instance_template(postgres=True)}
    if current in ours and storage_env(current) and not storage_env(template):
        return None  # a PostgreSQL home stays one; check_instance_storage explains
    if current in ours or hashlib.sha256(current.encode()).hexdigest() in SHIPPED_INSTANCE_CONFIGS:
        target.write_text(template)
        storage = "PostgreSQL" if storage_env(template) else "sqlite under DAGSTER_HOME"
        return f"updated {target} to the project's current version (storage: {storage})"
    if "run_monitoring" not in current:
        return (
            f"{target} has no run_monitoring: under `curation dev` a run killed mid-step keeps "
            "its pool slot and later steps of that pool wait forever; copy the run_monitoring "
            "block of curation_assets/configs/dagster.yaml into it"
        )
    if pg_url() is not None and storage_env(current) != PG_URL_ENV:
        return (
            f"{PG_URL_ENV} is set but {target} is your own file without `storage: postgres: "
            f"postgres_url: {{env: {PG_URL_ENV}}}`: it is kept, runs go where it says"
        )
    return None


DRIVERS = {"psycopg2": "psycopg2", "psycopg": "psycopg"}
"""SQLAlchemy's PostgreSQL drivers that :func:`check_postgres` can connect with, by module."""


def libpq_url(url: str) -> str:
    """``url`` without SQLAlchemy's ``+driver`` (``postgresql+psycopg2://`` → ``postgresql://``)."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.partition('+')[0]}{sep}{rest}"


def url_driver(url: str) -> str:
    """The driver SQLAlchemy (hence dagster-postgres) uses for ``url``.

    ``postgresql+psycopg2://`` names it; a bare ``postgresql://`` gets SQLAlchemy's default
    (psycopg 3 since SQLAlchemy 2.1, psycopg2 before).

    Raises:
        InstanceConfigError: If the scheme is not ``postgresql[+driver]``.
    """
    scheme = url.partition("://")[0] if "://" in url else ""
    dialect, _, driver = scheme.partition("+")
    if dialect != "postgresql":
        raise InstanceConfigError(
            f"${PG_URL_ENV} must be a URL postgresql+psycopg2://user:password@host:port/database"
            f" (got the scheme {scheme or 'none'!r})"
        )
    if driver:
        return driver
    from sqlalchemy.dialects import postgresql

    return str(postgresql.dialect.driver)


def check_postgres(url: str, timeout_s: int = 5) -> None:
    """Connect once to the server of ``url``; raise a clear error when that fails.

    Raises:
        InstanceConfigError: When dagster-postgres or the URL's driver is not installed, or
            the connection fails (the message names host, port, database and user; never the
            password).
    """
    where = describe_pg_url(url)
    if importlib.util.find_spec("dagster_postgres") is None:
        raise InstanceConfigError(
            f"{PG_URL_ENV} is set ({where}) but dagster-postgres is not installed: "
            "pip install 'curation_assets[cluster]', or unset it for the local sqlite instance"
        )
    driver = url_driver(url)
    module = DRIVERS.get(driver)
    if module is None or importlib.util.find_spec(module) is None:
        installed = [d for d, m in DRIVERS.items() if importlib.util.find_spec(m) is not None]
        raise InstanceConfigError(
            f"${PG_URL_ENV} ({where}) uses the PostgreSQL driver {driver!r}, which is not "
            f"installed; name an installed one in the URL: "
            + " or ".join(f"postgresql+{d}://..." for d in installed)
        )
    dbapi = importlib.import_module(module)
    try:
        dbapi.connect(libpq_url(url), connect_timeout=timeout_s).close()
    except Exception as exc:  # the driver's OperationalError, or a malformed URL
        reason = " ".join(str(exc).split())
        password = urlsplit(url).password
        if password:
            reason = reason.replace(password, "***")
        raise InstanceConfigError(
            f"cannot reach the PostgreSQL instance storage at {where} (from ${PG_URL_ENV}): "
            f"{type(exc).__name__}: {reason}"
        ) from None


def check_instance_storage(target: Path) -> None:
    """Fail early when the installed ``target`` reads a PostgreSQL URL that is unset or dead.

    Raises:
        InstanceConfigError: ``$CURATION_PG_URL`` is unset but the file needs it, or the
            server cannot be reached (:func:`check_postgres`).
    """
    env = storage_env(target.read_text()) if target.is_file() else None
    if env is None:
        return
    url = os.environ.get(env)
    if not url:
        raise InstanceConfigError(
            f"{target} stores this home's runs in PostgreSQL but ${env} is not set: export "
            f"{env}=postgresql+psycopg2://user:password@host:port/database (the server's URL), or "
            f"delete {target} to go back to the local sqlite instance (the runs recorded in "
            "PostgreSQL are then not shown)"
        )
    if env == PG_URL_ENV:
        check_postgres(url)


def install_instance_config(home: Path) -> Path:
    """Create ``home/dagster`` with the project's dagster.yaml and ``home/sources``.

    For a server started on a fresh home (``tools.devserver``, the tests); the environment of
    this process is left alone (``runner.prepare_home`` points it at the home).

    Returns:
        The DAGSTER_HOME folder.

    Raises:
        InstanceConfigError: See :func:`check_instance_storage`.
    """
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    install_dagster_yaml(dagster_home / "dagster.yaml")
    check_instance_storage(dagster_home / "dagster.yaml")
    (home / "sources").mkdir(parents=True, exist_ok=True)
    return dagster_home
