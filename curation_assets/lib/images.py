"""Image bytes by ``source_uri``, thumbnails, decoded items: shared by every stage reading images.

:class:`SourceReader` reads a plain path or a tar member (``tarpath#member``, the URIs ingest
writes); :func:`make_thumbnail` decodes safely (ingest's limits) and shrinks to a JPEG. Used by
the label-queue export, the dedup report and the curated-dataset export.
:func:`iter_prepared` hashes, decodes and transforms a shard's items on threads, in order: the
embedder and the pretrained scorers read shards through it.
"""

import io
import os
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from curation_assets.lib.ingest import DecodeLimits, decode_image, sha256_hex
from curation_assets.lib.parallel import ordered_map
from curation_assets.lib.shards import Item

THUMBNAIL_PX = 160
"""Longest side of thumbnails, in pixels."""


def _split_tar_uri(uri: str) -> tuple[str, str] | None:
    """``tarpath#member`` → (tarpath, member) when tarpath is an existing tar file."""
    start = 0
    while (i := uri.find("#", start)) != -1:
        head = uri[:i]
        if os.path.isfile(head) and tarfile.is_tarfile(head):
            return head, uri[i + 1 :]
        start = i + 1
    return None


class SourceReader:
    """Reads image bytes by ``source_uri``: a plain path or ``tarpath#member``.

    Keeps up to ``max_open_tars`` tar files open (member index in memory) so that many reads
    from one tar do not rescan it. Use as a context manager or call :meth:`close`.

    Args:
        max_bytes: Larger files/members raise instead of being read.
        max_open_tars: Tar files kept open.
    """

    def __init__(self, max_bytes: int = 64 << 20, max_open_tars: int = 4) -> None:
        self.max_bytes = max_bytes
        self.max_open_tars = max_open_tars
        self._tars: OrderedDict[str, tarfile.TarFile] = OrderedDict()

    def read(self, source_uri: str) -> bytes:
        """The bytes at ``source_uri``.

        Raises:
            FileNotFoundError: If the file (or tar member) does not exist.
            ValueError: If it is larger than ``max_bytes`` or a URL.
        """
        if "://" in source_uri and not source_uri.startswith("file://"):
            msg = f"{source_uri!r} is a URL; only local paths and tar members can be read"
            raise ValueError(msg)
        path = source_uri.removeprefix("file://")
        if os.path.isfile(path):
            size = os.path.getsize(path)
            if size > self.max_bytes:
                msg = f"{path} is {size} bytes, above the {self.max_bytes} byte limit"
                raise ValueError(msg)
            return Path(path).read_bytes()
        split = _split_tar_uri(path)
        if split is None:
            msg = f"{source_uri!r} is neither a file nor 'tarpath#member' of an existing tar"
            raise FileNotFoundError(msg)
        tar_path, member_name = split
        tar = self._tar(tar_path)
        try:
            member = tar.getmember(member_name)
        except KeyError as exc:
            msg = f"tar {tar_path} has no member {member_name!r}"
            raise FileNotFoundError(msg) from exc
        if member.size > self.max_bytes:
            msg = f"{source_uri} is {member.size} bytes, above the {self.max_bytes} byte limit"
            raise ValueError(msg)
        fh = tar.extractfile(member)
        if fh is None:
            msg = f"{source_uri} is not a regular file in the tar"
            raise FileNotFoundError(msg)
        return fh.read()

    def __call__(self, source_uri: str) -> bytes:
        """Same as :meth:`read` (the reader is a ``source_uri -> bytes`` callable)."""
        return self.read(source_uri)

    def _tar(self, path: str) -> tarfile.TarFile:
        if path in self._tars:
            self._tars.move_to_end(path)
            return self._tars[path]
        tar = tarfile.open(path, mode="r:*")
        self._tars[path] = tar
        while len(self._tars) > self.max_open_tars:
            _, old = self._tars.popitem(last=False)
            old.close()
        return tar

    def close(self) -> None:
        """Close the open tar files."""
        for tar in self._tars.values():
            tar.close()
        self._tars.clear()

    def __enter__(self) -> "SourceReader":
        """Enter: the reader itself."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Exit: close the tars."""
        self.close()


def read_source_bytes(source_uri: str, *, max_bytes: int = 64 << 20) -> bytes:
    """Read the bytes of one ``source_uri`` (a path, or ``tarpath#member``).

    Raises:
        FileNotFoundError: If it does not exist.
        ValueError: If it is too large or a remote URL.
    """
    with SourceReader(max_bytes=max_bytes) as reader:
        return reader.read(source_uri)


def make_thumbnail(data: bytes, max_px: int = THUMBNAIL_PX, quality: int = 80) -> bytes:
    """Decode safely (ingest's limits, EXIF orientation, RGB) and shrink to a JPEG.

    Raises:
        ValueError: If the bytes do not decode as an image (the reason is in the message).
    """
    decoded = decode_image(data, DecodeLimits())
    if decoded.image is None:
        reason, detail = decoded.error or ("not_an_image", "")
        msg = f"{reason}: {detail}"
        raise ValueError(msg)
    img = decoded.image.copy()
    img.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@dataclass
class Prepared:
    """One enumerated item after hashing, decoding and the caller's transform.

    Attributes:
        source_uri: Where the bytes came from.
        image_id: sha256 of the bytes (None when they could not be read).
        value: ``transform(decoded RGB image)``; None on failure.
        error: ``(reason, detail)`` when the image could not be read or decoded.
        wanted: False for items outside ``wanted``.
    """

    source_uri: str
    image_id: str | None
    value: Any = None
    error: tuple[str, str] | None = None
    wanted: bool = True


def _prepare(
    item: Item,
    transform: Callable[[Image.Image], Any],
    wanted: set[str] | None,
    limits: DecodeLimits,
) -> Prepared:
    if item.data is None:
        return Prepared(item.source_uri, None, error=item.error, wanted=wanted is None)
    image_id = sha256_hex(item.data)
    if wanted is not None and image_id not in wanted:
        return Prepared(item.source_uri, image_id, wanted=False)
    decoded = decode_image(item.data, limits)
    if decoded.image is None:
        return Prepared(item.source_uri, image_id, error=decoded.error)
    return Prepared(item.source_uri, image_id, value=transform(decoded.image))


def iter_prepared(
    items: Iterable[Item],
    transform: Callable[[Image.Image], Any],
    *,
    wanted: set[str] | None,
    workers: int,
    prefetch: int,
    limits: DecodeLimits = DecodeLimits(),  # noqa: B008
    on_skip: Callable[[], None] | None = None,
) -> Iterator[Prepared]:
    """Hash, decode and transform items on ``workers`` threads, in order, each sha256 once.

    Items outside ``wanted`` (when given) are not decoded; they and repeats of an image already
    yielded successfully are skipped (``on_skip`` is called for each). Failures are yielded
    with ``value=None`` and ``error`` set. Memory: ``prefetch`` items in flight.
    """
    seen: set[str] = set()
    prepared = ordered_map(
        lambda it: _prepare(it, transform, wanted, limits),
        items,
        workers=workers,
        prefetch=prefetch,
    )
    for p in prepared:
        if not p.wanted or (p.image_id is not None and p.image_id in seen):
            if on_skip is not None:
                on_skip()
            continue
        if p.value is not None and p.image_id is not None:
            seen.add(p.image_id)
        yield p
