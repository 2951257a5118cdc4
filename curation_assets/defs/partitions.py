"""Shards as Dagster dynamic partitions, and runs that cover many of them.

Starting a run costs seconds (a process, imports, a model load) while a shard of 1,000 images
costs about as much to process, so every per-shard asset takes :data:`shard_backfill_policy`:
one run covers up to :data:`SHARDS_PER_RUN` shards, and each asset's body loops over
``context.partition_keys`` with :class:`ShardLoop` (one shard's data in memory at a time, each
shard written atomically by ``DeltaStore.replace_shard``, one materialization per shard with
its own metadata).

**Ranges of dynamic partitions.** A run covers a *range* of partitions (the run tags
``dagster/asset_partition_range_start``/``_end``), and Dagster resolves a range of a
``DynamicPartitionsDefinition`` to the keys between its ends in *registration order*
(``DynamicPartitionsDefinition.get_partition_keys`` lists them ``order_by(id)``;
``PartitionsDefinition.get_partition_keys_in_range`` slices that list). Backfills and the
automation sensor split a set of partitions into the maximal runs of keys that are adjacent in
that order (``DefaultPartitionsSubset.get_partition_key_ranges``), then chunk each run by
``max_partitions_per_run``: shards registered together (one tick of ``shard_sensor``, one
``curation run``) share runs; scattered shards (every third shard is stale) get a run per
gap. :func:`shard_ranges` does the same for ``shard_sensor`` and the headless runner.
"""

import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import dagster as dg

from curation_assets.defs.resources import ShardSource
from curation_assets.lib.engine import LocalEngine, RayEngine, ShardResult, ShardWork
from curation_assets.lib.settings import positive_int_env
from curation_assets.lib.shards import ShardReader

# Every per-shard asset takes a backfill policy (many shards per run); Dagster 1.13 marks the
# parameter beta and would print that at every import. The behaviour is tested here.
warnings.filterwarnings("ignore", message=".*backfill_policy.*", category=dg.BetaWarning)

SHARDS_PARTITION = "shards"

shards_partitions = dg.DynamicPartitionsDefinition(name=SHARDS_PARTITION)

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
"""The run tags of a partition range (Dagster's ``ASSET_PARTITION_RANGE_*_TAG``)."""


def shards_per_run() -> int:
    """Most shards one run of a per-shard asset covers: ``$CURATION_SHARDS_PER_RUN`` (50).

    A run then costs one process start and one model load per 50 shards instead of per shard;
    a run that fails or is killed redoes at most this many shards.
    """
    return positive_int_env("CURATION_SHARDS_PER_RUN", 50)


SHARDS_PER_RUN = shards_per_run()

shard_backfill_policy = dg.BackfillPolicy.multi_run(max_partitions_per_run=SHARDS_PER_RUN)
"""The backfill policy of every per-shard asset: the same one, so that Dagster may run them
together (a backfill groups assets only when their policies are equal)."""


def shard_ranges(
    registered: Sequence[str], wanted: Iterable[str], max_per_run: int = SHARDS_PER_RUN
) -> list[list[str]]:
    """Split ``wanted`` into runs as Dagster does: adjacent in registration order, chunked.

    Args:
        registered: Every shard key in registration order (``get_dynamic_partitions``).
        wanted: The shards to run (each must be registered).
        max_per_run: Most keys per run.

    Returns:
        Lists of keys, each a contiguous slice of ``registered`` of at most ``max_per_run``
        keys; a run covers ``[keys[0], keys[-1]]``.

    Raises:
        ValueError: If a wanted key is not registered.
    """
    want = set(wanted)
    unknown = want - set(registered)
    if unknown:
        raise ValueError(f"shards {sorted(unknown)} are not registered partitions")
    runs: list[list[str]] = []
    current: list[str] = []
    for key in registered:
        if key in want and len(current) < max_per_run:
            current.append(key)
            continue
        if current:
            runs.append(current)
        current = [key] if key in want else []
    if current:
        runs.append(current)
    return runs


def range_tags(keys: Sequence[str]) -> dict[str, str]:
    """The run tags of one run over ``keys`` (a slice of :func:`shard_ranges`)."""
    return {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}


def completed_shards(result: Any, shards: Sequence[str]) -> set[str]:
    """The shards a failed multi-shard run completed: every asset materialized, no check failed.

    A per-shard step reports the shards it finished before one failed
    (``defs.partitions.ShardLoop``); a shard named by a failed (ERROR) check is not complete.
    """
    planned = {k.to_user_string() for k in result.job_def.asset_layer.selected_asset_keys}
    made: dict[str, set[str]] = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_MATERIALIZATION":
            mat = event.event_specific_data.materialization
            if mat.partition is not None:
                made.setdefault(mat.partition, set()).add(mat.asset_key.to_user_string())
    bad: set[str] = set()
    for evaluation in result.get_asset_check_evaluations():
        if evaluation.passed or evaluation.severity != dg.AssetCheckSeverity.ERROR:
            continue
        named = evaluation.metadata.get("failed_shards")
        bad.update(str(named.value).split(", ") if named is not None else shards)
    return {k for k in shards if k not in bad and planned and planned <= made.get(k, set())}


ShardReport = tuple[dict[str, dict[str, Any]], Sequence[dg.AssetCheckResult]]
"""A shard's metadata by asset key, and its check results (what :meth:`ShardLoop.done` takes)."""


def shard_reader(source: ShardSource) -> ShardReader:
    """The shard source resource as plain data, for a work function in any process."""
    return ShardReader(
        root=source.root,
        max_file_bytes=source.max_file_bytes,
        max_caption_bytes=source.max_caption_bytes,
        allowed_roots=tuple(source.allowed_roots),
    )


def _where(result: ShardResult[Any]) -> str:
    if result.node_id is None:
        return f"{result.engine} pid {result.pid}"
    return f"ray node {result.node_id[:12]} pid {result.pid}"


def _plain(value: Any) -> Any:
    """A check metadata value as JSON-ready data."""
    value = getattr(value, "value", value)
    return (
        value if isinstance(value, (bool, int, float, str, type(None), list, dict)) else str(value)
    )


class ShardLoop:
    """The shards of one step of a per-shard asset, and what each of them produced.

    :meth:`run` calls a body for each of the step's shards (``context.partition_keys``: one
    in a single-partition run, up to :data:`SHARDS_PER_RUN` in a range); the body writes its
    shard and calls :meth:`done` with the shard's metadata per asset and its check results;
    then :meth:`results` yields one ``MaterializeResult`` per asset key, from which Dagster
    makes one materialization per shard carrying that shard's metadata.

    Checks are not partitioned in this Dagster version (``AssetCheckResult`` takes no
    partition, and a step evaluates each check once), so a multi-shard step reports each
    check once: passed when it passed for every shard, with each shard's figures and the
    names of the shards that failed. For one shard the result is that shard's own.

    When a shard fails, the shards finished before it are reported as materializations (with
    their metadata) before the error propagates: a backfill then counts them done, and a re-run
    redoes them harmlessly (each shard is replaced, not appended). A killed process reports
    nothing; its finished shards are complete on disk and the re-run rewrites them.
    """

    def __init__(self, context: dg.AssetExecutionContext, asset_keys: Sequence[str]) -> None:
        self.context = context
        self.asset_keys = list(asset_keys)
        self.keys: list[str] = list(context.partition_keys)
        self._metadata: dict[str, dict[str, dict[str, Any]]] = {}
        self._checks: dict[str, list[tuple[str, dg.AssetCheckResult]]] = {}
        self._step = context.get_step_execution_context()

    def done(
        self,
        key: str,
        metadata: dict[str, dict[str, Any]],
        checks: Sequence[dg.AssetCheckResult] = (),
    ) -> None:
        """Record shard ``key``'s metadata (by asset key) and check results once it is written."""
        self._metadata[key] = metadata
        for asset_key, meta in metadata.items():
            self._add_partition_metadata(asset_key, key, meta)
        for result in checks:
            self._checks.setdefault(str(result.check_name), []).append((key, result))

    def _add_partition_metadata(self, asset_key: str, key: str, meta: dict[str, Any]) -> None:
        # context.add_asset_metadata(meta, asset_key=..., partition_key=key) lists every
        # registered partition on each call to validate the key (0.25 s a call at 100k shards:
        # 160 s for a run of 50 shards and 13 assets); the keys here are the step's own.
        accumulator = self._step._metadata_accumulator  # noqa: SLF001
        self._step._metadata_accumulator = accumulator.with_additional_asset_metadata(  # noqa: SLF001
            asset_key=dg.AssetKey(asset_key), partition_key=key, metadata=meta
        )

    def failed(self) -> Iterator[dg.AssetMaterialization]:
        """Materializations of the shards finished before a failure (yield them, then raise)."""
        for key, metadata in self._metadata.items():
            for asset_key, meta in metadata.items():
                yield dg.AssetMaterialization(asset_key=asset_key, partition=key, metadata=meta)

    def run(self, body: Any) -> Iterator[Any]:
        """Call ``body(key)`` for each shard; yield the results, or the finished shards on failure.

        ``body`` processes one shard and calls :meth:`done`. Use as
        ``yield from shards.run(body)`` in a generator asset.
        """
        for key in self.keys:
            try:
                body(key)
            except Exception:
                if self._metadata:
                    self.context.log.warning(
                        f"shard {key} failed after {len(self._metadata)} of {len(self.keys)} "
                        f"shards of this run were written: reporting those, then failing"
                    )
                yield from self.failed()
                raise
        yield from self.results()

    def run_on(
        self,
        engine: LocalEngine | RayEngine,
        work: ShardWork[Any],
        report: Callable[[str, Any], ShardReport],
        *,
        wants_gpu: bool = False,
    ) -> Iterator[Any]:
        """Run ``work`` on ``engine`` for each shard; ``report`` turns each outcome into results.

        ``work(key, progress)`` (picklable, in ``lib``) writes its shard and returns a small
        outcome; ``report(key, outcome)`` (here, in the step's process) returns the shard's
        metadata by asset key and its check results. Each shard's metadata also says where it
        ran (``engine``, ``ray_node_id``, ``worker_pid``, ``task_seconds``), and each finished
        shard is logged as it completes. Use as ``yield from shards.run_on(engine, work,
        report)`` in a generator asset. On failure the shards finished before (or, on Ray,
        beside) the failing one are reported, then the error propagates, as with :meth:`run`.
        """
        log = self.context.log
        outcomes = engine.map_shards(
            work,
            self.keys,
            wants_gpu=wants_gpu,
            on_progress=lambda key, sentence: log.info(f"{key}: {sentence}"),
        )
        try:
            for result in outcomes:
                metadata, checks = report(result.key, result.value)
                where = result.metadata()
                self.done(result.key, {k: {**m, **where} for k, m in metadata.items()}, checks)
                log.info(
                    f"{result.key}: done on {_where(result)} in {result.seconds:.1f}s "
                    f"({len(self._metadata)}/{len(self.keys)} shards of this step)"
                )
        except Exception:
            if self._metadata:
                log.warning(
                    f"a shard failed after {len(self._metadata)} of {len(self.keys)} shards of "
                    f"this run were written: reporting those, then failing"
                )
            yield from self.failed()
            raise
        yield from self.results()

    def results(self) -> Iterator[dg.MaterializeResult]:
        """One ``MaterializeResult`` per asset key, with the checks (combined over shards)."""
        checks = [self._combined(name, results) for name, results in self._checks.items()]
        only = len(self.asset_keys) == 1  # then a check may leave its asset key implicit
        for asset_key in self.asset_keys:
            mine = [
                c
                for c in checks
                if c.asset_key == dg.AssetKey(asset_key) or (only and c.asset_key is None)
            ]
            yield dg.MaterializeResult(asset_key=asset_key, check_results=mine)

    def _combined(
        self, name: str, results: list[tuple[str, dg.AssetCheckResult]]
    ) -> dg.AssetCheckResult:
        if len(results) == 1:
            return results[0][1]
        first = results[0][1]
        failed = [key for key, r in results if not r.passed]
        description = None
        if failed:
            why = next(r.description for key, r in results if key == failed[0])
            description = f"failed for {len(failed)} of {len(results)} shards" + (
                f"; {failed[0]}: {why}" if why else ""
            )
        return dg.AssetCheckResult(
            check_name=name,
            asset_key=first.asset_key,
            passed=not failed,
            severity=first.severity,
            description=description,
            metadata={
                "shards": len(results),
                "failed_shards": ", ".join(failed) or "none",
                "by_shard": dg.MetadataValue.json(
                    {key: {k: _plain(v) for k, v in r.metadata.items()} for key, r in results}
                ),
            },
        )
