"""Pure algorithms and I/O (numpy, polars, torch, faiss); never imports dagster."""

from curation_assets.lib.memory import use_arrow_pool

# before any lib module loads pyarrow: every process that does the pipeline's work (the CLI,
# Dagster's run workers, Ray workers unpickling a work unit) imports this package first
use_arrow_pool()
