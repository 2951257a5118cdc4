"""Embedding heads: small MLPs over the stored embeddings, loaded from a safetensors file.

LAION's improved aesthetic predictor and the CLIP-based NSFW detectors are shipped this way: a
few linear layers applied to a CLIP image embedding. An :class:`EmbeddingHead` scores the
``image_embeddings`` a shard already has (no image is decoded) and adds its score to
``classifier_scores`` beside the trained probes (``ScoreConfig.embedding_heads``).

**File format.** A safetensors file whose tensors are the linear layers, named
``<prefix>.<i>.weight`` (shape ``(out, in)``, PyTorch's ``nn.Linear`` layout) and optionally
``<prefix>.<i>.bias`` (``(out,)``), applied in increasing ``i`` (the indices may skip, as
``nn.Sequential`` indices of dropout layers do; a torch ``state_dict`` saved with
``safetensors.torch.save_file`` fits as is). Its ``__metadata__`` (strings) says:

* ``embedding_model`` (required): the ``model_id`` of the embeddings it was trained on, as
  ``image_embeddings.model_id`` records it (e.g. ``open_clip:ViT-L-14@openai``). Scoring
  embeddings of any other model is refused: the head would return numbers without meaning.
* ``input_dim`` (optional): checked against the first layer and the stored ``dim``.
* ``activation`` (default ``relu``): between layers, not after the last: ``relu``, ``gelu``,
  ``tanh``, ``sigmoid`` or ``none`` (LAION's aesthetic MLP has none: its dropouts vanish at
  inference).
* ``output`` (default ``sigmoid``): how the last layer becomes a score in [0, 1]:
  ``sigmoid`` (one output), ``softmax:<k>`` (probability of class ``k``), ``range:<lo>:<hi>``
  (linear map of a regression output, ``lo`` → 0, ``hi`` → 1, clipped; ``lo > hi`` reverses,
  so ``range:10:1`` makes a low aesthetic rating a high score that a threshold can filter), or
  ``identity`` (already a probability; a value outside [0, 1] is an error).
* ``name`` (default: the file's stem): the score's category, snake_case.
* ``normalize`` (default ``false``): L2-normalize the input again (the stored embeddings are
  already L2-normalized).

Memory: the weights (a few MB) plus one ``(n, width)`` float32 activation per layer for a
shard's ``n`` embeddings.
"""

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from curation_assets.lib.classify.base import EmbeddingMismatchError
from curation_assets.lib.classify.scorers import ScorerUnavailableError
from curation_assets.lib.errors import ConfigError
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import CLASSIFIER_SCORES, IMAGE_EMBEDDINGS
from curation_assets.lib.vectors import embedding_matrix

ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "none")
_LAYER = re.compile(r"^(?P<prefix>.*?)\.?(?P<index>\d+)\.(?P<kind>weight|bias)$")
_NAME = re.compile(r"^[a-z][a-z0-9]*(_[a-z0-9]+)*$")


class HeadFormatError(ConfigError):
    """A head file is not a valid MLP head (tensors or metadata malformed)."""


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _activate(z: np.ndarray, name: str) -> np.ndarray:
    if name == "relu":
        return np.maximum(z, 0)
    if name == "gelu":  # the tanh approximation is not used: exact erf, as torch's default
        from scipy.special import erf

        return 0.5 * z * (1.0 + erf(z / np.sqrt(2.0)))
    if name == "tanh":
        return np.tanh(z)
    if name == "sigmoid":
        return _sigmoid(z)
    return z


@dataclass(frozen=True)
class EmbeddingHead:
    """A loaded MLP head (see the module docstring for the file format).

    Attributes:
        name: Score category.
        path: The safetensors file.
        embedding_model: ``model_id`` of the embeddings it expects.
        input_dim: Embedding dimension it expects.
        layers: ``(weight (out, in) float32, bias (out,) float32)`` in order.
        activation: Between layers.
        output: Output transform (``sigmoid``, ``softmax:k``, ``range:lo:hi``, ``identity``).
        normalize: Re-normalize inputs to unit length.
        model_id: ``head:<name>@<file sha256[:12]>``, recorded as the score's scorer.
    """

    name: str
    path: Path
    embedding_model: str
    input_dim: int
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]
    activation: str
    output: str
    normalize: bool
    model_id: str

    def check_compatible(self, model_id: str, dim: int) -> None:
        """Refuse embeddings of another model or dimension.

        Raises:
            EmbeddingMismatchError: Naming both models / dimensions and what to do.
        """
        if dim != self.input_dim:
            msg = (
                f"embedding head {self.name!r} ({self.path}) expects embeddings of size "
                f"{self.input_dim} but image_embeddings has {dim} ({model_id}); use a head "
                f"trained on {model_id}, or embed with {self.embedding_model}"
            )
            raise EmbeddingMismatchError(msg)
        if model_id != self.embedding_model:
            msg = (
                f"embedding head {self.name!r} ({self.path}) was trained on "
                f"{self.embedding_model!r} embeddings but image_embeddings were made by "
                f"{model_id!r}; a head is only meaningful on its own model's embeddings. Embed "
                f"with {self.embedding_model}, or if the two ids name the same weights, set the "
                f"file's embedding_model metadata to {model_id!r}"
            )
            raise EmbeddingMismatchError(msg)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Scores in [0, 1].

        Args:
            x: (n, input_dim) float32, L2-normalized embeddings.

        Returns:
            (n,) float32.

        Raises:
            ValueError: If ``output`` is ``identity`` and a score falls outside [0, 1].
        """
        h = np.ascontiguousarray(x, dtype=np.float32)
        if self.normalize:
            h = h / np.maximum(np.linalg.norm(h, axis=1, keepdims=True), 1e-12)
        for i, (w, b) in enumerate(self.layers):
            h = h @ w.T + b
            if i < len(self.layers) - 1:
                h = _activate(h, self.activation)
        return _transform(h, self.output, self.name).astype(np.float32)

    def score_shard(
        self, embeddings: pl.DataFrame, shard: str, *, threshold: float | None = None
    ) -> pl.DataFrame:
        """:data:`CLASSIFIER_SCORES` rows of a shard's embeddings (``category = name``).

        Args:
            embeddings: ``image_embeddings`` rows (``image_id``, ``embedding``, ``model_id``).
            shard: Partition key.
            threshold: Filter threshold (score ≥ threshold removes), or None (report only).

        Raises:
            EmbeddingMismatchError: Embeddings of another model or dimension.
        """
        x = embedding_matrix(embeddings["embedding"])
        if embeddings.height:
            models = embeddings["model_id"].unique().to_list()
            for model in models:
                self.check_compatible(str(model), int(x.shape[1]))
        scores = self.score(x) if embeddings.height else np.zeros(0, np.float32)
        return CLASSIFIER_SCORES.conform(
            pl.DataFrame(
                {
                    "image_id": embeddings["image_id"],
                    "shard": shard,
                    "category": self.name,
                    "score": scores,
                    "threshold": threshold,
                    "scorer": self.model_id,
                },
                schema_overrides={"score": pl.Float32, "threshold": pl.Float64},
            )
        )


def _transform(h: np.ndarray, output: str, name: str) -> np.ndarray:
    kind, _, arg = output.partition(":")
    if kind == "sigmoid":
        return _sigmoid(h[:, 0])
    if kind == "softmax":
        z = h - h.max(axis=1, keepdims=True)
        e = np.exp(z)
        return (e / e.sum(axis=1, keepdims=True))[:, int(arg)]
    if kind == "range":
        lo, hi = (float(v) for v in arg.split(":"))
        return np.clip((h[:, 0] - lo) / (hi - lo), 0.0, 1.0)
    y = h[:, 0]
    if y.size and not bool(((y >= 0) & (y <= 1)).all()):
        bad = float(y[(y < 0) | (y > 1)][0])
        msg = (
            f"embedding head {name!r} has output 'identity' but produced {bad:g}, outside "
            "[0, 1]; declare output 'sigmoid', 'softmax:<k>' or 'range:<lo>:<hi>' in its metadata"
        )
        raise ValueError(msg)
    return y


def _layers(tensors: Mapping[str, np.ndarray], path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The linear layers in order, checked for shape."""
    found: dict[int, dict[str, np.ndarray]] = {}
    prefixes = set()
    for key, value in tensors.items():
        m = _LAYER.match(key)
        if m is None:
            msg = (
                f"{path}: tensor {key!r} is not '<prefix>.<i>.weight' or '<prefix>.<i>.bias'; "
                f"an MLP head holds only its linear layers (tensors: {sorted(tensors)})"
            )
            raise HeadFormatError(msg)
        prefixes.add(m["prefix"])
        found.setdefault(int(m["index"]), {})[m["kind"]] = value
    if not found:
        msg = f"{path}: no tensors; expected linear layers '<prefix>.<i>.weight'"
        raise HeadFormatError(msg)
    if len(prefixes) > 1:
        msg = f"{path}: layers under several prefixes {sorted(prefixes)}; expected one"
        raise HeadFormatError(msg)
    layers = []
    previous: int | None = None
    for index in sorted(found):
        parts = found[index]
        if "weight" not in parts:
            msg = f"{path}: layer {index} has a bias but no weight"
            raise HeadFormatError(msg)
        w = np.asarray(parts["weight"], dtype=np.float32)
        if w.ndim != 2:
            msg = f"{path}: layer {index} weight has shape {w.shape}; expected (out, in)"
            raise HeadFormatError(msg)
        b = np.asarray(parts.get("bias", np.zeros(w.shape[0])), dtype=np.float32)
        if b.shape != (w.shape[0],):
            msg = f"{path}: layer {index} bias has shape {b.shape}; expected ({w.shape[0]},)"
            raise HeadFormatError(msg)
        if previous is not None and w.shape[1] != previous:
            msg = (
                f"{path}: layer {index} takes {w.shape[1]} inputs but the layer before gives "
                f"{previous}"
            )
            raise HeadFormatError(msg)
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            msg = f"{path}: layer {index} holds non-finite values"
            raise HeadFormatError(msg)
        previous = w.shape[0]
        layers.append((w, b))
    return layers


def load_head(path: str | Path) -> EmbeddingHead:
    """Load and validate an MLP head from a safetensors file.

    Raises:
        ScorerUnavailableError: If the file does not exist.
        HeadFormatError: If it is not safetensors, a tensor or a metadata value is malformed,
            or the output transform does not fit the last layer.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"embedding head file {path} does not exist; pass the path of a .safetensors head"
        raise ScorerUnavailableError(msg)
    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = dict(fh.metadata() or {})
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, TypeError) as exc:
        msg = (
            f"{path} is not a readable safetensors file with numpy-compatible tensors ({exc}); "
            "save float32 tensors with safetensors.torch.save_file or safetensors.numpy"
        )
        raise HeadFormatError(msg) from exc
    layers = _layers(tensors, path)
    model = meta.get("embedding_model", "").strip()
    if not model:
        msg = (
            f"{path}: metadata lacks 'embedding_model' (the model_id of the embeddings the "
            "head was trained on, as image_embeddings.model_id records it)"
        )
        raise HeadFormatError(msg)
    in_dim = int(layers[0][0].shape[1])
    if "input_dim" in meta and meta["input_dim"].strip() != str(in_dim):
        msg = f"{path}: metadata input_dim={meta['input_dim']!r} but the first layer takes {in_dim}"
        raise HeadFormatError(msg)
    activation = meta.get("activation", "relu").strip().lower()
    if activation not in ACTIVATIONS:
        msg = f"{path}: activation {activation!r}; expected one of {', '.join(ACTIVATIONS)}"
        raise HeadFormatError(msg)
    output = meta.get("output", "sigmoid").strip().lower()
    _check_output(output, int(layers[-1][0].shape[0]), path)
    name = meta.get("name", path.stem).strip()
    if not _NAME.match(name):
        msg = f"{path}: score name {name!r} is not snake_case; set metadata 'name'"
        raise HeadFormatError(msg)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return EmbeddingHead(
        name=name,
        path=path,
        embedding_model=model,
        input_dim=in_dim,
        layers=tuple(layers),
        activation=activation,
        output=output,
        normalize=meta.get("normalize", "false").strip().lower() in ("1", "true", "yes"),
        model_id=f"head:{name}@{digest}",
    )


def _check_output(output: str, n_out: int, path: Path) -> None:
    kind, _, arg = output.partition(":")
    ok = True
    if kind in ("sigmoid", "identity"):
        ok = n_out == 1 and not arg
    elif kind == "softmax":
        ok = arg.isdigit() and int(arg) < n_out and n_out >= 2
    elif kind == "range":
        try:
            lo, hi = (float(v) for v in arg.split(":"))
            ok = n_out == 1 and lo != hi
        except ValueError:
            ok = False
    else:
        ok = False
    if not ok:
        msg = (
            f"{path}: output {output!r} does not fit a last layer of {n_out} outputs; use "
            "'sigmoid' or 'identity' (1 output), 'softmax:<k>' (k < outputs), or "
            "'range:<lo>:<hi>' (1 output, lo != hi)"
        )
        raise HeadFormatError(msg)


def head_report(
    store: DeltaStore, head: EmbeddingHead, shards: Sequence[str] | None = None, *, top: int = 5
) -> dict[str, object]:
    """Score stored embeddings with ``head``, one shard at a time, without writing anything.

    What ``curation heads check`` prints: it shows that a head fits the home's embeddings and
    what its scores look like before it is added to ``classifier_scores``' config.

    Args:
        store: The Delta store.
        head: A loaded head.
        shards: Shards to score (default: every shard of ``image_embeddings``).
        top: Highest-scoring images listed.

    Returns:
        JSON-ready: ``head`` (name, model_id, embedding_model, input_dim, layers, activation,
        output), ``images``, ``shards``, score ``quantiles`` and the ``top`` images.

    Raises:
        EmbeddingMismatchError: On the first shard of another model or dimension.
    """
    if shards is None:
        shards = sorted(store.shard_row_counts(IMAGE_EMBEDDINGS.name))
    scores: list[np.ndarray] = []
    best = pl.DataFrame(schema={"image_id": pl.String, "shard": pl.String, "score": pl.Float32})
    for shard in shards:
        emb = store.read(
            IMAGE_EMBEDDINGS, shards=[shard], columns=["image_id", "embedding", "model_id"]
        )
        rows = head.score_shard(emb, shard)
        scores.append(rows["score"].to_numpy())
        best = pl.concat([best, rows.select("image_id", "shard", "score")]).top_k(top, by="score")
    allv = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    quantiles = {
        f"p{q}": round(float(np.percentile(allv, q)), 4) for q in (1, 5, 25, 50, 75, 95, 99)
    }
    return {
        "head": {
            "name": head.name,
            "model_id": head.model_id,
            "embedding_model": head.embedding_model,
            "input_dim": head.input_dim,
            "layers": [list(w.shape) for w, _ in head.layers],
            "activation": head.activation,
            "output": head.output,
        },
        "images": int(allv.size),
        "shards": len(shards),
        "quantiles": quantiles if allv.size else {},
        "top": best.sort("score", "image_id", descending=[True, False]).to_dicts(),
    }
