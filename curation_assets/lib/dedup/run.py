"""A dedup run over the Delta tables: plan, lay out, search units, merge, measure, write, commit.

:func:`run_dedup` never holds the corpus: it

1. plans from the Delta log (:func:`~curation_assets.lib.dedup.plan.plan_dedup`): full,
   incremental (the shards whose inputs changed) or current;
2. lays the redone shards out in ``dedup_members``, one shard in memory at a time
   (:mod:`~curation_assets.lib.dedup.layout`);
3. searches (:mod:`~curation_assets.lib.dedup.search`) the work units ``(clustering, bucket)``
   — all when full, each reading one partition, the other clusterings' staged one at a time —
   or, when incremental, the new rows against clustering 0's buckets in one pass
   (:mod:`~curation_assets.lib.dedup.newrows`): one engine task per unit or bucket
   (:mod:`curation_assets.lib.engine`), results merged in unit order;
4. merges the new pairs into the committed pair graph (:mod:`~curation_assets.lib.dedup.merge`):
   memory ∝ pairs;
5. measures pair recall on a sample whose exhaustive search costs at most ``recall_share`` of
   the run's own pair search, pooled with earlier runs on the same centroids.

:func:`~.write.write_dedup` writes the pair graph, the ``deduplicated_images`` rows of the
shards whose decisions changed (per shard: a new shard costs its rows plus the old shards its
pairs reach), the run log, then the commit. An update merges only the components it can change
(:mod:`.localgraph`). Full, incremental and unit-by-unit runs give the same pairs and
decisions (tested).
"""

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from curation_assets.lib.cluster import load_centroids
from curation_assets.lib.commits import input_versions, last_commit
from curation_assets.lib.dedup import io
from curation_assets.lib.dedup.io import DEDUP_STAGE, input_tables
from curation_assets.lib.dedup.keep import DEFAULT_POLICY
from curation_assets.lib.dedup.layout import Layout, choose_layout, lay_out, reset
from curation_assets.lib.dedup.localgraph import (
    LocalGraph,
    local_graph,
    untouched_stats,
    whole_stats,
)
from curation_assets.lib.dedup.merge import Merged, merge
from curation_assets.lib.dedup.newrows import new_rows_cap
from curation_assets.lib.dedup.plan import DedupPlan, committed_version, plan_dedup
from curation_assets.lib.dedup.readyids import ReadyIds
from curation_assets.lib.dedup.sampling import budgeted_recall
from curation_assets.lib.dedup.search import search
from curation_assets.lib.dedup.tau import calibrated_tau
from curation_assets.lib.engine import LocalEngine, RayEngine
from curation_assets.lib.errors import ConfigError
from curation_assets.lib.memory import MemoryBudget, trim_heap
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import (
    DEDUP_MEMBERS,
    DEDUP_RUNS,
    DEDUPLICATED_IMAGES,
    DUPLICATE_MEMBERS,
    DUPLICATE_PAIRS,
    FILTERED_IMAGES,
    N_CLUSTERINGS,
    VERIFIED_PAIRS,
)

if TYPE_CHECKING:
    from curation_assets.lib.dedup.verified import BandVerifier
    from curation_assets.lib.dedup.verify import VerifyParams

logger = logging.getLogger(__name__)


@dataclass
class DedupOutcome:
    """A finished run: what to write and what to report.

    Attributes:
        plan: Full, incremental or current, and why.
        merged: The pair graph with decisions (∝ pairs).
        run: The dedup_runs row (None when current).
        stats: Counts over the whole deduplicated set (images, kept, removed, ...) and this
            run's work (new_rows, units, comparisons, seconds per phase).
        recall: Pooled recall (``recall``, ``stderr``, ``true_pairs``, ``samples``,
            ``queries``), this run's ``sample`` and ``measured_on`` (one sentence).
        pending: Shards waiting (shard, why).
        input_versions: Delta version of every input table when the run started.
        tau: The cosine threshold used.
        layout: The bucketed layout in force.
        write_shards: Shards whose ``deduplicated_images`` rows are written: whole, or patched
            (:func:`written_shards`).
        ready: Ready images of each redone shard (the rows it is written with; their ids
            spilled until the write: :class:`~.readyids.ReadyIds`).
        units: Each searched unit's statistics.
        recommit: A ``current`` run that redid shards whose rows had not changed: only its
            commit is written (new input versions, the same outputs).
        tau_min: The floor the stored pairs reach (the committed one when current).
        verify_key: The band verification in force: its parameters, or ``off``.
        verdicts: ``verified_pairs`` to write (None when verification is off or current).
        policy: The keep policy in force.
        torn: Shards of ``deduplicated_images`` a killed run wrote since the commit (rewritten
            whole, never patched).
        budget: The run's memory budget (it also caps the graph's change rows a reader holds:
            :func:`~.localgraph.write_local_graph`).
    """

    plan: DedupPlan
    merged: Merged
    run: pl.DataFrame | None
    stats: dict[str, Any]
    recall: dict[str, Any]
    pending: pl.DataFrame
    input_versions: dict[str, int | None] = field(default_factory=dict)
    tau: float = float("nan")
    layout: Layout | None = None
    write_shards: list[str] = field(default_factory=list)
    ready: ReadyIds = field(default_factory=ReadyIds, repr=False)
    units: list[dict[str, Any]] = field(default_factory=list, repr=False)
    recommit: bool = False
    tau_min: float = float("nan")
    verify_key: str = "off"
    verdicts: pl.DataFrame | None = field(default=None, repr=False)
    policy: tuple[str, ...] = DEFAULT_POLICY
    torn: frozenset[str] = frozenset()
    budget: MemoryBudget = field(default_factory=MemoryBudget, repr=False)

    @property
    def pairs(self) -> pl.DataFrame:
        """``duplicate_pairs`` rows."""
        return self.merged.pairs

    def written(self) -> tuple[set[str], set[str]]:
        """Of :attr:`write_shards`: the old ones (:func:`written_shards`), and those patched."""
        return written_shards(self.plan, self.write_shards, self.ready, self.torn)

    def patch_rows(self, patched: Iterable[str]) -> pl.DataFrame:
        """The changed ``deduplicated_images`` rows appended for the ``patched`` shards."""
        return patch_rows(self.merged, patched)

    @property
    def members(self) -> pl.DataFrame:
        """``duplicate_members`` rows (every image in a group of two or more)."""
        return self.merged.members


def _centroids(store: DeltaStore, n_clusterings: int) -> tuple[list[str], list[int], int, str]:
    versions, ks, dims, models = [], [], set(), set()
    for c in range(n_clusterings):
        cent = load_centroids(store, c)
        if cent is None:
            msg = f"cluster_centroids_{c} was never materialized; train the centroids first"
            raise ConfigError(msg)
        versions.append(cent.version)
        ks.append(int(cent.matrix.shape[0]))
        dims.add(int(cent.matrix.shape[1]))
        models.add(cent.model_id)
    if len(models) != 1 or len(dims) != 1:
        msg = f"the clusterings were trained on different models {sorted(models)}; retrain them"
        raise ConfigError(msg)
    return versions, ks, dims.pop(), models.pop()


def run_dedup(
    store: DeltaStore,
    *,
    tau: float | None,
    policy: Sequence[str] | None,
    force_full: bool = False,
    tau_min: float | None = None,
    band: float = 0.0,
    verify: "VerifyParams | str | None" = None,
    n_clusterings: int = N_CLUSTERINGS,
    budget: MemoryBudget | None = None,
    recall_share: float = 0.1,
    seed: int = 0,
    block: int = 2048,
    progress: Callable[[str], None] | None = None,
    engine: "LocalEngine | RayEngine | None" = None,
    new_rows: str = "auto",
    local_merge: bool = True,
) -> DedupOutcome:
    """Plan, lay out, search and merge; writes only ``dedup_members`` (see :func:`write_dedup`).

    Args:
        store: Where the tables live.
        tau: Cosine threshold; None = the last committed run's (a retune sticks) when it used
            this embedding model, else :func:`~curation_assets.lib.dedup.calibrated_tau`.
        policy: Keep policy criteria in order; None = the last committed run's (a chosen
            policy sticks), else :data:`~curation_assets.lib.dedup.keep.DEFAULT_POLICY`.
        force_full: Recompute everything even when an incremental run is possible.
        tau_min: Floor of the stored pairs (≤ τ; None = the committed floor when it is ≤ τ and
            the model is the same, else τ − ``band``): units search at τ_min,
            pairs in [τ_min, τ) go to ``candidate_pairs``, so a later τ ≥ the floor is a
            ``retune``.
        band: τ − τ_min when ``tau_min`` is None (0: store no candidate band).
        verify: Verify the band's pairs with local features and let the verified ones join the
            groups (:mod:`~curation_assets.lib.dedup.verified`); None = off; ``"keep"`` = as
            the last committed run (off before any).
        n_clusterings: Clusterings to read.
        budget: Memory budget (sizes the buckets of a full run and the recall reference).
        recall_share: The recall sample's exhaustive search costs at most this share of the
            run's own pair search (at least :data:`RECALL_MIN_QUERIES` queries).
        seed: Seeds the recall sample.
        block: Tile edge of the within-cluster search.
        progress: Called with a line of text as phases finish (the asset logs it).
        engine: Where the units are searched (:mod:`curation_assets.lib.engine`): one task
            per unit; None = this process, one unit at a time.
        new_rows: How an incremental run searches: ``one_pass`` (the new rows against
            clustering 0's buckets, every row read once: :mod:`.newrows`; it holds every new
            row, whatever the budget), ``units`` (every (clustering, bucket) unit the new rows
            fall in) or ``auto`` (one pass when the new rows fit a quarter of the budget, else
            units). The pairs are the same.
        local_merge: An update merges only the components it can change
            (:mod:`.localgraph`) when τ, τ_min, the policy and the band verification (off)
            are the committed ones; False re-merges the whole graph (the same tables).

    Returns:
        A :class:`DedupOutcome`.

    Memory: one shard (layout), one bucket (search), the pairs and their rows (merge), the
    recall reference (≤ a quarter of the budget): never the corpus.
    """
    say = progress or (lambda line: logger.info("%s", line))
    if new_rows not in ("auto", "one_pass", "units"):
        raise ConfigError(f"new_rows={new_rows!r}: expected 'auto', 'one_pass' or 'units'")
    budget = budget or MemoryBudget()
    t0 = time.perf_counter()
    read_versions = input_versions(store, input_tables(n_clusterings))
    versions, ks, dim, model_id = _centroids(store, n_clusterings)
    last = last_commit(store, DEDUP_STAGE)
    config = last.config if last is not None else {}
    tau, floor = _thresholds(config, model_id, tau, tau_min, band)
    verify = _resolve_verify(config, verify)
    verify_key = _verify_key(verify)
    policy = _policy(config, policy)
    plan = plan_dedup(
        store,
        tau=tau,
        policy=policy,
        model_id=model_id,
        versions=versions,
        force_full=force_full,
        tau_min=floor,
        verify=verify_key,
    )
    if plan.mode == "current":
        return _current(store, plan, read_versions, tau, policy)
    say(f"dedup plan: {plan.mode} ({plan.reason})")
    full = plan.mode == "full"
    if full:
        n_rows = sum(store.shard_row_counts(FILTERED_IMAGES.name).values())
        layout = choose_layout(n_rows, dim, ks, budget)
        reset(store)
    else:
        assert plan.layout is not None
        layout = plan.layout
    # 1. lay out the redone shards (an incremental run keeps their rows for the one-pass search)
    t_layout = time.perf_counter()
    keep = {"units": 0, "one_pass": 2**62}.get(new_rows) if not full else 0
    if keep is None:  # auto
        keep = new_rows_cap(budget)
    laid = lay_out(
        store,
        sorted(plan.redo),
        versions,
        model_id,
        layout,
        max_bytes=budget.bytes // 16,
        keep_bytes=keep,
    )
    trim_heap()  # each phase's freed C heap goes back to the OS: peaks do not stack
    ready, waiting = laid.ready, laid.waiting
    pending = sorted(waiting.items())
    say(
        f"laid out {len(ready)} shards ({ready.total} images) in "
        f"{time.perf_counter() - t_layout:.1f}s; {len(pending)} waiting"
    )
    # 2. search: every unit (full), or the new rows in one pass (else the units they touched)
    t_search = time.perf_counter()
    engine = engine or LocalEngine()
    found = search(
        store,
        layout,
        laid,
        floor,
        full=full,
        block=block,
        version=io.table_version(store, DEDUP_MEMBERS),
        engine=engine,
        budget=budget,
        say=say,
    )
    results, keys, comparisons = found.results, found.keys, found.comparisons
    say(
        f"searched {len(keys)} {'buckets (new rows)' if found.how == 'new_rows' else 'units'} "
        f"({comparisons:,} comparisons) in {time.perf_counter() - t_search:.1f}s"
    )
    trim_heap()
    # 3. merge
    t_merge = time.perf_counter()
    same_tau = (config.get("tau"), _floor(config), config.get("verify", "off")) == (
        tau,
        floor,
        verify_key,
    )
    local = (
        local_graph(store, plan.commit.outputs, plan.redo, [r.pairs for r in results])
        if local_merge
        and plan.mode == "incremental"
        and plan.commit is not None
        and not plan.torn
        and same_tau
        and verify_key == "off"
        and config.get("policy") == ",".join(policy)
        else None
    )
    old_pairs, old_members = (
        (local.pairs, local.members) if local is not None else _committed_graph(store, plan)
    )
    verifier = _verifier(store, verify, budget)
    merged = merge(
        old_pairs,
        old_members,
        [r.pairs for r in results],
        [r.endpoints for r in results],
        redone=plan.redo,
        policy=policy,
        tau=tau,
        n_clusterings=n_clusterings,
        floor=floor,
        promote=verifier,
        vectors=io.committed_vectors(store, _graph_outputs(plan)),
    )
    if local is not None:  # the whole graph's figures: the untouched part's and the subgraph's
        untouched = untouched_stats(store, local, tau, n_clusterings)
        stats = whole_stats(untouched, merged.stats)
        stats["graph_members"] = untouched["members"] + merged.members.height
        merged = replace(merged, stats=stats, local=local)
    seconds_merge = time.perf_counter() - t_merge
    # 4. what to rewrite, and the totals
    covered = set(plan.covered) - plan.redo | set(ready)
    counts = (
        store.shard_row_counts(
            DEDUPLICATED_IMAGES.name, committed_version(plan, DEDUPLICATED_IMAGES)
        )
        if plan.mode != "full"
        else {}
    )
    images = sum(counts.get(s, 0) for s in covered - set(ready)) + ready.total
    write = set(plan.redo) | (merged.changed_shards & covered)
    if full:
        write |= set(store.shard_files(DEDUPLICATED_IMAGES.name))
    torn = (  # shards a killed run wrote since the commit
        store.changed_shards(
            DEDUPLICATED_IMAGES.name, plan.commit.outputs[DEDUPLICATED_IMAGES.name]
        )
        if DEDUPLICATED_IMAGES.name in plan.torn and plan.commit is not None
        else set()
    )
    write |= torn
    n_new = ready.total
    seconds = time.perf_counter() - t0
    if (
        plan.mode == "incremental"
        and same_tau
        and _unchanged(store, plan, ready, waiting, merged, old_pairs)
    ):
        # e.g. a second instance re-ingested the same shards: files changed, rows did not
        return replace(
            _current(store, plan, read_versions, tau, policy, (old_pairs, old_members), local),
            plan=replace(
                plan,
                mode="current",
                reason=f"{len(plan.redo)} shards were rewritten upstream with the same rows: "
                "nothing changed (the commit records the new input versions)",
            ),
            recommit=True,
        )
    del old_pairs, old_members  # the merged graph replaces them
    trim_heap()
    # 5. recall on a budget
    t_recall = time.perf_counter()
    recall = budgeted_recall(
        store,
        plan,
        ready,
        covered,
        counts,
        versions=versions,
        tau=tau,
        comparisons=comparisons,
        share=recall_share,
        budget=budget,
        dim=dim,
        seed=seed,
    )
    stats = {
        **merged.stats,
        "images": images,
        "kept": images - int(merged.stats["removed"]),
        "new_rows": n_new,
        "units": len(keys),
        "units_total": layout.buckets[0] if found.how == "new_rows" else len(layout.units()),
        "search": found.how,
        "buckets": list(layout.buckets),
        "comparisons": comparisons,
        "largest_unit_rows": max((int(r.stats.get("rows", 0)) for r in results), default=0),
        "staged_rows": found.staged_rows,
        "seconds_staging": round(found.seconds_staging, 3),
        "seconds_layout": round(t_search - t_layout, 3),
        "seconds_search": round(t_merge - t_search, 3),
        "seconds_merge": round(seconds_merge, 3),
        "seconds_recall": round(time.perf_counter() - t_recall, 3),
        "seconds": round(seconds, 3),
        **_written(plan, write, ready, torn, merged),
        "engine": engine.name,
        "unit_nodes": len(found.nodes),
        **(verifier.stats if verifier is not None else {}),
    }
    run = pl.DataFrame(
        {
            "run_at": [datetime.now(UTC)],
            "mode": plan.mode,
            "reason": plan.reason,
            "tau": tau,
            "tau_min": floor,
            "policy": ",".join(policy),
            "centroids_versions": ",".join(versions),
            "model_id": model_id,
            "images": images,
            "new_images": n_new,
            "pairs": int(merged.stats["pairs"]),
            "removed": int(merged.stats["removed"]),
            "previously_kept_now_removed": int(merged.stats["previously_kept_now_removed"]),
            "recall": json.dumps(recall["recall"]),
            "seconds": float(seconds),
            "units": len(keys),
            # timings stay out of the table: a re-run after a kill must write the same rows
            "recall_sample": json.dumps(
                {k: v for k, v in recall["sample"].items() if not k.startswith("seconds")}
            ),
        },
        schema=DEDUP_RUNS.schema,
    )
    return DedupOutcome(
        plan,
        merged,
        run,
        stats,
        recall,
        pl.DataFrame(pending, schema={"shard": pl.String, "why": pl.String}, orient="row"),
        read_versions,
        tau,
        layout,
        sorted(write),
        ready,
        [{"clustering": r.clustering, "bucket": r.bucket, **r.stats} for r in results],
        tau_min=floor,
        verify_key=verify_key,
        verdicts=verifier.table(merged.stored) if verifier is not None else None,
        policy=policy,
        torn=frozenset(torn),
        budget=budget,
    )


def _resolve_verify(
    last: dict[str, Any], verify: "VerifyParams | str | None"
) -> "VerifyParams | None":
    """``"keep"``: the parameters the last committed run (``last``: its config) verified with."""
    if not isinstance(verify, str):
        return verify
    if verify != "keep":
        raise ConfigError(f"verify={verify!r}: expected VerifyParams, None or 'keep'")
    key = last.get("verify", "off")
    if key == "off":
        return None
    from curation_assets.lib.dedup.verified import params_from_key

    return params_from_key(key)


def _verify_key(verify: "VerifyParams | None") -> str:
    if verify is None:
        return "off"
    from curation_assets.lib.dedup.verified import params_key  # imports OpenCV: only when on

    return params_key(verify)


def _verifier(
    store: DeltaStore, verify: "VerifyParams | None", budget: MemoryBudget
) -> "BandVerifier | None":
    """The band verifier with the cached verdicts (None when verification is off)."""
    if verify is None:
        return None
    from curation_assets.lib.dedup.verified import BandVerifier

    cached = store.read(VERIFIED_PAIRS) if store.version(VERIFIED_PAIRS.name) is not None else None
    return BandVerifier(store, verify, budget=budget, cached=cached)


def _policy(last: dict[str, Any], policy: Sequence[str] | None) -> tuple[str, ...]:
    """The keep policy of this run: as given, else the last commit's (``last``: its config)."""
    if policy is not None:
        return tuple(policy)
    recorded = last.get("policy")
    return tuple(recorded.split(",")) if recorded else DEFAULT_POLICY


def _thresholds(
    config: dict[str, Any], model_id: str, tau: float | None, tau_min: float | None, band: float
) -> tuple[float, float]:
    """τ and τ_min of this run: as given, else the last commit's, else calibrated − ``band``.

    ``config`` is the last commit's configuration; it counts only for the same embedding model.
    """
    last = config if config.get("model_id") == model_id else {}
    if tau is None:
        tau = float(last["tau"]) if "tau" in last else calibrated_tau(model_id)
    floor = _floor(last)
    if tau_min is None:
        tau_min = floor if floor is not None and floor <= tau else tau - band
    tau_min = round(float(tau_min), 6)
    if not 0.0 < tau_min <= tau:
        raise ConfigError(f"tau_min = {tau_min} must be in (0, τ = {tau}]")
    return float(tau), tau_min


def _floor(config: dict[str, Any]) -> float | None:
    """The τ_min a commit stored pairs down to (commits before τ_min: their τ)."""
    return config.get("tau_min", config.get("tau"))


def _unchanged(
    store: DeltaStore,
    plan: DedupPlan,
    ready: ReadyIds,
    waiting: dict[str, str],
    merged: Merged,
    old_pairs: pl.DataFrame,
) -> bool:
    """Whether redoing ``plan.redo`` left every output as committed (rows, pairs, decisions)."""
    if plan.torn or merged.changed_shards or set(waiting) & plan.covered:
        return False
    if set(ready) - plan.covered or (plan.redo & plan.covered) - set(ready):
        return False  # a shard arrived, or a covered one has no ready row any more
    redone = sorted(set(ready))
    if redone:
        old = store.read(
            DEDUPLICATED_IMAGES,
            shards=redone,
            columns=["image_id", "shard"],
            version=committed_version(plan, DEDUPLICATED_IMAGES),
        )
        before = {s: sorted(g["image_id"].to_list()) for (s,), g in old.group_by("shard")}
        now = ready.ids(redone)
        if any(before.get(s) != now[s].to_list() for s in redone):
            return False
    return merged.stored.equals(old_pairs.sort("image_id_a", "image_id_b"))


def _committed_graph(store: DeltaStore, plan: DedupPlan) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`.io.committed_graph` of the plan's commit (empty for a full run)."""
    return io.committed_graph(store, _graph_outputs(plan))


def _graph_outputs(plan: DedupPlan) -> dict[str, int] | None:
    """The outputs of the commit a run builds on (None for a full run: it builds anew)."""
    return None if plan.mode == "full" or plan.commit is None else plan.commit.outputs


def _current(
    store: DeltaStore,
    plan: DedupPlan,
    read_versions: dict[str, int | None],
    tau: float,
    policy: tuple[str, ...],
    graph: tuple[pl.DataFrame, pl.DataFrame] | None = None,
    local: LocalGraph | None = None,
) -> DedupOutcome:
    """The committed state as an outcome: nothing to write.

    ``graph``: the committed pairs and members when the caller has read them already (the
    affected subgraph's when ``local``). Without one the graph is not read: nothing was
    re-decided (an empty ``local``), and the figures are the commit's.
    """
    assert plan.commit is not None
    if graph is None:
        stored, members = DUPLICATE_PAIRS.empty(), DUPLICATE_MEMBERS.empty()
        local = LocalGraph(stored, members, pl.Series("component_id", [], pl.String), {})
    else:
        stored, members = graph
    strong = pl.col("similarity") >= tau
    summary = plan.commit.summary
    stats = {**summary.get("stats", {}), "new_rows": 0, "previously_kept_now_removed": 0}
    stats.setdefault("images", summary.get("images", 0))
    pending = store.shard_files(FILTERED_IMAGES.name).keys() - plan.covered
    return DedupOutcome(
        plan,
        Merged(stored.filter(strong), members, set(), stats, stored.filter(~strong), local=local),
        None,
        stats,
        summary.get("recall", {"recall": [], "stderr": [], "true_pairs": 0, "sample": {}}),
        pl.DataFrame(
            [(s, "not deduplicated yet (waiting for its cluster assignments)") for s in pending],
            schema={"shard": pl.String, "why": pl.String},
            orient="row",
        ),
        read_versions,
        tau,
        plan.layout,
        tau_min=float(_floor(plan.commit.config) or tau),
        verify_key=plan.commit.config.get("verify", "off"),
        policy=policy,
    )


def written_shards(
    plan: DedupPlan, write: Iterable[str], ready: Iterable[str], torn: Iterable[str]
) -> tuple[set[str], set[str]]:
    """Of ``write``: the old shards (covered, neither new nor redone), and those patched.

    An old shard whose images' decisions changed (a new image duplicates one of them) gets its
    changed rows appended (merge-on-read, :mod:`~curation_assets.lib.revisions`), unless a
    killed run wrote it since the commit (``torn``: rewritten whole with its committed images).
    A full run rewrites every shard whole: neither set.
    """
    if plan.mode == "full":
        return set(), set()
    old = set(write) - set(plan.redo) - set(ready)
    return old, old - set(torn)


def patch_rows(merged: Merged, patched: Iterable[str]) -> pl.DataFrame:
    """The changed ``deduplicated_images`` rows appended for the ``patched`` shards."""
    return merged.changes.filter(pl.col("shard").is_in(sorted(patched)))


def _written(
    plan: DedupPlan, write: set[str], ready: ReadyIds, torn: set[str], merged: Merged
) -> dict[str, int]:
    """How the ``deduplicated_images`` shards were written: whole, or patched (and its rows)."""
    _, patch = written_shards(plan, write, ready, torn)
    return {
        "rewritten_shards": len(write - patch),
        "patched_shards": len(patch),
        "patched_rows": patch_rows(merged, patch).height,
    }
