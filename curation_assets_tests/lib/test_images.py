import hashlib

import pytest

from curation_assets.lib.images import read_source_bytes


def test_read_source_bytes_paths_and_tar_members(corpus, tmp_path):
    known, _, tar_path = corpus
    for uri, image_id in zip(known["source_uri"], known["image_id"], strict=True):
        assert hashlib.sha256(read_source_bytes(uri)).hexdigest() == image_id
    with pytest.raises(FileNotFoundError, match="no member"):
        read_source_bytes(f"{tar_path}#nope.jpg")
    with pytest.raises(FileNotFoundError):
        read_source_bytes(str(tmp_path / "missing.jpg"))
    with pytest.raises(ValueError, match="URL"):
        read_source_bytes("https://example.com/a.jpg")
