"""Training every category of the spec from the labels: the ``safety_classifiers`` table.

The classify stage's training step: :func:`labelled_embeddings` reads one embedding per
labelled image, :func:`train_classifiers` runs
:func:`~curation_assets.lib.classify.policy.fit_category` for every category,
:func:`classifiers_table` turns the results into :data:`SAFETY_CLASSIFIERS` rows (each
classifier as JSON, no pickle) and :func:`classifier_checks` says which categories do not
filter and which probes miss their recall target. :func:`read_classifiers` reads the
classifiers in force back from the table.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from curation_assets.lib.classify.policy import (
    MIN_POSITIVES,
    CategoryResult,
    Classifier,
    fit_category,
)
from curation_assets.lib.classify.pool import read_labelled
from curation_assets.lib.classify.probe import Probe
from curation_assets.lib.classify.serialize import classifier_from_json, classifier_to_json
from curation_assets.lib.classify.spec import CategorySpec
from curation_assets.lib.classify.zeroshot import TextEncoder
from curation_assets.lib.errors import ConfigError
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS, SAFETY_CLASSIFIERS
from curation_assets.lib.vectors import embedding_matrix, single_model

if TYPE_CHECKING:  # torch, only for the annotation: loading a model is the caller's
    from curation_assets.lib.embed import Embedder


def embedding_model(store: DeltaStore, labelled: pl.DataFrame) -> tuple[str, int]:
    """``(model_id, dim)`` the classifiers are trained for.

    The model of the labelled images' embeddings, or, with no labelled image embedded yet, the
    one model of ``image_embeddings``.

    Raises:
        ConfigError: When the vectors mix models, or no image is embedded yet.
    """
    rows = labelled
    if rows.is_empty():
        rows = store.scan(IMAGE_EMBEDDINGS).select("model_id", "dim").unique().collect()
    if rows.is_empty():
        msg = "image_embeddings is empty; materialize image_embeddings for a shard first"
        raise ConfigError(msg)
    model_id = single_model(rows, before="training classifiers", source="image_embeddings")
    return model_id, int(rows["dim"][0])


def labelled_embeddings(store: DeltaStore, image_ids: Sequence[str]) -> pl.DataFrame:
    """One embedding per labelled image, sorted by image_id, read from their shards only.

    The labelled images' shards are found from the ``image_id``/``shard`` columns alone, then
    only those shards' embeddings are read (:func:`~curation_assets.lib.classify.pool.
    read_labelled`): training never reads the corpus's vectors.

    Delta scans, ``unique`` and joins return rows in no fixed order (it changed from run to run
    and moved the probe's threshold); every frame a decision is computed from is sorted by
    image_id. ``unique`` keeps the first row by (image_id, shard) when an image was embedded in
    several shards, so the choice is canonical too.

    Args:
        store: The Delta store holding ``image_embeddings``.
        image_ids: The labelled images.

    Returns:
        ``image_id``, ``embedding``, ``model_id``, ``dim``; one row per embedded image.

    Memory: the labelled images' rows (plus one streamed batch of ids).
    """
    return (
        read_labelled(store, image_ids, ["embedding", "model_id", "dim"])
        .sort("image_id", "shard")
        .unique("image_id", keep="first", maintain_order=True)
        .select("image_id", "embedding", "model_id", "dim")
    )


def text_encoder_for(
    specs: Sequence[CategorySpec], load_model: Callable[[], "Embedder"]
) -> TextEncoder | None:
    """The image model's text tower, when some category has zero-shot prompts.

    Args:
        specs: The categories.
        load_model: Returns the image embedder; called only when a category has prompts.

    Returns:
        ``encode_text`` of the model, or None (no prompts, or a model without a text tower).
    """
    if not any(s.zero_shot for s in specs):
        return None
    model = load_model()
    return model.encode_text if model.has_text_tower else None


def train_classifiers(
    specs: Sequence[CategorySpec],
    labels: pl.DataFrame,
    embeddings: pl.DataFrame,
    *,
    model_id: str,
    dim: int,
    text_encoder: TextEncoder | None = None,
    min_positives: int = MIN_POSITIVES,
    n_splits: int = 5,
    n_repeats: int = 3,
    seed: int = 0,
    C: float = 1.0,
) -> list[CategoryResult]:
    """Build the best classifier the labels allow for every category, in spec order.

    Each category's labelled rows are joined to their embeddings and put in image_id order
    before :func:`~curation_assets.lib.classify.policy.fit_category` (which canonicalises
    again), so the result depends only on the set of labelled images.

    Args:
        specs: The categories.
        labels: The labels in force (``current_labels``: image_id, category, label).
        embeddings: :func:`labelled_embeddings` of the labelled images.
        model_id: Embedding model of ``embeddings`` (stored with each classifier).
        dim: Embedding dimension.
        text_encoder: The image model's text tower, for zero-shot fallbacks (None: none).
        min_positives: Positives needed for a probe.
        n_splits: Folds of the repeated stratified k-fold.
        n_repeats: Repeats of the k-fold.
        seed: Seed of the folds.
        C: Inverse L2 strength of the logistic regression.

    Returns:
        One :class:`~curation_assets.lib.classify.policy.CategoryResult` per category.
    """
    results = []
    for spec in specs:
        mine = (
            labels.filter(pl.col("category") == spec.name)
            .join(embeddings, on="image_id", how="inner")
            .sort("image_id")  # canonical row order (train_probe also canonicalises)
        )
        x = embedding_matrix(mine["embedding"]).reshape(mine.height, dim)
        results.append(
            fit_category(
                spec,
                x,
                mine["label"].to_numpy().astype(np.int8),
                model_id=model_id,
                dim=dim,
                text_encoder=text_encoder,
                image_ids=mine["image_id"].to_list(),
                min_positives=min_positives,
                n_splits=n_splits,
                n_repeats=n_repeats,
                seed=seed,
                C=C,
            )
        )
    return results


def classifiers_table(
    specs: Sequence[CategorySpec],
    results: Sequence[CategoryResult],
    *,
    model_id: str,
    dim: int,
    trained_at: datetime,
) -> pl.DataFrame:
    """:data:`SAFETY_CLASSIFIERS` rows: one per category, the classifier as JSON (or null).

    Args:
        specs: The categories, aligned with ``results``.
        results: :func:`train_classifiers` results.
        model_id: Embedding model the classifiers expect.
        dim: Embedding dimension they expect.
        trained_at: When training started (UTC).
    """
    rows = []
    for spec, result in zip(specs, results, strict=True):
        summary = result.summary()
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
                "trained_at": trained_at,
            }
        )
    return pl.DataFrame(rows, schema=SAFETY_CLASSIFIERS.schema)


def read_classifiers(table: pl.DataFrame) -> list[Classifier]:
    """The classifiers of :data:`SAFETY_CLASSIFIERS` rows, by category (skipped ones left out).

    Raises:
        ValueError: If an entry is not a classifier written by this version.
    """
    rows = table.drop_nulls("classifier_json").sort("category")
    return [
        classifier_from_json(text, source=f"safety_classifiers/{cat}")
        for cat, text in rows.select("category", "classifier_json").iter_rows()
    ]


@dataclass(frozen=True)
class ClassifierChecks:
    """What the ``safety_classifiers`` checks report.

    Attributes:
        not_filtering: Categories skipped or scored without a threshold (they remove nothing).
        below_target: Probes whose out-of-fold recall at the threshold is below the target.
    """

    not_filtering: list[str]
    below_target: list[str]


def classifier_checks(results: Sequence[CategoryResult]) -> ClassifierChecks:
    """The categories that do not filter and the probes that miss their recall target."""
    return ClassifierChecks(
        not_filtering=[r.category for r in results if not r.filters],
        below_target=[
            r.category
            for r in results
            if isinstance(r.classifier, Probe)
            and r.classifier.oof_recall < r.classifier.target_recall
        ],
    )


def pr_curve_markdown(probe: Probe, max_rows: int = 12) -> str:
    """A probe's OOF precision–recall curve as a small markdown table.

    Args:
        probe: The trained probe.
        max_rows: Rows at most, evenly spaced along the stored curve.

    Returns:
        ``| threshold | precision | recall |`` rows.
    """
    curve = probe.pr_curve
    p, r, t = (np.asarray(curve[k]) for k in ("precision", "recall", "thresholds"))
    picks = np.unique(np.linspace(0, len(t) - 1, num=min(max_rows, len(t))).astype(int))
    lines = ["| threshold | precision | recall |", "|---|---|---|"]
    lines += [f"| {t[i]:.3f} | {p[i]:.3f} | {r[i]:.3f} |" for i in picks]
    return "\n".join(lines)
