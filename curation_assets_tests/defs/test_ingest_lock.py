"""Ingest decodes and looks up its ids without the Delta root's ingest lock.

Only the catch-up on the shards written meanwhile and the writes hold it.
"""

import fcntl
import io
import os
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

import curation_assets.defs.ingest as ingest_defs
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import DUPLICATE_FILES, RAW_IMAGES
from curation_assets.runner import step_errors
from curation_assets_tests.defs.helpers import materialize_shard, resources


def _png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _lock_is_free(path: Path) -> bool:
    """Whether another holder could take the flock at ``path`` now (a new open file)."""
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


@pytest.mark.parametrize("method", ["index", "scan"])
def test_decoding_holds_no_lock_and_cross_shard_copies_still_collapse(
    tmp_path, monkeypatch, method
):
    shared = _png(0)
    for shard, seeds in (("a", [1, 2]), ("b", [3])):
        folder = tmp_path / "src" / shard
        folder.mkdir(parents=True)
        (folder / "shared.png").write_bytes(shared)
        for s in seeds:
            (folder / f"img{s}.png").write_bytes(_png(s))
    res = resources(tmp_path, tmp_path / "src")
    lock = tmp_path / "delta" / "_locks" / "ingest.lock"
    seen: list[tuple[str, bool, bool]] = []
    real_decode, real_collapse = ingest_defs.ingest_shard, ingest_defs.collapse_existing
    real_lookup = ingest_defs.lookup_now

    def decode(shard, **kwargs):
        seen.append(("decode", _lock_is_free(lock), kwargs["existing"] is None))
        return real_decode(shard, **kwargs)

    def lookup(store, key, ids, **kwargs):
        seen.append(("lookup", _lock_is_free(lock), True))
        found = real_lookup(store, key, ids, **kwargs)
        assert found.method == method  # the asset's config chose it
        return found

    def collapse(result, key, elsewhere):
        seen.append(("collapse", _lock_is_free(lock), True))
        return real_collapse(result, key, elsewhere)

    monkeypatch.setattr(ingest_defs, "ingest_shard", decode)
    monkeypatch.setattr(ingest_defs, "collapse_existing", collapse)
    monkeypatch.setattr(ingest_defs, "lookup_now", lookup)
    with dg.instance_for_test() as instance:
        for shard in ("a", "b"):
            result = materialize_shard(
                instance, res, shard, embed=False, ingest_config={"duplicate_lookup": method}
            )
            assert result.success, step_errors(result)
    assert (
        seen
        == [
            ("decode", True, True),  # decoding: nobody holds the lock
            ("lookup", True, True),  # the corpus-wide lookup of its ids: neither
            ("collapse", False, True),  # what changed since, and the writes: under the lock
        ]
        * 2
    )
    store = DeltaStore(str(tmp_path / "delta"))
    raw = store.read(RAW_IMAGES).sort("shard", "source_uri")
    assert raw.group_by("shard").len().sort("shard").rows() == [("a", 3), ("b", 1)]
    dup = store.read(DUPLICATE_FILES).row(0, named=True)
    assert store.read(DUPLICATE_FILES).height == 1
    assert (dup["shard"], dup["kept_shard"]) == ("b", "a")
    assert dup["source_uri"].endswith("b/shared.png")
    assert dup["kept_source_uri"].endswith("a/shared.png")
