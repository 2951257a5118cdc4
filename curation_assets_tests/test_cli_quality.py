"""`curation quality` and `curation heads check` as a user runs them, on a small home."""

import json
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image
from safetensors.numpy import save_file

from curation_assets.lib.ingest import ingest_shard, write_ingest
from curation_assets.lib.shards import inspect_shard
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS
from curation_assets_tests.conftest import write_images
from curation_assets_tests.test_cli import curation

MODEL = "timm:test@random"


def _home(tmp_path: Path) -> tuple[Path, DeltaStore, pl.DataFrame]:
    src = tmp_path / "sources" / "s1"
    write_images(src, 6)
    Image.new("RGB", (300, 40), (3, 3, 3)).save(src / "strip.png")
    home = tmp_path / "home"
    store = DeltaStore(str(home / "delta"))
    shard = inspect_shard(src, min_age_s=0)
    assert shard is not None
    result = ingest_shard(shard, existing=lambda ids: pl.DataFrame())
    write_ingest(store, "s1", result)
    x = np.random.default_rng(0).normal(size=(result.raw.height, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    emb = pl.DataFrame(
        {
            "image_id": result.raw["image_id"],
            "shard": "s1",
            "embedding": x.tolist(),
            "model_id": MODEL,
            "dim": 8,
        }
    )
    store.replace_shard(IMAGE_EMBEDDINGS, "s1", emb)
    return home, store, result.raw


def test_quality_and_heads_check_commands(tmp_path):
    home, _, raw = _home(tmp_path)
    sheet = tmp_path / "sheet.html"
    proc = curation("quality", "--worst", "2", "--html", str(sheet), home=home)
    assert proc.returncode == 0, proc.stderr
    assert f"image_quality: {raw.height} images in 1 shards" in proc.stdout
    assert "strip.png" in proc.stdout and "odd_aspect" in proc.stdout
    odd = next(ln for ln in proc.stdout.splitlines() if ln.startswith("odd_aspect"))
    assert odd.split()[4] == "1"  # check, rule (3 words), flagged
    assert sheet.read_text().count("<img") >= 7
    bad = curation("quality", "--threshold", "blury=3", home=home)
    assert bad.returncode == 1 and "unknown quality checks" in bad.stderr

    rng = np.random.default_rng(1)
    tensors = {
        "net.0.weight": rng.normal(size=(3, 8)).astype(np.float32),
        "net.0.bias": np.zeros(3, np.float32),
        "net.2.weight": rng.normal(size=(1, 3)).astype(np.float32),
    }
    head = tmp_path / "aesthetic.safetensors"
    save_file(tensors, str(head), metadata={"embedding_model": MODEL})
    proc = curation("heads", "check", str(head), home=home)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["images"] == raw.height and report["head"]["layers"] == [[3, 8], [1, 3]]
    assert len(report["top"]) == 5 and 0 <= report["quantiles"]["p50"] <= 1
    save_file(tensors, str(head), metadata={"embedding_model": "open_clip:ViT-L-14@openai"})
    proc = curation("heads", "check", str(head), home=home)
    assert proc.returncode == 1
    assert "image_embeddings were made by 'timm:test@random'" in proc.stderr
