"""An exclusive lease kept in a Delta table: a cross-process lock for object-store roots.

Local Delta roots lock with ``flock`` (``DeltaStore.lock``): the kernel releases it when the
holder dies. An object store (``s3://``, ``gs://``, ``az://``) has no such primitive, but a
Delta commit is atomic there too (deltalake ≥ 0.23 commits to S3 with a conditional put), and
that is enough for a lease:

* the table ``<root>/_locks/leases`` holds one row per lock name: ``holder``, ``token``,
  ``expires_at`` (epoch seconds);
* to take the lock, a process reads the row at some table version; when it is free (absent,
  released or expired) it overwrites it ``WHERE name = ...`` with its own token, committed
  against that version. Two takers that read the same version cannot both commit: Delta's
  conflict check refuses the second ("a concurrent transaction added/deleted data this
  operation read") and it reads again, sees the winner and waits;
* while held, a heartbeat thread renews ``expires_at`` every ``ttl_s / 3``; a holder that dies
  stops renewing and its lease expires after at most ``ttl_s``, so a killed process never
  leaves it stuck (it does leave a wait of up to ``ttl_s``);
* release sets ``expires_at`` to 0.

Expiry compares wall clocks of different hosts: keep them in sync (NTP), and keep ``ttl_s``
well above the clock skew.
"""

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pyarrow as pa
from deltalake import CommitProperties, DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError, TableNotFoundError

from curation_assets.lib.deltalog import TABLE_PROPERTIES
from curation_assets.lib.errors import TransientError

logger = logging.getLogger(__name__)

LEASE_SCHEMA = pa.schema(
    [
        pa.field("name", pa.string()),
        pa.field("holder", pa.string()),
        pa.field("token", pa.string()),
        pa.field("expires_at", pa.float64()),
    ]
)


class LeaseLostError(TransientError):
    """Another process took the lease while we believed we held it (renewal came too late)."""


def _sql(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class DeltaLease:
    """One named exclusive lease in the Delta table at ``uri``.

    Args:
        uri: Table URI (any URI deltalake can commit to).
        name: Lock name; one row of the table.
        storage_options: deltalake storage options (credentials, endpoint).
        ttl_s: Seconds a lease lives without renewal.
        poll_s: Seconds between attempts while another process holds it.
        log_every_s: Seconds between "waiting for ..." log lines.
    """

    def __init__(
        self,
        uri: str,
        name: str,
        *,
        storage_options: dict[str, str] | None = None,
        ttl_s: float = 60.0,
        poll_s: float = 1.0,
        log_every_s: float = 5.0,
    ) -> None:
        self.uri = uri
        self.name = name
        self.storage_options = storage_options or None
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self.log_every_s = log_every_s
        self.token = uuid.uuid4().hex
        self.holder = f"{socket.gethostname()}:{os.getpid()}"

    # -- the table --------------------------------------------------------------------------

    def _open(self) -> DeltaTable:
        try:
            return DeltaTable(self.uri, storage_options=self.storage_options)
        except TableNotFoundError:
            with contextlib.suppress(CommitFailedError):  # another taker created it first
                DeltaTable.create(
                    self.uri,
                    schema=LEASE_SCHEMA,
                    mode="ignore",
                    storage_options=self.storage_options,
                    configuration=TABLE_PROPERTIES,  # renewed every few seconds: a long log
                )
            return DeltaTable(self.uri, storage_options=self.storage_options)

    def _row(self, table: DeltaTable) -> dict | None:
        rows = table.to_pyarrow_table(filters=[("name", "=", self.name)]).to_pylist()
        return rows[0] if rows else None

    def _write(self, table: DeltaTable, expires_at: float) -> bool:
        """Overwrite this lock's row as of ``table``'s version; False when another won."""
        row = pa.table(
            {
                "name": [self.name],
                "holder": [self.holder],
                "token": [self.token],
                "expires_at": [expires_at],
            },
            schema=LEASE_SCHEMA,
        )
        try:
            write_deltalake(
                table,
                row,
                mode="overwrite",
                predicate=f"name = {_sql(self.name)}",
                commit_properties=CommitProperties(
                    max_commit_retries=0,  # a rebased takeover would skip the check it needs
                    custom_metadata={"curation.writer": self.holder, "curation.lease": self.name},
                ),
            )
        except CommitFailedError:
            return False
        return True

    # -- the lease --------------------------------------------------------------------------

    def acquire(self) -> None:
        """Block until this process holds the lease."""
        t0 = last_log = time.monotonic()
        while True:
            table = self._open()
            row = self._row(table)
            now = time.time()
            free = row is None or row["token"] == self.token or row["expires_at"] <= now
            if free and self._write(table, now + self.ttl_s):
                # Our commit won against the version we read; read back to be sure.
                mine = self._row(self._open())
                if mine is not None and mine["token"] == self.token:
                    return
            elif not free and time.monotonic() - last_log >= self.log_every_s:
                last_log = time.monotonic()
                logger.warning(
                    "waiting for lease %s held by %s (expires in %.0fs; %.0fs so far)",
                    self.name,
                    row["holder"] if row else "?",
                    (row["expires_at"] - now) if row else 0.0,
                    last_log - t0,
                )
            time.sleep(self.poll_s)

    def renew(self) -> None:
        """Extend the lease by ``ttl_s``.

        Raises:
            LeaseLostError: If another process holds it now.
        """
        for _ in range(5):
            table = self._open()
            row = self._row(table)
            if row is None or row["token"] != self.token:
                holder = row["holder"] if row else "nobody"
                msg = f"lease {self.name!r} was taken over by {holder} (renewal too late)"
                raise LeaseLostError(msg)
            if self._write(table, time.time() + self.ttl_s):
                return
        msg = f"lease {self.name!r}: renewal kept losing commit races"
        raise LeaseLostError(msg)

    def release(self) -> None:
        """Give the lease up (a no-op when another process holds it)."""
        for _ in range(5):
            table = self._open()
            row = self._row(table)
            if row is None or row["token"] != self.token:
                return
            if self._write(table, 0.0):
                return

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Hold the lease for the block, renewing it in the background."""
        self.acquire()
        stop = threading.Event()
        lost: list[BaseException] = []

        def heartbeat() -> None:
            while not stop.wait(self.ttl_s / 3):
                try:
                    self.renew()
                except Exception as exc:  # noqa: BLE001 - reported when the block ends
                    lost.append(exc)
                    logger.error("lease %s: %s", self.name, exc)
                    return

        thread = threading.Thread(target=heartbeat, name=f"lease-{self.name}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.release()
        if lost:
            raise lost[0]
