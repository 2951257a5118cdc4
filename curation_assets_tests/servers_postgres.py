"""A throwaway PostgreSQL server per test: the ``postgres_url`` fixture.

The cluster (``initdb`` in a temporary folder as the ``postgres`` user, a server on 127.0.0.1
and a free port, one database, stopped by its PID afterwards) is
:func:`curation_assets.tools.pgserver.throwaway_postgres`. The fixture skips, with the reason,
when the PostgreSQL binaries or ``dagster_postgres`` are absent, or when this process is neither
root nor the ``postgres`` user.
"""

import importlib.util
from collections.abc import Iterator

import pytest

from curation_assets.tools.pgserver import throwaway_postgres, unavailable


def postgres_skip_reason() -> str | None:
    """Why the fixture would skip here (None when it can run)."""
    if importlib.util.find_spec("dagster_postgres") is None:
        return "dagster_postgres is not installed (pip install curation_assets[cluster])"
    return unavailable()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg2://postgres:PASSWORD@127.0.0.1:PORT/curation`` of a fresh server."""
    why = postgres_skip_reason()
    if why:
        pytest.skip(why)
    with throwaway_postgres() as url:
        yield url
