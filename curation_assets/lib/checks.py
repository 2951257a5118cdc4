"""The outcome of an asset check as plain data.

Lib functions compute a stage's invariants on its tables and return :class:`Check` values;
the stage's Dagster asset turns each into a ``dg.AssetCheckResult``
(``defs/metadata.check_result``). The arithmetic stays testable without Dagster.
"""

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Check:
    """One check's outcome.

    Attributes:
        name: Check name, as declared on the asset.
        asset: The asset it checks.
        passed: Whether the invariant holds.
        warn: True when a failure is a warning, not an error.
        metadata: Plain values shown with the result (the observed figures).
        description: A sentence shown when it fails (None: the check's declared description).
    """

    name: str
    asset: str
    passed: bool
    warn: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)
    description: str | None = None
