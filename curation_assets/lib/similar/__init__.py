"""Similarity search and uniqueness over a persisted faiss index per shard.

* :mod:`~curation_assets.lib.similar.index`: the shared coarse quantizer, one ``IndexIVFFlat``
  file per shard written atomically with a Delta manifest (``similarity_index``), and the
  search over every shard file with a running top-k merge.
* :mod:`~curation_assets.lib.similar.uniqueness`: the per-image score (distance to the k-th
  nearest other image), its figures and check.
* :mod:`~curation_assets.lib.similar.run`: one shard's indexing and scoring, thumbnails.
* :mod:`~curation_assets.lib.similar.query`: ``curation similar``'s targets (file, id, text),
  results and HTML contact sheet.
"""

from curation_assets.lib.similar.index import (
    Neighbours,
    Quantizer,
    SimilarityIndexError,
    brute_force,
    embedding_pool,
    files_root_for,
    load_quantizer,
    manifest,
    publish_shard,
    quantizer_frame,
    search,
)
from curation_assets.lib.similar.uniqueness import (
    DEFAULT_K,
    brute_force_uniqueness,
    uniqueness_check,
    uniqueness_figures,
)

__all__ = [
    "DEFAULT_K",
    "Neighbours",
    "Quantizer",
    "SimilarityIndexError",
    "brute_force",
    "brute_force_uniqueness",
    "embedding_pool",
    "files_root_for",
    "load_quantizer",
    "manifest",
    "publish_shard",
    "quantizer_frame",
    "search",
    "uniqueness_check",
    "uniqueness_figures",
]
