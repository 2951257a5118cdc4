"""lib/explain without a pipeline: --as-of parsing, a path's shard, time travel on a tiny table."""

import datetime as dt
import time
from pathlib import Path

import polars as pl
import pytest

from curation_assets.lib.explain import AsOf, AsOfError, Snapshot, layout_shard, parse_as_of
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import QUARANTINE


def test_parse_as_of_takes_one_timestamp_and_table_pins():
    as_of = parse_as_of(["2025-01-31T12:00:00", "curated_dataset=12", "raw_images=0"])
    assert as_of.timestamp == dt.datetime(2025, 1, 31, 12, tzinfo=dt.UTC)
    assert dict(as_of.versions) == {"curated_dataset": 12, "raw_images": 0}
    assert parse_as_of([]).latest
    with pytest.raises(AsOfError, match="no table 'nope'"):
        parse_as_of(["nope=3"])
    with pytest.raises(AsOfError, match="already given"):
        parse_as_of(["2025-01-01", "2025-01-02"])
    with pytest.raises(AsOfError, match="ISO timestamp"):
        parse_as_of(["last week"])


def test_layout_shard_is_the_first_folder_under_the_root():
    root = Path("/data/src")
    assert layout_shard("/data/src/shard-000/sub/a.jpg", root) == "shard-000"
    assert layout_shard("/data/src/shard-001.tar#sample1.jpg", root) == "shard-001.tar"
    assert layout_shard("/data/src/_manifest_images/x/a.jpg", root) is None  # a manifest's
    assert layout_shard("/elsewhere/a.jpg", root) is None


def _row(shard: str, uri: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "shard": [shard],
            "source_uri": [uri],
            "stage": ["ingest"],
            "reason": ["zero_byte"],
            "detail": ["empty"],
            "image_id": [None],
            "quarantined_at": [dt.datetime.now(dt.UTC)],
        }
    )


def test_snapshot_resolves_timestamps_and_pins_per_table(tmp_path):
    store = DeltaStore(str(tmp_path / "delta"))
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    store.replace_shard(QUARANTINE, "a", _row("a", "/src/a/1.jpg"))
    v0 = store.version("quarantine")
    time.sleep(0.05)
    middle = dt.datetime.now(dt.UTC)
    time.sleep(0.05)
    store.replace_shard(QUARANTINE, "b", _row("b", "/src/b/1.jpg"))
    v1 = store.version("quarantine")
    assert v0 is not None and v1 is not None and v1 > v0
    assert Snapshot(store, AsOf()).version("quarantine") == v1
    assert Snapshot(store, AsOf(timestamp=before)).version("quarantine") is None  # not yet
    at_middle = Snapshot(store, AsOf(timestamp=middle))
    assert at_middle.version("quarantine") == v0
    rows, src = at_middle.read(QUARANTINE, shards=["b"], scope="shard=b")
    assert rows.is_empty() and src.version == v0
    rows, src = Snapshot(store, AsOf()).read(
        QUARANTINE, shards=["b"], where=[[("source_uri", "=", "/src/b/1.jpg")]]
    )
    assert rows.height == 1 and src.files == 1  # shard a's file is never opened
    pinned = Snapshot(store, AsOf(versions={"quarantine": v0}))
    assert pinned.version("quarantine") == v0 and pinned.version("raw_images") is None
    with pytest.raises(AsOfError, match=f"0..{v1}"):
        Snapshot(store, AsOf(versions={"quarantine": v1 + 1})).version("quarantine")


def test_a_timestamp_is_resolved_on_a_history_read_after_the_log_stopped_moving(
    tmp_path, monkeypatch
):
    """A history the log moved past (misnumbered by deltalake) is read again, not trusted."""
    from curation_assets.lib import deltalog

    store = DeltaStore(str(tmp_path / "delta"))
    store.replace_shard(QUARANTINE, "a", _row("a", "/src/a/1.jpg"))
    v0 = store.version("quarantine")
    now = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    real = deltalog.snapshot_history
    calls: list[int] = []

    def moved_once(table, limit):
        calls.append(limit)
        return None if len(calls) == 1 else real(table, limit)

    monkeypatch.setattr(deltalog, "snapshot_history", moved_once)
    assert Snapshot(store, AsOf(timestamp=now)).version("quarantine") == v0
    assert len(calls) == 2
    monkeypatch.setattr(deltalog, "snapshot_history", lambda table, limit: None)
    with pytest.raises(AsOfError, match="kept moving"):
        Snapshot(store, AsOf(timestamp=now)).version("quarantine")
