"""Resources: Delta storage, the shard source, the image embedder, and the engine."""

import os
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import dagster as dg
from pydantic import Field

from curation_assets.lib.classify import CategorySpec, load_category_spec
from curation_assets.lib.embed import (
    DEFAULT_OPEN_CLIP_MODEL,
    DEFAULT_OPEN_CLIP_PRETRAINED,
    DEFAULT_TIMM_MODEL,
    EFFICIENTNET_LITE0_PACKAGE,
    EmbedderSpec,
)
from curation_assets.lib.engine import LOCAL, LocalEngine, RayEngine, make_engine
from curation_assets.lib.memory import DEFAULT_MEMORY_BUDGET_MB, MemoryBudget
from curation_assets.lib.settings import gpu_fraction_env, positive_int_env, resolve_paths
from curation_assets.lib.shards import (
    DEFAULT_MAX_CAPTION_BYTES,
    DEFAULT_MAX_FILE_BYTES,
    Item,
    ShardInfo,
    discover_shards,
    iter_items,
    shard_info,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import TableSpec

if TYPE_CHECKING:
    from curation_assets.lib.embed import Embedder


class DeltaStorage(dg.ConfigurableResource):
    """Owns the root URI under which every Delta table of the pipeline lives."""

    root_uri: str = Field(
        description="Local folder or object-store URI (s3://, gs://, az://) of all Delta tables."
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="deltalake storage options for object stores (credentials, endpoint, ...).",
    )
    export_root: str = Field(
        default="",
        description="Where curated_dataset's files go when the export's export_dir is empty: "
        "the home's export root (empty: $CURATION_EXPORT_ROOT, else $CURATION_HOME/export).",
    )

    def store(self) -> DeltaStore:
        """The pure-Python store (no Dagster types) for lib code."""
        return DeltaStore(self.root_uri, self.storage_options)

    def task_options(self) -> dict[str, str]:
        """The storage options a task on another machine (a Ray worker) needs for this root.

        The configured options with this process's environment under them (``AWS_*``,
        ``CURATION_STORAGE_OPTIONS``; see ``lib/objectstore``), so that a worker started
        without those variables reaches the same bucket as the step. They travel in the task's
        arguments, not in its ``runtime_env`` (which Ray's dashboard shows), and are never
        logged. A worker's own environment still applies beneath them.
        """
        return dict(self.store().storage_options)

    def uri(self, spec: TableSpec) -> str:
        """URI of a table, for ``dagster/uri`` metadata."""
        return self.store().uri(spec.name)


class Compute(dg.ConfigurableResource):
    """How much one step may hold in memory; every stage that grows with the corpus honours it."""

    memory_budget_mb: int = Field(
        default=DEFAULT_MEMORY_BUDGET_MB,
        description="Working memory one step may use for data, MiB (beside the ~0.7 GB of "
        "imports). Stages size their batches, buckets and samples from it "
        "($CURATION_MEMORY_BUDGET_MB).",
    )

    def budget(self) -> MemoryBudget:
        """The budget for lib code."""
        return MemoryBudget(self.memory_budget_mb)


class ShardSource(dg.ConfigurableResource):
    """The folder the sensor watches: every folder, tar or manifest directly under it is a shard."""

    root: str = Field(description="Source root folder; each entry under it is one shard.")
    min_age_s: float = Field(
        default=60.0,
        description=(
            "A shard is ready once its newest file is this many seconds old (or a folder holds "
            "a _SUCCESS marker); names starting with '.'/'_' or ending in .tmp/.part are ignored."
        ),
    )

    allowed_roots: list[str] = Field(
        default_factory=list,
        description=(
            "Folders besides the source root that manifest paths may point into (absolute "
            "paths or symlinks resolving elsewhere are quarantined as outside_root). "
            "Env: CURATION_ALLOWED_ROOTS, os.pathsep-separated."
        ),
    )
    max_file_bytes: int = Field(
        default=DEFAULT_MAX_FILE_BYTES,
        description=(
            "Files larger than this are quarantined (too_large_file) and never read past the "
            "limit, whatever the file system says their size is; every stage reads with it."
        ),
    )
    max_caption_bytes: int = Field(
        default=DEFAULT_MAX_CAPTION_BYTES,
        description=(
            "Captions longer than this (UTF-8 bytes) are truncated at a character boundary; "
            "each truncation is a row of ingest_notes."
        ),
    )

    def items(self, shard: ShardInfo) -> Iterator[Item]:
        """Every input of ``shard``, read within this source's roots and limits."""
        return iter_items(
            shard,
            max_file_bytes=self.max_file_bytes,
            max_caption_bytes=self.max_caption_bytes,
            allowed_roots=self.allowed_roots,
        )

    def discover(self) -> list[ShardInfo]:
        """All shards under the root, ready or not."""
        return discover_shards(Path(self.root), min_age_s=self.min_age_s)

    def shard(self, key: str) -> ShardInfo:
        """The shard registered under partition key ``key``."""
        return shard_info(Path(self.root), key)


class ImageEmbedder(dg.ConfigurableResource):
    """The image embedding model (open_clip in production, timm for offline real weights)."""

    backend: Literal["timm", "open_clip"] = Field(
        default="timm",
        description="'open_clip' (production CLIP) or 'timm' (offline EfficientNet-Lite0).",
    )
    model_name: str = Field(
        default="",
        description=(
            f"Architecture; empty = {DEFAULT_TIMM_MODEL} for timm, "
            f"{DEFAULT_OPEN_CLIP_MODEL} for open_clip."
        ),
    )
    pretrained: str = Field(
        default="",
        description=(
            "open_clip pretrained tag or local checkpoint path; for timm "
            f"'{EFFICIENTNET_LITE0_PACKAGE}' or a checkpoint path. Empty = the backend's default "
            f"({EFFICIENTNET_LITE0_PACKAGE} / {DEFAULT_OPEN_CLIP_PRETRAINED}); 'random' = random "
            "weights (tests only)."
        ),
    )
    model_config_path: str = Field(
        default="", description="open_clip model-config JSON for a custom architecture."
    )
    device: str = Field(default="auto", description="auto (CUDA if present), cpu, cuda, cuda:N.")
    precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        default="auto", description="auto = fp16 on CUDA, fp32 on CPU."
    )

    def spec(self) -> EmbedderSpec:
        """The lib-level spec (hashable; models are cached per spec and process)."""
        if self.backend == "timm":
            model, pretrained = DEFAULT_TIMM_MODEL, EFFICIENTNET_LITE0_PACKAGE
        else:
            model, pretrained = DEFAULT_OPEN_CLIP_MODEL, DEFAULT_OPEN_CLIP_PRETRAINED
        chosen = self.pretrained or pretrained
        return EmbedderSpec(
            backend=self.backend,
            model_name=self.model_name or model,
            pretrained=None if chosen == "random" else chosen,
            model_config=self.model_config_path or None,
            device=self.device,
            precision=self.precision,
        )

    def load(self) -> "Embedder":
        """Load (or reuse) the model."""
        from curation_assets.lib.embed import load_embedder  # torch: only where it embeds

        return load_embedder(self.spec())


class Categories(dg.ConfigurableResource):
    """The category spec (YAML) the safety classifiers are trained for."""

    path: str = Field(
        default="",
        description="Category spec YAML; empty = the packaged demo spec "
        "(curation_assets/configs/categories.yaml).",
    )

    def resolved_path(self) -> Path:
        """The YAML file in use."""
        if self.path:
            return Path(self.path).expanduser()
        return Path(str(files("curation_assets").joinpath("configs/categories.yaml")))

    def load(self) -> list[CategorySpec]:
        """Parse and validate the spec."""
        return load_category_spec(self.resolved_path())


class Engine(dg.ConfigurableResource):
    """Where the heavy per-shard work runs: this process, or tasks on a Ray cluster.

    Dagster still runs the steps (partitions, retries, checks, the UI); inside the per-shard
    steps that decode and embed, score, assign, index and score uniqueness (image_embeddings,
    classifier_scores, cluster_assignments, similarity_index, image_uniqueness) each shard
    becomes one task of this engine, and inside the dedup step each (clustering, bucket) unit
    of the pair search, and inside the weights step each shard it scores from its embeddings
    (``lib/engine.py``).
    """

    address: str = Field(
        default=LOCAL,
        description="'local' (each shard in the step's own process, the default) or the address "
        "of a running Ray cluster, e.g. '127.0.0.1:6379' (`ray start --head --port=6379`); the "
        "package, the shard sources and the Delta root must be reachable from every node. "
        "Env: CURATION_ENGINE.",
    )
    max_in_flight: int = Field(
        default=0,
        description="Ray: most shard tasks submitted at once; 0 = twice the cluster's CPUs (or "
        "GPUs for embedding).",
    )
    max_retries: int = Field(
        default=2, description="Ray: retries of a shard task whose worker or node died."
    )
    gpus_per_task: float = Field(
        default=1.0,
        description="Ray: GPUs each embedding task requests when the cluster has GPUs: 1 = one "
        "task per GPU; 0.5 or 0.25 = two or four tasks share a GPU (each with its model and "
        "decode threads: worth it when decoding limits throughput; see `curation bench "
        "embed-workers`). Env: CURATION_RAY_GPUS_PER_TASK.",
    )
    env_vars: dict[str, str] = Field(
        default_factory=dict,
        description="Ray: environment variables of the task workers (Ray runtime_env, shown by "
        "Ray's dashboard: no secrets; storage credentials travel in the tasks' arguments), "
        "e.g. CURATION_MEMORY_BUDGET_MB.",
    )

    def engine(self) -> LocalEngine | RayEngine:
        """The lib engine (plain Python) the per-shard steps hand their work to."""
        return make_engine(
            self.address,
            max_in_flight=self.max_in_flight,
            max_retries=self.max_retries,
            gpus_per_task=self.gpus_per_task,
            env_vars=self.env_vars,
        )


def default_resources(home: str | None = None) -> dict[str, dg.ConfigurableResource]:
    """Resources for the local default: Delta and sources under the curation home."""
    paths = resolve_paths(home)
    return {
        "delta": DeltaStorage(root_uri=paths.delta_root, export_root=str(paths.export_root)),
        "shard_source": ShardSource(
            root=str(paths.source_root),
            allowed_roots=[
                r for r in os.environ.get("CURATION_ALLOWED_ROOTS", "").split(os.pathsep) if r
            ],
        ),
        "embedder": ImageEmbedder(),
        "categories": Categories(path=os.environ.get("CURATION_CATEGORIES", "")),
        "compute": Compute(
            memory_budget_mb=positive_int_env("CURATION_MEMORY_BUDGET_MB", DEFAULT_MEMORY_BUDGET_MB)
        ),
        "engine": Engine(
            address=os.environ.get("CURATION_ENGINE", "") or LOCAL,
            gpus_per_task=gpu_fraction_env("CURATION_RAY_GPUS_PER_TASK"),
        ),
    }
