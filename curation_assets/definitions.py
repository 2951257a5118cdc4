"""The Dagster Definitions of curation_assets: every stage module merged, plus resources.

Each stage is one module under ``curation_assets.defs`` exposing ``defs``; adding a stage is
adding it to :data:`STAGES`.
"""

import dagster as dg

from curation_assets.defs import automation, classify, dedup, embed, ingest, sensors, weights
from curation_assets.defs.resources import default_resources

STAGES = (ingest, embed, classify, dedup, weights, sensors, automation)


def build_defs(home: str | None = None) -> dg.Definitions:
    """Definitions with resources rooted at ``home`` (default: ``$CURATION_HOME``)."""
    return dg.Definitions.merge(
        *(stage.defs for stage in STAGES),
        dg.Definitions(resources=default_resources(home)),
    )


defs = build_defs()
