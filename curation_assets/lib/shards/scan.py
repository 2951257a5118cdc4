"""Incremental shard discovery: what appeared since a cursor, at a cost in new entries.

:func:`~curation_assets.lib.shards.discover.discover_shards` inspects every entry of the source
root (a ``stat`` per tar, a walk per folder) and the sensor used to compare them with every
registered partition: a tick cost O(all shards). At 10^5 shards (LAION-5B ships 585k tars)
that is seconds to minutes per tick. :func:`scan_shards` keeps a :class:`ScanCursor` instead:

* the source root's names are listed with one ``os.scandir`` (names and ``d_type`` only: no
  ``stat``, no walk; ~50 ms per 10^5 entries), and only names sorting after ``cursor.after``
  plus the few ``pending`` ones (seen before, not ready yet) are inspected, in name order,
  until ``limit`` new ready shards are found. Registered partitions are not read at all; each
  new ready shard is checked with one ``is_registered`` call (``curation run`` on the same
  home may have registered it meanwhile), up to :data:`MAX_LOOKUPS` per scan, after which one
  ``registered()`` read answers for the rest of a burst;
* **late names that sort before the cursor** (a writer finishing ``shard-00050`` after
  ``shard-00100``) are caught by a count: the cursor keeps how many names sorted at or before
  ``after``; when the count differs, that scan is a *full reconciliation*: every name is
  compared with the registered partitions (one ``registered()`` read) and the unregistered
  ones are inspected. A removal and an arrival before the cursor in the same interval keep the
  count and escape it; the periodic full reconciliation (``full_every_s``, default one hour)
  catches those. The first scan (no cursor) is a full one, and so is each scan until a full one
  ends within ``limit`` (a backlog of unregistered shards drains ``limit`` per scan).

Why a name cursor and not a set of seen names: the cursor is stored by Dagster with every tick;
10^5 names would be megabytes per tick, a name and a count are bytes. Shard producers that
name shards in order (numbered tars, timestamps) never trigger a full reconciliation.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from curation_assets.lib.shards.discover import (
    IN_PROGRESS_SUFFIXES,
    MANIFEST_SUFFIXES,
    TAR_SUFFIXES,
    ShardInfo,
    inspect_shard,
)

FULL_EVERY_S = 3600.0
"""Seconds between two full reconciliations of the source root with the registered shards."""

MAX_LOOKUPS = 16
"""``is_registered`` calls per scan at most; past that one ``registered()`` read answers the rest
(a lookup costs ~17 ms on PostgreSQL, a new connection each; reading 10^5 keys ~0.33 s)."""

MAX_PENDING = 10_000
"""Not-ready names the cursor remembers at most; past that the scan stops advancing."""


@dataclass(frozen=True)
class ScanCursor:
    """Where the last scan of a source root stopped.

    Attributes:
        after: Every candidate name up to this one (in Python string order) was handled:
            registered, or remembered in ``pending``.
        pending: Names up to ``after`` that were not ready (inspected again by each scan).
        behind: How many candidate names sorted at or before ``after`` at the last scan.
        full_at: When the last complete full reconciliation ended (epoch seconds; 0 forces
            one at the next scan).
    """

    after: str = ""
    pending: tuple[str, ...] = ()
    behind: int = 0
    full_at: float = 0.0

    def to_json(self) -> str:
        """The cursor as a short JSON string (Dagster's sensor cursor)."""
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | None) -> ScanCursor | None:
        """The cursor of :meth:`to_json`; None (a full scan) when absent or unreadable."""
        if not text:
            return None
        try:
            raw = json.loads(text)
            return cls(
                after=str(raw["after"]),
                pending=tuple(str(p) for p in raw["pending"]),
                behind=int(raw["behind"]),
                full_at=float(raw["full_at"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


@dataclass
class Scan:
    """The outcome of one :func:`scan_shards`.

    Attributes:
        new: Ready shards not registered yet, in name order (at most ``limit``).
        waiting: Shards seen but not ready (each with its reason).
        cursor: The cursor for the next scan.
        full: Why this scan was a full reconciliation (empty when incremental).
        listed: Candidate names in the source root.
        inspected: Entries inspected (``stat``/walk) by this scan.
    """

    new: list[ShardInfo] = field(default_factory=list)
    waiting: list[ShardInfo] = field(default_factory=list)
    cursor: ScanCursor = field(default_factory=ScanCursor)
    full: str = ""
    listed: int = 0
    inspected: int = 0


def candidate_names(root: Path) -> list[str]:
    """Names directly under ``root`` that may be shards, from one ``os.scandir`` (unsorted).

    Hidden/staging names (``.``, ``_``) and in-progress suffixes are dropped; a folder, a tar
    or a manifest is kept (``inspect_shard`` decides the rest).

    Raises:
        FileNotFoundError: If ``root`` does not exist.
    """
    if not root.is_dir():
        msg = f"source root {root} does not exist or is not a folder; create it or fix the config"
        raise FileNotFoundError(msg)
    names = []
    with os.scandir(root) as entries:
        for entry in entries:
            name = entry.name
            if name.startswith((".", "_")):
                continue
            lower = name.lower()
            if lower.endswith(IN_PROGRESS_SUFFIXES):
                continue
            if lower.endswith(TAR_SUFFIXES + MANIFEST_SUFFIXES) or entry.is_dir():
                names.append(name)
    return names


def scan_shards(
    root: Path,
    cursor: ScanCursor | None,
    *,
    registered: Callable[[], Iterable[str]],
    is_registered: Callable[[str], bool],
    min_age_s: float = 60.0,
    limit: int = 100,
    full_every_s: float = FULL_EVERY_S,
    now: float | None = None,
) -> Scan:
    """The new ready shards under ``root`` since ``cursor`` (see module docstring).

    Args:
        root: Source root folder.
        cursor: The previous scan's cursor (None: a full reconciliation).
        registered: Every registered shard key (read by full reconciliations, and once by an
            incremental scan that finds more than :data:`MAX_LOOKUPS` new ready shards).
        is_registered: Whether one key is registered (asked for each new ready shard of an
            incremental scan, :data:`MAX_LOOKUPS` times at most).
        min_age_s: Quiet period after the last modification before a shard is ready.
        limit: Most new shards returned; the rest wait for the next scan.
        full_every_s: Seconds between full reconciliations.
        now: Current time (epoch seconds), for tests.

    Raises:
        FileNotFoundError: If ``root`` does not exist.
    """
    now = time.time() if now is None else now
    names = candidate_names(root)
    scan = Scan(listed=len(names))
    if cursor is None:
        scan.full = "first scan (no cursor)"
    elif cursor.full_at <= 0:
        scan.full = "a full reconciliation has a backlog left"
    elif now - cursor.full_at >= full_every_s:
        scan.full = f"periodic, every {full_every_s:.0f}s"
    else:
        behind = sum(1 for n in names if n <= cursor.after)
        if behind != cursor.behind:
            scan.full = f"{behind - cursor.behind:+d} names at or before the cursor"
    if scan.full or cursor is None:
        known = set(registered())
        todo = sorted(n for n in names if n not in known)
        after, pending = "", []
    else:
        alive = (p for p in cursor.pending if os.path.lexists(root / p))  # vanished: dropped
        todo = sorted({*alive, *(n for n in names if n > cursor.after)})
        after, pending = cursor.after, []
    lookups: list[str] = []
    known_now: set[str] | None = None

    def is_new(name: str) -> bool:
        """Not registered: a lookup each, or one read of them all past MAX_LOOKUPS."""
        nonlocal known_now
        if scan.full:
            return True  # todo holds unregistered names only
        if known_now is None and len(lookups) >= MAX_LOOKUPS:
            known_now = set(registered())
        if known_now is not None:
            return name not in known_now
        lookups.append(name)
        return not is_registered(name)

    stopped = False
    for i, name in enumerate(todo):
        if len(scan.new) >= limit or len(pending) >= MAX_PENDING:
            stopped = True
            pending.extend(n for n in todo[i:] if n <= after)  # not inspected: still pending
            break
        info = inspect_shard(root / name, min_age_s=min_age_s, now=now)
        scan.inspected += 1
        after = max(after, name)
        if info is None:
            continue
        if not info.ready:
            scan.waiting.append(info)
            pending.append(name)
        elif is_new(name):
            scan.new.append(info)
    if scan.full:
        # complete: everything up to the greatest name is handled; else the next scan is full
        after = max(names, default="") if not stopped else after
        full_at = now if not stopped else 0.0
    else:
        full_at = cursor.full_at if cursor is not None else now
    scan.cursor = ScanCursor(
        after=after,
        pending=tuple(pending),
        behind=sum(1 for n in names if n <= after),
        full_at=full_at,
    )
    return scan
