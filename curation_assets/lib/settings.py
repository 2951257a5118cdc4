"""Where things live: the curation home and the paths derived from it.

``CURATION_HOME`` (default ``./.curation``) holds the Delta root (``delta/``), the Dagster
instance (``dagster/``) and, for the demo, the source root (``sources/``). Each can be moved
on its own with ``CURATION_DELTA_ROOT`` (a folder or an object-store URI),
``CURATION_SOURCE_ROOT`` and ``DAGSTER_HOME``. ``curation run --source DIR`` records its choice
in ``$CURATION_HOME/settings.json`` so that ``curation dev`` on the same home watches it too.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    """Resolved locations.

    Attributes:
        home: The curation home folder.
        delta_root: Root URI of all Delta tables.
        source_root: Folder whose entries are shards.
        dagster_home: The Dagster instance folder (``DAGSTER_HOME``).
    """

    home: Path
    delta_root: str
    source_root: Path
    dagster_home: Path


def resolve_paths(home: str | Path | None = None) -> Paths:
    """Resolve locations from ``home`` or the environment (see module docstring)."""
    env = os.environ
    base = Path(home or env.get("CURATION_HOME") or ".curation").expanduser().resolve()
    saved = read_settings(base)
    delta = (env.get("CURATION_DELTA_ROOT") if home is None else None) or saved.get("delta_root")
    source = (env.get("CURATION_SOURCE_ROOT") if home is None else None) or saved.get("source_root")
    dagster_home = env.get("DAGSTER_HOME") if home is None else None
    return Paths(
        home=base,
        delta_root=delta or str(base / "delta"),
        source_root=Path(source).expanduser().resolve() if source else base / "sources",
        dagster_home=Path(dagster_home).resolve() if dagster_home else base / "dagster",
    )


SETTINGS_FILE = "settings.json"


def read_settings(home: Path) -> dict[str, str]:
    """Settings saved in ``home`` by the CLI (empty when none)."""
    path = home / SETTINGS_FILE
    if not path.is_file():
        return {}
    return {str(k): str(v) for k, v in json.loads(path.read_text()).items()}


def save_settings(home: Path, **values: str) -> None:
    """Merge ``values`` into ``home/settings.json``."""
    home.mkdir(parents=True, exist_ok=True)
    merged = {**read_settings(home), **values}
    (home / SETTINGS_FILE).write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")


def positive_int_env(name: str, default: int) -> int:
    """The whole number >= 1 in environment variable ``name`` (``default`` when unset).

    Raises:
        ValueError: If it is set to anything else (the message names the variable).
    """
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name}={raw!r}: expected a whole number >= 1")
    return value
