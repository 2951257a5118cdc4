"""Scoring images with the safety classifiers and pretrained scorers: ``classifier_scores``.

Scores are stored *long* (one row per image and scorer) rather than one column per category:
categories come and go with the spec, and a long Delta table never needs a schema migration.

Determinism: an image's score is computed from its own embedding only (the classifiers' row-wise
products, :func:`~curation_assets.lib.classify.base.row_dot`), so it is bit-identical in any
batch.
"""

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
from PIL import Image

from curation_assets.lib.checks import Check
from curation_assets.lib.classify.heads import EmbeddingHead
from curation_assets.lib.classify.policy import Classifier
from curation_assets.lib.classify.scorers import PretrainedScorer, get_scorer
from curation_assets.lib.images import iter_prepared
from curation_assets.lib.shards import Item, ShardReader
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import CLASSIFIER_SCORES, IMAGE_EMBEDDINGS
from curation_assets.lib.vectors import embedding_matrix

logger = logging.getLogger(__name__)


def score_embeddings(
    classifiers: Sequence[Classifier], x: np.ndarray, image_ids: Sequence[str], shard: str
) -> pl.DataFrame:
    """Score every image with every classifier.

    Args:
        classifiers: Probes / zero-shot scorers (already checked against the embedding model).
        x: (n, d) float32, L2-normalized embeddings.
        image_ids: n ids, aligned with ``x``.
        shard: Partition key.

    Returns:
        Long frame with :data:`CLASSIFIER_SCORES` columns, n rows per classifier.
    """
    frames = [
        pl.DataFrame(
            {
                "image_id": list(image_ids),
                "shard": shard,
                "category": c.category,
                "score": np.asarray(c.score(x), dtype=np.float32) if len(image_ids) else [],
                "threshold": c.threshold,
                "scorer": c.kind,
            },
            schema_overrides={"score": pl.Float32, "threshold": pl.Float64},
        )
        for c in classifiers
    ]
    if not frames:
        return CLASSIFIER_SCORES.empty()
    return CLASSIFIER_SCORES.conform(pl.concat(frames, how="vertical_relaxed"))


def score_shard(
    classifiers: Sequence[Classifier], embeddings: pl.DataFrame, shard: str
) -> pl.DataFrame:
    """Score a shard's embeddings with every classifier, after checking their model.

    Args:
        classifiers: The classifiers in force.
        embeddings: The shard's ``image_embeddings`` rows (``image_id``, ``embedding``,
            ``model_id``), in the order the scores should come.
        shard: Partition key.

    Returns:
        :func:`score_embeddings` rows.

    Raises:
        EmbeddingMismatchError: If a classifier was trained on another embedding model.
    """
    x = embedding_matrix(embeddings["embedding"])
    if embeddings.height:
        for clf in classifiers:
            clf.check_compatible(embeddings["model_id"][0], x.shape[1])
    return score_embeddings(classifiers, x, embeddings["image_id"].to_list(), shard)


def pretrained_scores(
    scorer: PretrainedScorer,
    items: Iterable[Item],
    wanted: set[str],
    shard: str,
    *,
    threshold: float | None = None,
    batch_size: int = 32,
    workers: int = 2,
) -> pl.DataFrame:
    """Score the wanted images of a shard with a pretrained image scorer (e.g. open_nsfw).

    Images are decoded on ``workers`` threads; each sha256 is scored once. Memory: one batch of
    decoded images.

    Returns:
        :data:`CLASSIFIER_SCORES` rows with ``category = scorer.name``.
    """

    def batches() -> Iterator[tuple[list[str], list[Image.Image]]]:
        ids: list[str] = []
        images: list[Image.Image] = []
        for p in iter_prepared(
            items, lambda im: im, wanted=wanted, workers=workers, prefetch=batch_size
        ):
            if p.value is None or p.image_id is None:
                continue  # undecodable images were already quarantined at ingest
            ids.append(p.image_id)
            images.append(p.value)
            if len(ids) == batch_size:
                yield ids, images
                ids, images = [], []
        if ids:
            yield ids, images

    ids_all: list[str] = []
    scores: list[np.ndarray] = []
    for ids, images in batches():
        ids_all += ids
        scores.append(np.asarray(scorer.score_images(images), dtype=np.float32))
    return CLASSIFIER_SCORES.conform(
        pl.DataFrame(
            {
                "image_id": ids_all,
                "shard": shard,
                "category": scorer.name,
                "score": np.concatenate(scores) if scores else np.zeros(0, np.float32),
                "threshold": threshold,
                "scorer": f"pretrained:{scorer.model_id}",
            },
            schema_overrides={"threshold": pl.Float64},
        )
    )


def scores_complete(scores: pl.DataFrame, *, n_images: int, n_scorers: int) -> bool:
    """Whether every image has exactly one score in [0, 1] per scorer.

    Args:
        scores: A shard's :data:`CLASSIFIER_SCORES` rows.
        n_images: Embedded images of the shard.
        n_scorers: Classifiers plus pretrained scorers run.
    """
    per = scores.group_by("image_id", "category").len()
    return (
        scores.height == n_images * n_scorers
        and per.filter(pl.col("len") != 1).height == 0
        and bool(scores["score"].is_between(0, 1).all())
    )


def mean_scores(scores: pl.DataFrame) -> dict[str, float]:
    """Mean score per category (or pretrained scorer), rounded to 4 decimals."""
    return {
        str(k): round(float(v), 4)
        for k, v in scores.group_by("category").agg(pl.mean("score")).rows()
    }


# --------------------------------------------------------------------------------------------
# One shard's work, for any engine (lib/engine): plain arguments in, a small outcome out
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreOutcome:
    """What scoring one shard did (picklable; the asset turns it into metadata and checks).

    Attributes:
        rows: Score rows written.
        images: Embedded images scored.
        mean_scores: :func:`mean_scores` of the rows.
        checks: ``classifiers_available`` (WARN) and
            ``one_finite_score_per_image_and_classifier``.
    """

    rows: int
    images: int
    mean_scores: dict[str, float]
    checks: tuple[Check, ...]


@dataclass(frozen=True)
class ScoreShardWork:
    """Score one shard and replace its ``classifier_scores``: callable in any process.

    The classifiers and heads are read once by the step and travel with the work, so every
    shard of a run is scored by the same ones.

    Attributes:
        root_uri: Delta root.
        storage_options: deltalake storage options of the root.
        source: Where the shards' images are (for pretrained image scorers).
        classifiers: The classifiers in force.
        heads: MLP heads over the embeddings.
        pretrained_scorers: Names of pretrained image scorers to run.
        thresholds: Optional threshold per pretrained scorer or head name.
        batch_size: Images per pretrained-scorer batch.
    """

    root_uri: str
    storage_options: dict[str, str]
    source: ShardReader
    classifiers: tuple[Classifier, ...]
    heads: tuple[EmbeddingHead, ...]
    pretrained_scorers: tuple[str, ...]
    thresholds: dict[str, float]
    batch_size: int

    @property
    def n_scorers(self) -> int:
        """Classifiers, pretrained scorers and heads: the scores each image gets."""
        return len(self.classifiers) + len(self.pretrained_scorers) + len(self.heads)

    def __call__(self, key: str, progress: Callable[[str], None]) -> ScoreOutcome:
        """Score shard ``key`` (its embeddings in image_id order) and write the scores."""
        del progress  # a shard's scoring is one pass with nothing worth reporting midway
        store = DeltaStore(self.root_uri, self.storage_options)
        emb = store.read(
            IMAGE_EMBEDDINGS, shards=[key], columns=["image_id", "embedding", "model_id"]
        ).sort("image_id")
        frames = [score_shard(self.classifiers, emb, key)]
        frames += [
            h.score_shard(emb, key, threshold=self.thresholds.get(h.name)) for h in self.heads
        ]
        for name in self.pretrained_scorers:
            frames.append(
                pretrained_scores(
                    get_scorer(name),
                    self.source.items(key),
                    set(emb["image_id"].to_list()),
                    key,
                    threshold=self.thresholds.get(name),
                    batch_size=self.batch_size,
                )
            )
        scores = pl.concat(frames)
        store.replace_shard(CLASSIFIER_SCORES, key, scores)
        complete = scores_complete(scores, n_images=emb.height, n_scorers=self.n_scorers)
        checks = (
            Check(
                "classifiers_available",
                "classifier_scores",
                bool(self.classifiers),
                warn=True,
                description=None
                if self.classifiers
                else "no trained classifier yet: materialize safety_classifiers",
            ),
            Check(
                "one_finite_score_per_image_and_classifier",
                "classifier_scores",
                complete,
                metadata={"images": emb.height, "scorers": self.n_scorers, "rows": scores.height},
            ),
        )
        return ScoreOutcome(scores.height, emb.height, mean_scores(scores), checks)
