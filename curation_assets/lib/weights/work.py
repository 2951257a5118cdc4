"""The weights stage's scoring as engine work: one task per shard (or per group, locally).

:func:`score_on_engine` is how :func:`~.update.update_weights` scores the shards it cannot
patch: it hands :class:`WeightShardWork` to the engine (:mod:`curation_assets.lib.engine`:
the step's process, or one Ray task per key). A task reads its shards' reference rows with
their embeddings itself (:func:`~.shards.read_shards`, one pruned read per input table),
scores each shard with the probe (:func:`~.shards.score_shard`), writes each shard's
:data:`SAMPLE_WEIGHTS` rows with ``replace_shard`` (one Delta transaction per shard, as the
stage always did) and returns its stats row and audit counts (one row and ~50 rows per
shard), which the step gathers into the per-shard tables, the totals and the commit: the
commit protocol is unchanged (the shards' rows, then the small tables, the ``stage_commits``
row last; a task that dies commits nothing of its shard, and a run that dies before its
commit is redone by the next one, :mod:`~.plan`).

**Keys.** On Ray each key is one shard: a task holds one shard at a time, and the shards of a
full re-score spread over the cluster. On the local engine a key is a budget-sized group of
shards (:func:`~curation_assets.lib.memory.shard_batches`, keyed by its first shard), read in
one pruned read per table as before engines: reading shards one by one costs ~32 ms more per
shard here (40 shards of 500 rows, 8-d: 1.29 s one by one vs 0.07 s as one group), which a
step on one machine would pay for no parallelism. The work, its reads and its results are the
same either way (a shard's rows do not depend on the group it was read with).

**What travels.** The task's arguments are plain values: the Delta root and its options, the
probe's id and the ``weight_probes`` version holding it, the scale, the settings the scoring
reads, the uniqueness term (three floats), and, with zero-shot concepts, the concept prompts'
text embeddings (:class:`FrozenTextEncoder`; the model stays in the step). The probe is not
shipped: its training ids alone are up to 100k strings. Each worker process loads it once
from ``weight_probes`` (:func:`probe_at`, kept per process; the ratios of a loaded probe equal
the fitted one's, measured bit for bit, d = 8..512). In the step's own process the work also
carries the step's store and probe objects (dropped when it is pickled for a Ray task), so
the local engine reads through the step's store and scores with the probe in memory, exactly
as before.

Memory per task: its key's rows (one shard on Ray; on the local engine a group of at most
``budget / 2 / row_bytes(d)`` rows, or a bigger shard alone) plus a scoring batch and the
probe; a node running several tasks holds several.
"""

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl

from curation_assets.lib.engine import LOCAL, LocalEngine, RayEngine, ShardResult
from curation_assets.lib.memory import shard_batches, trim_heap
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import SAMPLE_WEIGHTS, WEIGHT_PROBES
from curation_assets.lib.weights.audit import DEFAULT_BASELINE_PROMPT, TextEncoder
from curation_assets.lib.weights.probe import SampledProbe, load_probe
from curation_assets.lib.weights.shards import read_shards, score_shard, shard_sizes
from curation_assets.lib.weights.uniqueness import UniquenessTerm, read_uniqueness

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ the concept encoder


@dataclass(frozen=True)
class FrozenTextEncoder:
    """A text encoder's outputs for a fixed set of prompt lists (picklable, no model).

    The audit's concept attributes call the encoder with the baseline prompts and each
    concept's prompts (:func:`~.audit.concept_attributes`); these are those calls' results,
    computed once in the step, so a task needs no text model.

    Attributes:
        vectors: The prompt list (as a tuple) → what the encoder returned for it.
    """

    vectors: Mapping[tuple[str, ...], np.ndarray]

    def __call__(self, prompts: list[str]) -> np.ndarray:
        """The stored output for ``prompts``.

        Raises:
            ValueError: For a prompt list it was not built with.
        """
        try:
            return self.vectors[tuple(prompts)]
        except KeyError:
            msg = f"no text embedding for the prompts {prompts!r}; the encoder was frozen without"
            raise ValueError(msg) from None


def freeze_encoder(
    encoder: TextEncoder,
    concepts: Mapping[str, str | Sequence[str]],
    baseline: str | Sequence[str] = DEFAULT_BASELINE_PROMPT,
) -> FrozenTextEncoder:
    """``encoder``'s outputs for the prompt lists the audit of ``concepts`` asks for."""
    lists = [[baseline] if isinstance(baseline, str) else list(baseline)]
    lists += [[p] if isinstance(p, str) else list(p) for p in concepts.values()]
    return FrozenTextEncoder({tuple(prompts): np.asarray(encoder(prompts)) for prompts in lists})


# ------------------------------------------------------------------ the probe, per process

#: The probe this process loaded last, by (root, options, probe id, weight_probes version):
#: one at a time.
_PROBES: dict[tuple[Any, ...], SampledProbe] = {}


def probe_at(store: DeltaStore, probe_id: str, version: int | None) -> SampledProbe:
    """The probe ``probe_id`` as of ``weight_probes`` version ``version``, loaded once per process.

    Raises:
        ValueError: If that version does not hold it (:func:`~.probe.load_probe`).
    """
    key = (store.root_uri, tuple(sorted(store.storage_options.items())), probe_id, version)
    if key not in _PROBES:
        probe = load_probe(store, probe_id, version)
        _PROBES.clear()
        _PROBES[key] = probe
    return _PROBES[key]


# ------------------------------------------------------------------ the work


@dataclass(frozen=True)
class WeightedShard:
    """One shard's figures as a task returns them (its rows are written, not returned).

    Attributes:
        shard: The shard.
        rows: ``sample_weights`` rows written (its kept images).
        stats: Its :data:`~curation_assets.lib.tables.WEIGHT_SHARD_STATS` row.
        counts: Its :data:`~curation_assets.lib.tables.AUDIT_SHARD_COUNTS` rows.
    """

    shard: str
    rows: int
    stats: dict[str, Any]
    counts: pl.DataFrame


@dataclass(frozen=True)
class WeightsTaskOutcome:
    """What one :class:`WeightShardWork` task did: its shards, in key order, and its time."""

    shards: tuple[WeightedShard, ...]
    seconds: float


@dataclass(frozen=True)
class WeightShardWork:
    """Score the shards of one key and write their ``sample_weights`` rows (any process).

    Attributes:
        root_uri: Delta root.
        storage_options: Its storage options (the step's effective ones).
        probe_id: The probe scoring the rows.
        probes_version: The ``weight_probes`` version holding it.
        scale: The run's normaliser.
        correct_for: ``filter`` or ``filter_and_dedup`` (which rows are the reference).
        w_min: Lower weight bound.
        w_max: Upper weight bound.
        batch_size: Rows scored at once (``batch_size · d · 8`` bytes).
        keywords: Extra caption keywords for the audit.
        concepts: Zero-shot concepts for the audit (with ``text_encoder``).
        text_encoder: The concept prompts' embeddings, or None (no concepts).
        uniqueness: The uniqueness term, or None (off).
        groups: Key → the shards scored under it (the local engine's groups); a key not in
            it is one shard.
        store: The step's store, in the step's own process only (not pickled).
        probe: The step's probe object, in the step's own process only (not pickled).
    """

    root_uri: str
    storage_options: dict[str, str]
    probe_id: str
    probes_version: int | None
    scale: float
    correct_for: str
    w_min: float
    w_max: float
    batch_size: int
    keywords: tuple[str, ...] = ()
    concepts: dict[str, str] = field(default_factory=dict)
    text_encoder: FrozenTextEncoder | None = None
    uniqueness: UniquenessTerm | None = None
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    store: DeltaStore | None = field(default=None, repr=False, compare=False)
    probe: SampledProbe | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        """The fields without the step's store and probe (a task opens and loads its own)."""
        return {**self.__dict__, "store": None, "probe": None}

    def shards(self, key: str) -> list[str]:
        """The shards of ``key``."""
        return list(self.groups.get(key, (key,)))

    def __call__(self, key: str, progress: Callable[[str], None]) -> WeightsTaskOutcome:
        """Score and write the shards of ``key``; memory: their rows (module docstring)."""
        t0 = time.perf_counter()
        store = (
            self.store
            if self.store is not None
            else DeltaStore(self.root_uri, self.storage_options)
        )
        probe = self.probe
        if probe is None or probe.probe_id != self.probe_id:
            probe = probe_at(store, self.probe_id, self.probes_version)
        shards = self.shards(key)
        scores = read_uniqueness(store, shards) if self.uniqueness is not None else {}
        done: list[WeightedShard] = []
        read = read_shards(store, shards, self.correct_for)
        trim_heap()  # the reads' buffers: not held while the shards are scored
        for shard, (frame, x, model_id) in read.items():
            scored = score_shard(
                shard,
                frame,
                x,
                probe.model,
                model_id=model_id,
                probe_id=probe.probe_id,
                train_folds=probe.train_folds,
                scale=self.scale,
                w_min=self.w_min,
                w_max=self.w_max,
                batch_size=self.batch_size,
                keywords=self.keywords,
                concepts=self.concepts,
                text_encoder=self.text_encoder,
                uniqueness=self.uniqueness,
                uniqueness_scores=scores.get(shard),
            )
            store.replace_shard(SAMPLE_WEIGHTS, shard, scored.weights)
            done.append(WeightedShard(shard, scored.weights.height, scored.stats, scored.counts))
        del read
        trim_heap()
        seconds = time.perf_counter() - t0
        rows = sum(s.rows for s in done)
        progress(f"weighted {rows} kept images of {len(done)} shard(s) in {seconds:.2f}s")
        return WeightsTaskOutcome(tuple(done), seconds)


def scoring_work(
    store: DeltaStore,
    probe: SampledProbe,
    scale: float,
    settings: Mapping[str, Any],
    *,
    batch_size: int,
    text_encoder: TextEncoder | None,
    uniqueness: UniquenessTerm | None,
) -> WeightShardWork:
    """The run's :class:`WeightShardWork` (``probe`` must be in ``weight_probes``).

    ``text_encoder`` is frozen for the configured concepts (:func:`freeze_encoder`) unless it
    is already.
    """
    concepts = dict(settings["concepts"])
    encoder: FrozenTextEncoder | None = None
    if isinstance(text_encoder, FrozenTextEncoder):
        encoder = text_encoder
    elif text_encoder is not None and concepts:
        encoder = freeze_encoder(text_encoder, concepts)
    return WeightShardWork(
        root_uri=store.root_uri,
        storage_options=dict(store.storage_options),
        probe_id=probe.probe_id,
        probes_version=store.version(WEIGHT_PROBES.name),
        scale=scale,
        correct_for=settings["correct_for"],
        w_min=settings["w_min"],
        w_max=settings["w_max"],
        batch_size=batch_size,
        keywords=tuple(settings["keywords"]),
        concepts=concepts,
        text_encoder=encoder if concepts else None,
        uniqueness=uniqueness,
        store=store,
        probe=probe,
    )


# ------------------------------------------------------------------ the dispatch


@dataclass
class TaskTally:
    """Where a run's scoring tasks ran.

    Attributes:
        engine: ``local`` or ``ray``.
        tasks: Tasks run (keys: shards on Ray, groups of shards locally).
        per_node: Ray node id → tasks it ran (empty locally).
        seconds: Summed wall time of the tasks.
    """

    engine: str = LOCAL
    tasks: int = 0
    per_node: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, results: Iterable[ShardResult[WeightsTaskOutcome]]) -> None:
        """Count ``results``."""
        for result in results:
            self.engine = result.engine
            self.tasks += 1
            self.seconds += result.seconds
            if result.node_id is not None:
                self.per_node[result.node_id] += 1

    def metadata(self) -> dict[str, Any]:
        """The tasks as asset metadata (plain values).

        ``score_engine``, ``score_tasks``, ``score_task_seconds``; on Ray also
        ``score_ray_nodes`` and ``score_tasks_per_node`` (node id → tasks).
        """
        out: dict[str, Any] = {
            "score_engine": self.engine,
            "score_tasks": self.tasks,
            "score_task_seconds": round(self.seconds, 3),
        }
        if self.per_node:
            out["score_ray_nodes"] = len(self.per_node)
            out["score_tasks_per_node"] = dict(sorted(self.per_node.items()))
        return out


def score_on_engine(
    store: DeltaStore,
    shards: Sequence[str],
    work: WeightShardWork,
    engine: LocalEngine | RayEngine,
    *,
    group_rows: int,
    tally: TaskTally,
) -> tuple[list[dict[str, Any]], list[pl.DataFrame]]:
    """Score and write ``shards`` on ``engine``; their stats rows and counts, in ``shards`` order.

    Args:
        store: Delta store (plans the local engine's groups from per-shard counts).
        shards: The shards to score.
        work: The run's work (:func:`scoring_work`).
        engine: Where the tasks run.
        group_rows: The local engine's group size in rows
            (:func:`~curation_assets.lib.memory.shard_batches`); on Ray each shard is its own
            task.
        tally: Counts the tasks (where they ran).

    Raises:
        Exception: A task's error, once the tasks running beside it finished (their shards'
            rows are written; the commit is not, so the next run redoes the stage's work).
    """
    if not shards:
        return [], []
    tally.engine = engine.name
    if engine.name == LOCAL:
        sizes = shard_sizes(store, work.correct_for, shards)
        by_shard = dict(zip(sizes["shard"], sizes["n_reference"], strict=True))
        groups = shard_batches(by_shard, list(shards), group_rows)
    else:
        groups = [[shard] for shard in shards]
    keyed = {group[0]: tuple(group) for group in groups if len(group) > 1}
    work = replace(work, groups=keyed)

    def heard(key: str, sentence: str) -> None:
        logger.info("weights %s: %s", key, sentence)

    results = list(engine.map_shards(work, [g[0] for g in groups], on_progress=heard))
    tally.add(results)
    by_name = {s.shard: s for r in results for s in r.value.shards}
    missing = [shard for shard in shards if shard not in by_name]
    if missing:  # every task returns each of its shards: a broken engine or work
        msg = f"the weights tasks returned no result for shards {missing[:5]}"
        raise RuntimeError(msg)
    done = [by_name[shard] for shard in shards]
    return [s.stats for s in done], [s.counts for s in done]
