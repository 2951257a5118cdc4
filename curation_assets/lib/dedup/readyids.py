"""The image ids of the shards a dedup run lays out, spilled beside the tables until written.

A run writes one ``deduplicated_images`` row per image of every shard it laid out (the shard's
*ready* images: :func:`~.layout.lay_out`). Held as Python strings from the layout to the write,
those ids were the largest thing a full run kept that grows with N: ~120 bytes an id, 1.1 GB
at 9.2M images. :class:`ReadyIds` keeps one count per shard in memory and writes the ids as
one parquet file per layout group under :data:`IDS_FOLDER` (plain files, like the staged
buckets: the stage's lock makes the run their only user, :mod:`.stage`).
:meth:`ReadyIds.ids` reads back the files that hold the shards asked for, one at a time.

The files are deleted once the run is written (:func:`clear_ids`, by
:func:`~.stage.run_dedup_stage`), and whatever a killed run left when the next run lays out.

Memory: one int per shard, plus one layout group's ids while they are written or read.
"""

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import polars as pl

from curation_assets.lib import objectstore as ost
from curation_assets.lib.storage import DeltaStore

#: Folder under the Delta root where a run keeps its ready ids from layout to write.
IDS_FOLDER = "_scratch/dedup_ids"


@dataclass
class ReadyIds(Mapping[str, int]):
    """Shard → ready images of a run (a mapping of counts); the ids themselves on disk.

    Attributes:
        folder: Where the files are (``""``: none written, e.g. a run that laid nothing out).
        options: Object-store options of the Delta root.
    """

    folder: str = ""
    options: Mapping[str, str] = field(default_factory=dict)
    _counts: dict[str, int] = field(default_factory=dict)
    _file_of: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, shard: str) -> int:
        """Ready images of ``shard``."""
        return self._counts[shard]

    def __iter__(self) -> Iterator[str]:
        """The ready shards."""
        return iter(self._counts)

    def __len__(self) -> int:
        """Ready shards."""
        return len(self._counts)

    @property
    def total(self) -> int:
        """Ready images over every shard."""
        return sum(self._counts.values())

    def add(self, group: Mapping[str, pl.Series]) -> None:
        """Record a group of shards' ids: one file (nothing written for an empty group)."""
        group = {s: ids for s, ids in group.items() if len(ids)}
        if not group:
            return
        if not self.folder:
            raise ValueError("ReadyIds without a folder cannot hold ids")
        uri = ost.join(self.folder, f"part-{len(set(self._file_of.values())):05d}.parquet")
        frame = pl.concat(
            ids.cast(pl.String).rename("image_id").to_frame().with_columns(shard=pl.lit(s))
            for s, ids in group.items()
        )
        ost.write_parquet(uri, frame, self.options)
        for shard, ids in group.items():
            self._counts[shard] = len(ids)
            self._file_of[shard] = uri

    def ids(self, shards: Iterable[str]) -> dict[str, pl.Series]:
        """The ready image_ids of each of ``shards`` (ready ones), sorted.

        As Arrow strings, not Python ones (~35 bytes an id, not ~120).

        Memory: the asked shards' ids + one file's rows while it is read.
        """
        out: dict[str, pl.Series] = {}
        by_file: dict[str, list[str]] = {}
        for s in shards:
            if s in self._file_of:  # a ready shard: add records only shards with ids
                by_file.setdefault(self._file_of[s], []).append(s)
        for uri, group in by_file.items():
            rows = pl.read_parquet(
                uri, storage_options=dict(self.options) if ost.is_remote(uri) else None
            ).filter(pl.col("shard").is_in(group))
            for (shard,), part in rows.group_by("shard"):
                out[str(shard)] = part["image_id"].sort()
        return out


def ready_ids(store: DeltaStore) -> ReadyIds:
    """An empty :class:`ReadyIds` for a run on ``store``; a killed run's files are deleted."""
    clear_ids(store)
    return ReadyIds(store.uri(IDS_FOLDER), dict(store.storage_options))


def clear_ids(store: DeltaStore) -> None:
    """Delete the ready ids a run spilled (its write is done, or it was killed)."""
    ost.delete_tree(store.uri(IDS_FOLDER), store.storage_options)
