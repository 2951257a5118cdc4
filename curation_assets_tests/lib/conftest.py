"""Fixtures of the lib tests: a small corpus of image files and tar members."""

import hashlib
import io
import tarfile

import polars as pl
import pytest

from curation_assets_tests.conftest import image_bytes


@pytest.fixture
def corpus(tmp_path) -> tuple[pl.DataFrame, list[str], str]:
    """4 image files in a folder shard and 2 in a tar shard; returns (known, ids, tar path)."""
    folder = tmp_path / "src" / "shard-a"
    folder.mkdir(parents=True)
    rows = []
    for i in range(4):
        p = folder / f"img{i}.jpg"
        data = image_bytes(i)
        p.write_bytes(data)
        rows.append((hashlib.sha256(data).hexdigest(), str(p)))
    tar_path = tmp_path / "src" / "shard-b.tar"
    with tarfile.open(tar_path, "w") as tar:
        for i in (10, 11):
            data = image_bytes(i, size=(300, 200))
            info = tarfile.TarInfo(f"sample{i}.jpg")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            rows.append((hashlib.sha256(data).hexdigest(), f"{tar_path}#sample{i}.jpg"))
    known = pl.DataFrame(rows, schema=["image_id", "source_uri"], orient="row")
    return known, [r[0] for r in rows], str(tar_path)
