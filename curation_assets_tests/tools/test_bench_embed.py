"""`curation bench embed-workers` on a tiny input: every image embedded in each pass, counted."""

import json

import pytest

from curation_assets.cli import main
from curation_assets.lib.embed import load_embedder
from curation_assets.tools.bench_embed import Config, parse_config
from curation_assets_tests.conftest import TINY_CLIP_CONFIG


def test_config_strings_parse_and_bad_ones_say_the_form():
    assert parse_config("ray/4/2") == Config("ray", 4, 2)
    assert parse_config("local/1/16").name == "local/1/16"
    for bad in ("local/2/4", "ray/0/4", "gpu/1/1", "ray/1"):
        with pytest.raises(ValueError, match="config"):
            parse_config(bad)


def test_bench_embeds_every_image_twice_and_reports_the_ceiling(tmp_path, capsys):
    load_embedder.cache_clear()  # an earlier test may have loaded the same tiny model
    out = tmp_path / "bench.json"
    args = ["bench", "embed-workers", "--synthetic", "24", "--size", "96x64", "--shards", "3"]
    args += ["--backend", "open_clip", "--model", "tiny", "--pretrained", "none"]
    args += ["--model-config", str(TINY_CLIP_CONFIG), "--configs", "local/1/1", "local/1/2"]
    assert main([*args, "--work-dir", str(tmp_path / "w"), "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    assert report["input"] == {
        "files": 24,
        "shards": 3,
        "made_s": report["input"]["made_s"],
        "size": "96x64",
    }
    assert report["ingest"]["images"] == 24
    assert set(report["decode_ceiling"]) == {"threads_1", "threads_2"}
    for name in ("local/1/1", "local/1/2"):
        entry = report["configs"][name]
        for phase in ("cold", "warm"):
            figures = entry[phase]
            assert figures["images"] == 24 and figures["quarantined"] == 0
            assert figures["failed_checks"] == [] and figures["device"] == ["cpu"]
            assert 0 < figures["embed_loop_share"] <= 1
    # one process: the model loads once, in the first pass of the first configuration
    assert report["configs"]["local/1/1"]["cold"]["model_loads"] == 1
    assert report["configs"]["local/1/2"]["cold"]["model_loads"] == 0
