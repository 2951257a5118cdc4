"""The trace of one input: one :class:`Stage` per pipeline stage, each naming its tables.

Plain dataclasses of JSON-ready values (str, int, float, bool, None, lists and dicts of
those): :meth:`Trace.to_json` is ``dataclasses.asdict`` and :func:`trace_from_json` reads it
back, so ``curation explain --json`` output round-trips.
"""

from dataclasses import asdict, dataclass, field
from typing import Any

from curation_assets.lib.explain.snapshot import Source

#: Stage names in pipeline order.
STAGE_NAMES = ("ingest", "embed", "classify", "filter", "cluster", "dedup", "weights", "export")

#: Outcomes that end the image's way through the pipeline (later stages are not reached).
FINAL = frozenset({"quarantined", "removed", "near_duplicate", "not_enumerated"})


@dataclass
class Stage:
    """What one stage decided about the image.

    Attributes:
        stage: One of :data:`STAGE_NAMES`.
        outcome: A short code: ``ingested``, ``quarantined``, ``exact_duplicate``, ``embedded``,
            ``scored``, ``kept``, ``removed``, ``assigned``, ``unique``, ``near_duplicate``,
            ``weighted``, ``exported``, ``not_scored`` (no classifier could score it),
            ``pending`` (the stage has not processed it yet),
            ``table_absent`` (its table did not exist at the as-of moment) or ``not_reached``
            (an earlier stage removed it).
        summary: One sentence for a person.
        details: The facts behind it (JSON-ready).
        sources: The table reads it came from (table, version, rows, files).
    """

    stage: str
    outcome: str
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    sources: list[Source] = field(default_factory=list)


@dataclass
class Trace:
    """Why an input is where it is.

    Attributes:
        target: What was asked about (a path or an image id).
        as_of: ``{"timestamp": iso or None, "versions": {table: version}}`` as asked.
        found_by: How the input was found (which shards were searched, and why).
        image_id: The image's id (None for an input quarantined before it could be hashed).
        shard: The shard its image row lives in (the kept copy's shard for an exact duplicate).
        source_uri: The input's location as ingest recorded it.
        fate: One sentence: where the input ended up.
        stages: One :class:`Stage` per stage reached or explained, in pipeline order.
        conflicts: Disagreements between tables about this image (expected empty).
        versions: Every table read, with the version read (None: absent then).
    """

    target: str
    as_of: dict[str, Any]
    found_by: str
    image_id: str | None
    shard: str | None
    source_uri: str | None
    fate: str
    stages: list[Stage]
    conflicts: list[str] = field(default_factory=list)
    versions: dict[str, int | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (``json.dumps`` takes it as is)."""
        return asdict(self)

    def stage(self, name: str) -> Stage:
        """The stage called ``name``.

        Raises:
            KeyError: If the trace has no such stage.
        """
        for s in self.stages:
            if s.stage == name:
                return s
        msg = f"trace has no stage {name!r}; it has {[s.stage for s in self.stages]}"
        raise KeyError(msg)


def trace_from_json(data: dict[str, Any]) -> Trace:
    """A :class:`Trace` from :meth:`Trace.to_json` output (e.g. parsed ``--json``)."""
    stages = [
        Stage(**{**s, "sources": [Source(**src) for src in s["sources"]]}) for s in data["stages"]
    ]
    return Trace(**{**data, "stages": stages})
