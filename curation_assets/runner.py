"""The headless runner: the pipeline's jobs executed in this process, one after the other.

``curation run`` and ``curation bench incremental`` drive the pipeline through this module (no
daemon: the jobs execute in process on the home's Dagster instance, so their runs,
materializations and pool slots are the ones ``curation dev`` shows). The sequence of
:func:`run_pipeline`:

1. the home is prepared (:func:`prepare_home`: ``DAGSTER_HOME``, ``CURATION_*``, the project's
   ``dagster.yaml``: :mod:`curation_assets.instance`) and its ready shards listed;
2. :func:`open_runner` opens the instance and fails the runs whose worker died, freeing their
   pool slots (``defs.run_health.guard_runs``, which also watches this process's pool waits);
3. the shards are registered as partitions;
4. ingest + embed of the shards; then the classifiers; then score + filter of the shards;
5. centroids (when missing or asked) → assignments of the shards → dedup → weights + export.

Per-shard work runs many shards per run (:meth:`Runner.per_shard`): up to
``CURATION_SHARDS_PER_RUN`` (50) shards adjacent in registration order share a run, which
loads the model once; a failed multi-shard run is followed by one run per shard it did not
complete, so that one bad shard fails alone.

Work already done is skipped (:class:`Freshness`). A failed run does not stop the other shards:
its step errors are collected in :attr:`Runner.failures`. Ctrl-C (or SIGTERM) stops the whole
sequence: the run in flight ends failed with its pool slots freed, no further run starts, and
:class:`Interrupted` (a ``KeyboardInterrupt``) propagates to the caller.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import dagster as dg

from curation_assets.defs.partitions import SHARDS_PER_RUN
from curation_assets.defs.run_health import guard_runs, pool_slots
from curation_assets.instance import check_instance_storage, install_dagster_yaml
from curation_assets.lib.errors import ConfigError
from curation_assets.lib.settings import Paths, resolve_paths, save_settings

if TYPE_CHECKING:
    from curation_assets.lib.classify import LabelImport
    from curation_assets.lib.shards import ShardInfo

logger = logging.getLogger(__name__)

Echo = Callable[[str], object]

EMBED = [
    dg.AssetKey("raw_images"),
    dg.AssetKey("quarantine"),
    dg.AssetKey("exact_duplicates"),
    dg.AssetKey("ingest_notes"),
    dg.AssetKey("image_quality"),
    dg.AssetKey("image_embeddings"),
]
"""The ingest + embed part of ``per_shard_job``."""

FILTER = [
    dg.AssetKey("classifier_scores"),
    dg.AssetKey("filtered_images"),
    dg.AssetKey("filter_rejections"),
]
"""The score + filter part of ``per_shard_job``."""


# ------------------------------------------------------------------------------------ home


def prepare_home(home: str | None, source: str | None = None) -> Paths:
    """Create the home, point DAGSTER_HOME/CURATION_* at it and install dagster.yaml.

    The instance is sqlite under the home, or PostgreSQL when ``$CURATION_PG_URL`` is set
    (:mod:`curation_assets.instance`).

    Args:
        home: The curation home (default: ``$CURATION_HOME`` or ``./.curation``).
        source: A source root to record in the home's settings (``curation run --source``).

    Raises:
        InstanceConfigError: The home's PostgreSQL storage is unreachable or its URL unset.
    """
    paths = resolve_paths(home)
    paths.home.mkdir(parents=True, exist_ok=True)
    if source is not None:
        save_settings(paths.home, source_root=str(Path(source).expanduser().resolve()))
        paths = resolve_paths(paths.home)
    paths.dagster_home.mkdir(parents=True, exist_ok=True)
    note = install_dagster_yaml(paths.dagster_home / "dagster.yaml")
    if note:
        logger.warning(note)
    check_instance_storage(paths.dagster_home / "dagster.yaml")
    os.environ["CURATION_HOME"] = str(paths.home)
    os.environ["DAGSTER_HOME"] = str(paths.dagster_home)
    return paths


class ShardSelectionError(ConfigError):
    """No shard to run: the source root is missing or empty, or ``--shards`` names none."""


def ready_shards(source_root: Path, only: str | None = None, *, echo: Echo) -> list[ShardInfo]:
    """The shards under ``source_root`` that are ready (each one that is not is echoed).

    Args:
        source_root: The folder whose entries are shards.
        only: Comma-separated shard keys to keep (default: all).
        echo: Receives a line per shard skipped because it is not ready.

    Raises:
        ShardSelectionError: If the folder is missing, no shard is ready, or ``only`` names a
            shard that is not there.
    """
    from curation_assets.lib.shards import discover_shards

    if not source_root.is_dir():
        raise ShardSelectionError(f"source folder {source_root} does not exist")
    shards = discover_shards(source_root, min_age_s=0.0)
    for s in shards:
        if not s.ready:
            echo(f"skipping {s.key}: {s.why_not_ready}")
    ready = [s for s in shards if s.ready]
    if only:
        wanted = set(only.split(","))
        unknown = wanted - {s.key for s in ready}
        if unknown:
            found = [s.key for s in ready]
            raise ShardSelectionError(f"no ready shard named {sorted(unknown)}; found {found}")
        ready = [s for s in ready if s.key in wanted]
    if not ready:
        raise ShardSelectionError(f"no shard under {source_root}")
    return ready


def import_label_file(
    paths: Paths, file: Path, *, instance: dg.DagsterInstance, allow_relabel: bool = False
) -> LabelImport:
    """Validate and append a label file (all or nothing); report it to Dagster as `labels`.

    Raises:
        LabelImportError: With a readable report when any row is wrong (nothing imported).
    """
    import polars as pl

    from curation_assets.defs.resources import default_resources
    from curation_assets.lib.classify import import_labels, read_label_file
    from curation_assets.lib.storage import DeltaStore
    from curation_assets.lib.tables import DUPLICATE_FILES, LABELS, RAW_IMAGES

    store = DeltaStore(paths.delta_root)
    known = pl.concat(
        [
            store.read(RAW_IMAGES, columns=["image_id", "source_uri"]),
            store.read(DUPLICATE_FILES, columns=["image_id", "source_uri"]),
        ]
    )
    categories = default_resources(str(paths.home))["categories"].load()  # type: ignore[attr-defined]
    result = import_labels(
        read_label_file(file),
        known_images=known,
        categories=[c.name for c in categories],
        existing=store.read(LABELS),
        allow_relabel=allow_relabel,
    )
    if result.rows.is_empty():  # nothing new: no write, no event, classifiers stay current
        return result
    store.append(LABELS, result.rows)
    total = store.scan(LABELS).select(pl.len()).collect().item()
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            asset_key="labels",
            description=f"imported {result.rows.height} labels from {file}",
            metadata={
                "dagster/row_count": total,
                "dagster/uri": store.uri(LABELS.name),
                "imported": result.rows.height,
                "source_file": str(file),
                "already_labelled": result.n_already_labelled,
            },
        )
    )
    return result


# -------------------------------------------------------------------------------- results


def step_seconds(result: Any) -> dict[str, float]:
    """Seconds of each successful step of an ``execute_in_process`` result."""
    out: dict[str, float] = {}
    for event in result.all_events:
        if event.event_type_value == "STEP_SUCCESS" and event.step_key:
            out[event.step_key] = event.event_specific_data.duration_ms / 1000.0
    return out


def step_errors(result: Any) -> list[str]:
    """``step: message`` of each failed step, with the user code's own error, not the wrapper."""
    errors = []
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            err = event.event_specific_data.error
            while err is not None and err.cause is not None:
                err = err.cause
            errors.append(f"{event.step_key}: {err.message.strip() if err else 'failed'}")
    return errors


_INTERRUPTS = {"KeyboardInterrupt", "DagsterExecutionInterruptedError"}


def was_interrupted(result: Any) -> bool:
    """Whether Dagster ended the run of ``result`` because of an interrupt (Ctrl-C, SIGTERM)."""
    for event in result.all_events:
        if event.event_type_value in ("STEP_FAILURE", "PIPELINE_FAILURE"):
            err = event.event_specific_data.error
            if err is not None and err.cls_name in _INTERRUPTS:
                return True
    return False


class _SignalLatch:
    """Notes SIGINT/SIGTERM arriving while it is open, whoever handles them.

    Dagster replaces the SIGINT handler while it executes a run and resets the interrupt it
    captured when the run ends; an interrupt that arrives after the run's last checkpoint
    would be lost, and the next run would start. The interpreter writes every signal it
    handles to the wakeup file descriptor whatever the handler; this latch reads them.
    """

    def __enter__(self) -> _SignalLatch:
        self._pair: tuple[socket.socket, socket.socket] | None = None
        if threading.current_thread() is not threading.main_thread():
            return self
        read, write = socket.socketpair()
        read.setblocking(False)
        write.setblocking(False)
        self._old = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
        self._pair = (read, write)
        return self

    def fired(self) -> bool:
        """Whether SIGINT or SIGTERM arrived since the latch opened."""
        if self._pair is None:
            return False
        seen = b""
        try:
            while chunk := self._pair[0].recv(4096):
                seen += chunk
        except BlockingIOError:
            pass
        return any(s in seen for s in (signal.SIGINT, signal.SIGTERM))

    def __exit__(self, *exc: object) -> None:
        if self._pair is not None:
            signal.set_wakeup_fd(self._old)
            for sock in self._pair:
                sock.close()


_ENDED = {"FAILURE": "failed", "CANCELED": "canceled", "SUCCESS": "succeeded"}


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the sequence; the message says where and what was done."""


# ------------------------------------------------------------------------------ freshness


class Freshness:
    """Which per-shard work the runner can skip: done after everything it depends on.

    A re-run then redoes only what changed (a new or modified shard, new labels, retrained
    centroids); the global stages decide for themselves (their commit records make a run with
    nothing new a no-op). ``force`` redoes everything.
    """

    def __init__(self, instance: dg.DagsterInstance, *, force: bool) -> None:
        self.instance = instance
        self.force = force

    def latest(self, asset: str, partition: str | None) -> Any:
        """The newest materialization record of ``asset`` (of ``partition``), or None."""
        flt = dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition else None
        )
        records = self.instance.fetch_materializations(flt, limit=1).records
        return records[0] if records else None

    def current(
        self, asset: str, partition: str | None, upstream: list[tuple[str, str | None]]
    ) -> bool:
        """Materialized, and after the latest materialization of every upstream asset."""
        if self.force:
            return False
        rec = self.latest(asset, partition)
        if rec is None:
            return False
        for key, part in upstream:
            up = self.latest(key, part)
            if up is not None and up.storage_id > rec.storage_id:
                return False
        return True

    def embedded(self, shard: str, path: Path) -> bool:
        """Ingested from the same files (fingerprint) and embedded since."""
        from curation_assets.lib.shards import source_fingerprint

        raw = self.latest("raw_images", shard)
        if self.force or raw is None:
            return False
        seen = raw.asset_materialization.metadata.get("source_fingerprint")
        if seen is None or seen.value != source_fingerprint(path):
            return False
        return self.current("image_embeddings", shard, [("raw_images", shard)])

    def filtered(self, shard: str) -> bool:
        """Scored and filtered after its embeddings and the classifiers."""
        return self.current(
            "filtered_images",
            shard,
            [("image_embeddings", shard), ("safety_classifiers", None)],
        )

    def assigned(self, shard: str) -> bool:
        """Assigned after its filtered set and the centroids, in every clustering."""
        from curation_assets.lib.tables import N_CLUSTERINGS

        return all(
            self.current(
                f"cluster_assignments_{c}",
                shard,
                [("filtered_images", shard), (f"cluster_centroids_{c}", None)],
            )
            for c in range(N_CLUSTERINGS)
        )


# --------------------------------------------------------------------------------- runner


class Runner:
    """Executes the project's jobs in process on one instance and keeps the account.

    Attributes:
        instance: The Dagster instance the runs execute on.
        defs: The Definitions whose jobs run.
        delta_root: The Delta root of ``defs``'s resources.
        fresh: What may be skipped.
        stage_seconds: Seconds per step key, summed over every run.
        job_seconds: Wall seconds per job name, summed over every run.
        failures: Step errors per failed run (by its label).
        last_result: The result of the latest run.
        shards_per_run: Most shards one per-shard run covers (``CURATION_SHARDS_PER_RUN``).
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        defs: dg.Definitions,
        delta_root: str,
        *,
        echo: Echo = logger.info,
        log_level: str = "WARNING",
        force: bool = False,
    ) -> None:
        self.instance = instance
        self.defs = defs
        self.delta_root = delta_root
        self.echo = echo
        self.log_level = log_level
        self.fresh = Freshness(instance, force=force)
        self.stage_seconds: dict[str, float] = {}
        self.job_seconds: dict[str, float] = {}
        self.failures: dict[str, list[str]] = {}
        self.last_result: Any = None
        self.shards_per_run = SHARDS_PER_RUN

    def execute(
        self,
        job: str,
        label: str,
        *,
        partition_key: str | None = None,
        asset_selection: Sequence[dg.AssetKey] | None = None,
        run_config: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> bool:
        """Execute ``job`` in process; echo ``label: ok|FAILED in Ns``; True when it succeeded.

        Raises:
            Interrupted: When Ctrl-C or SIGTERM arrived during the run (the run is marked
                failed and its pool slots are freed; nothing else is started).
        """
        target = self.defs.resolve_job_def(job)
        t0 = time.perf_counter()
        since = datetime.now(UTC)
        with _SignalLatch() as latch:
            try:
                result = target.execute_in_process(
                    instance=self.instance,
                    raise_on_error=False,
                    partition_key=partition_key,
                    asset_selection=asset_selection,
                    tags=tags,
                    run_config={
                        "loggers": {"console": {"config": {"log_level": self.log_level}}},
                        **(run_config or {}),
                    },
                )
            except KeyboardInterrupt:  # outside Dagster's own handling (run creation, teardown)
                self._stop(label, t0, self._runs_since(job, since), ok=False)
            interrupted = latch.fired() or was_interrupted(result)
        seconds = time.perf_counter() - t0
        self.job_seconds[job] = self.job_seconds.get(job, 0.0) + seconds
        for step, sec in step_seconds(result).items():
            self.stage_seconds[step] = self.stage_seconds.get(step, 0.0) + sec
        if interrupted:
            self._stop(label, t0, [result.run_id], ok=result.success)
        self.echo(f"  {label}: {'ok' if result.success else 'FAILED'} in {seconds:.1f}s")
        self.last_result = result
        if not result.success:
            self.failures.setdefault(label, []).extend(step_errors(result))
        return bool(result.success)

    def _runs_since(self, job: str, since: datetime) -> list[str]:
        records = self.instance.get_run_records(
            filters=dg.RunsFilter(job_name=job, created_after=since)
        )
        return [r.dagster_run.run_id for r in records]

    def _stop(self, label: str, t0: float, run_ids: list[str], *, ok: bool) -> NoReturn:
        """End the interrupted runs (failed, pool slots freed) and raise :class:`Interrupted`."""
        outcome = "ok" if ok else "INTERRUPTED"
        self.echo(f"  {label}: {outcome} in {time.perf_counter() - t0:.1f}s")
        done = []
        held = pool_slots(self.instance)
        for run_id in run_ids:
            run = self.instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                self.instance.report_run_failed(run, "interrupted; marked failed by curation run")
                run = self.instance.get_run_by_id(run_id)
            slots = [s for s in held if s.run_id == run_id]
            if slots:
                self.instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            status = _ENDED.get(run.status.value, run.status.value) if run else "deleted"
            freed = f", freed pool {', '.join(s.pool for s in slots)}" if slots else ""
            done.append(f"run {run_id[:8]} {status}{freed}")
        runs = "; ".join(done) or "no run was created"
        raise Interrupted(f"during {label} ({runs}); no further run started")

    def register(self, keys: Sequence[str], chunk: int = 10_000) -> list[str]:
        """Add ``keys`` to the shard partitions, ``chunk`` per call; returns the new ones.

        One call binds a SQL variable per key, and sqlite refuses past its limit (32,766 on
        a stock build): a LAION-sized source (585k tars) registers in chunks.
        """
        from curation_assets.defs.partitions import SHARDS_PARTITION

        known = set(self.instance.get_dynamic_partitions(SHARDS_PARTITION))
        new = [k for k in keys if k not in known]
        for start in range(0, len(new), chunk):
            self.instance.add_dynamic_partitions(SHARDS_PARTITION, new[start : start + chunk])
        return new

    def per_shard(
        self,
        keys: Sequence[str],
        *,
        selection: Sequence[dg.AssetKey] | None = None,
        done: Callable[[str], bool] | None = None,
        why: str = "",
        job: str = "per_shard_job",
    ) -> list[str]:
        """Run ``job`` (its ``selection``) over the shards that ``done`` does not skip.

        The shards share runs: up to ``shards_per_run`` shards adjacent in registration order
        per run (:func:`~curation_assets.defs.partitions.shard_ranges`). When a run over several
        shards fails, the shards it did not complete are run again one per run, so that one bad
        shard fails alone and the others go on (as they would have without batching).

        Returns:
            The shards whose work is done: skipped ones and those whose run succeeded.
        """
        from curation_assets.defs.partitions import (
            SHARDS_PARTITION,
            completed_shards,
            range_tags,
            shard_ranges,
        )

        todo = [k for k in keys if done is None or not done(k)]
        registered = self.instance.get_dynamic_partitions(SHARDS_PARTITION)
        ok: set[str] = set()
        for run in shard_ranges(registered, todo, self.shards_per_run):
            if len(run) == 1:
                if self.execute(
                    job, f"shard {run[0]}", partition_key=run[0], asset_selection=selection
                ):
                    ok.add(run[0])
                continue
            label = f"{len(run)} shards {run[0]} .. {run[-1]}"
            if self.execute(job, label, asset_selection=selection, tags=range_tags(run)):
                ok.update(run)
                continue
            completed = completed_shards(self.last_result, run)
            ok.update(completed)
            for k in run:
                if k not in completed and self.execute(
                    job, f"shard {k} (alone)", partition_key=k, asset_selection=selection
                ):
                    ok.add(k)
        self._skipped(keys, todo, why)
        return [k for k in keys if k not in todo or k in ok]

    def _skipped(self, keys: Sequence[str], todo: Sequence[str], why: str) -> None:
        skipped = [k for k in keys if k not in todo]
        if skipped:
            self.echo(f"  {len(skipped)} shards already {why}: skipped (--force redoes them)")

    def cluster_and_dedup(
        self,
        shards: Sequence[str],
        *,
        retrain: bool = False,
        weights_config: dict[str, Any] | None = None,
    ) -> None:
        """Train centroids (when missing or asked), assign each shard, deduplicate, weigh, export.

        Args:
            shards: The filtered shards to assign.
            retrain: Retrain the centroids even when they exist.
            weights_config: Op config of ``weights_job`` (``{"weights_and_audit": {...}}``).
        """
        from curation_assets.lib.cluster import load_centroids
        from curation_assets.lib.storage import DeltaStore
        from curation_assets.lib.tables import N_CLUSTERINGS

        store = DeltaStore(self.delta_root)
        missing = any(load_centroids(store, c) is None for c in range(N_CLUSTERINGS))
        if missing or retrain:
            self.echo("cluster centroids:")
            if not self.execute("retrain_centroids_job", "five k-means clusterings"):
                return
        else:
            self.echo("cluster centroids: reused (pass --retrain-centroids to retrain)")
        self.echo("cluster assignments:")
        assigned = self.per_shard(
            shards,
            job="assign_shard_job",
            done=self.fresh.assigned,
            why="assigned to the current centroids",
        )
        if assigned:
            self.echo("dedup:")
            if self.execute("dedup_job", "deduplicated_images"):
                self.echo("weights + export:")
                self.execute(
                    "weights_job",
                    "sample_weights, bias_audit, curated_dataset",
                    run_config={"ops": weights_config or {}},
                )


@contextmanager
def open_runner(
    paths: Paths, *, echo: Echo = logger.info, verbose: bool = False, force: bool = False
) -> Iterator[Runner]:
    """A :class:`Runner` on the home's instance, after dead runs were cleaned up.

    The instance is the one ``DAGSTER_HOME`` names (:func:`prepare_home` sets it); the pool
    watcher of ``guard_runs`` runs until the instance closes.
    """
    from curation_assets.definitions import build_defs

    defs = build_defs(str(paths.home))
    with dg.DagsterInstance.get() as instance:
        guard_runs(instance, echo=echo)  # dead runs: fail them, free their pool slots; watch waits
        yield Runner(
            instance,
            defs,
            paths.delta_root,
            echo=echo,
            log_level="INFO" if verbose else "WARNING",
            force=force,
        )


def run_pipeline(
    runner: Runner,
    shards: Sequence[ShardInfo],
    *,
    retrain: bool = False,
    after_embed: Callable[[Runner], object] | None = None,
    weights_config: dict[str, Any] | None = None,
) -> None:
    """Materialize every asset for ``shards``, skipping what is current (see module docstring).

    Args:
        runner: The runner (:func:`open_runner`).
        shards: The ready shards (:func:`ready_shards`).
        retrain: Retrain the centroids even when they exist.
        after_embed: Called once ingest + embed is done (the demo imports its seed labels).
        weights_config: Op config of ``weights_job``.

    Raises:
        Interrupted: On Ctrl-C or SIGTERM (see :meth:`Runner.execute`).
    """
    keys = [s.key for s in shards]
    new = runner.register(keys)
    runner.echo(f"{len(keys)} shards ({len(new)} newly registered): {', '.join(keys)}")
    fresh = runner.fresh
    by_key = {s.key: s for s in shards}
    runner.echo("ingest + embed:")
    reembedded = [k for k in keys if not fresh.embedded(k, by_key[k].path)]
    embedded = runner.per_shard(
        keys,
        selection=EMBED,
        done=lambda k: k not in reembedded,
        why="ingested and embedded, source unchanged",
    )
    if after_embed is not None:
        after_embed(runner)
    runner.echo("classifiers:")
    if reembedded or not fresh.current("safety_classifiers", None, [("labels", None)]):
        trained = runner.execute("classifiers_job", "safety_classifiers")
    else:
        trained = True
        runner.echo("  safety_classifiers: current (no new labels, no shard re-embedded)")
    filtered = []
    if trained:
        runner.echo("score + filter:")
        filtered = runner.per_shard(
            embedded,
            selection=FILTER,
            done=fresh.filtered,
            why="scored and filtered by the current classifiers",
        )
    if filtered:
        runner.cluster_and_dedup(filtered, retrain=retrain, weights_config=weights_config)
