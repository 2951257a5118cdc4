"""Classify: one classifier per unwanted category, thresholded for recall (stage 3).

The classifier room, one module per seam:

* :mod:`.spec` — the category spec (YAML) and its validation;
* :mod:`.base` — what every classifier shares: input checks, :func:`threshold_for_recall`,
  row-wise scoring and the :class:`~.base.LinearClassifier` scaffolding;
* :mod:`.probe` — the linear probe, trained with out-of-fold thresholds;
* :mod:`.zeroshot` — prompt-based scores for categories with too few labels;
* :mod:`.policy` — :func:`fit_category`: which of the two the labels allow;
* :mod:`.serialize` — classifiers as JSON (base64 float32, no pickle);
* :mod:`.scorers` — pretrained image scorers (open_nsfw) that add score columns;
* :mod:`.active` — the active-learning label queue;
* :mod:`.label_files` — label files (CSV, Label Studio) parsed into rows;
* :mod:`.labels` — the labels table: rows validated and imported all-or-nothing;
* :mod:`.queue_export` — the label queue as a CSV, Label Studio tasks, an HTML sheet.

Scores are probabilities in [0, 1]; an image is flagged when ``score >= threshold``.
"""

from curation_assets.lib.classify.active import LABEL_QUEUE, build_label_queue, find_hard_positives
from curation_assets.lib.classify.base import (
    ClassifierInputError,
    EmbeddingMismatchError,
    canonical_order,
    row_dot,
    threshold_for_recall,
)
from curation_assets.lib.classify.label_files import (
    LabelFileError,
    parse_label_studio,
    parse_labels_csv,
    read_label_file,
)
from curation_assets.lib.classify.labels import (
    LABELS,
    LabelImport,
    LabelImportError,
    current_labels,
    import_labels,
    validate_labels,
)
from curation_assets.lib.classify.policy import (
    MIN_NEGATIVES,
    MIN_POSITIVES,
    CategoryResult,
    Classifier,
    fit_category,
)
from curation_assets.lib.classify.probe import Probe, train_probe
from curation_assets.lib.classify.queue_export import (
    ContactSheet,
    export_queue_csv,
    export_queue_html,
    export_queue_label_studio,
    label_studio_config,
)
from curation_assets.lib.classify.scorers import (
    PretrainedScorer,
    ScorerUnavailableError,
    available_scorers,
    get_scorer,
)
from curation_assets.lib.classify.serialize import (
    classifier_from_json,
    classifier_to_json,
    load_probes,
    save_probes,
)
from curation_assets.lib.classify.spec import (
    CategorySpec,
    CategorySpecError,
    ZeroShotPrompts,
    load_category_spec,
    parse_category_spec,
)
from curation_assets.lib.classify.zeroshot import TextEncoder, ZeroShotScorer, build_zero_shot

__all__ = [
    "LABEL_QUEUE",
    "LABELS",
    "MIN_NEGATIVES",
    "MIN_POSITIVES",
    "available_scorers",
    "build_label_queue",
    "build_zero_shot",
    "canonical_order",
    "CategoryResult",
    "CategorySpec",
    "CategorySpecError",
    "Classifier",
    "classifier_from_json",
    "classifier_to_json",
    "ClassifierInputError",
    "ContactSheet",
    "current_labels",
    "EmbeddingMismatchError",
    "export_queue_csv",
    "export_queue_html",
    "export_queue_label_studio",
    "find_hard_positives",
    "fit_category",
    "get_scorer",
    "import_labels",
    "label_studio_config",
    "LabelFileError",
    "LabelImport",
    "LabelImportError",
    "load_category_spec",
    "load_probes",
    "parse_category_spec",
    "parse_label_studio",
    "parse_labels_csv",
    "PretrainedScorer",
    "Probe",
    "read_label_file",
    "row_dot",
    "save_probes",
    "ScorerUnavailableError",
    "TextEncoder",
    "threshold_for_recall",
    "train_probe",
    "validate_labels",
    "ZeroShotPrompts",
    "ZeroShotScorer",
]
