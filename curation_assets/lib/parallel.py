"""Bounded, order-preserving parallel map over a stream (threads)."""

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    fn: Callable[[T], R], items: Iterable[T], *, workers: int, prefetch: int
) -> Iterator[R]:
    """Apply ``fn`` to ``items`` on ``workers`` threads, yielding results in input order.

    At most ``prefetch`` results are in flight, so memory is bounded by ``prefetch`` items no
    matter how long the stream is. The input iterator is consumed on the calling thread.
    With ``workers <= 0`` it runs inline. Decoding (Pillow) and torch release the GIL, so
    threads overlap image decoding with the model's forward pass.
    """
    if workers <= 0:
        yield from map(fn, items)
        return
    prefetch = max(prefetch, workers)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="curation") as pool:
        pending: deque[Future[R]] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
