"""A shard source as plain, picklable data: what a worker process needs to read a shard."""

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from curation_assets.lib.shards.discover import (
    DEFAULT_MAX_CAPTION_BYTES,
    DEFAULT_MAX_FILE_BYTES,
    shard_info,
)
from curation_assets.lib.shards.read import Item, iter_items


@dataclass(frozen=True)
class ShardReader:
    """The source root and the read limits, to enumerate a shard's inputs in any process.

    Attributes:
        root: Source root folder; each entry under it is one shard (must be reachable from
            the process that reads: a shared file system on a cluster).
        max_file_bytes: Files larger than this are ``too_large_file``.
        max_caption_bytes: Captions are truncated to this many UTF-8 bytes.
        allowed_roots: Folders besides the root that inputs may resolve into.
    """

    root: str
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_caption_bytes: int = DEFAULT_MAX_CAPTION_BYTES
    allowed_roots: tuple[str, ...] = ()

    def items(self, key: str) -> Iterator[Item]:
        """Every input of shard ``key``, read within the limits.

        Raises:
            FileNotFoundError: If the shard is gone from the root.
        """
        return iter_items(
            shard_info(Path(self.root), key),
            max_file_bytes=self.max_file_bytes,
            max_caption_bytes=self.max_caption_bytes,
            allowed_roots=self.allowed_roots,
        )
