"""Permanent errors fail a step at once; transient ones are retried (issue 12, item 6)."""

import dagster as dg
import pytest

from curation_assets.defs.classify import safety_classifiers
from curation_assets.defs.resources import Categories, Compute, DeltaStorage, ImageEmbedder
from curation_assets.defs.retries import fail_fast
from curation_assets.lib.deltawrite import StorageUnwritableError
from curation_assets.lib.errors import ConfigError, PermanentError, TransientError
from curation_assets.lib.storage import ConcurrentWriteError
from curation_assets_tests.conftest import TINY_CLIP_CONFIG


def _attempts(result: dg.ExecuteInProcessResult, step: str) -> int:
    starts = [e for e in result.all_events if e.step_key == step and e.is_step_start]
    return len(starts)


def _retry_events(result: dg.ExecuteInProcessResult) -> int:
    return sum(e.event_type_value == "STEP_UP_FOR_RETRY" for e in result.all_events)


def test_every_deliberate_error_is_in_one_family():
    from curation_assets.lib.classify import (
        CategorySpecError,
        EmbeddingMismatchError,
        LabelImportError,
        ScorerUnavailableError,
    )
    from curation_assets.lib.cluster import CentroidsError
    from curation_assets.lib.embed import EmbedderConfigError
    from curation_assets.lib.shards import ShardError

    for cls in (CategorySpecError, EmbedderConfigError, CentroidsError, EmbeddingMismatchError):
        assert issubclass(cls, ConfigError) and issubclass(cls, ValueError), cls
    for cls in (ShardError, LabelImportError, StorageUnwritableError, ScorerUnavailableError):
        assert issubclass(cls, PermanentError), cls
    assert issubclass(ConcurrentWriteError, TransientError)
    assert not issubclass(ConcurrentWriteError, PermanentError)


def test_a_bad_category_spec_fails_on_the_first_attempt(tmp_path):
    """safety_classifiers retries transient failures, but a broken spec is not retried."""
    bad = tmp_path / "categories.yaml"
    bad.write_text("categories:\n  - name: Not A Valid Name!\n    recall_target: 7\n")
    resources = {
        "delta": DeltaStorage(root_uri=str(tmp_path / "delta")),
        "categories": Categories(path=str(bad)),
        "compute": Compute(),
        "embedder": ImageEmbedder(
            backend="open_clip",
            model_name="tiny",
            pretrained="random",
            model_config_path=str(TINY_CLIP_CONFIG),
        ),
    }
    assert safety_classifiers.op.retry_policy is not None  # it would retry other errors
    with dg.instance_for_test() as instance:
        result = dg.materialize(
            [safety_classifiers], resources=resources, instance=instance, raise_on_error=False
        )
    assert not result.success
    assert _attempts(result, "safety_classifiers") == 1 and _retry_events(result) == 0
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert "CategorySpecError" in failure.event_specific_data.error.message  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        (ConfigError("seeds must be distinct"), 1),
        (StorageUnwritableError(28, "Delta root full"), 1),
        (FileNotFoundError("shard vanished"), 1),
        (ConcurrentWriteError("lost a commit race"), 3),
        (RuntimeError("flaky object store"), 3),
    ],
)
def test_permanent_errors_fail_at_once_and_others_retry(error, attempts):
    calls = []

    @dg.asset(retry_policy=dg.RetryPolicy(max_retries=2, delay=0))
    @fail_fast
    def flaky(context: dg.AssetExecutionContext):
        calls.append(1)
        yield dg.MaterializeResult()
        raise error

    with dg.instance_for_test() as instance:
        result = dg.materialize([flaky], instance=instance, raise_on_error=False)
    assert not result.success
    assert len(calls) == attempts
    assert _retry_events(result) == attempts - 1
