"""``curation similar TARGET``: what the target is, its vector, its neighbours, a contact sheet.

A target is, in this order:

1. an existing **file**: its sha256 is looked up; an image of the corpus uses its stored
   embedding, any other image is embedded with the configured embedder;
2. an **image_id** (64 hex characters, or a unique prefix of at least 8, as the contact sheets
   and the UI show them): its stored embedding;
3. otherwise a **text query**, embedded with the embedder's text tower (open_clip models have
   one; the default EfficientNet embedder has none, and the message names the setting).

Looking an id up scans the ``image_id`` column of ``image_embeddings`` (Delta statistics do not
prune random hashes): 64 bytes per image, seconds at 10⁸. The neighbours' ``source_uri`` is
read from the ``raw_images`` partitions of the shards hit only.
"""

import html
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from curation_assets.lib.images import SourceReader, make_thumbnail
from curation_assets.lib.ingest import DecodeLimits, decode_image, sha256_hex
from curation_assets.lib.similar.index import SimilarityIndexError, search
from curation_assets.lib.storage import DeltaStore
from curation_assets.lib.tables import IMAGE_EMBEDDINGS, RAW_IMAGES
from curation_assets.lib.vectors import embedding_matrix

if TYPE_CHECKING:
    from curation_assets.lib.embed import Embedder

ID_PATTERN = re.compile(r"[0-9a-f]{8,64}")

NO_TEXT_TOWER = (
    "{model} has no text tower, so a text query cannot be embedded. Text queries need an "
    "open_clip embedder: set the `embedder` resource's backend to 'open_clip' (and "
    "model_name/pretrained), re-embed and re-index the shards, and pass the same model to "
    "`curation similar --backend open_clip --model ... --pretrained ...`. Image paths and "
    "image ids work with any embedder."
)


@dataclass(frozen=True)
class Target:
    """A resolved query.

    Attributes:
        kind: ``image_id``, ``corpus_file`` (a file whose image is in the corpus),
            ``new_file`` (embedded now) or ``text``.
        label: What the user asked for, for printing.
        vector: (1, d) float32, L2-normalized.
        model_id: The model of ``vector`` (None for the stored vector of a corpus image).
        image_id: The image's id when it is in the corpus (excluded from its results).
        source_uri: Where the query image is (a path or corpus URI), for the contact sheet.
    """

    kind: str
    label: str
    vector: np.ndarray
    model_id: str | None
    image_id: str | None = None
    source_uri: str | None = None


def stored_embedding(store: DeltaStore, id_or_prefix: str) -> pl.DataFrame:
    """Rows of ``image_embeddings`` whose id is ``id_or_prefix`` or starts with it."""
    lf = store.scan(IMAGE_EMBEDDINGS).select("image_id", "shard", "model_id", "embedding")
    cond = (
        pl.col("image_id") == id_or_prefix
        if len(id_or_prefix) == 64
        else pl.col("image_id").str.starts_with(id_or_prefix)
    )
    return lf.filter(cond).unique("image_id").collect()


def _from_row(
    store: DeltaStore, row: pl.DataFrame, kind: str, label: str, uri: str | None
) -> Target:
    """A target from its ``image_embeddings`` row (its ``source_uri`` read from its shard)."""
    image_id = str(row["image_id"][0])
    if uri is None:
        shard = str(row["shard"][0])
        raw = store.read(RAW_IMAGES, shards=[shard], columns=["image_id", "source_uri"])
        match = raw.filter(pl.col("image_id") == image_id)["source_uri"]
        uri = str(match[0]) if match.len() else None
    return Target(kind, label, embedding_matrix(row["embedding"]), None, image_id, uri)


def resolve_target(
    store: DeltaStore, target: str, load_embedder: Callable[[], "Embedder"]
) -> Target:
    """Turn the user's TARGET into a query vector (see the module docstring for the order).

    Raises:
        SimilarityIndexError: An id that matches no image or several, or a file that does not
            decode as an image.
        EmbedderConfigError: A text query for an embedder without a text tower (the message
            names the setting to change).
    """
    path = Path(target).expanduser()
    if path.is_file():
        data = path.read_bytes()
        found = stored_embedding(store, sha256_hex(data))
        if found.height:
            return _from_row(store, found, "corpus_file", target, str(path))
        decoded = decode_image(data, DecodeLimits())
        if decoded.image is None:
            reason, detail = decoded.error or ("not_an_image", "")
            msg = f"{target}: not a readable image ({reason}: {detail})"
            raise SimilarityIndexError(msg)
        embedder = load_embedder()
        vector = embedder.encode_images(embedder.preprocess(decoded.image).unsqueeze(0))
        return Target("new_file", target, vector, embedder.model_id, None, str(path))
    if ID_PATTERN.fullmatch(target):
        found = stored_embedding(store, target)
        if found.height == 1:
            return _from_row(store, found, "image_id", target, None)
        if found.height > 1:
            shown = ", ".join(found["image_id"].head(5).to_list())
            msg = f"{target!r} is a prefix of {found.height} image ids ({shown}…): give more of it"
            raise SimilarityIndexError(msg)
        msg = (
            f"no image with id {target!r} in image_embeddings, and {target!r} is not a file; "
            "for a text query, use words"
        )
        raise SimilarityIndexError(msg)
    embedder = load_embedder()
    if not embedder.has_text_tower:
        from curation_assets.lib.embed import EmbedderConfigError

        raise EmbedderConfigError(NO_TEXT_TOWER.format(model=embedder.model_id))
    return Target("text", target, embedder.encode_text([target]), embedder.model_id)


def similar_images(store: DeltaStore, target: Target, k: int, *, nprobe: int) -> pl.DataFrame:
    """The ``k`` nearest indexed images of ``target`` (itself excluded), ranked.

    Returns:
        ``rank, image_id, shard, similarity, source_uri, caption``; fewer rows when the index
        holds fewer images.
    """
    want = k + (1 if target.image_id else 0)
    hits = search(store, target.vector, want, nprobe=nprobe, model_id=target.model_id)
    rows = [
        (i, s, float(sim))
        for i, s, sim in zip(hits.image_ids[0], hits.shards[0], hits.similarity[0], strict=False)
        if i != target.image_id
    ][:k]
    frame = pl.DataFrame(
        rows,
        schema={"image_id": pl.String, "shard": pl.String, "similarity": pl.Float32},
        orient="row",
    ).with_row_index("rank", offset=1)
    if frame.is_empty():
        none = pl.lit(None, pl.String)
        return frame.with_columns(source_uri=none, caption=none)
    shards = sorted(set(frame["shard"]))
    raw = store.read(RAW_IMAGES, shards=shards, columns=["image_id", "source_uri", "caption"])
    raw = raw.unique("image_id")
    return frame.join(raw, on="image_id", how="left").sort("rank")


_CSS = """
body{font-family:sans-serif;margin:16px}
.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{width:190px;border:1px solid #ccc;padding:6px;font-size:12px}
.card img{max-width:180px;max-height:180px;display:block;margin:auto}
.query{border:2px solid #246}
.id{font-family:monospace}
.missing{height:120px;background:#eee;color:#900;padding:4px}
.uri{color:#555;word-break:break-all}
"""


def _img_html(read: Callable[[str], bytes], uri: str | None, px: int) -> str:
    import base64

    if uri is None:
        return '<div class="missing">no image (text query)</div>'
    try:
        data = base64.b64encode(make_thumbnail(read(uri), px)).decode("ascii")
    except (OSError, ValueError, KeyError) as exc:
        return f'<div class="missing">image unavailable<br>{html.escape(str(exc))}</div>'
    return f'<img alt="" src="data:image/jpeg;base64,{data}">'


def write_contact_sheet(
    target: Target, results: pl.DataFrame, path: str | Path, *, px: int = 160
) -> Path:
    """One self-contained HTML page: the query, then each neighbour with rank, score, id, uri.

    Memory: one image's bytes at a time plus the thumbnails.
    """
    out = io.StringIO()
    out.write('<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">')
    out.write(f"<title>similar: {html.escape(target.label)}</title><style>{_CSS}</style></head>")
    out.write(f"<body><h1>Images similar to {html.escape(target.label)}</h1>")
    out.write(f"<p>query: {html.escape(target.kind)}; {results.height} neighbours by cosine.</p>")
    with SourceReader() as reader:
        out.write('<div class="grid"><div class="card query">')
        out.write(_img_html(reader.read, target.source_uri, px))
        out.write(f"<div><b>query</b> ({html.escape(target.kind)})</div></div>")
        for rec in results.iter_rows(named=True):
            out.write('<div class="card">')
            out.write(_img_html(reader.read, rec["source_uri"], px))
            out.write(
                f"<div>#{rec['rank']} · cosine {rec['similarity']:.4f}</div>"
                f'<div class="id" title="{html.escape(rec["image_id"])}">'
                f"{html.escape(rec['image_id'][:12])}</div>"
                f'<div class="uri">{html.escape(str(rec["source_uri"]))}</div></div>'
            )
        out.write("</div></body></html>\n")
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(out.getvalue(), encoding="utf-8")
    return dest
