"""Classify and filter stage: labels → safety_classifiers (+ label_queue) → scores → filter."""

from datetime import UTC, datetime

import dagster as dg
import numpy as np
import polars as pl
from pydantic import Field

from curation_assets.defs.automation import eager_on, updated_on
from curation_assets.defs.metadata import markdown_preview, table_metadata, table_schema
from curation_assets.defs.partitions import shards_partitions
from curation_assets.defs.resources import Categories, DeltaStorage, ImageEmbedder, ShardSource
from curation_assets.defs.retries import fail_fast_on_permanent_errors, transient_retry
from curation_assets.lib.classify import (
    LABEL_QUEUE,
    LABELS,
    Probe,
    build_label_queue,
    classifier_from_json,
    classifier_to_json,
    current_labels,
    fit_category,
    get_scorer,
)
from curation_assets.lib.embed import IMAGE_EMBEDDINGS, embedding_matrix
from curation_assets.lib.filter import (
    CLASSIFIER_SCORES,
    FILTER_REJECTIONS,
    FILTERED_IMAGES,
    SAFETY_CLASSIFIERS,
    caption_similarity,
    clip_score_floor,
    pretrained_scores,
    score_embeddings,
    split_by_scores,
)
from curation_assets.lib.shards import iter_items
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import RAW_IMAGES

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


def _labelled_embeddings(store: DeltaStore, ids: list[str]) -> pl.DataFrame:
    """One embedding per labelled image, sorted by image_id.

    Delta scans, ``unique`` and joins return rows in no fixed order (it changed from run to run
    and moved the probe's threshold); every frame a decision is computed from is sorted by
    image_id. ``unique`` keeps the first row by (image_id, shard) when an image was embedded in
    several shards, so the choice is canonical too.
    """
    return (
        store.scan(IMAGE_EMBEDDINGS)
        .filter(pl.col("image_id").is_in(ids))
        .select("image_id", "shard", "embedding", "model_id", "dim")
        .sort("image_id", "shard")
        .unique("image_id", keep="first", maintain_order=True)
        .drop("shard")
        .collect()
    )


def _single_model(df: pl.DataFrame) -> tuple[str, int]:
    models = df.select("model_id", "dim").unique()
    if models.height != 1:
        msg = (
            f"image_embeddings holds vectors of {models.height} embedding models "
            f"{models.rows()}; re-embed every shard with one model before training classifiers"
        )
        raise ValueError(msg)
    model_id, dim = models.row(0)
    return str(model_id), int(dim)


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
)
def safety_classifiers(
    context: dg.AssetExecutionContext,
    config: ClassifierConfig,
    delta: DeltaStorage,
    categories: Categories,
    embedder: ImageEmbedder,
) -> dg.MaterializeResult:
    """Train (or fall back for) every category and store the classifiers as JSON rows."""
    store = delta.store()
    with fail_fast_on_permanent_errors():
        specs = categories.load()
    lab = current_labels(store.read(LABELS))
    emb = _labelled_embeddings(store, lab["image_id"].unique().to_list())
    model_id, dim = _single_model(emb) if emb.height else _embedding_model(store)
    text_encoder = None
    if any(s.zero_shot for s in specs):
        model = embedder.load()
        text_encoder = model.encode_text if model.has_text_tower else None
    rows, results = [], []
    now = datetime.now(UTC)
    for spec in specs:
        mine = (
            lab.filter(pl.col("category") == spec.name)
            .join(emb, on="image_id", how="inner")
            .sort("image_id")  # canonical row order (train_probe also canonicalises)
        )
        x = embedding_matrix(mine["embedding"]).reshape(mine.height, dim)
        result = fit_category(
            spec,
            x,
            mine["label"].to_numpy().astype(np.int8),
            model_id=model_id,
            dim=dim,
            text_encoder=text_encoder,
            image_ids=mine["image_id"].to_list(),
            min_positives=config.min_positives,
            n_splits=config.n_splits,
            n_repeats=config.n_repeats,
            seed=config.seed,
            C=config.C,
        )
        results.append(result)
        summary = result.summary()
        for warning in result.warnings:
            context.log.warning(f"{spec.name}: {warning}")
        context.log.info(f"{spec.name}: {result.status} — {result.reason}")
        rows.append(
            {
                "category": spec.name,
                "status": result.status,
                "reason": result.reason,
                "threshold": result.threshold,
                "target_recall": spec.target_recall,
                "oof_recall": summary.get("oof_recall"),
                "oof_precision": summary.get("oof_precision"),
                "roc_auc": summary.get("roc_auc"),
                "n_pos": result.n_pos,
                "n_neg": result.n_neg,
                "model_id": model_id,
                "dim": dim,
                "classifier_json": None
                if result.classifier is None
                else classifier_to_json(result.classifier),
                "trained_at": now,
            }
        )
    table = pl.DataFrame(rows, schema=SAFETY_CLASSIFIERS.schema)
    store.replace_table(SAFETY_CLASSIFIERS, table)
    weak = [r.category for r in results if not r.filters]
    missed = [
        r.category
        for r in results
        if isinstance(r.classifier, Probe) and r.classifier.oof_recall < r.classifier.target_recall
    ]
    curves = {
        r.category: _pr_table(r.classifier) for r in results if isinstance(r.classifier, Probe)
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
                passed=not weak,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"not_filtering": ", ".join(weak) or "none"},
            ),
            dg.AssetCheckResult(
                check_name="recall_target_met",
                passed=not missed,
                metadata={"below_target": ", ".join(missed) or "none"},
            ),
        ],
    )


def _embedding_model(store: DeltaStore) -> tuple[str, int]:
    head = store.scan(IMAGE_EMBEDDINGS).select("model_id", "dim").unique().collect()
    if head.height == 0:
        msg = "image_embeddings is empty; materialize image_embeddings for a shard first"
        raise ValueError(msg)
    return _single_model(head)


def _pr_table(probe: Probe) -> dg.MetadataValue:
    """Precision–recall curve as a small markdown table (threshold, precision, recall)."""
    curve = probe.pr_curve
    p, r, t = (np.asarray(curve[k]) for k in ("precision", "recall", "thresholds"))
    picks = np.unique(np.linspace(0, len(t) - 1, num=min(12, len(t))).astype(int))
    lines = ["| threshold | precision | recall |", "|---|---|---|"]
    lines += [f"| {t[i]:.3f} | {p[i]:.3f} | {r[i]:.3f} |" for i in picks]
    return dg.MetadataValue.md("\n".join(lines))


def load_classifiers(store: DeltaStore) -> list:
    """The classifiers in force (empty before safety_classifiers was first materialized)."""
    table = store.read(SAFETY_CLASSIFIERS).drop_nulls("classifier_json").sort("category")
    return [
        classifier_from_json(text, source=f"safety_classifiers/{cat}")
        for cat, text in table.select("category", "classifier_json").iter_rows()
    ]


@dg.asset(
    description=(
        "Active learning: per category, the unlabelled nearest neighbours of hard positives "
        "(positives cross-validation keeps scoring low) and the unlabelled images scored nearest "
        "the threshold, ranked, each with its reason. Export with `curation labels "
        "export-queue`, label, import, re-materialize."
    ),
    deps=["safety_classifiers", "image_embeddings", "labels"],
    kinds={"deltalake", "faiss"},
    automation_condition=eager_on("safety_classifiers"),
    group_name=GROUP,
    metadata={"dagster/column_schema": table_schema(LABEL_QUEUE)},
)
def label_queue(context: dg.AssetExecutionContext, delta: DeltaStorage) -> dg.MaterializeResult:
    """Build the queue from all embeddings, the labels and the classifiers."""
    store = delta.store()
    emb = store.read(IMAGE_EMBEDDINGS, columns=["image_id", "embedding"]).unique("image_id")
    emb = emb.sort("image_id")
    x = embedding_matrix(emb["embedding"])
    ids = emb["image_id"].to_list()
    lab = current_labels(store.read(LABELS))
    queues = []
    for clf in load_classifiers(store):
        done = set(lab.filter(pl.col("category") == clf.category)["image_id"].to_list())
        mask = np.fromiter((i in done for i in ids), dtype=bool, count=len(ids))
        queues.append(build_label_queue(x, ids, mask, clf))
    queue = pl.concat(queues) if queues else LABEL_QUEUE.empty()
    store.replace_table(LABEL_QUEUE, queue)
    reasons = queue["reason"].str.split(":").list.first().value_counts().rows()
    context.log.info(f"label_queue: {queue.height} images queued {dict(reasons)}")
    return dg.MaterializeResult(
        metadata=table_metadata(
            LABEL_QUEUE,
            delta.uri(LABEL_QUEUE),
            queue.height,
            by_reason=dg.MetadataValue.json({str(k): int(v) for k, v in reasons}),
            preview=markdown_preview(queue),
        )
    )


class ScoreConfig(dg.Config):
    """Which pretrained scorers add columns beside the trained classifiers."""

    pretrained_scorers: list[str] = Field(
        default_factory=list,
        description="Pretrained image scorers to run (e.g. ['nsfw'], needs the nsfw extra). "
        "They add scores; they filter only with a threshold.",
    )
    pretrained_thresholds: dict[str, float] = Field(
        default_factory=dict, description="Optional threshold per pretrained scorer name."
    )
    batch_size: int = Field(default=32, description="Images per pretrained-scorer batch.")


@dg.asset(
    description=(
        "Per shard, one score per image and classifier (long format: image_id, category, "
        "score, threshold), plus pretrained scorers such as open_nsfw when configured."
    ),
    partitions_def=shards_partitions,
    deps=["image_embeddings", "safety_classifiers"],
    kinds={"deltalake", "polars"},
    automation_condition=updated_on("safety_classifiers"),
    group_name=GROUP,
    retry_policy=transient_retry,
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
def classifier_scores(
    context: dg.AssetExecutionContext,
    config: ScoreConfig,
    delta: DeltaStorage,
    shard_source: ShardSource,
) -> dg.MaterializeResult:
    """Score the shard's embeddings with the classifiers in force."""
    key = context.partition_key
    store = delta.store()
    emb = store.read(
        IMAGE_EMBEDDINGS, shards=[key], columns=["image_id", "embedding", "model_id"]
    ).sort("image_id")
    classifiers = load_classifiers(store)
    x = embedding_matrix(emb["embedding"])
    with fail_fast_on_permanent_errors():
        if emb.height:
            for clf in classifiers:
                clf.check_compatible(emb["model_id"][0], x.shape[1])
        frames = [score_embeddings(classifiers, x, emb["image_id"].to_list(), key)]
        for name in config.pretrained_scorers:
            scorer = get_scorer(name)
            frames.append(
                pretrained_scores(
                    scorer,
                    iter_items(shard_source.shard(key)),
                    set(emb["image_id"].to_list()),
                    key,
                    threshold=config.pretrained_thresholds.get(name),
                    batch_size=config.batch_size,
                )
            )
    scores = pl.concat(frames)
    store.replace_shard(CLASSIFIER_SCORES, key, scores)
    n_scorers = len(classifiers) + len(config.pretrained_scorers)
    per = scores.group_by("image_id", "category").len()
    complete = (
        scores.height == emb.height * n_scorers
        and per.filter(pl.col("len") != 1).height == 0
        and bool(scores["score"].is_between(0, 1).all())
    )
    return dg.MaterializeResult(
        metadata=table_metadata(
            CLASSIFIER_SCORES,
            delta.uri(CLASSIFIER_SCORES),
            scores.height,
            scorers=", ".join([c.category for c in classifiers] + config.pretrained_scorers)
            or "none",
            mean_score=dg.MetadataValue.json(
                {
                    str(k): round(float(v), 4)
                    for k, v in scores.group_by("category").agg(pl.mean("score")).rows()
                }
            ),
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name="classifiers_available",
                passed=bool(classifiers),
                severity=dg.AssetCheckSeverity.WARN,
                description=None
                if classifiers
                else "no trained classifier yet: materialize safety_classifiers",
            ),
            dg.AssetCheckResult(
                check_name="one_finite_score_per_image_and_classifier",
                passed=complete,
                metadata={"images": emb.height, "scorers": n_scorers, "rows": scores.height},
            ),
        ],
    )


@dg.multi_asset(
    specs=[
        dg.AssetSpec(
            "filtered_images",
            description=(
                "Images of the shard that no category removes: every score below its "
                "threshold (and image–caption similarity above the floor, when set)."
            ),
            deps=["classifier_scores", "raw_images"],
            kinds={"deltalake", "polars"},
            automation_condition=updated_on("classifier_scores"),
            group_name=GROUP,
            partitions_def=shards_partitions,
            metadata={"dagster/column_schema": table_schema(FILTERED_IMAGES)},
        ),
        dg.AssetSpec(
            "filter_rejections",
            description="Why each removed image was removed: category, score and threshold.",
            deps=["classifier_scores", "raw_images"],
            kinds={"deltalake", "polars"},
            automation_condition=updated_on("classifier_scores"),
            group_name=GROUP,
            partitions_def=shards_partitions,
            metadata={"dagster/column_schema": table_schema(FILTER_REJECTIONS)},
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "every_image_kept_or_rejected",
            asset="filtered_images",
            blocking=True,
            description="Each raw image of the shard is in exactly one of the two tables.",
        )
    ],
    retry_policy=transient_retry,
)
def filter_shard(
    context: dg.AssetExecutionContext,
    delta: DeltaStorage,
    categories: Categories,
    embedder: ImageEmbedder,
):
    """Split the shard into filtered_images and filter_rejections."""
    key = context.partition_key
    store = delta.store()
    raw = store.read(RAW_IMAGES, shards=[key])
    scores = store.read(CLASSIFIER_SCORES, shards=[key])
    with fail_fast_on_permanent_errors():
        floor = clip_score_floor(categories.load())
    clip_scores, floor_note = None, "no min_clip_score in the category spec"
    if floor is not None and raw["caption"].drop_nulls().len():
        model = embedder.load()
        if model.has_text_tower:
            emb = store.read(IMAGE_EMBEDDINGS, shards=[key], columns=["image_id", "embedding"])
            # sorted: the text tower's batches (and their float rounding) follow row order
            emb = emb.join(raw.select("image_id", "caption"), on="image_id").sort("image_id")
            clip_scores = caption_similarity(
                emb["image_id"].to_list(),
                embedding_matrix(emb["embedding"]),
                emb["caption"].to_list(),
                model.encode_text,
            )
            floor_note = f"applied: image-caption cosine >= {floor}"
        else:
            floor_note = f"not applied: {model.model_id} has no text tower"
            context.log.warning(f"min_clip_score {floor} {floor_note}")
    kept, rejections = split_by_scores(raw, scores, clip_scores=clip_scores, clip_floor=floor)
    store.replace_shard(FILTERED_IMAGES, key, kept)
    store.replace_shard(FILTER_REJECTIONS, key, rejections)
    rejected = rejections["image_id"].n_unique()
    by_category = dict(rejections.group_by("category").len().rows())
    context.log.info(f"{key}: kept {kept.height}, removed {rejected} {by_category}")
    overlap = kept.join(rejections, on="image_id", how="semi").height
    yield dg.MaterializeResult(
        asset_key="filtered_images",
        metadata=table_metadata(
            FILTERED_IMAGES,
            delta.uri(FILTERED_IMAGES),
            kept.height,
            removed=rejected,
            removed_share=round(rejected / raw.height, 4) if raw.height else 0.0,
            clip_score_floor=floor_note,
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name="every_image_kept_or_rejected",
                asset_key="filtered_images",
                passed=kept.height + rejected == raw.height and overlap == 0,
                metadata={"raw_images": raw.height, "kept": kept.height, "removed": rejected},
            )
        ],
    )
    yield dg.MaterializeResult(
        asset_key="filter_rejections",
        metadata=table_metadata(
            FILTER_REJECTIONS,
            delta.uri(FILTER_REJECTIONS),
            rejections.height,
            by_category=dg.MetadataValue.json({str(k): int(v) for k, v in by_category.items()}),
            preview=markdown_preview(rejections),
        ),
    )


classifiers_job = dg.define_asset_job(
    name="classifiers_job",
    selection=["safety_classifiers", "label_queue"],
    description="Retrain the safety classifiers from the labels and rebuild the label queue.",
)

defs = dg.Definitions(
    assets=[labels, safety_classifiers, label_queue, classifier_scores, filter_shard],
    jobs=[classifiers_job],
)
