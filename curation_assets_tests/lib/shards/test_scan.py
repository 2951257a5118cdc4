import os

import pytest

from curation_assets.lib.shards import ScanCursor, candidate_names, scan_shards

NOW = 1_800_000_000.0


class Registry:
    """The registered shards, counting how often the scan reads them."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.full_reads = 0
        self.lookups = 0

    def registered(self) -> list[str]:
        self.full_reads += 1
        return list(self.keys)

    def is_registered(self, key: str) -> bool:
        self.lookups += 1
        return key in self.keys

    def scan(self, root, cursor, **kw):
        scan = scan_shards(
            root,
            cursor,
            registered=self.registered,
            is_registered=self.is_registered,
            min_age_s=60,
            now=NOW,
            **kw,
        )
        self.keys += [s.key for s in scan.new]
        return scan


def tars(root, *names, mtime=NOW - 3600):
    for name in names:
        (root / name).write_bytes(b"")
        os.utime(root / name, (mtime, mtime))


def test_only_entries_after_the_cursor_are_inspected(tmp_path):
    tars(tmp_path, *(f"t-{i:04d}.tar" for i in range(200)))
    (tmp_path / "README.md").write_text("not a shard")
    (tmp_path / "_staging").mkdir()
    reg = Registry()
    first = reg.scan(tmp_path, None, limit=1000)
    assert first.full and len(first.new) == 200 and reg.full_reads == 1
    idle = reg.scan(tmp_path, first.cursor)
    assert (idle.full, idle.new, idle.inspected, idle.listed) == ("", [], 0, 200)
    tars(tmp_path, "t-9999.tar")
    more = reg.scan(tmp_path, idle.cursor)
    assert [s.key for s in more.new] == ["t-9999.tar"] and more.inspected == 1
    assert reg.full_reads == 1 and reg.lookups == 1  # registered partitions never listed again


def test_a_late_name_before_the_cursor_triggers_a_full_reconciliation(tmp_path):
    tars(tmp_path, "b.tar", "d.tar")
    reg = Registry()
    cursor = reg.scan(tmp_path, None).cursor
    tars(tmp_path, "a.tar", "c.tar", "e.tar")
    scan = reg.scan(tmp_path, cursor)
    assert "+2 names" in scan.full and [s.key for s in scan.new] == ["a.tar", "c.tar", "e.tar"]
    assert reg.scan(tmp_path, scan.cursor).full == ""


def test_a_swap_before_the_cursor_waits_for_the_periodic_reconciliation(tmp_path):
    tars(tmp_path, "b.tar", "d.tar")
    reg = Registry()
    cursor = reg.scan(tmp_path, None).cursor
    (tmp_path / "b.tar").unlink()
    tars(tmp_path, "a.tar")  # same count at or before the cursor: unseen until the period
    assert reg.scan(tmp_path, cursor).new == []
    late = scan_shards(
        tmp_path,
        cursor,
        registered=reg.registered,
        is_registered=reg.is_registered,
        min_age_s=60,
        now=NOW + 3600,
    )
    assert late.full.startswith("periodic") and [s.key for s in late.new] == ["a.tar"]


def test_a_shard_being_written_stays_pending_until_ready_and_a_vanished_one_is_dropped(tmp_path):
    tars(tmp_path, "a.tar")
    tars(tmp_path, "b.tar", "gone.tar", mtime=NOW - 5)  # still being written
    reg = Registry()
    first = reg.scan(tmp_path, None)
    assert [s.key for s in first.new] == ["a.tar"]
    assert first.cursor.pending == ("b.tar", "gone.tar")
    assert {s.key for s in first.waiting} == {"b.tar", "gone.tar"}
    os.utime(tmp_path / "b.tar", (NOW - 3600, NOW - 3600))
    (tmp_path / "gone.tar").unlink()
    second = reg.scan(tmp_path, first.cursor)
    assert second.full == "-1 names at or before the cursor"  # gone.tar was counted
    assert [s.key for s in second.new] == ["b.tar"] and second.cursor.pending == ()


def test_pending_names_are_kept_across_incremental_scans(tmp_path):
    tars(tmp_path, "a.tar")
    tars(tmp_path, "b.tar", mtime=NOW - 5)
    reg = Registry()
    first = reg.scan(tmp_path, None)
    tars(tmp_path, "c.tar")
    second = reg.scan(tmp_path, first.cursor)  # incremental: b re-inspected, still busy
    assert second.full == "" and [s.key for s in second.new] == ["c.tar"]
    assert second.cursor.pending == ("b.tar",) and second.inspected == 2
    os.utime(tmp_path / "b.tar", (NOW - 3600, NOW - 3600))
    third = reg.scan(tmp_path, second.cursor)
    assert [s.key for s in third.new] == ["b.tar"] and third.cursor.pending == ()


def test_a_backlog_drains_limit_per_scan_without_repeats(tmp_path):
    tars(tmp_path, *(f"t-{i:03d}.tar" for i in range(250)))
    reg = Registry()
    cursor, sizes = None, []
    for _ in range(4):
        scan = reg.scan(tmp_path, cursor, limit=100)
        sizes.append(len(scan.new))
        cursor = scan.cursor
    assert sizes == [100, 100, 50, 0] and len(set(reg.keys)) == 250
    tars(tmp_path, *(f"u-{i:03d}.tar" for i in range(150)))  # an incremental backlog
    first = reg.scan(tmp_path, cursor, limit=100)
    second = reg.scan(tmp_path, first.cursor, limit=100)
    assert (first.full, second.full) == ("", "")
    assert (len(first.new), len(second.new), second.inspected) == (100, 50, 50)
    assert len(set(reg.keys)) == 400 == len(reg.keys)
    # a repeated scan from a stale cursor finds the registered ones registered: no repeats
    assert [s.key for s in reg.scan(tmp_path, cursor, limit=100).new] == []


def test_the_cursor_round_trips_and_garbage_means_a_full_scan():
    cursor = ScanCursor(after="x.tar", pending=("a.tar",), behind=7, full_at=NOW)
    assert ScanCursor.from_json(cursor.to_json()) == cursor
    assert ScanCursor.from_json(None) is None and ScanCursor.from_json("{oops") is None
    assert ScanCursor.from_json('{"after": "x"}') is None


def test_candidate_names_skip_staging_and_non_shards(tmp_path):
    (tmp_path / "folder").mkdir()
    tars(tmp_path, "a.tar", "b.tar.part", ".hidden.tar", "m.csv", "notes.txt")
    assert sorted(candidate_names(tmp_path)) == ["a.tar", "folder", "m.csv"]
    with pytest.raises(FileNotFoundError):
        candidate_names(tmp_path / "missing")


def test_a_burst_of_new_shards_reads_the_registered_keys_once_instead_of_one_by_one(tmp_path):
    from curation_assets.lib.shards.scan import MAX_LOOKUPS

    tars(tmp_path, "a.tar")
    reg = Registry()
    cursor = reg.scan(tmp_path, None).cursor
    tars(tmp_path, *(f"b-{i:03d}.tar" for i in range(MAX_LOOKUPS + 10)))
    reg.keys.append("b-020.tar")  # registered meanwhile (by `curation run`)
    scan = reg.scan(tmp_path, cursor, limit=1000)
    assert (reg.lookups, reg.full_reads) == (MAX_LOOKUPS, 2)
    assert len(scan.new) == MAX_LOOKUPS + 9 and "b-020.tar" not in {s.key for s in scan.new}
