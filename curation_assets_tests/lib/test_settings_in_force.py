"""settings_in_force: unset settings are taken from the last commit, else the defaults."""

from datetime import UTC, datetime

from curation_assets.lib.commits import Commit, settings_in_force

DEFAULTS = {"webdataset": False, "shard_size": 1000, "seed": 0}


def _commit(**config) -> dict:
    return Commit("export", datetime(2026, 1, 1, tzinfo=UTC), {}, {}, config, {}).config


def test_first_run_takes_the_defaults_for_what_it_leaves_unset():
    got = settings_in_force({"webdataset": True, "shard_size": None, "seed": None}, None, DEFAULTS)
    assert got.values == {"webdataset": True, "shard_size": 1000, "seed": 0}
    assert got.inherited == () and got.defaulted == ("seed", "shard_size")
    assert "set by this run: webdataset" in got.describe()


def test_a_later_run_keeps_what_the_last_commit_recorded():
    last = _commit(webdataset=True, shard_size=30, seed=7, export_dir="/x")
    given = {"webdataset": None, "shard_size": 50, "seed": None, "export_dir": "/y"}
    got = settings_in_force(given, last, DEFAULTS)
    assert got.values == {"webdataset": True, "shard_size": 50, "seed": 7, "export_dir": "/y"}
    assert got.inherited == ("seed", "webdataset") and got.defaulted == ()


def test_an_explicit_false_or_zero_is_a_choice_not_unset():
    last = _commit(webdataset=True, shard_size=30, seed=7)
    got = settings_in_force({"webdataset": False, "seed": 0}, last, DEFAULTS)
    assert got.values == {"webdataset": False, "shard_size": 30, "seed": 0}
    assert got.inherited == ("shard_size",)


def test_a_setting_added_after_the_last_commit_takes_its_default():
    got = settings_in_force({}, _commit(webdataset=True), DEFAULTS)
    assert got.values == {"webdataset": True, "shard_size": 1000, "seed": 0}
    assert got.inherited == ("webdataset",) and got.defaulted == ("seed", "shard_size")
