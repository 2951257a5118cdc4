"""Run health: runs whose worker died, pool slots they still hold, and steps waiting on a pool.

The ``gpu`` pool admits one step at a time (``dagster.yaml``). A step claims its
slot in the run worker that executes it and frees it when the step ends; a worker killed
mid-step (``kill -9``, the OOM killer, a laptop that never woke up) frees nothing, so its slot
stays claimed and every later step of that pool waits forever, silently: Dagster logs the wait
once, at DEBUG level.

* Under ``dagster dev`` the daemon's run monitoring frees the slots of finished runs
  (``run_monitoring.free_slots_after_run_end_seconds`` in ``dagster.yaml``); the code server
  that launched a run marks it failed when its worker process dies.
* ``curation run`` executes in process, with no daemon. :func:`guard_runs` (called when it
  opens the instance) does the same work itself: :func:`release_dead_runs` marks every
  unfinished run whose worker process is gone as failed and frees the slots of dead or
  finished runs, then a watcher thread reports any step of this process that waits on a pool
  (who holds the slot, since when), frees the slot when its holder dies while we wait, and
  turns Ctrl-C during the wait into an interruption (the in-process executor does not look at
  interrupts while it waits for a slot, so Ctrl-C and SIGTERM would otherwise be swallowed).

A run's worker is identified by the ``pid`` Dagster records in the run's engine events
("Executing steps in process (pid: N)", "Started process for run (pid: N)"). A pid is only
meaningful on the machine that wrote it: with the default sqlite storage every run of the
instance ran on this machine; with shared storage (postgres) only runs tagged
``curation/host`` with this host name are judged.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime

import dagster as dg
import psutil

logger = logging.getLogger(__name__)

HOST_TAG = "curation/host"
"""Run tag naming the machine a run executes on (optional; see the module docstring)."""

PARTITION_TAG = "dagster/partition"

UNFINISHED = (
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)
"""Statuses of a run that has a worker (or should have one soon); QUEUED runs have none."""

Echo = Callable[[str], object]


@dataclass(frozen=True)
class Worker:
    """A run worker process recorded in a run's engine events."""

    pid: int
    recorded_at: float
    """When the event naming it was written (Unix time)."""


@dataclass(frozen=True)
class Slot:
    """A step's place in a pool: a claimed slot, or a pending claim."""

    pool: str
    run_id: str
    step_key: str
    claimed: bool
    since: datetime | None
    """Claimed: when the slot was assigned to the step. Pending: when the step asked for it."""
    assigned: bool = True
    """False for a pending claim still in the queue (a slot assigned to it it takes next)."""


@dataclass(frozen=True)
class PoolWait:
    """A step waiting for a slot of ``pool`` while ``holders`` have them all."""

    pool: str
    limit: int | None
    run_id: str
    step_key: str
    since: datetime | None
    holders: tuple[Slot, ...]


@dataclass(frozen=True)
class Cleaned:
    """One run :func:`release_dead_runs` acted on."""

    run_id: str
    job_name: str
    status: str
    """The run's status before (``DELETED`` when the run no longer exists)."""
    reason: str
    action: str
    """``marked failed``, ``marked canceled`` or ``""`` (the run had already finished)."""
    freed: tuple[Slot, ...]
    partition: str = ""

    def describe(self) -> str:
        """One line for the console."""
        what = [self.action] if self.action else []
        claimed = [s for s in self.freed if s.claimed]
        pending = [s for s in self.freed if not s.claimed]
        if claimed:
            what.append("freed " + ", ".join(f"pool {s.pool} slot ({s.step_key})" for s in claimed))
        if pending:
            what.append(
                "dropped its place in "
                + ", ".join(f"pool {s.pool} queue ({s.step_key})" for s in pending)
            )
        job = " ".join(x for x in (self.job_name, self.partition) if x)
        job = f"{job}, " if job else ""
        return f"run {self.run_id[:8]} ({job}{self.status}): {self.reason}; " + "; ".join(what)


def pool_slots(instance: dg.DagsterInstance) -> list[Slot]:
    """Every claimed slot and pending claim of every pool of the instance."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    keys = sorted(storage.get_concurrency_keys())
    slots: list[Slot] = []
    for pool, info in storage.get_concurrency_infos(keys).items():
        assigned = {(p.run_id, p.step_key): p.assigned_timestamp for p in info.pending_steps}
        claimed = {(c.run_id, c.step_key) for c in info.claimed_slots}
        for run_id, step_key in sorted(claimed):
            slots.append(Slot(pool, run_id, step_key, True, assigned.get((run_id, step_key))))
        for p in info.pending_steps:
            if (p.run_id, p.step_key) not in claimed:
                assigned_to = p.assigned_timestamp is not None
                slots.append(
                    Slot(pool, p.run_id, p.step_key, False, p.enqueued_timestamp, assigned_to)
                )
    return slots


def run_workers(instance: dg.DagsterInstance, run_id: str) -> list[Worker]:
    """The run-level worker processes recorded for ``run_id`` (oldest first)."""
    workers: dict[int, Worker] = {}
    for entry in instance.event_log_storage.get_logs_for_run(
        run_id, of_type=dg.DagsterEventType.ENGINE_EVENT
    ):
        event = entry.dagster_event
        if entry.step_key is not None or event is None:
            continue
        metadata = getattr(event.event_specific_data, "metadata", None) or {}
        value = metadata.get("pid")
        text = getattr(value, "text", value)
        try:
            pid = int(str(text))
        except ValueError:
            continue
        workers.setdefault(pid, Worker(pid, entry.timestamp))
    return list(workers.values())


def process_alive(pid: int, recorded_at: float | None = None) -> bool:
    """Whether ``pid`` is a live process of this machine, and the one recorded at that time.

    A zombie (killed, not yet reaped) is dead; a process created after ``recorded_at`` is a
    later process that reused the pid.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return recorded_at is None or proc.create_time() <= recorded_at + 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _local_storage(instance: dg.DagsterInstance) -> bool:
    from dagster._core.storage.runs import SqliteRunStorage

    return isinstance(instance.run_storage, SqliteRunStorage)


def _judgeable(instance: dg.DagsterInstance, run: dg.DagsterRun) -> bool:
    """Whether the pids recorded for ``run`` name processes of this machine."""
    host = run.tags.get(HOST_TAG)
    if host is not None:
        return host == socket.gethostname()
    return _local_storage(instance)


def worker_state(instance: dg.DagsterInstance, run_id: str) -> tuple[str, list[int]]:
    """``alive``, ``dead`` or ``unknown`` (no pid recorded) and the recorded pids."""
    workers = run_workers(instance, run_id)
    if not workers:
        return "unknown", []
    pids = [w.pid for w in workers]
    if any(process_alive(w.pid, w.recorded_at) for w in workers):
        return "alive", pids
    return "dead", pids


def release_dead_runs(
    instance: dg.DagsterInstance,
    *,
    by: str = "curation run",
    run_ids: Collection[str] | None = None,
) -> list[Cleaned]:
    """Fail the runs whose worker died and free the pool slots no live run holds.

    * An unfinished run (not started, starting, started, canceling) whose recorded worker
      processes are all gone is marked failed (a canceling one: canceled) with the message
      "run worker process N died (killed?); marked failed by ``by``", and its slots are freed.
    * A run that holds or waits for a slot but has no recorded worker is treated the same once
      it is older than ``run_monitoring.start_timeout_seconds`` and not started yet.
    * The slots and pending claims of a finished or deleted run are freed.

    Runs of other machines (see the module docstring) and live runs are left alone.

    Args:
        instance: The Dagster instance.
        by: Who marks the runs, for the failure message.
        run_ids: Only consider these runs (default: every run).

    Returns:
        What was done, one entry per run.
    """
    slots = pool_slots(instance)
    by_run: dict[str, list[Slot]] = {}
    for slot in slots:
        by_run.setdefault(slot.run_id, []).append(slot)
    candidates = dict.fromkeys(by_run)
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=list(UNFINISHED))):
        candidates.setdefault(record.dagster_run.run_id)
    if run_ids is not None:
        only = set(run_ids)
        candidates = {r: None for r in candidates if r in only}

    cleaned: list[Cleaned] = []
    for run_id in candidates:
        held = tuple(by_run.get(run_id, ()))
        record = instance.get_run_record_by_id(run_id)
        if record is None:
            if held:
                instance.event_log_storage.free_concurrency_slots_for_run(run_id)
                cleaned.append(Cleaned(run_id, "", "DELETED", "run no longer exists", "", held))
            continue
        run = record.dagster_run
        part = run.tags.get(PARTITION_TAG, "")
        if run.is_finished:
            if held:
                instance.event_log_storage.free_concurrency_slots_for_run(run_id)
                reason = f"run already {run.status.value.lower()}"
                cleaned.append(
                    Cleaned(run_id, run.job_name, run.status.value, reason, "", held, part)
                )
            continue
        if not _judgeable(instance, run):
            continue
        state, pids = worker_state(instance, run_id)
        if state == "alive":
            continue
        if state == "unknown":
            age = time.time() - record.create_timestamp.timestamp()
            not_started = run.status in (
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
            )
            if not (held and not_started and age > instance.run_monitoring_start_timeout_seconds):
                continue
            reason = f"run worker never recorded a process in {age:.0f}s"
        else:
            names = ", ".join(str(p) for p in pids)
            reason = f"run worker process {names} died (killed?)"
        action = _mark_finished(instance, run_id, f"{reason}; marked failed by {by}")
        if held or action:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            cleaned.append(
                Cleaned(run_id, run.job_name, run.status.value, reason, action, held, part)
            )
    return cleaned


def _mark_finished(instance: dg.DagsterInstance, run_id: str, message: str) -> str:
    """Mark an unfinished run failed (canceled when it was canceling); returns what was done."""
    from dagster._core.events import JobFailureData, RunFailureReason

    run = instance.get_run_by_id(run_id)  # re-read: its worker or a code server may have ended it
    if run is None or run.is_finished:
        return ""
    if run.status == dg.DagsterRunStatus.CANCELING:
        instance.report_run_canceled(run, message.replace("marked failed", "marked canceled"))
        return "marked canceled"
    instance.report_run_failed(
        run,
        message,
        JobFailureData(error=None, failure_reason=RunFailureReason.UNEXPECTED_TERMINATION),
    )
    return "marked failed"


def pool_waits(
    instance: dg.DagsterInstance,
    run_ids: Iterable[str] | None = None,
    slots: list[Slot] | None = None,
) -> list[PoolWait]:
    """Steps waiting for a pool slot (of ``run_ids``, default all), with who holds the slots.

    A step that was assigned a freed slot but has not taken it yet no longer waits.

    Args:
        instance: The Dagster instance.
        run_ids: Only the waits of these runs.
        slots: :func:`pool_slots`, when already read.
    """
    wanted = set(run_ids) if run_ids is not None else None
    slots = pool_slots(instance) if slots is None else slots
    storage = instance.event_log_storage
    limits: dict[str, int | None] = {}
    waits = []
    for slot in slots:
        if slot.claimed or slot.assigned or (wanted is not None and slot.run_id not in wanted):
            continue
        if slot.pool not in limits:
            limits[slot.pool] = storage.get_concurrency_info(slot.pool).limit
        holders = tuple(s for s in slots if s.pool == slot.pool and s.claimed)
        waits.append(
            PoolWait(slot.pool, limits[slot.pool], slot.run_id, slot.step_key, slot.since, holders)
        )
    return waits


def _clock(ts: datetime | None, now: float) -> str:
    if ts is None:
        return "?"
    local = ts.astimezone().strftime("%H:%M:%S")
    return f"{local}, {max(0.0, now - ts.timestamp()):.0f}s ago"


def describe_holder(instance: dg.DagsterInstance, slot: Slot, now: float | None = None) -> str:
    """``run 1a2b3c4d (per_shard_job, STARTED, worker pid 42 alive), step x, since ...``."""
    now = time.time() if now is None else now
    run = instance.get_run_by_id(slot.run_id)
    if run is None:
        who = f"run {slot.run_id[:8]} (deleted)"
    else:
        state, pids = worker_state(instance, slot.run_id)
        worker = f"worker pid {', '.join(map(str, pids))} {state}" if pids else "no worker pid"
        partition = run.tags.get(PARTITION_TAG)
        part = f" {partition}" if partition else ""
        who = f"run {slot.run_id[:8]} ({run.job_name}{part}, {run.status.value}, {worker})"
    return f"{who}, step {slot.step_key}, since {_clock(slot.since, now)}"


def describe_wait(instance: dg.DagsterInstance, wait: PoolWait, now: float | None = None) -> str:
    """A pool wait, for the console."""
    now = time.time() if now is None else now
    head = (
        f"step {wait.step_key} of run {wait.run_id[:8]} waits for pool '{wait.pool}' "
        f"(limit {wait.limit}) since {_clock(wait.since, now)}"
    )
    if not wait.holders:
        return f"{head}; no step holds a slot (queued behind other waiting steps)"
    held = "; ".join(describe_holder(instance, h, now) for h in wait.holders)
    return f"{head}; held by {held}"


def _raise_in_thread(thread_id: int, exc: type[BaseException]) -> bool:
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc)
    )
    if done > 1:  # never expected; undo
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), None)
        return False
    return done == 1


class PoolWaitWatcher(threading.Thread):
    """Background thread that watches the steps this process runs while they wait on a pool.

    Every ``poll_s`` it looks for steps of runs executing in this process that wait for a pool
    slot. A wait longer than ``report_after_s`` is reported through ``echo`` (again every
    ``repeat_s`` or when the holder changes); a holder whose worker died, or that finished, is
    released with :func:`release_dead_runs`; Ctrl-C or SIGTERM received during the wait (which
    Dagster's in-process executor would swallow) interrupts the waiting run, which is then
    marked failed like a run interrupted mid-step.
    """

    def __init__(
        self,
        instance: dg.DagsterInstance,
        *,
        echo: Echo,
        poll_s: float = 2.0,
        report_after_s: float = 5.0,
        repeat_s: float = 60.0,
        by: str = "curation run",
    ):
        super().__init__(name="curation-pool-watch", daemon=True)
        self._instance = weakref.ref(instance)
        self._echo = echo
        self._poll_s = poll_s
        self._report_after_s = report_after_s
        self._repeat_s = repeat_s
        self._by = by
        self._halt = threading.Event()
        self._target_thread = threading.current_thread()
        self._ours: dict[str, bool] = {}
        self._started_at = psutil.Process().create_time() - 1.0  # older records: a reused pid
        self._reported: dict[tuple[str, str, str], tuple[float, tuple[str, ...]]] = {}

    def stop(self, timeout: float = 5.0) -> None:
        """Stop watching (joins the thread unless called from it)."""
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)

    def run(self) -> None:
        """The thread's loop (errors are logged and retried; the loop ends with the instance)."""
        failures = 0
        while not self._halt.wait(self._poll_s):
            instance = self._instance()
            if instance is None or not self._target_thread.is_alive():
                return
            try:
                self.check(instance)
                failures = 0
            except Exception:  # never let a query failure kill the watcher; give up if lasting
                failures += 1
                logger.debug("pool watcher check failed", exc_info=True)
                if failures >= 10:
                    logger.warning("pool watcher stopped after repeated errors", exc_info=True)
                    return
            finally:
                del instance

    def _is_ours(self, instance: dg.DagsterInstance, run_id: str) -> bool:
        if run_id not in self._ours:
            workers = run_workers(instance, run_id)
            if not workers:
                return False  # not recorded yet: ask again next time
            self._ours[run_id] = any(
                w.pid == os.getpid() and w.recorded_at >= self._started_at for w in workers
            )
        return self._ours[run_id]

    def check(self, instance: dg.DagsterInstance) -> None:
        """One look: report, release dead holders, honour a pending interrupt."""
        now = time.time()
        slots = pool_slots(instance)
        waits = [w for w in pool_waits(instance, slots=slots) if self._is_ours(instance, w.run_id)]
        waiting = {(w.pool, w.run_id, w.step_key) for w in waits}
        served = {(s.pool, s.run_id, s.step_key) for s in slots if s.claimed or s.assigned}
        for key in [k for k in self._reported if k not in waiting]:
            del self._reported[key]
            pool, run_id, step = key
            run = None if key in served else instance.get_run_by_id(run_id)
            if key in served or (run is not None and run.status.value in ("STARTED", "SUCCESS")):
                # a step that got its slot and already gave it back between two looks is served
                # too: its run goes on (or finished), it did not give up
                self._echo(f"  pool '{pool}': step {step} of run {run_id[:8]} has its slot now")
            else:
                status = run.status.value if run is not None else "deleted"
                self._echo(
                    f"  pool '{pool}': step {step} of run {run_id[:8]} stopped waiting "
                    f"(run {status})"
                )
        if not waits:
            return
        if self._interrupt_pending():
            self._interrupt(waits)
            return
        for wait in waits:
            key = (wait.pool, wait.run_id, wait.step_key)
            if wait.since is not None and now - wait.since.timestamp() < self._report_after_s:
                continue
            holders = tuple(h.run_id for h in wait.holders)
            stale = [h for h in holders if not self._is_ours(instance, h)]
            if stale:
                for done in release_dead_runs(instance, by=self._by, run_ids=stale):
                    self._echo(f"  released a dead run: {done.describe()}")
            last = self._reported.get(key)
            if last is None or now - last[0] >= self._repeat_s or last[1] != holders:
                self._reported[key] = (now, holders)
                self._echo(f"  waiting: {describe_wait(instance, wait, now)}")

    @staticmethod
    def _interrupt_pending() -> bool:
        from dagster._utils.interrupts import check_captured_interrupt

        return check_captured_interrupt()

    def _interrupt(self, waits: list[PoolWait]) -> None:
        from dagster._core.errors import DagsterExecutionInterruptedError
        from dagster._utils.interrupts import pop_captured_interrupt

        pools = ", ".join(sorted({w.pool for w in waits}))
        ident = self._target_thread.ident
        if ident is None or not pop_captured_interrupt():
            return
        self._echo(f"  interrupted while waiting for pool {pools}: stopping the run")
        _raise_in_thread(ident, DagsterExecutionInterruptedError)


def guard_runs(
    instance: dg.DagsterInstance,
    *,
    echo: Echo = logger.warning,
    watch: bool = True,
    by: str = "curation run",
) -> list[Cleaned]:
    """Clean up after dead runs, then watch this process's pool waits until ``instance`` closes.

    Call it right after opening the instance, from the thread that will execute the runs.

    Args:
        instance: The instance the runs execute on.
        echo: Receives the console lines (``print`` in the CLI).
        watch: Start the :class:`PoolWaitWatcher` (stopped when ``instance`` is closed).
        by: Who cleans up, for the failure messages.

    Returns:
        The runs that were cleaned up.
    """
    cleaned = release_dead_runs(instance, by=by)
    for done in cleaned:
        echo(f"cleaned up a dead run: {done.describe()}")
    if watch:
        watcher = PoolWaitWatcher(instance, echo=echo, by=by)
        exit_stack = getattr(instance, "_exit_stack", None)  # closed by DagsterInstance.__exit__
        if exit_stack is not None:
            exit_stack.callback(watcher.stop)
        watcher.start()
    return cleaned
