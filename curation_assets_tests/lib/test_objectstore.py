"""lib/objectstore: storage options from the environment, and files on a folder or on S3 (moto)."""

import threading
from pathlib import Path

import polars as pl
import pytest

from curation_assets.lib import objectstore as ost
from curation_assets.lib.errors import ConfigError
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import Column, TableSpec
from curation_assets_tests.servers_s3 import SECRET, S3Server, s3_server  # noqa: F401

pytestmark = pytest.mark.cluster


def test_options_from_aws_variables_and_the_json_variable_which_wins():
    env = {
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "from-aws",
        "AWS_REGION": "eu-west-1",
        "HOME": "/x",
        ost.STORAGE_OPTIONS_ENV: '{"aws_secret_access_key": "from-json", "AWS_ALLOW_HTTP": true}',
    }
    assert ost.storage_options_from_env(env) == {
        "AWS_ACCESS_KEY_ID": "id",
        "AWS_SECRET_ACCESS_KEY": "from-json",
        "AWS_REGION": "eu-west-1",
        "AWS_ALLOW_HTTP": "True",
    }
    assert ost.storage_options_from_env({}) == {}


def test_a_malformed_json_variable_is_a_config_error_that_does_not_quote_it():
    with pytest.raises(ConfigError, match=ost.STORAGE_OPTIONS_ENV) as err:
        ost.storage_options_from_env({ost.STORAGE_OPTIONS_ENV: '["hunter2"]'})
    assert "hunter2" not in str(err.value)


def test_store_of_an_s3_root_takes_the_environment_and_never_shows_the_secret(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    store = DeltaStore("s3://bucket/root", {"AWS_REGION": "us-east-1"})
    assert store.storage_options["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert store.storage_options["AWS_REGION"] == "us-east-1"
    assert SECRET not in repr(store)
    assert DeltaStore("/tmp/local-root").storage_options == {}  # a folder needs none


def test_join_relative_and_remote():
    assert ost.join("s3://b/p/", "x", "y.faiss") == "s3://b/p/x/y.faiss"
    assert ost.join("/a/b", "c") == "/a/b/c"
    assert ost.relative_to("s3://b/p/x/y", "s3://b/p") == "x/y"
    assert ost.relative_to("/a/b/c", "/a/b/") == "c"
    assert ost.relative_to("/elsewhere/c", "/a/b") is None
    assert ost.is_remote("s3://b") and not ost.is_remote("file:///a") and not ost.is_remote("/a")


def test_other_schemes_are_refused_with_the_reason():
    with pytest.raises(ost.UnsupportedStoreError, match="gs://"):
        ost.write_bytes("gs://bucket/x", b"1", {})


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path: Path) -> tuple[str, dict[str, str]]:
    """A root of each kind, with its storage options."""
    if request.param == "local":
        return str(tmp_path / "root"), {}
    server: S3Server = request.getfixturevalue("s3_server")
    return server.uri(f"files-{tmp_path.name}"), server.options


def test_file_operations(root, tmp_path: Path):
    base, options = root
    a = ost.join(base, "d", "a.bin")
    assert ost.stat(a, options) is None and not ost.exists(a, options)
    ost.write_bytes(a, b"hello", options)
    stamp = ost.stat(a, options)
    assert stamp is not None and stamp.size == 5 and stamp.mtime_ns > 0
    assert ost.read_bytes(a, options) == b"hello"
    local = tmp_path / "big.bin"
    local.write_bytes(b"z" * (3 << 20))  # several copy chunks
    ost.upload(local, ost.join(base, "d", "e", "big.bin"), options)
    assert ost.list_names(ost.join(base, "d"), options) == ["a.bin", "e"]
    assert ost.list_names(ost.join(base, "missing"), options) == []
    back = ost.download(ost.join(base, "d", "e", "big.bin"), tmp_path / "back.bin", options)
    assert back.read_bytes() == local.read_bytes()
    with ost.local_copy(a, options, tmp_path) as copy:
        assert copy.read_bytes() == b"hello"
    assert ost.delete_file(a, options) and not ost.delete_file(a, options)
    assert ost.delete_tree(ost.join(base, "d"), options)
    assert ost.list_names(base, options) == []


SPEC = TableSpec(
    name="t",
    description="test table",
    columns=(Column("shard", pl.String, "the shard"), Column("n", pl.Int64, "a number")),
)


def test_delta_on_s3_commits_concurrently_time_travels_and_leases(s3_server: S3Server):  # noqa: F811
    store = DeltaStore(s3_server.uri("delta-lib"), s3_server.options)
    store.replace_shard(SPEC, "s0", pl.DataFrame({"shard": ["s0"], "n": [0]}))
    errors: list[BaseException] = []

    def write(shard: str) -> None:
        try:
            other = DeltaStore(s3_server.uri("delta-lib"), s3_server.options)
            for i in range(3):
                other.replace_shard(SPEC, shard, pl.DataFrame({"shard": [shard], "n": [i]}))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"s{k}",)) for k in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # every commit landed once (conditional put: no version written twice)
    assert store.version("t") == 1 + 6
    got = store.read(SPEC).sort("shard")
    assert got.to_dicts() == [
        {"shard": "s0", "n": 0},
        {"shard": "s1", "n": 2},
        {"shard": "s2", "n": 2},
    ]
    assert store.read(SPEC, version=1).to_dicts() == [{"shard": "s0", "n": 0}]
    with store.lock("test"):
        assert s3_server.keys("delta-lib/_locks/leases/_delta_log/")
