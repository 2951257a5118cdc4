"""Memory: a step's budget, the groups of shards it holds at once, process hygiene.

:class:`MemoryBudget` sizes what a step holds; :func:`shard_batches` cuts shards into groups
of bounded rows; the rest keeps long streaming passes from fragmenting the heap.
"""

import ctypes
import ctypes.util
import functools
import logging
import os
import sys
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # glibc mallopt parameter


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, or None off Linux (or where the C library cannot be found)."""
    if not sys.platform.startswith("linux"):
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError as exc:
        logger.debug("C library unavailable: %s", exc)
        return None


def trim_heap() -> bool:
    """Hand freed heap pages back to the OS between a step's phases.

    glibc's (``malloc_trim``: numpy and faiss allocate there) and pyarrow's memory pool's
    (``release_unused``; only when pyarrow is loaded). A step's phases allocate through
    several allocators (polars has its own jemalloc): pages one keeps after a phase has freed
    its arrays are no use to the next phase's other allocator, so without a release the
    phases' peaks stack in RSS. Measured on the 1M incremental update (a 9k-row shard, peak
    RSS of the step's process, medians): ``dedup_job`` 663 → 610 MB (no change at 100k),
    ``weights_job`` 505 → 455 MB (100k: 406 → 387 MB). A call costs milliseconds.

    Returns:
        Whether glibc returned memory (False off glibc).
    """
    arrow = sys.modules.get("pyarrow")
    if arrow is not None:
        arrow.default_memory_pool().release_unused()
    libc = _libc()
    if libc is None or not hasattr(libc, "malloc_trim"):
        return False
    return bool(libc.malloc_trim(0))


#: The environment variable pyarrow reads, once, when it loads.
ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"

#: pyarrow's memory pool in the pipeline's processes, unless ``$ARROW_DEFAULT_MEMORY_POOL``
#: names another (see :func:`use_arrow_pool`).
ARROW_POOL = "system"


def use_arrow_pool(backend: str = ARROW_POOL) -> str:
    """Make ``backend`` pyarrow's memory pool here and in the processes this one starts.

    pyarrow's wheels default to mimalloc, which keeps the pages of a freed buffer for reuse by
    the thread that freed them: a streamed Parquet read (a batch decoded, used, dropped) then
    holds its largest batches' pages to the end of the step, and ``release_unused`` (in
    :func:`trim_heap`) gives few of them back. The system allocator (glibc) hands them back on
    :func:`trim_heap`. Measured 2026-12-03 (2 cores, AVX-512; ``curation bench scale --n N
    --shards 20 --batch 4``, one run per pool and N, each job a fresh process): the 1 %
    shard's ``assign_shard_job`` peaked 398 MB at 1M against 486 MB with mimalloc (+13 % over
    100k instead of +30 %), in process on a 10k-row shard 279-305 against 375-380 MB.

    An explicit ``$ARROW_DEFAULT_MEMORY_POOL`` wins (the user's, or a parent process's that
    this function set). The variable is set for the processes started from here (Ray workers,
    Dagster's run workers), where pyarrow reads it when it loads; if pyarrow is loaded here
    already, its pool is swapped as well (what pyarrow allocated before stays in the old pool
    until freed).

    Returns:
        The backend asked for (an unknown name makes pyarrow warn and keep its default).
    """
    chosen = os.environ.setdefault(ARROW_POOL_ENV, backend)
    arrow = sys.modules.get("pyarrow")
    if arrow is not None and arrow.default_memory_pool().backend_name != chosen:
        factory = getattr(arrow, f"{chosen}_memory_pool", None)
        try:
            pool = factory() if callable(factory) else None
        except NotImplementedError as exc:  # a backend this pyarrow build lacks
            logger.debug("pyarrow pool %s unavailable: %s", chosen, exc)
            pool = None
        if pool is not None:
            arrow.set_memory_pool(pool)
    return chosen


def limit_malloc_arenas(n: int = 2) -> bool:
    """Cap glibc's malloc arenas (like ``MALLOC_ARENA_MAX``), from inside the process.

    glibc gives each thread that allocates its own arena; decode threads that allocate and free
    image buffers then fragment memory, and RSS creeps up with the number of images (measured
    with ``curation bench embed`` on 1,500 photos: RSS growth after the first 10 % fell from
    103 MB to 38 MB with two arenas). Affects arenas created after the call, so call it
    before starting worker threads. Returns False (and does nothing) off glibc.
    """
    libc = _libc()
    if libc is None:
        return False
    try:
        ok = bool(libc.mallopt(_M_ARENA_MAX, n))
    except AttributeError as exc:
        logger.debug("mallopt unavailable: %s", exc)
        return False
    return ok


#: Default working-memory budget of one step (MiB): sized for a laptop, beside the ~0.7 GB of
#: imports (torch, faiss, dagster) every step process already holds.
DEFAULT_MEMORY_BUDGET_MB = 2048


class MemoryBudget:
    """How much working memory one step may hold for its data (not counting the interpreter).

    Every stage that could grow with the corpus sizes its batches from this budget: the rows it
    holds at once are ``budget // bytes_per_row`` (times the share of the budget it gives that
    buffer). Set by the ``compute`` resource (``memory_budget_mb``,
    ``$CURATION_MEMORY_BUDGET_MB``).
    """

    def __init__(self, mb: float = DEFAULT_MEMORY_BUDGET_MB) -> None:
        if not mb > 0:
            msg = f"memory budget {mb} MiB: expected a positive number of MiB"
            raise ValueError(msg)
        self.mb = float(mb)

    @property
    def bytes(self) -> int:
        """The budget in bytes."""
        return int(self.mb * 2**20)

    def rows(self, bytes_per_row: int, *, share: float = 1.0, minimum: int = 1) -> int:
        """Rows of ``bytes_per_row`` bytes that fit in ``share`` of the budget (≥ ``minimum``)."""
        if bytes_per_row <= 0:
            msg = f"bytes_per_row={bytes_per_row}: expected a positive size"
            raise ValueError(msg)
        return max(minimum, int(self.bytes * share) // bytes_per_row)

    def __repr__(self) -> str:  # noqa: D105
        return f"MemoryBudget({self.mb:g} MiB)"


def shard_batches(
    sizes: Mapping[str, int], shards: Sequence[str], max_rows: int, max_shards: int | None = None
) -> list[list[str]]:
    """Consecutive groups of ``shards`` of at most ``max_rows`` rows (a bigger shard alone).

    ``max_shards``: also at most that many shards a group (None: no such cap).
    """
    batches: list[list[str]] = []
    rows = 0
    for shard in shards:
        n = int(sizes.get(shard, 0))
        room = max_shards is None or (batches and len(batches[-1]) < max_shards)
        if batches and room and rows + n <= max_rows:
            batches[-1].append(shard)
            rows += n
        else:
            batches.append([shard])
            rows = n
    return batches
