"""Classifiers as JSON: base64 float32 arrays, never pickle.

A classifier entry (:func:`classifier_to_json`) is what the ``safety_classifiers`` table stores
per category; :func:`save_probes` / :func:`load_probes` write several to one file. Each entry
remembers the embedding model (id and dim) it was trained on, so a classifier is never applied
to vectors of another model
(:meth:`~curation_assets.lib.classify.base.LinearClassifier.check_compatible`).
"""

import base64
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from curation_assets.lib.classify.policy import Classifier
from curation_assets.lib.classify.probe import Probe
from curation_assets.lib.classify.zeroshot import ZeroShotScorer

CLASSIFIERS_FORMAT = "curation_assets.classifiers"
CLASSIFIERS_VERSION = 1


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, dtype="<f4").tobytes()).decode("ascii")


def _unb64(s: str, shape: tuple[int, ...], what: str, path: Path) -> np.ndarray:
    raw = base64.b64decode(s.encode("ascii"), validate=True)
    a = np.frombuffer(raw, dtype="<f4")
    if a.size != math.prod(shape):
        msg = f"{path}: {what} holds {a.size} floats, expected shape {shape}; the file is corrupt"
        raise ValueError(msg)
    return a.reshape(shape).astype(np.float32)


def _head(c: Classifier) -> dict[str, Any]:
    """``kind`` first, then the summary's scalars (the JSON entry's shared head)."""
    return {"kind": c.kind, **{k: v for k, v in c.summary().items() if k != "kind"}}


def _probe_to_dict(p: Probe) -> dict[str, Any]:
    return {
        **_head(p),
        "intercept": p.intercept,
        "class_weight": p.class_weight,
        "trained_at": p.trained_at,
        "pr_curve": p.pr_curve,
        "coef_f32_b64": _b64(p.coef),
        "n": int(p.labels.size),
        "labels": p.labels.astype(int).tolist(),
        "oof_scores_f32_b64": _b64(p.oof_scores),
        "oof_scores_by_repeat_f32_b64": _b64(p.oof_scores_by_repeat),
        "image_ids": list(p.image_ids) if p.image_ids is not None else None,
    }


def _zero_shot_to_dict(z: ZeroShotScorer) -> dict[str, Any]:
    return {
        **_head(z),
        "positive_prompts": list(z.positive_prompts),
        "negative_prompts": list(z.negative_prompts),
        "positive_f32_b64": _b64(z.positive),
        "negative_f32_b64": _b64(z.negative),
    }


def _to_dict(c: Classifier) -> dict[str, Any]:
    return _probe_to_dict(c) if isinstance(c, Probe) else _zero_shot_to_dict(c)


def _from_dict(d: Mapping[str, Any], path: Path) -> Classifier:
    kind = d.get("kind")
    dim = int(d["dim"])
    head: dict[str, Any] = {  # the fields every classifier has (see _head)
        "category": d["category"],
        "model_id": d["model_id"],
        "dim": dim,
        "n_pos": int(d["n_pos"]),
        "n_neg": int(d["n_neg"]),
        "target_recall": float(d["target_recall"]),
    }
    if kind == "linear_probe":
        n, reps = int(d["n"]), int(d["n_repeats"])
        ids = d.get("image_ids")
        return Probe(
            **head,
            coef=_unb64(d["coef_f32_b64"], (dim,), "coef", path),
            intercept=float(d["intercept"]),
            threshold=float(d["threshold"]),
            oof_recall=float(d["oof_recall"]),
            oof_precision=float(d["oof_precision"]),
            roc_auc=float(d["roc_auc"]),
            pr_curve={k: list(v) for k, v in d["pr_curve"].items()},
            seed=int(d["seed"]),
            C=float(d["C"]),
            n_splits=int(d["n_splits"]),
            n_repeats=reps,
            class_weight=d.get("class_weight"),
            oof_scores=_unb64(d["oof_scores_f32_b64"], (n,), "oof_scores", path),
            oof_scores_by_repeat=_unb64(
                d["oof_scores_by_repeat_f32_b64"], (reps, n), "oof_scores_by_repeat", path
            ),
            labels=np.asarray(d["labels"], dtype=np.int8),
            image_ids=tuple(ids) if ids is not None else None,
            trained_at=d["trained_at"],
        )
    if kind == "zero_shot":
        t = d.get("threshold")
        return ZeroShotScorer(
            **head,
            positive=_unb64(d["positive_f32_b64"], (dim,), "positive", path),
            negative=_unb64(d["negative_f32_b64"], (dim,), "negative", path),
            positive_prompts=tuple(d["positive_prompts"]),
            negative_prompts=tuple(d["negative_prompts"]),
            temperature=float(d["temperature"]),
            threshold=None if t is None else float(t),
            threshold_source=d.get("threshold_source"),
            label_recall=d.get("label_recall"),
            label_precision=d.get("label_precision"),
        )
    msg = f"{path}: classifier kind {kind!r} is unknown; expected 'linear_probe' or 'zero_shot'"
    raise ValueError(msg)


def classifier_to_json(classifier: Classifier) -> str:
    """One classifier as a JSON string (the format of :func:`save_probes` entries)."""
    return json.dumps(_to_dict(classifier), allow_nan=False)


def classifier_from_json(text: str, *, source: str = "<json>") -> Classifier:
    """Inverse of :func:`classifier_to_json`.

    Raises:
        ValueError: If the text is not a classifier written by this version.
    """
    try:
        return _from_dict(json.loads(text), Path(source))
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        msg = f"{source}: not a valid classifier entry ({exc}); retrain the classifiers"
        raise ValueError(msg) from exc


def save_probes(path: str | Path, probes: Sequence[Classifier]) -> Path:
    """Write classifiers to one JSON file (float32 arrays as base64 little-endian; no pickle).

    The write goes to ``path.tmp`` and is renamed, so a reader never sees half a file.

    Args:
        path: Destination ``.json`` file (parent folders are created).
        probes: Probes and/or zero-shot scorers, at most one per category.

    Returns:
        The path written.

    Raises:
        ValueError: If two classifiers share a category.
    """
    names = [p.category for p in probes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        msg = f"classifiers for categories {dupes} given more than once; save one per category"
        raise ValueError(msg)
    doc = {
        "format": CLASSIFIERS_FORMAT,
        "version": CLASSIFIERS_VERSION,
        "classifiers": [_to_dict(p) for p in probes],
    }
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, allow_nan=False, indent=1), encoding="utf-8")
    tmp.replace(out)
    return out


def load_probes(path: str | Path) -> list[Classifier]:
    """Read classifiers written by :func:`save_probes`.

    Raises:
        ValueError: If the file is not a classifiers file of a supported version or is corrupt.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        msg = f"{p} is not JSON ({exc}); expected a file written by save_probes"
        raise ValueError(msg) from exc
    if not isinstance(doc, dict) or doc.get("format") != CLASSIFIERS_FORMAT:
        msg = f"{p} is not a classifiers file (format != {CLASSIFIERS_FORMAT!r})"
        raise ValueError(msg)
    if doc.get("version") != CLASSIFIERS_VERSION:
        msg = (
            f"{p} has classifiers format version {doc.get('version')!r}; this code reads "
            f"version {CLASSIFIERS_VERSION}. Retrain the classifiers with this version."
        )
        raise ValueError(msg)
    try:
        return [_from_dict(d, p) for d in doc["classifiers"]]
    except (KeyError, TypeError) as exc:
        msg = f"{p}: a classifier entry lacks or mistypes field {exc}; the file is corrupt"
        raise ValueError(msg) from exc
