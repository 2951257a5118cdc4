"""Files beside the Delta tables, on a local folder or an object store: one mechanism for all.

Delta tables go through deltalake (:mod:`curation_assets.lib.storage`); every *other* file the
pipeline keeps under a root that may be ``s3://bucket/prefix`` (the export's per-shard files,
the similarity index's faiss files) goes through this module, which wraps
``pyarrow.fs`` (``LocalFileSystem`` for folders, ``S3FileSystem`` for ``s3://``) built from the
same storage options as the Delta tables.

**Storage options come from the environment** (:func:`storage_options_from_env`), never from a
file of the home and never from Dagster config, so credentials are not written anywhere:

* the standard AWS variables (:data:`AWS_ENV`: ``AWS_ACCESS_KEY_ID``,
  ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_REGION``/``AWS_DEFAULT_REGION``,
  ``AWS_ENDPOINT_URL``, ``AWS_ALLOW_HTTP``), then
* ``CURATION_STORAGE_OPTIONS``: a JSON object of deltalake/object_store options (upper-case
  keys such as ``{"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ALLOW_HTTP": "true"}``),
  which overrides the variables above.

deltalake >= 1.0 commits to S3 with conditional put (``If-None-Match``): no lock service or
``AWS_S3_LOCKING_PROVIDER`` is needed (S3-compatible stores must support conditional put; moto
and AWS S3 do). Only ``file://``/plain paths and ``s3://`` have a file mechanism here; other
schemes (``gs://``, ``az://``) raise :class:`UnsupportedStoreError` when a non-Delta file is
written. Object stores have no rename: a file is one PUT (a reader sees the old object or the
new one, never a part), but a *set* of files is not replaced atomically; callers order their
writes (see ``lib/export/remote.py``).
"""

import contextlib
import io
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import pyarrow.fs as pafs

if TYPE_CHECKING:
    import polars as pl

from curation_assets.lib.errors import ConfigError

STORAGE_OPTIONS_ENV = "CURATION_STORAGE_OPTIONS"
"""Environment variable holding extra storage options as a JSON object."""
AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL",
    "AWS_ALLOW_HTTP",
)
"""Standard AWS variables read into the storage options when set."""
_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "KEY", "SAS", "CREDENTIAL")


class UnsupportedStoreError(ConfigError):
    """A non-Delta file was asked for on a scheme this module has no file system for."""


def storage_options_from_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Storage options from the standard AWS variables and ``CURATION_STORAGE_OPTIONS``.

    Raises:
        ConfigError: If ``CURATION_STORAGE_OPTIONS`` is not a JSON object (the message never
            quotes its value: it may hold a secret).
    """
    env = os.environ if env is None else env
    options = {k: env[k] for k in AWS_ENV if env.get(k)}
    raw = env.get(STORAGE_OPTIONS_ENV, "").strip()
    if raw:
        try:
            extra = json.loads(raw)
        except json.JSONDecodeError:
            extra = None
        if not isinstance(extra, dict):
            msg = f"{STORAGE_OPTIONS_ENV} must be a JSON object of storage options"
            raise ConfigError(msg)
        options.update({str(k).upper(): str(v) for k, v in extra.items()})
    return options


def redacted(options: Mapping[str, str]) -> dict[str, str]:
    """``options`` with every secret-looking value replaced by ``***`` (for messages)."""
    return {
        k: ("***" if any(w in k.upper() for w in _SECRET_WORDS) else v) for k, v in options.items()
    }


def is_remote(uri: str | Path) -> bool:
    """Whether ``uri`` names an object store (``scheme://`` other than ``file://``)."""
    text = str(uri)
    return "://" in text and not text.startswith("file://")


def join(root: str | Path, *parts: str) -> str:
    """``root/part/...`` for a folder or a URI (no normalisation of ``..``)."""
    if not is_remote(root):
        return str(Path(str(root).removeprefix("file://")).joinpath(*parts))
    return "/".join([str(root).rstrip("/"), *(p.strip("/") for p in parts)])


def relative_to(uri: str, root: str | Path) -> str | None:
    """``uri`` relative to ``root`` (``a/b``), or None when it is not under it."""
    base = str(root).removeprefix("file://").rstrip("/") + "/"
    text = str(uri).removeprefix("file://")
    return text[len(base) :] if text.startswith(base) else None


@lru_cache(maxsize=16)
def _s3(options: tuple[tuple[str, str], ...]) -> pafs.S3FileSystem:
    opts = dict(options)
    endpoint = opts.get("AWS_ENDPOINT_URL") or opts.get("AWS_ENDPOINT")
    kwargs: dict[str, object] = {
        "access_key": opts.get("AWS_ACCESS_KEY_ID"),
        "secret_key": opts.get("AWS_SECRET_ACCESS_KEY"),
        "session_token": opts.get("AWS_SESSION_TOKEN"),
        "region": opts.get("AWS_REGION") or opts.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "https"
    return pafs.S3FileSystem(**{k: v for k, v in kwargs.items() if v is not None})  # type: ignore[arg-type]


def filesystem(uri: str | Path, options: Mapping[str, str]) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system for ``uri`` and the path inside it.

    Raises:
        UnsupportedStoreError: For a scheme other than a local path, ``file://`` or ``s3://``.
    """
    text = str(uri)
    if not is_remote(text):
        return pafs.LocalFileSystem(), str(Path(text.removeprefix("file://")).expanduser())
    scheme, _, rest = text.partition("://")
    if scheme not in ("s3", "s3a"):
        msg = (
            f"{text}: files beside the Delta tables are supported on local folders and s3:// "
            f"only, not {scheme}://; point this root at a folder or an S3 bucket"
        )
        raise UnsupportedStoreError(msg)
    upper = {k.upper(): v for k, v in options.items()}
    return _s3(tuple(sorted(upper.items()))), rest.rstrip("/")


@dataclass(frozen=True)
class Stamp:
    """What identifies a file's content cheaply: size and modification time (ns)."""

    size: int
    mtime_ns: int


def stat(uri: str | Path, options: Mapping[str, str]) -> Stamp | None:
    """Size and modification time of the file at ``uri`` (None when there is none)."""
    fs, path = filesystem(uri, options)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        return None
    return Stamp(int(info.size or 0), int(info.mtime_ns or 0))


def exists(uri: str | Path, options: Mapping[str, str]) -> bool:
    """Whether a file is at ``uri``."""
    return stat(uri, options) is not None


def list_names(uri: str | Path, options: Mapping[str, str]) -> list[str]:
    """Names directly under the folder/prefix ``uri`` (empty when there is none), sorted."""
    fs, path = filesystem(uri, options)
    selector = pafs.FileSelector(path, allow_not_found=True, recursive=False)
    return sorted(info.base_name for info in fs.get_file_info(selector))


def write_bytes(uri: str | Path, data: bytes, options: Mapping[str, str]) -> None:
    """Write ``data`` as the whole file ``uri`` (one PUT on an object store)."""
    fs, path = filesystem(uri, options)
    if not is_remote(uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fs.open_output_stream(path) as out:
        out.write(data)


def write_parquet(uri: str, frame: "pl.DataFrame", options: Mapping[str, str]) -> None:
    """``frame`` as the parquet file ``uri`` (lz4, no statistics): a local write or one PUT."""
    if not is_remote(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        frame.write_parquet(uri, compression="lz4", statistics=False)
        return
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="lz4", statistics=False)
    write_bytes(uri, buffer.getvalue(), options)


def read_bytes(uri: str | Path, options: Mapping[str, str]) -> bytes:
    """The whole file at ``uri``."""
    fs, path = filesystem(uri, options)
    with fs.open_input_stream(path) as src:
        return src.read()


def upload(local: Path, uri: str | Path, options: Mapping[str, str]) -> None:
    """Copy the local file ``local`` to ``uri`` (streamed, one object)."""
    fs, path = filesystem(uri, options)
    if not is_remote(uri):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(local, "rb") as src, fs.open_output_stream(path) as out:
        shutil.copyfileobj(src, out, 1 << 20)


def download(uri: str | Path, local: Path, options: Mapping[str, str]) -> Path:
    """Copy the file at ``uri`` to the local file ``local`` (streamed)."""
    fs, path = filesystem(uri, options)
    local.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(path) as src, open(local, "wb") as out:
        shutil.copyfileobj(src, out, 1 << 20)
    return local


def delete_file(uri: str | Path, options: Mapping[str, str]) -> bool:
    """Delete the file at ``uri``; whether one was there."""
    if not exists(uri, options):
        return False
    fs, path = filesystem(uri, options)
    fs.delete_file(path)
    return True


def delete_tree(uri: str | Path, options: Mapping[str, str]) -> bool:
    """Delete the folder/prefix ``uri`` and everything under it; whether anything was there."""
    fs, path = filesystem(uri, options)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return False
    fs.delete_dir(path)
    return True


@contextlib.contextmanager
def local_copy(uri: str | Path, options: Mapping[str, str], folder: Path) -> Iterator[Path]:
    """A local path holding the file at ``uri``: the file itself locally, else a download.

    The download (into ``folder``) is removed on exit.
    """
    if not is_remote(uri):
        yield Path(str(uri).removeprefix("file://"))
        return
    target = folder / Path(str(uri)).name
    try:
        yield download(uri, target, options)
    finally:
        target.unlink(missing_ok=True)
