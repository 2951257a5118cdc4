"""Helpers of the classify and filter asset tests: a shard of reddish and bluish images."""

import io
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import numpy as np
from PIL import Image

from curation_assets.defs.classify import classifier_scores
from curation_assets.defs.filter import filter_shard
from curation_assets.defs.resources import Categories
from curation_assets.lib.storage import DeltaStore
from curation_assets_tests.defs.helpers import materialize_shard, resources

SPEC = """
categories:
  - name: reddish
    description: images dominated by warm red tones
    target_recall: 0.95
"""


def tinted(seed: int, red: bool) -> bytes:
    """A small JPEG dominated by red (``red``) or blue tones."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 90, (6, 6, 3)).astype(np.uint8)
    base[..., 0 if red else 2] += 150
    img = Image.fromarray(base).resize((96, 96), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def reddish_shard(
    tmp_path: Path,
) -> Iterator[tuple[dg.DagsterInstance, dict, DeltaStore, dict[str, bool]]]:
    """Shard ``s1``: 80 images, every second one red, ingested and embedded (EfficientNet).

    A fixture body: test modules declare ``setup = pytest.fixture(reddish_shard, name="setup")``.

    Yields:
        ``(instance, resources, store, truth)``; ``truth`` maps source_uri → is red.
    """
    src = tmp_path / "src" / "s1"
    src.mkdir(parents=True)
    truth = {}
    for i in range(80):
        red = i % 2 == 0
        path = src / f"img{i:03d}.jpg"
        path.write_bytes(tinted(i, red))
        truth[str(path.resolve())] = red
    spec = tmp_path / "categories.yaml"
    spec.write_text(SPEC)
    res = resources(tmp_path, tmp_path / "src", tiny_clip=False)
    res["categories"] = Categories(path=str(spec))
    with dg.instance_for_test() as instance:
        assert materialize_shard(instance, res, "s1").success
        yield instance, res, DeltaStore(str(tmp_path / "delta")), truth


def score_and_filter(instance: dg.DagsterInstance, res: dict) -> dg.ExecuteInProcessResult:
    """Materialize classifier_scores and the filter for shard ``s1``."""
    return dg.materialize(
        [classifier_scores, filter_shard],
        partition_key="s1",
        instance=instance,
        resources=res,
        raise_on_error=False,
    )
