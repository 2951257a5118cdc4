"""Retry policy: retry transient failures with backoff, never configuration mistakes."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from curation_assets.lib.embed import EmbedderConfigError
from curation_assets.lib.shards import ShardError
from curation_assets.lib.storage import StorageUnwritableError

# Transient failures (object-store hiccups, a busy accelerator, a lost worker) are retried.
# Bad data never raises (it is quarantined), so a retry only repeats genuinely flaky work.
transient_retry = dg.RetryPolicy(max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL)

PERMANENT_ERRORS = (ShardError, EmbedderConfigError, FileNotFoundError, StorageUnwritableError)


@contextmanager
def fail_fast_on_permanent_errors() -> Iterator[None]:
    """Turn errors that a retry cannot fix into a non-retried ``dg.Failure`` with the fix."""
    try:
        yield
    except PERMANENT_ERRORS as exc:
        raise dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc
