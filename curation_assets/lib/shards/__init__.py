r"""Shards: discovering them under a source root and enumerating their items.

A shard is one entry directly under the source root:

* a **folder** of images (searched recursively); ``name.txt`` beside ``name.jpg`` is its
  caption, ``name.json`` its metadata (a ``caption`` key is used when there is no ``.txt``);
* a **WebDataset-style tar** (``.tar``, ``.tar.gz``, ``.tgz``): members sharing a key (the path
  up to the first dot of the basename) form one sample, ``KEY.txt`` / ``KEY.json`` as above;
* a **manifest** (``.csv`` or ``.parquet``) with a ``path`` column (relative paths are relative
  to the manifest's folder) and an optional ``caption`` column.

The shard's key (its Dagster partition key) is the entry's name, e.g. ``shard-001.tar``.

**When is a shard ready?** Writers are expected to either write under a temporary name and
rename when done, or to finish with a marker. Concretely a shard is *not* picked up while:

* its name starts with ``.`` or ``_`` (hidden / staging, e.g. ``_manifest_images``), or ends in
  ``.tmp``, ``.part``, ``.partial``, ``.incomplete``, ``.inprogress`` or ``.crdownload``;
* it is a folder with no files;
* the newest modification time among its files is younger than ``min_age_s`` seconds
  (the writer may still be appending), unless a folder holds a ``_SUCCESS`` marker file, which
  marks it complete at once.

**Watching a root of 10^5+ shards.** :func:`scan_shards` (``scan.py``) lists the root once per
sensor tick and inspects only the names after a cursor, so a tick costs the new entries, not
all of them; late names that sort before the cursor trigger a full reconciliation.

Shards are treated as immutable once registered: to re-ingest a changed shard, re-materialize
its partition. A tar or manifest entry that is not a regular file (a FIFO, a device, a dangling
symlink) is never ready.

**Hostile inputs.** Reading a shard never blocks, never reads outside the shard, and never
loses the rest of a shard to one bad input; every refused input is an :class:`Item` with an
``error`` (quarantined by ingest):

* *Only regular files are read.* A file is opened with ``O_NONBLOCK | O_NOFOLLOW`` and checked
  with ``fstat`` on the open descriptor; FIFOs, devices, sockets and folders are
  ``not_regular_file`` (checked with ``stat`` first, so they are not even opened). At most
  ``max_file_bytes + 1`` bytes are read whatever ``st_size`` says (``/dev/zero``-like files
  report 0), so a file over the cap is ``too_large_file``.
* *Inputs stay inside their root.* The root of a folder shard is the folder itself; the root
  of a manifest is the folder holding the manifest (the source root), so a manifest may list
  images of any folder under the source root (e.g. ``_manifest_images/``). Relative manifest
  paths are relative to that folder. A path that resolves (``..``, absolute paths, symlinks)
  outside the root and outside every ``allowed_roots`` entry of :func:`iter_items` is
  ``outside_root`` and is not read. Symlinked sub-folders of a folder shard are not followed.
* *File names must be UTF-8.* A name that is not (Python surrogate escapes) or that holds a NUL
  byte is ``bad_file_name``; its ``source_uri`` shows the bytes with backslash escapes
  (``bad\xff.jpg``). Such a file is its own input: it is never grouped with sidecars.
* *Captions are capped.* A caption longer than ``max_caption_bytes`` (UTF-8) is truncated at a
  character boundary, from a ``.txt``/``.json`` sidecar, a tar sidecar member or a manifest
  column alike, and the truncation is recorded in :attr:`Item.notes`. A ``.txt`` sidecar is
  read only up to the cap (plus a little slack for trailing blanks); a ``.json`` sidecar up to
  ``max_file_bytes``. Undecodable bytes in a ``.txt`` become U+FFFD and an unparseable ``.json``
  gives no caption, each with a note; a sidecar that cannot be read at all (FIFO, outside the
  root, too large) is quarantined as its own input and the image is kept with a note.
"""

from curation_assets.lib.shards.discover import (
    DEFAULT_MAX_CAPTION_BYTES,
    DEFAULT_MAX_FILE_BYTES,
    IN_PROGRESS_SUFFIXES,
    MANIFEST_SUFFIXES,
    SHARD_KEY_PATTERN,
    SUCCESS_MARKER,
    TAR_SUFFIXES,
    ShardError,
    ShardInfo,
    ShardKind,
    discover_shards,
    inspect_shard,
    shard_info,
    shard_kind,
    source_fingerprint,
)
from curation_assets.lib.shards.read import (
    Item,
    cap_caption,
    escape_text,
    is_utf8,
    iter_items,
    manifest_root,
    read_manifest,
)
from curation_assets.lib.shards.scan import Scan, ScanCursor, candidate_names, scan_shards
from curation_assets.lib.shards.source import ShardReader

__all__ = [
    "DEFAULT_MAX_CAPTION_BYTES",
    "DEFAULT_MAX_FILE_BYTES",
    "IN_PROGRESS_SUFFIXES",
    "MANIFEST_SUFFIXES",
    "SHARD_KEY_PATTERN",
    "SUCCESS_MARKER",
    "TAR_SUFFIXES",
    "Item",
    "ShardError",
    "ShardInfo",
    "ShardKind",
    "ShardReader",
    "Scan",
    "ScanCursor",
    "candidate_names",
    "cap_caption",
    "discover_shards",
    "escape_text",
    "inspect_shard",
    "is_utf8",
    "iter_items",
    "manifest_root",
    "read_manifest",
    "scan_shards",
    "shard_info",
    "shard_kind",
    "source_fingerprint",
]

# Errors and records are public here: messages and reprs name this module, not a submodule.
for _public in (ShardError, ShardInfo, Item):
    _public.__module__ = __name__
