"""lib/settings: where the Delta root and the export live, from the home or the environment."""

from pathlib import Path

import pytest

from curation_assets.lib.settings import default_export_root, resolve_paths, save_settings


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("CURATION_HOME", "CURATION_DELTA_ROOT", "CURATION_EXPORT_ROOT", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)


def test_a_local_home_keeps_delta_and_export_inside(tmp_path: Path):
    paths = resolve_paths(tmp_path)
    assert paths.delta_root == str(tmp_path.resolve() / "delta")
    assert paths.export_root == str(tmp_path.resolve() / "export")


def test_an_s3_delta_root_puts_the_export_in_the_bucket_too(tmp_path: Path):
    save_settings(tmp_path, delta_root="s3://bucket/prefix/delta/")
    paths = resolve_paths(tmp_path)
    assert paths.delta_root == "s3://bucket/prefix/delta/"
    assert paths.export_root == "s3://bucket/prefix/delta/_export"
    assert default_export_root(tmp_path, "/local/delta") == str(tmp_path / "export")


def test_an_export_root_setting_wins_and_folders_are_made_absolute(tmp_path: Path, monkeypatch):
    save_settings(tmp_path, delta_root="s3://bucket/d", export_root="s3://other/export")
    assert resolve_paths(tmp_path).export_root == "s3://other/export"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CURATION_HOME", str(tmp_path))
    monkeypatch.setenv("CURATION_EXPORT_ROOT", "out")
    assert resolve_paths().export_root == str(tmp_path.resolve() / "out")
    # a home named explicitly uses its own settings, not the environment
    assert resolve_paths(tmp_path).export_root == "s3://other/export"
