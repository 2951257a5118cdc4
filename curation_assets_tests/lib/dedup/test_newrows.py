"""The one-pass search's indexes of new rows: the lists faiss' own ``add`` builds, sized once."""

import faiss
import numpy as np
import polars as pl
import pytest
from faiss.contrib.ivf_tools import add_preassigned, range_search_preassigned

from curation_assets.lib.dedup.newrows import NewRows, _fill_lists, _indexes

KS = (7, 3, 11, 1, 5)


def _new_rows(m: int, d: int, seed: int = 0) -> NewRows:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((m, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x[0, :3] = [6e-8, -3e-6, 0.0]  # float16 subnormals and a zero survive as they are
    clusters = np.stack([rng.integers(0, k, m) for k in KS], axis=1).astype(np.int32)
    frame = pl.DataFrame({"image_id": [f"i{r:04d}" for r in range(m)]})
    return NewRows(frame, x.astype(np.float16), clusters, KS)


def _faiss_add(new: NewRows, chunk: tuple[int, int]) -> list[faiss.IndexIVF]:
    """What the search built before: faiss encodes a float32 copy and adds row by row."""
    lo, hi = chunk
    x = np.ascontiguousarray(new.x[lo:hi], np.float32)
    ids = np.arange(lo, hi, dtype=np.int64)
    out = []
    for c, k in enumerate(new.ks):
        index = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatIP(x.shape[1]),
            x.shape[1],
            k,
            faiss.ScalarQuantizer.QT_fp16,
            faiss.METRIC_INNER_PRODUCT,
            False,
        )
        index.is_trained = True
        add_preassigned(index, x, new.clusters[lo:hi, c].astype(np.int64), ids)
        out.append(index)
    return out


def _lists(index: faiss.IndexIVF) -> list[tuple[np.ndarray, bytes]]:
    inv = index.invlists
    out = []
    for lst in range(index.nlist):
        n = inv.list_size(lst)
        ids = faiss.rev_swig_ptr(inv.get_ids(lst), n).copy() if n else np.zeros(0, np.int64)
        codes = bytes(faiss.rev_swig_ptr(inv.get_codes(lst), n * index.code_size)) if n else b""
        out.append((ids, codes))
    return out


@pytest.mark.parametrize("chunk", [(0, 300), (120, 260)])
def test_the_lists_hold_the_rows_faiss_add_puts_there_in_its_order(chunk):
    new = _new_rows(300, 32)
    mine, theirs = _indexes(new, chunk), _faiss_add(new, chunk)
    for a, b in zip(mine, theirs, strict=True):
        assert a.ntotal == b.ntotal == chunk[1] - chunk[0]
        for (ids_a, codes_a), (ids_b, codes_b) in zip(_lists(a), _lists(b), strict=True):
            np.testing.assert_array_equal(ids_a, ids_b)
            assert codes_a == codes_b
    # and a range search over them answers the same, distances included
    q = np.ascontiguousarray(new.x[:50], np.float32)
    for c, (a, b) in enumerate(zip(mine, theirs, strict=True)):
        a.nprobe = b.nprobe = 1
        lists = new.clusters[:50, c : c + 1].astype(np.int64)
        got = range_search_preassigned(a, q, -1.0, lists)
        want = range_search_preassigned(b, q, -1.0, lists)
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)


def test_a_row_outside_the_lists_is_an_error_not_a_dropped_row():
    new = _new_rows(20, 8)
    index = faiss.IndexIVFScalarQuantizer(
        faiss.IndexFlatIP(8), 8, 3, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT, False
    )
    codes = new.x.view(np.uint8)
    with pytest.raises(ValueError, match="outside the index's 3 lists"):
        _fill_lists(index, np.array([0, 1, 3] + [0] * 17, np.int32), codes, 0)
    with pytest.raises(ValueError, match="outside the index's 3 lists"):
        _fill_lists(index, np.array([-1] + [0] * 19, np.int32), codes, 0)
    assert index.ntotal == 0
