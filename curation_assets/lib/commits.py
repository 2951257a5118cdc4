"""Commit records: crash-safe, idempotent multi-table stages over Delta.

Delta commits one table at a time. A stage that writes several tables (dedup: pairs, images
and its run log; weights: weights and audit; export: Delta table and files) writes them all,
then appends ONE row to ``stage_commits``: the Delta version of every table it read
(``inputs``) and wrote (``outputs``), the configuration that shaped them and the figures it
reported. That row is the stage's commit point:

* **Idempotent.** :func:`current_commit` returns the last commit when the inputs and the
  configuration are the same and no output changed since: running the stage again would
  reproduce it, so the stage writes nothing and re-reports the recorded figures.
* **Crash-safe.** A process killed between two writes leaves outputs at versions no commit
  records. The next run sees the mismatch (:func:`torn_outputs`), reads any state it builds on
  as of the committed versions (Delta time travel: ``DeltaStore.read(..., version=v)``) and
  rewrites every output, so it converges to the same tables as a run that was never killed.

Memory and cost: one small row per stage run; reads touch only the latest rows of one stage.
"""

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.compaction import compact
from curation_assets.lib.deltawrite import writer_identity
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import STAGE_COMMITS, STAGE_SETTINGS
from curation_assets.lib.tables.spec import TableSpec

logger = logging.getLogger(__name__)

#: ``stage_commits`` files at which a commit compacts the table into one
#: (:func:`~.compaction.compact`). Reading the latest commit opens every live file: at 2,000
#: commits it took 111 ms uncompacted (13 ms at 10), 25-39 ms compacted every 64; a global
#: update reads it ~5 times a stage.
COMPACT_FILES = 64


@dataclass(frozen=True)
class Commit:
    """One committed stage run.

    Attributes:
        stage: Stage name.
        committed_at: When it committed.
        inputs: Table → Delta version read (None: the table did not exist).
        outputs: Table → Delta version written.
        config: Configuration (JSON-compatible).
        summary: Reported figures (JSON-compatible).
    """

    stage: str
    committed_at: datetime
    inputs: dict[str, int | None]
    outputs: dict[str, int]
    config: dict[str, Any]
    summary: dict[str, Any]


def _plain(value: Any) -> Any:
    """Numpy scalars and arrays as Python numbers and lists; anything else as its str."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _canonical(value: Mapping[str, Any]) -> str:
    return json.dumps(value, sort_keys=True, default=_plain, allow_nan=True)


def input_versions(store: DeltaStore, tables: Iterable[str]) -> dict[str, int | None]:
    """The current Delta version of each table (None when it does not exist)."""
    return {t: store.version(t) for t in sorted(set(tables))}


def _latest(store: DeltaStore, spec: TableSpec, stage: str, at: str) -> dict[str, Any] | None:
    """The newest row (by column ``at``) of ``stage`` in ``spec``'s table, or None."""
    rows = store.scan(spec).filter(pl.col("stage") == stage).sort(at).tail(1).collect()
    return rows.row(0, named=True) if rows.height else None


def last_commit(store: DeltaStore, stage: str) -> Commit | None:
    """The latest committed run of ``stage`` (None when it never committed)."""
    r = _latest(store, STAGE_COMMITS, stage, "committed_at")
    if r is None:
        return None
    return Commit(
        stage,
        r["committed_at"],
        json.loads(r["inputs"]),
        json.loads(r["outputs"]),
        json.loads(r["config"]),
        json.loads(r["summary"]),
    )


@dataclass(frozen=True)
class Settings:
    """A stage's settings in force for one run (:func:`settings_in_force`).

    Attributes:
        values: Every setting, resolved.
        sticky: The names of the settings a run may leave unset (the ``defaults``' keys).
        inherited: Names whose value came from the last commit (left unset in this run).
        defaulted: Names left unset with no commit holding them: the stage's default.
    """

    values: dict[str, Any]
    sticky: tuple[str, ...]
    inherited: tuple[str, ...]
    defaulted: tuple[str, ...]

    @property
    def chosen(self) -> dict[str, Any]:
        """The sticky settings' values: what a stage records as in force."""
        return {name: self.values[name] for name in self.sticky}

    def describe(self) -> str:
        """One line for a run log: which sticky settings this run set, kept, or defaulted."""
        given = sorted(set(self.sticky) - set(self.inherited) - set(self.defaulted))
        parts = [
            f"set by this run: {', '.join(given) or 'none'}",
            f"kept from the last run: {', '.join(self.inherited) or 'none'}",
        ]
        if self.defaulted:
            parts.append(f"defaults (first run): {', '.join(self.defaulted)}")
        return "; ".join(parts)


def settings_in_force(
    given: Mapping[str, Any], recorded: Mapping[str, Any] | None, defaults: Mapping[str, Any]
) -> Settings:
    """The settings a run uses: ``given``, with every unset (None) one as last recorded.

    A setting a user chose once (in the launchpad, for one run) stays in force for every later
    run that leaves it unset, automated ones included: the next automated run does not put the
    default back (and with it re-score, re-filter or rewrite everything twice). A setting unset
    with nothing recorded for it (first run, or one added since) takes ``defaults``. Names in
    ``given`` that are not in ``defaults`` are passed through as given.

    Args:
        given: The run's configuration; None = not set by this run.
        recorded: The settings last in force: a multi-table stage's last commit's ``config``
            (:func:`last_commit`), a per-shard stage's :func:`recorded_settings`; None before
            the first run.
        defaults: The value of each sticky setting when nothing set it.
    """
    values = dict(given)
    inherited: list[str] = []
    defaulted: list[str] = []
    recorded = recorded or {}
    for name, default in defaults.items():
        if values.get(name) is not None:
            continue
        if recorded.get(name) is not None:
            values[name] = recorded[name]
            inherited.append(name)
        else:
            values[name] = default
            defaulted.append(name)
    return Settings(values, tuple(defaults), tuple(sorted(inherited)), tuple(sorted(defaulted)))


def recorded_settings(store: DeltaStore, stage: str) -> dict[str, Any] | None:
    """The settings last recorded for a per-shard ``stage`` (:func:`record_settings`), or None.

    Reads ``stage_settings``: one row per change of a stage's settings, never per shard run.
    """
    r = _latest(store, STAGE_SETTINGS, stage, "recorded_at")
    return json.loads(r["settings"]) if r is not None else None


def record_settings(store: DeltaStore, stage: str, values: Mapping[str, Any]) -> bool:
    """Record ``values`` as ``stage``'s settings in force, if they differ from the last record.

    Per-shard stages call it after a run's shards were written, so a run that failed on
    every shard does not change what later runs inherit. Whether a row was appended.
    """
    if recorded_settings(store, stage) == json.loads(_canonical(values)):
        return False
    row = pl.DataFrame(
        {
            "stage": [stage],
            "recorded_at": [datetime.now(UTC)],
            "settings": [_canonical(values)],
            "writer": [writer_identity()],
        },
        schema=STAGE_SETTINGS.schema,
    )
    store.append(STAGE_SETTINGS, row)
    return True


def torn_outputs(store: DeltaStore, commit: Commit | None) -> list[str]:
    """Outputs whose current version is not the committed one (written by an unfinished run).

    Empty when there is no commit to compare with.
    """
    if commit is None:
        return []
    return sorted(t for t, v in commit.outputs.items() if store.version(t) != v)


def current_commit(
    store: DeltaStore,
    stage: str,
    *,
    inputs: Mapping[str, int | None],
    config: Mapping[str, Any],
) -> Commit | None:
    """The last commit of ``stage`` if re-running it now would only reproduce it.

    That is: same input versions, same configuration, and every output still at the version
    the commit wrote. None otherwise (first run, new data, new config, or a torn state).
    """
    last = last_commit(store, stage)
    if last is None:
        return None
    if _canonical(last.inputs) != _canonical(dict(inputs)):
        return None
    if _canonical(last.config) != _canonical(dict(config)):
        return None
    if torn_outputs(store, last):
        return None
    return last


def record_commit(
    store: DeltaStore,
    stage: str,
    *,
    inputs: Mapping[str, int | None],
    outputs: Mapping[str, int],
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
) -> Commit:
    """Append the commit row: the stage's outputs become the committed state."""
    now = datetime.now(UTC)
    row = pl.DataFrame(
        {
            "stage": [stage],
            "committed_at": [now],
            "inputs": [_canonical(dict(inputs))],
            "outputs": [_canonical(dict(outputs))],
            "config": [_canonical(dict(config))],
            "summary": [_canonical(dict(summary))],
            "writer": [writer_identity()],
        },
        schema=STAGE_COMMITS.schema,
    )
    store.append(STAGE_COMMITS, row)
    logger.info("stage %s committed outputs %s", stage, dict(outputs))
    # one file an append: compacted, so reading the latest commit does not open every file of
    # every commit ever made. After the commit point, and optional: whatever stops it (a lock
    # wait that times out, a store error) leaves the commit standing; the next one retries
    try:
        compact(store, STAGE_COMMITS.name, min_files=COMPACT_FILES)
    except Exception as exc:  # noqa: BLE001 - nothing here may undo a committed stage
        logger.warning("stage_commits not compacted (%s); the next commit retries", exc)
    return Commit(
        stage,
        now,
        dict(inputs),
        dict(outputs),
        json.loads(_canonical(config)),
        json.loads(_canonical(summary)),
    )
