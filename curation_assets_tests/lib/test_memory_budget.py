"""MemoryBudget and DeltaStore.changed_shards: the contracts the corpus-scale stages share."""

import os
import platform
import subprocess
import sys

import polars as pl
import pytest

from curation_assets.lib.memory import (
    ARROW_POOL,
    ARROW_POOL_ENV,
    MemoryBudget,
    trim_heap,
    use_arrow_pool,
)
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import FILTERED_IMAGES as TABLE


def test_budget_rows_and_share():
    b = MemoryBudget(1)
    assert b.bytes == 2**20
    assert b.rows(1024) == 1024
    assert b.rows(1024, share=0.5) == 512
    assert b.rows(2**30, minimum=3) == 3
    with pytest.raises(ValueError, match="positive"):
        MemoryBudget(0)
    with pytest.raises(ValueError, match="bytes_per_row"):
        b.rows(0)


def _shard_rows(shard: str, n: int) -> pl.DataFrame:
    rows = pl.DataFrame({"image_id": [f"{shard}-{i}" for i in range(n)], "shard": [shard] * n})
    return rows.with_columns(
        [pl.lit(None).cast(c.dtype).alias(c.name) for c in TABLE.columns if c.name not in rows]
    )


def test_changed_shards_follows_the_log(tmp_path):
    store = DeltaStore(str(tmp_path))
    assert store.changed_shards(TABLE.name, None) == set()
    store.replace_shard(TABLE, "a", _shard_rows("a", 2))
    store.replace_shard(TABLE, "b", _shard_rows("b", 2))
    v = store.version(TABLE.name)
    assert store.changed_shards(TABLE.name, None) == {"a", "b"}
    assert store.changed_shards(TABLE.name, v) == set()
    store.replace_shard(TABLE, "b", _shard_rows("b", 3))
    store.replace_shard(TABLE, "c", _shard_rows("c", 1))
    assert store.changed_shards(TABLE.name, v) == {"b", "c"}
    assert set(store.shard_files(TABLE.name, v)) == {"a", "b"}


def test_positive_int_env_names_the_variable(monkeypatch):
    from curation_assets.lib.settings import positive_int_env

    monkeypatch.delenv("CURATION_TEST_N", raising=False)
    assert positive_int_env("CURATION_TEST_N", 7) == 7
    monkeypatch.setenv("CURATION_TEST_N", "12")
    assert positive_int_env("CURATION_TEST_N", 7) == 12
    for bad in ("0", "-3", "two"):
        monkeypatch.setenv("CURATION_TEST_N", bad)
        with pytest.raises(ValueError, match=r"CURATION_TEST_N=.*expected a whole number >= 1"):
            positive_int_env("CURATION_TEST_N", 7)


def test_shard_batches_bound_rows_and_optionally_shards():
    from curation_assets.lib.memory import shard_batches

    sizes = {"a": 5, "b": 5, "c": 9, "d": 1, "big": 30}
    assert shard_batches(sizes, ["a", "b", "c", "d"], 10) == [["a", "b"], ["c", "d"]]
    assert shard_batches(sizes, ["a", "big", "d"], 10) == [["a"], ["big"], ["d"]]  # alone
    assert shard_batches(sizes, ["d", "a", "b"], 100, max_shards=2) == [["d", "a"], ["b"]]
    assert shard_batches(sizes, ["missing", "d"], 1) == [["missing", "d"]]  # 0 rows
    assert shard_batches(sizes, [], 10) == []


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="malloc_trim is glibc's",
)
def test_trim_heap_returns_freed_pages_to_the_os():
    # 64 KiB blocks sit below glibc's mmap threshold: freed with every tenth kept, the holes
    # stay in the process (the heap's top cannot shrink past a live block) until a trim
    blocks = [bytearray(b"x" * 65_536) for _ in range(3000)]  # ~190 MiB, touched
    kept = blocks[::10]
    del blocks
    before = _rss_mb()
    assert trim_heap() is True
    after = _rss_mb()
    assert before - after > 100, (before, after)
    assert len(kept) == 300


def _pool_in_fresh_process(code: str, env_pool: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != ARROW_POOL_ENV}
    if env_pool is not None:
        env[ARROW_POOL_ENV] = env_pool
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


_SHOW_POOL = "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"


@pytest.mark.parametrize("pyarrow_first", [False, True])
def test_the_package_sets_pyarrows_pool_in_its_processes_and_their_children(pyarrow_first):
    # loaded before the package, pyarrow has read its default already: the pool is swapped
    first = "import pyarrow\n" if pyarrow_first else ""
    code = (
        f"{first}import curation_assets.lib, subprocess, sys\n{_SHOW_POOL}\n"
        f"subprocess.run([sys.executable, '-c', {_SHOW_POOL!r}], check=True)"
    )
    assert _pool_in_fresh_process(code, None).split() == [ARROW_POOL, ARROW_POOL]
    assert ARROW_POOL != "mimalloc"  # pyarrow's own default: the pool this replaces


def test_an_explicit_arrow_pool_wins():
    code = f"import curation_assets.lib\n{_SHOW_POOL}"
    assert _pool_in_fresh_process(code, "mimalloc") == "mimalloc"


def test_use_arrow_pool_swaps_a_loaded_pyarrows_pool(monkeypatch):
    import pyarrow as pa

    before = pa.default_memory_pool()
    monkeypatch.delenv(ARROW_POOL_ENV, raising=False)
    try:
        assert use_arrow_pool("mimalloc") == "mimalloc"
        assert pa.default_memory_pool().backend_name == "mimalloc"
        assert os.environ[ARROW_POOL_ENV] == "mimalloc"
    finally:
        pa.set_memory_pool(before)
