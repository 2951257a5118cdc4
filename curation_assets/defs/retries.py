"""Retry policy: retry transient failures with backoff, never permanent ones.

Every asset (retried or not) is decorated with
:func:`fail_fast`: a :class:`~curation_assets.lib.errors.PermanentError` (a configuration
mistake, a shard unreadable as a whole, a full or read-only storage root) raised anywhere in
its body fails the step at once with the error's message, instead of three attempts over a
minute that end the same way. Anything else is retried.
"""

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import dagster as dg

from curation_assets.lib.errors import PermanentError

# Transient failures (object-store hiccups, a busy accelerator, a lost worker, a commit lost
# to a concurrent writer) are retried. Bad data never raises (it is quarantined), so a retry
# only repeats genuinely flaky work.
transient_retry = dg.RetryPolicy(max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL)

#: Errors no retry can fix. FileNotFoundError: a shard's source vanished.
PERMANENT_ERRORS = (PermanentError, FileNotFoundError)

F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def fail_fast_on_permanent_errors() -> Iterator[None]:
    """Turn errors that a retry cannot fix into a non-retried ``dg.Failure`` with the fix."""
    try:
        yield
    except PERMANENT_ERRORS as exc:
        raise dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc


def fail_fast(fn: F) -> F:
    """Run an asset's body (plain or generator) under :func:`fail_fast_on_permanent_errors`.

    Put it directly above the ``def``, below the ``@dg.asset``/``@dg.multi_asset``
    decorator; the signature Dagster inspects (context, config, resources) is unchanged.
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(*args: Any, **kwargs: Any) -> Iterator[Any]:
            with fail_fast_on_permanent_errors():
                yield from fn(*args, **kwargs)

        return generator  # type: ignore[return-value]

    @functools.wraps(fn)
    def plain(*args: Any, **kwargs: Any) -> Any:
        with fail_fast_on_permanent_errors():
            return fn(*args, **kwargs)

    return plain  # type: ignore[return-value]
