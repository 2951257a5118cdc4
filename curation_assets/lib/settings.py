"""Where things live: the curation home and the paths derived from it.

``CURATION_HOME`` (default ``./.curation``) holds the Delta root (``delta/``), the export
(``export/``), the Dagster instance (``dagster/``) and, for the demo, the source root
(``sources/``). Each can be moved on its own with ``CURATION_DELTA_ROOT`` (a folder or an
object-store URI such as ``s3://bucket/prefix``), ``CURATION_EXPORT_ROOT`` (likewise),
``CURATION_SOURCE_ROOT`` (a local folder: source shards are read locally) and
``DAGSTER_HOME``. ``curation run --source DIR`` / ``--delta-root URI`` / ``--export-root URI``
record their choice in ``$CURATION_HOME/settings.json`` so that every later command on the same
home (``curation dev``, ``explain``, ``similar``, the Dagster steps) uses it too; when a home is
named explicitly its settings win over the ``CURATION_*`` variables.

**Object stores.** With an ``s3://`` Delta root every Delta table, lock (a Delta lease), the
similarity index's files (``<root>/_similarity``) and, unless ``CURATION_EXPORT_ROOT`` says
otherwise, the export (``<root>/_export``) live in the bucket. Credentials and endpoint are
*not* settings: they come from the environment of every process (the standard ``AWS_*``
variables and ``CURATION_STORAGE_OPTIONS``, see :mod:`curation_assets.lib.objectstore`) and are
never written to ``settings.json``.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from curation_assets.lib.objectstore import is_remote


@dataclass(frozen=True)
class Paths:
    """Resolved locations.

    Attributes:
        home: The curation home folder.
        delta_root: Root URI of all Delta tables.
        source_root: Folder whose entries are shards.
        dagster_home: The Dagster instance folder (``DAGSTER_HOME``).
        export_root: Folder or URI of the export's files (see :func:`default_export_root`).
    """

    home: Path
    delta_root: str
    source_root: Path
    dagster_home: Path
    export_root: str = ""


def default_export_root(home: Path, delta_root: str) -> str:
    """``<home>/export`` for a local Delta root; ``<delta_root>/_export`` for an object store.

    So pointing the Delta root at a bucket puts every file of the pipeline in it.
    """
    if is_remote(delta_root):
        return delta_root.rstrip("/") + "/_export"
    return str(home / "export")


def resolve_paths(home: str | Path | None = None) -> Paths:
    """Resolve locations from ``home`` or the environment (see module docstring)."""
    env = os.environ
    base = Path(home or env.get("CURATION_HOME") or ".curation").expanduser().resolve()
    saved = read_settings(base)
    delta = (env.get("CURATION_DELTA_ROOT") if home is None else None) or saved.get("delta_root")
    source = (env.get("CURATION_SOURCE_ROOT") if home is None else None) or saved.get("source_root")
    export = (env.get("CURATION_EXPORT_ROOT") if home is None else None) or saved.get("export_root")
    dagster_home = env.get("DAGSTER_HOME") if home is None else None
    delta_root = delta or str(base / "delta")
    return Paths(
        home=base,
        delta_root=delta_root,
        source_root=Path(source).expanduser().resolve() if source else base / "sources",
        dagster_home=Path(dagster_home).resolve() if dagster_home else base / "dagster",
        export_root=folder_or_uri(export) if export else default_export_root(base, delta_root),
    )


def folder_or_uri(value: str) -> str:
    """An object-store URI as given; a folder made absolute."""
    return value if is_remote(value) else str(Path(value).expanduser().resolve())


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


def is_gpu_fraction(value: float) -> bool:
    """Whether Ray accepts ``value`` GPUs per task: a fraction in (0, 1] or a whole number."""
    return value > 0 and (value <= 1 or float(value).is_integer())


def gpu_fraction_env(name: str, default: float = 1.0) -> float:
    """GPUs per task from environment variable ``name``: a fraction in (0, 1] or a whole number.

    Raises:
        ValueError: If it is set to anything else (the message names the variable).
    """
    raw = os.environ.get(name, "") or str(default)
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not is_gpu_fraction(value):
        raise ValueError(f"{name}={raw!r}: expected a fraction in (0, 1] or a whole number")
    return value


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
