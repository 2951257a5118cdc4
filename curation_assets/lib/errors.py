"""The errors the pipeline raises on purpose, in one family.

Every deliberate error derives from :class:`CurationError` and says, by its class, whether a
retry can help:

* :class:`PermanentError` — the same call fails the same way until a person changes
  something: a configuration mistake (:class:`ConfigError`: a bad category spec, an embedder
  that cannot be built, centroids trained on another model), a shard unreadable as a whole, a
  storage root that is full or read-only. Dagster steps fail at once on these
  (``defs/retries.fail_fast``), with the message, instead of retrying for minutes.
* :class:`TransientError` — another attempt may succeed (a commit lost to a concurrent writer).
  Steps retry these under ``transient_retry``, like any unexpected error.

The concrete classes live beside the code that raises them (``ShardError`` in
``lib/shards``, ``CategorySpecError`` in ``lib/classify``, ...) and keep the builtin base
they always had (``ValueError``, ``OSError``, ``ImportError``), so existing ``except``
clauses keep working.
"""


class CurationError(Exception):
    """Base of every error the pipeline raises deliberately."""


class PermanentError(CurationError):
    """Retrying cannot fix it: a person must change the configuration, the input or the host."""


class ConfigError(PermanentError, ValueError):
    """A configuration mistake (a resource, a run config, a spec file, a missing prerequisite)."""


class TransientError(CurationError):
    """Another attempt may succeed (contention, a flaky dependency)."""
