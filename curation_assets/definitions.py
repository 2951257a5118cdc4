"""The Dagster Definitions of curation_assets, built when Dagster loads them.

:func:`defs` is a ``@dg.definitions`` function: importing this module imports no stage, reads
no environment and cannot fail; ``dagster dev -w workspace.yaml`` (attribute ``defs``),
``dagster dev -m curation_assets.definitions``, ``curation dev`` and the tests call it. Each
stage is one module under ``curation_assets.defs`` exposing ``defs``; adding a stage is adding
it to :data:`STAGES`.
"""

import importlib
import os

import dagster as dg

STAGES = (
    "ingest",
    "embed",
    "classify",
    "filter",
    "cluster",
    "dedup",
    "weights",
    "export",
    "similar",
    "explain",
    "sensors",
    "automation",
    "shard_automation",
    "maintenance",
)
"""The modules of ``curation_assets.defs`` whose ``defs`` are merged, in this order."""

EXECUTORS = {"in_process": dg.in_process_executor, "multiprocess": dg.multiprocess_executor}


def default_executor() -> dg.ExecutorDefinition:
    """The executor of launched runs: ``$CURATION_EXECUTOR`` (default ``in_process``).

    In-process runs every step of a run in the run's own process. The multiprocess executor
    starts one process per step, and each of those re-imports torch, faiss and the models:
    about 7 s per step on a 2-core laptop, which made a 4-step shard run take 38 s instead of
    about 12 s. The pipeline's steps are sequential within a run anyway (each reads the
    previous step's Delta table); use ``multiprocess`` on a many-core machine where the five
    clusterings or the weights and export of several runs should overlap.
    """
    name = os.environ.get("CURATION_EXECUTOR", "in_process")
    if name not in EXECUTORS:
        raise ValueError(f"CURATION_EXECUTOR={name!r}: expected one of {sorted(EXECUTORS)}")
    return EXECUTORS[name]


def build_defs(home: str | None = None) -> dg.Definitions:
    """Definitions with resources rooted at ``home`` (default: ``$CURATION_HOME``)."""
    from curation_assets.defs.resources import default_resources

    stages = [importlib.import_module(f"curation_assets.defs.{name}") for name in STAGES]
    return dg.Definitions.merge(
        *(stage.defs for stage in stages),
        dg.Definitions(resources=default_resources(home), executor=default_executor()),
    )


@dg.definitions
def defs() -> dg.Definitions:
    """The project's Definitions, resources rooted at ``$CURATION_HOME`` (read when called)."""
    return build_defs()
