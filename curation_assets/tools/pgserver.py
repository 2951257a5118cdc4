"""A throwaway PostgreSQL cluster on loopback, for the tests and ``curation bench partitions``.

:func:`throwaway_postgres` runs Debian's PostgreSQL binaries (``/usr/lib/postgresql/N/bin`` or
``$CURATION_PG_BIN``) as the ``postgres`` user (PostgreSQL refuses to run as root): ``initdb``
in a new temporary folder, ``postgres`` on ``127.0.0.1`` and a free port (password auth over
TCP, a random password), one database; it yields the URL and stops the server by its PID
(``pg_ctl stop -m fast``, then SIGKILL of the postmaster if that did not work), then deletes
the folder. :func:`unavailable` says why it cannot run here (or None).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

PG_USER = "postgres"


def pg_bin() -> Path | None:
    """The folder of ``initdb``/``pg_ctl``/``postgres`` (newest Debian version), or None."""
    env = os.environ.get("CURATION_PG_BIN")
    candidates = [Path(env)] if env else sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    found = [c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()]
    return found[-1] if found else None


def unavailable() -> str | None:
    """Why a throwaway cluster cannot be started here, or None when it can."""
    if pg_bin() is None:
        return "PostgreSQL binaries not found (/usr/lib/postgresql/*/bin or $CURATION_PG_BIN)"
    try:
        pwd.getpwnam(PG_USER)
    except KeyError:
        return f"no {PG_USER!r} user to run PostgreSQL as"
    if os.geteuid() != 0 and pwd.getpwuid(os.geteuid()).pw_name != PG_USER:
        return f"PostgreSQL must run as {PG_USER!r}: this process is neither root nor {PG_USER!r}"
    return None


def _as_postgres(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``args`` as the postgres user (through ``runuser`` when this process is root)."""
    prefix = ["runuser", "-u", PG_USER, "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *args], capture_output=True, text=True, **kwargs)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(port: int, timeout_s: float, log: Path) -> None:
    """Wait until the server accepts TCP connections."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"PostgreSQL did not listen on 127.0.0.1:{port} in {timeout_s}s:\n{tail}")


def _postmaster_pid(data: Path) -> int | None:
    """The postmaster's PID from ``postmaster.pid`` (None when it is gone)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int((data / "postmaster.pid").read_text().splitlines()[0])
    return None


@contextlib.contextmanager
def throwaway_postgres(database: str = "curation", timeout_s: float = 60.0) -> Iterator[str]:
    """Start a fresh cluster; yield ``postgresql+psycopg2://postgres:PASSWORD@127.0.0.1:PORT/database``.

    Raises:
        RuntimeError: If :func:`unavailable` names a reason, or the server does not start.
    """
    why = unavailable()
    if why:
        raise RuntimeError(why)
    binaries = pg_bin()
    assert binaries is not None
    base = Path(tempfile.mkdtemp(prefix="curation-pg-"))
    entry = pwd.getpwnam(PG_USER)
    data, sockets, log = base / "data", base / "sockets", base / "postgres.log"
    password = secrets.token_hex(16)
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    sockets.mkdir()
    for p in (base, sockets, pwfile):
        os.chown(p, entry.pw_uid, entry.pw_gid)
    base.chmod(0o700)
    pid: int | None = None
    try:
        init = _as_postgres(
            [
                str(binaries / "initdb"),
                "-D",
                str(data),
                "-U",
                PG_USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                f"--pwfile={pwfile}",
                "--no-sync",
            ],
            timeout=120,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed ({init.returncode}): {init.stderr[-2000:]}")
        pwfile.unlink()
        port = free_port()
        opts = (
            f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        start = _as_postgres(
            [str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", opts, "start"],
            timeout=120,
        )
        pid = _postmaster_pid(data)
        if start.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed ({start.returncode}): {start.stderr}")
        _wait_ready(port, timeout_s, log)
        pid = _postmaster_pid(data)
        created = _as_postgres(
            [str(binaries / "createdb"), "-h", str(sockets), "-p", str(port), database],
            timeout=60,
        )
        if created.returncode != 0:
            raise RuntimeError(f"createdb failed: {created.stderr}")
        yield f"postgresql+psycopg2://{PG_USER}:{password}@127.0.0.1:{port}/{database}"
    finally:
        pid = _postmaster_pid(data) or pid
        if pid is not None:
            _as_postgres([str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 0)
                os.kill(pid, signal.SIGKILL)  # pg_ctl did not stop it
        shutil.rmtree(base, ignore_errors=True)
