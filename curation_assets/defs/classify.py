"""Classify stage: labels → safety_classifiers (+ label_queue) → classifier_scores per shard."""

from datetime import UTC, datetime
from typing import Any

import dagster as dg
from pydantic import Field

from curation_assets.defs.automation import eager_on
from curation_assets.defs.metadata import (
    check_result,
    markdown_preview,
    table_metadata,
    table_schema,
)
from curation_assets.defs.partitions import (
    ShardLoop,
    ShardReport,
    shard_backfill_policy,
    shard_reader,
    shards_partitions,
)
from curation_assets.defs.resources import (
    Categories,
    Compute,
    DeltaStorage,
    Engine,
    ImageEmbedder,
    ShardSource,
)
from curation_assets.defs.retries import fail_fast, transient_retry
from curation_assets.lib.classify import (
    Probe,
    ScoreOutcome,
    ScoreShardWork,
    build_label_queues,
    classifier_checks,
    classifiers_table,
    current_labels,
    embedding_model,
    labelled_embeddings,
    pr_curve_markdown,
    queue_reasons,
    read_classifiers,
    text_encoder_for,
    train_classifiers,
)
from curation_assets.lib.classify.heads import load_head
from curation_assets.lib.classify.pool import candidate_pool, check_labelled_fit, pool_rows_for
from curation_assets.lib.commits import record_settings, recorded_settings, settings_in_force
from curation_assets.lib.tables import (
    CLASSIFIER_SCORES,
    LABEL_QUEUE,
    LABELS,
    SAFETY_CLASSIFIERS,
)

GROUP = "classify"

labels = dg.AssetSpec(
    "labels",
    description=(
        "Human labels (image_id, category, 0/1). Appended by `curation labels import FILE` "
        "(CSV or Label Studio export); the next safety_classifiers materialization retrains."
    ),
    group_name=GROUP,
    kinds={"deltalake"},
    metadata={"dagster/column_schema": table_schema(LABELS)},
)


class ClassifierConfig(dg.Config):
    """Training of the per-category linear probes."""

    n_splits: int = Field(default=5, description="Folds of the repeated stratified k-fold.")
    n_repeats: int = Field(default=3, description="Repeats of the k-fold (out-of-fold scores).")
    seed: int = Field(default=0, description="Seed of the folds.")
    C: float = Field(default=1.0, description="Inverse L2 strength of the logistic regression.")
    min_positives: int = Field(
        default=20, description="Fewer positives → zero-shot prompts (text tower) or skipped."
    )


@dg.asset(
    description=(
        "One classifier per category of the spec: a logistic-regression probe on CLIP-space "
        "embeddings of the labelled images, with the threshold chosen as the highest score that "
        "keeps out-of-fold recall ≥ the category's target (favouring recall). Too few labels → "
        "zero-shot prompt scores when the embedder has a text tower, else skipped (WARN)."
    ),
    deps=["labels", "image_embeddings"],
    kinds={"deltalake", "scikitlearn"},
    automation_condition=eager_on("labels"),
    group_name=GROUP,
    metadata={"dagster/column_schema": table_schema(SAFETY_CLASSIFIERS)},
    check_specs=[
        dg.AssetCheckSpec(
            "every_category_has_a_classifier",
            asset="safety_classifiers",
            description="WARN when a category was skipped or scores without filtering.",
        ),
        dg.AssetCheckSpec(
            "recall_target_met",
            asset="safety_classifiers",
            description="Each probe's out-of-fold recall at its threshold ≥ its target.",
        ),
    ],
    retry_policy=transient_retry,
)
@fail_fast
def safety_classifiers(
    context: dg.AssetExecutionContext,
    config: ClassifierConfig,
    delta: DeltaStorage,
    categories: Categories,
    embedder: ImageEmbedder,
    compute: Compute,
) -> dg.MaterializeResult:
    """Train (or fall back for) every category and store the classifiers as JSON rows.

    Reads only the labelled images' embeddings, from their shards. Memory: the labelled rows
    (checked against ``compute``'s budget before they are read).
    """
    store = delta.store()
    specs = categories.load()
    lab = current_labels(store.read(LABELS))
    labelled_ids = lab["image_id"].unique().to_list()
    check_labelled_fit(store, compute.budget(), len(labelled_ids))
    emb = labelled_embeddings(store, labelled_ids)
    model_id, dim = embedding_model(store, emb)
    text_encoder = text_encoder_for(specs, embedder.load)
    now = datetime.now(UTC)
    results = train_classifiers(
        specs,
        lab,
        emb,
        model_id=model_id,
        dim=dim,
        text_encoder=text_encoder,
        min_positives=config.min_positives,
        n_splits=config.n_splits,
        n_repeats=config.n_repeats,
        seed=config.seed,
        C=config.C,
    )
    for result in results:
        for warning in result.warnings:
            context.log.warning(f"{result.category}: {warning}")
        context.log.info(f"{result.category}: {result.status} — {result.reason}")
    table = classifiers_table(specs, results, model_id=model_id, dim=dim, trained_at=now)
    store.replace_table(SAFETY_CLASSIFIERS, table)
    checks = classifier_checks(results)
    curves = {
        r.category: dg.MetadataValue.md(pr_curve_markdown(r.classifier))
        for r in results
        if isinstance(r.classifier, Probe)
    }
    return dg.MaterializeResult(
        metadata=table_metadata(
            SAFETY_CLASSIFIERS,
            delta.uri(SAFETY_CLASSIFIERS),
            table.height,
            model_id=model_id,
            seed=config.seed,
            summary=markdown_preview(
                table.drop("classifier_json", "trained_at", "model_id", "dim"), limit=50
            ),
            **{f"precision_recall_{k}": v for k, v in curves.items()},
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name="every_category_has_a_classifier",
                passed=not checks.not_filtering,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"not_filtering": ", ".join(checks.not_filtering) or "none"},
            ),
            dg.AssetCheckResult(
                check_name="recall_target_met",
                passed=not checks.below_target,
                metadata={"below_target": ", ".join(checks.below_target) or "none"},
            ),
        ],
    )


class LabelQueueConfig(dg.Config):
    """The candidate pool active learning ranks."""

    seed: int = Field(default=0, description="Seed of the pool: shard order and subsample.")
    max_pool: int = Field(
        default=0,
        description="Cap on sampled candidates; 0 = as many as half of the compute resource's "
        "memory budget holds (about 16·dim + 160 bytes each).",
    )


@dg.asset(
    description=(
        "Active learning: per category, the unlabelled nearest neighbours of hard positives "
        "(positives cross-validation keeps scoring low) and the unlabelled images scored nearest "
        "the threshold, ranked, each with its reason. Candidates come from a seeded sample of "
        "shards sized by the memory budget, plus every labelled image (pool size in metadata). "
        "Export with `curation labels export-queue`, label, import, re-materialize."
    ),
    deps=["safety_classifiers", "image_embeddings", "labels"],
    kinds={"deltalake", "faiss"},
    automation_condition=eager_on("safety_classifiers"),
    group_name=GROUP,
    metadata={"dagster/column_schema": table_schema(LABEL_QUEUE)},
    retry_policy=transient_retry,
)
@fail_fast
def label_queue(
    context: dg.AssetExecutionContext,
    config: LabelQueueConfig,
    delta: DeltaStorage,
    compute: Compute,
) -> dg.MaterializeResult:
    """Build the queue from a bounded candidate pool, the labels and the classifiers.

    Memory: the pool, at most half of ``compute``'s budget (``pool_rows_for``: 16·dim + 160
    bytes per candidate) plus the labelled images' rows; rows read ≈ the pool + one shard.
    """
    store = delta.store()
    table = store.read(SAFETY_CLASSIFIERS)
    classifiers = read_classifiers(table)
    labels = current_labels(store.read(LABELS))
    pool_figures: dict = {"pool_rows": 0}
    queue = LABEL_QUEUE.empty()
    if classifiers:
        dim = int(table.drop_nulls("classifier_json")["dim"].max())  # type: ignore[arg-type]
        pool = candidate_pool(
            store,
            labels["image_id"].unique().to_list(),
            max_rows=pool_rows_for(compute.budget(), dim, config.max_pool),
            seed=config.seed,
        )
        pool_figures = pool.summary()
        queue = build_label_queues(pool.x, pool.ids, labels, classifiers)
    store.replace_table(LABEL_QUEUE, queue)
    reasons = queue_reasons(queue)
    context.log.info(
        f"label_queue: {queue.height} images queued {reasons} from a pool of "
        f"{pool_figures['pool_rows']} candidates"
    )
    return dg.MaterializeResult(
        metadata=table_metadata(
            LABEL_QUEUE,
            delta.uri(LABEL_QUEUE),
            queue.height,
            by_reason=dg.MetadataValue.json(reasons),
            pool_rows=pool_figures["pool_rows"],
            pool=dg.MetadataValue.json(pool_figures),
            memory_budget_mb=compute.memory_budget_mb,
            preview=markdown_preview(queue),
        )
    )


class ScoreConfig(dg.Config):
    """Which pretrained scorers add columns beside the trained classifiers.

    The scorers, their thresholds and the heads are sticky: unset, a run uses those last in
    force (``stage_settings``), so every later shard, automated ones included, is scored
    (and filtered) the same way.
    """

    pretrained_scorers: list[str] | None = Field(
        default=None,
        description="Pretrained image scorers to run (e.g. ['nsfw'], needs the nsfw extra). "
        "They add scores; they filter only with a threshold. Unset = as in force (none on the "
        "first run); [] = none.",
    )
    pretrained_thresholds: dict[str, float] | None = Field(
        default=None,
        description="Optional threshold per pretrained scorer name. Unset = as in force.",
    )
    batch_size: int = Field(default=32, description="Images per pretrained-scorer batch.")
    embedding_heads: list[str] | None = Field(
        default=None,
        description="Safetensors files of MLP heads over the stored embeddings (e.g. LAION's "
        "aesthetic predictor converted to safetensors; the README says how). Each adds a score "
        "named by its metadata; a threshold in pretrained_thresholds makes it filter. A head "
        "trained on another embedding model or dimension is refused. Unset = as in force.",
    )


SCORE_STAGE = "score"
SCORE_DEFAULTS: dict[str, Any] = {
    "pretrained_scorers": [],
    "pretrained_thresholds": {},
    "embedding_heads": [],
}
"""The scoring stage's sticky settings and their first-run values."""


@dg.asset(
    description=(
        "Per shard, one score per image and classifier (long format: image_id, category, "
        "score, threshold), plus pretrained scorers such as open_nsfw and MLP heads over the "
        "embeddings (e.g. an aesthetic predictor) when configured."
    ),
    partitions_def=shards_partitions,
    deps=["image_embeddings", "safety_classifiers"],
    kinds={"deltalake", "polars"},
    group_name=GROUP,
    retry_policy=transient_retry,
    backfill_policy=shard_backfill_policy,
    metadata={"dagster/column_schema": table_schema(CLASSIFIER_SCORES)},
    check_specs=[
        dg.AssetCheckSpec(
            "classifiers_available",
            asset="classifier_scores",
            description="WARN while no classifier exists: nothing is filtered yet.",
        ),
        dg.AssetCheckSpec(
            "one_finite_score_per_image_and_classifier",
            asset="classifier_scores",
            blocking=True,
            description="Every embedded image has exactly one score in [0, 1] per scorer.",
        ),
    ],
)
@fail_fast
def classifier_scores(
    context: dg.AssetExecutionContext,
    config: ScoreConfig,
    delta: DeltaStorage,
    shard_source: ShardSource,
    engine: Engine,
):
    """Score each shard's embeddings with the classifiers in force (read once per run).

    Each shard is one task of the ``engine`` (this process, or a Ray cluster).
    """
    store = delta.store()
    in_force = settings_in_force(
        config.model_dump(), recorded_settings(store, SCORE_STAGE), SCORE_DEFAULTS
    )
    chosen = in_force.chosen
    context.log.info(f"scoring settings: {in_force.describe()}")
    classifiers = read_classifiers(store.read(SAFETY_CLASSIFIERS))
    heads = [load_head(path) for path in chosen["embedding_heads"]]  # errors before any shard
    names = [c.category for c in classifiers] + list(chosen["pretrained_scorers"])
    scorers = ", ".join(names + [h.model_id for h in heads]) or "none"
    work = ScoreShardWork(
        root_uri=delta.root_uri,
        storage_options=delta.task_options(),
        source=shard_reader(shard_source),
        classifiers=tuple(classifiers),
        heads=tuple(heads),
        pretrained_scorers=tuple(chosen["pretrained_scorers"]),
        thresholds=dict(chosen["pretrained_thresholds"]),
        batch_size=config.batch_size,
    )
    shards = ShardLoop(context, ["classifier_scores"])

    def report(key: str, out: ScoreOutcome) -> ShardReport:
        metadata = table_metadata(
            CLASSIFIER_SCORES,
            delta.uri(CLASSIFIER_SCORES),
            out.rows,
            scorers=scorers,
            mean_score=dg.MetadataValue.json(out.mean_scores),
        )
        return {"classifier_scores": metadata}, [check_result(c) for c in out.checks]

    yield from shards.run_on(engine.engine(), work, report)
    record_settings(store, SCORE_STAGE, chosen)


classifiers_job = dg.define_asset_job(
    name="classifiers_job",
    selection=["safety_classifiers", "label_queue"],
    description="Retrain the safety classifiers from the labels and rebuild the label queue.",
)

defs = dg.Definitions(
    assets=[labels, safety_classifiers, label_queue, classifier_scores],
    jobs=[classifiers_job],
)
