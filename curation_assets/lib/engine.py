"""Where the heavy per-shard work runs: in the calling process, or as tasks on a Ray cluster.

Dagster stays the control plane (assets, partitions, lineage, checks, the UI); an engine only
executes the data-parallel part of a per-shard step. A step hands :meth:`Engine.map_shards` a
*work function* and its shard keys; the engine calls ``work(key, progress)`` once per shard and
yields a :class:`ShardResult` (the work's small outcome plus where and how long it ran) as each
shard finishes. The work function writes its shard itself (each shard is one Delta transaction,
safe from any process) and returns counts, figures and check outcomes; the Dagster side turns
those into metadata and check results (``defs/partitions.ShardLoop.run_on``). So there is one
code path whatever the engine:

* :class:`LocalEngine` (``address="local"``, the default): runs the work in the calling process,
  one shard after the other, lazily (the next shard starts when the caller asks for the next
  result), exactly as the steps did before engines existed.
* :class:`RayEngine` (``address="host:port"`` of a running Ray cluster): one Ray task per shard,
  at most ``max_in_flight`` submitted at once, results yielded in completion order with the Ray
  node id and worker pid that ran each.

The work function and its arguments must be picklable (module-level functions, frozen
dataclasses of plain values: the store's root URI and storage options, the spec, the config);
the package must be importable on every Ray node (the same environment on every node, or
``PYTHONPATH``), and the shard sources and the Delta root must be reachable from every node
(a shared file system or an object store).

**Ray directly, not dagster-ray.** dagster-ray (a community integration, not installed here)
launches whole Dagster runs or steps on Ray, or hands a step a ``RayResource`` that it must use
differently from the in-process case. Calling plain ``ray`` inside the step keeps one code path:
the same step body, the same work function and the same report run locally and on a cluster;
only the engine that calls the work differs. Dagster's run, step, retries and event log are
untouched, and nothing here imports dagster.

**Tasks, not actors, with worker reuse.** Models load once per worker *process*, not per shard:
the embedder is cached per spec and process (``lib/embed.load_embedder``, an ``lru_cache``),
and Ray reuses a task's worker process for later tasks of the same job (measured here, Ray
2.60: eight tasks on two one-CPU nodes ran in two worker processes; the cluster test asserts
that a worker loads the model once, ``model_loaded`` in the outcome). Ray recycles the worker of
a *GPU* function after every call by default (``max_calls=1``, ray-project/ray#29624), which
would reload the model per shard. Measured here (Ray 2.60, a node declaring one GPU): that
default applies to a function *declared* with ``num_gpus`` (three calls, three worker pids),
not to one that asks for the GPU per call through ``.options(num_gpus=1)`` as this module does
(three calls, one pid); the remote function also declares ``max_calls=0`` (unlimited) so that
moving ``num_gpus`` into the declaration cannot silently bring back a model load per shard. A
GPU worker thus keeps its model, and its GPU memory, until the job ends. Actors
would pin one model per actor explicitly, but need an actor pool sized to the cluster, hold
their resources for the whole run, and retry through a second mechanism (``max_restarts`` /
``max_task_retries``); tasks get Ray's scheduling across nodes, its per-task retries
(``max_retries``) and its resource accounting with nothing to manage.

**Failures.** A work function's own exception reaches the caller as the same exception (so
``defs/retries.fail_fast`` still classifies it), with a note naming the shard. A task whose
worker process or node died is retried by Ray up to ``max_retries`` times; if it still fails,
:class:`WorkerDiedError` names the shard and says that the Ray worker died. After the first
failure no new shard is submitted, the shards already running are waited for and yielded (they
are written anyway), then the error is raised.

**Progress.** ``work`` reports progress inside a shard through its ``progress`` callback, and
the caller's ``on_progress`` receives it: in local mode directly; on Ray through a small queue
actor (``ray.util.queue.Queue``, no CPU, one per ``map_shards`` call) that the tasks put their
sentences in and the driver drains while it waits for results (every ``progress_poll_s``), so
a Ray step's run log shows each shard's progress as the local one does. A sentence that does
not fit in the queue (the driver is behind by :data:`PROGRESS_QUEUE_SIZE`) is dropped, never
blocking the work; every sentence also goes to the worker's log (``logging``). The step also
logs each shard as it completes. Cost: the queue actor's start, measured 0.2–0.7 s per
``map_shards`` call (median 0.54 s, eight no-op tasks on a loopback two-node cluster, 0.02 s
without a queue), small beside a Dagster run's 8–12 s start.

Ingest does not go through an engine: it runs in the step's process (decoding with a local
process pool), many shards' runs in parallel; only its cross-shard exact-duplicate lookup and
writes are serialized, by a lock on the Delta root.
"""

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from curation_assets.lib.errors import ConfigError, TransientError
from curation_assets.lib.settings import is_gpu_fraction

logger = logging.getLogger(__name__)

T = TypeVar("T")
H = TypeVar("H")

Progress = Callable[[str], None]
"""Receives a progress sentence about the shard being worked on."""

ShardWork = Callable[[str, Progress], T]
"""``work(shard_key, progress) -> outcome``: processes and writes one shard (picklable)."""

LOCAL = "local"


class WorkerDiedError(TransientError, RuntimeError):
    """The Ray worker (or node) running a shard's task died, and Ray's retries did not help.

    Transient: the shard's Delta transaction never committed, so the step may be retried.
    """


class EngineAddressError(ConfigError):
    """The engine address is neither ``local`` nor a reachable Ray cluster address."""


@dataclass(frozen=True)
class ShardResult(Generic[T]):
    """One shard's outcome, and where and how long its work ran.

    Attributes:
        key: The shard (partition key).
        value: What the work function returned (small, picklable).
        engine: ``local`` or ``ray``.
        node_id: The Ray node id (hex) that ran it; None locally.
        pid: The process that ran it (the step's own pid locally).
        host: Host name of that process.
        started: Wall-clock start, seconds since the epoch (``time.time()``).
        seconds: Wall time of the work function.
    """

    key: str
    value: T
    engine: str
    node_id: str | None
    pid: int
    host: str
    started: float
    seconds: float

    def metadata(self) -> dict[str, Any]:
        """Plain metadata about where the shard ran (``engine``, ``ray_node_id``, ...)."""
        meta: dict[str, Any] = {
            "engine": self.engine,
            "worker_pid": self.pid,
            "worker_host": self.host,
            "task_seconds": round(self.seconds, 3),
        }
        if self.node_id is not None:
            meta["ray_node_id"] = self.node_id
        return meta


class Engine(Protocol):
    """Runs a per-shard work function over shard keys (see the module docstring)."""

    name: str

    def map_shards(
        self,
        work: ShardWork[T],
        keys: Sequence[str],
        *,
        wants_gpu: bool = False,
        on_progress: Callable[[str, str], None] | None = None,
    ) -> Iterator[ShardResult[T]]:
        """Run ``work`` for each key; yield each shard's result as it completes.

        Args:
            work: ``work(key, progress)``, picklable; it writes its shard.
            keys: Shard keys.
            wants_gpu: The work benefits from a GPU (embedding): an engine with GPUs gives one
                to each task.
            on_progress: ``on_progress(key, sentence)`` for progress inside a shard (on Ray,
                relayed from the tasks while the caller waits for results).

        Raises:
            Exception: The first shard's error (after the shards running beside it finished).
        """
        ...


def _name_shard(exc: BaseException, key: str, where: str) -> None:
    exc.add_note(f"while processing shard {key!r} ({where})")


def _run_shard(work: ShardWork[T], key: str, progress: Progress, engine: str) -> ShardResult[T]:
    """Call ``work`` for ``key`` in this process and time it."""
    started = time.time()
    t0 = time.perf_counter()
    value = work(key, progress)
    node_id = None
    if engine == "ray":
        import ray

        node_id = ray.get_runtime_context().get_node_id()
    return ShardResult(
        key=key,
        value=value,
        engine=engine,
        node_id=node_id,
        pid=os.getpid(),
        host=socket.gethostname(),
        started=started,
        seconds=time.perf_counter() - t0,
    )


class LocalEngine:
    """Runs each shard's work in the calling process, in key order, one at a time, lazily."""

    name = LOCAL

    def map_shards(
        self,
        work: ShardWork[T],
        keys: Sequence[str],
        *,
        wants_gpu: bool = False,
        on_progress: Callable[[str, str], None] | None = None,
    ) -> Iterator[ShardResult[T]]:
        """See :meth:`Engine.map_shards`; shard ``i + 1`` starts when result ``i`` was taken."""
        del wants_gpu  # the local process uses whatever device the work's spec names
        for key in keys:

            def progress(sentence: str, key: str = key) -> None:
                if on_progress is not None:
                    on_progress(key, sentence)

            try:
                result = _run_shard(work, key, progress, LOCAL)
            except Exception as exc:
                _name_shard(exc, key, "local engine")
                raise
            yield result


def bounded_completion(
    keys: Sequence[str],
    submit: Callable[[str], H],
    wait_one: Callable[[list[H]], H],
    collect: Callable[[str, H], T],
    limit: int,
) -> Iterator[T]:
    """Keep at most ``limit`` submitted, yield each collected result as it completes.

    The scheduling loop of :class:`RayEngine`, kept free of Ray so that it is tested alone.
    After the first ``collect`` that raises, nothing more is submitted; the handles still in
    flight are waited for and their results yielded, then the first error is raised.

    Args:
        keys: Shard keys, submitted in this order.
        submit: Starts the work of a key; returns a handle.
        wait_one: Blocks until one of the handles is done; returns it.
        collect: The result of a done handle (raises the shard's error).
        limit: Most handles in flight (>= 1).
    """
    pending = list(reversed(keys))
    in_flight: dict[Any, str] = {}
    error: BaseException | None = None
    while in_flight or (pending and error is None):
        while pending and error is None and len(in_flight) < limit:
            key = pending.pop()
            in_flight[submit(key)] = key
        handle = wait_one(list(in_flight))
        key = in_flight.pop(handle)
        try:
            result = collect(key, handle)
        except Exception as exc:
            if error is None:
                error = exc
            else:
                logger.warning("shard %s also failed: %s", key, exc)
            continue
        yield result
    if error is not None:
        raise error


def gpu_slots(gpus: float, gpus_per_task: float) -> int:
    """GPU tasks that run at once on ``gpus`` GPUs when each asks for ``gpus_per_task``."""
    return max(1, int(gpus / gpus_per_task + 1e-9))


PROGRESS_QUEUE_SIZE = 1000
"""Progress sentences a Ray step's queue holds before new ones are dropped."""


def _ray_progress(key: str, queue: Any = None) -> Progress:
    def progress(sentence: str) -> None:
        logger.info("%s: %s", key, sentence)
        if queue is not None:
            from ray.util.queue import Full

            try:
                queue.put_nowait((key, sentence))
            except Full:
                logger.warning("%s: progress queue full, sentence not sent to the step", key)

    return progress


def _ray_task(work: ShardWork[T], key: str, queue: Any = None) -> ShardResult[T]:
    """The body of one Ray task: run ``work`` for ``key`` on this worker.

    ``queue``: the step's progress queue (a ``ray.util.queue.Queue``), or None.
    """
    return _run_shard(work, key, _ray_progress(key, queue), "ray")


_REMOTE: dict[str, Any] = {}


def _remote_task() -> Any:
    """The Ray remote function (made once per process; ``max_calls=0``: workers are reused)."""
    if "task" not in _REMOTE:
        import ray

        _REMOTE["task"] = ray.remote(max_calls=0)(_ray_task)
    return _REMOTE["task"]


class RayEngine:
    """Runs each shard's work as a Ray task on the cluster at ``address``.

    Args:
        address: ``host:port`` of the cluster's GCS (``ray start --head --port``), or ``auto``.
        max_in_flight: Most tasks submitted at once; 0 = twice the cluster's task slots (CPUs,
            or GPUs for GPU work), so each slot has one shard queued behind the running one.
        max_retries: Ray's retries of a task whose worker or node died.
        num_cpus: CPUs each task requests.
        gpus_per_task: GPUs a GPU task requests: 1 (default) = a GPU per task; a fraction
            (0.5, 0.25) runs that many tasks on one GPU at once, each with its own model copy
            and decode threads, which helps when decoding, not the forward pass, is the
            bottleneck (``curation bench embed-workers`` measures it).
        progress_poll_s: Seconds between the driver's reads of the tasks' progress sentences.
        env_vars: Environment variables of the task workers (Ray ``runtime_env``), e.g.
            ``CURATION_MEMORY_BUDGET_MB`` or object-store credentials; workers with other
            variables are other processes.
    """

    name = "ray"

    def __init__(
        self,
        address: str,
        *,
        max_in_flight: int = 0,
        max_retries: int = 2,
        num_cpus: float = 1,
        gpus_per_task: float = 1,
        progress_poll_s: float = 1.0,
        env_vars: dict[str, str] | None = None,
    ) -> None:
        if not is_gpu_fraction(gpus_per_task):
            msg = f"gpus_per_task={gpus_per_task}: a fraction in (0, 1] or a whole number"
            raise ConfigError(msg)
        self.address = address
        self.gpus_per_task = float(gpus_per_task)
        self.progress_poll_s = progress_poll_s
        self.max_in_flight = max_in_flight
        self.max_retries = max_retries
        self.num_cpus = num_cpus
        self.env_vars = dict(env_vars or {})
        self.peak_in_flight = 0

    def connect(self) -> dict[str, float]:
        """Connect this process to the cluster (once); return its total resources.

        Raises:
            EngineAddressError: If nothing listens at the address, or Ray cannot connect.
        """
        import ray

        self._check_reachable()
        try:
            ray.init(address=self.address, ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            msg = (
                f"engine address {self.address!r}: no Ray cluster answered ({exc}); start one "
                "with `ray start --head --port=6379` and pass its host:port, or use 'local'"
            )
            raise EngineAddressError(msg) from exc
        return dict(ray.cluster_resources())

    def _check_reachable(self, timeout_s: float = 10.0) -> None:
        """Fail fast when nothing listens at a ``host:port`` or ``ray://host:port`` address.

        ``ray.init`` would wait minutes for it; ``auto`` is left to Ray.
        """
        scheme, sep, rest = self.address.partition("://")
        if sep and scheme != "ray":
            return  # another scheme: Ray's to interpret
        host, sep, port = (rest if sep else self.address).rstrip("/").rpartition(":")
        if not sep or not host or not port.isdigit():
            return
        try:
            socket.create_connection((host, int(port)), timeout=timeout_s).close()
        except OSError as exc:
            msg = (
                f"engine address {self.address!r}: nothing answers there ({exc}); start a Ray "
                "cluster with `ray start --head --port=6379` and pass its host:port, or use "
                "'local'"
            )
            raise EngineAddressError(msg) from exc

    def map_shards(
        self,
        work: ShardWork[T],
        keys: Sequence[str],
        *,
        wants_gpu: bool = False,
        on_progress: Callable[[str, str], None] | None = None,
    ) -> Iterator[ShardResult[T]]:
        """See :meth:`Engine.map_shards`; results come in completion order."""
        import ray
        from ray import exceptions as rex

        resources = self.connect()
        gpus = int(resources.get("GPU", 0))
        use_gpu = wants_gpu and gpus > 0
        slots = (
            gpu_slots(gpus, self.gpus_per_task)
            if use_gpu
            else max(1, int(resources.get("CPU", 1) // self.num_cpus))
        )
        limit = self.max_in_flight or 2 * slots
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus,
            "num_gpus": self.gpus_per_task if use_gpu else 0,
            "max_retries": self.max_retries,
            "retry_exceptions": False,  # a work function's own error is not retried by Ray
        }
        if self.env_vars:
            options["runtime_env"] = {"env_vars": self.env_vars}
        task = _remote_task()
        died = (
            rex.WorkerCrashedError,
            rex.NodeDiedError,
            rex.LocalRayletDiedError,
            rex.OutOfMemoryError,
        )
        self.peak_in_flight = 0

        queue = None
        if on_progress is not None:
            from ray.util.queue import Queue

            queue = Queue(maxsize=PROGRESS_QUEUE_SIZE, actor_options={"num_cpus": 0})

        def submit(key: str) -> Any:
            # the task's name is the worker's process title while it runs: ray::shard <key>
            return task.options(name=f"shard {key}", **options).remote(work, key, queue)

        def drain() -> None:
            if queue is None or on_progress is None:
                return
            size = queue.qsize()
            for key, sentence in queue.get_nowait_batch(size) if size else ():
                on_progress(key, sentence)

        def wait_one(refs: list[Any]) -> Any:
            self.peak_in_flight = max(self.peak_in_flight, len(refs))
            while True:
                done, _ = ray.wait(refs, num_returns=1, timeout=self.progress_poll_s)
                drain()
                if done:
                    return done[0]

        def collect(key: str, ref: Any) -> ShardResult[T]:
            try:
                return ray.get(ref)
            except died as exc:
                retried = (
                    f"Ray's {self.max_retries} retries died too"
                    if self.max_retries
                    else "Ray was told not to retry it (max_retries=0)"
                )
                msg = (
                    f"shard {key!r}: the Ray worker running its task died "
                    f"({type(exc).__name__}) and {retried}; the shard's write did not commit "
                    f"(one Delta transaction per shard): re-run the step. Ray said: "
                    f"{str(exc).strip()[:500]}"
                )
                raise WorkerDiedError(msg) from exc
            except rex.RayTaskError as exc:
                # ray.get raises a class derived from both RayTaskError and the cause's class
                # (an OSError's lacks RayTaskError's attributes): read them defensively
                cause = getattr(exc, "cause", None)
                if isinstance(cause, Exception):
                    pid = getattr(exc, "pid", None)
                    _name_shard(cause, key, f"Ray task, pid {pid}" if pid else "Ray task")
                    raise cause from exc
                raise

        try:
            yield from bounded_completion(keys, submit, wait_one, collect, limit)
        finally:
            if queue is not None:
                queue.shutdown(force=True)


def make_engine(address: str, **options: Any) -> LocalEngine | RayEngine:
    """The engine for ``address``: ``local`` (in-process) or a Ray cluster address.

    Args:
        address: ``local`` or ``host:port`` / ``ray://host:port`` / ``auto``.
        options: :class:`RayEngine` options (ignored for local).
    """
    address = address.strip()
    if address in ("", LOCAL):
        return LocalEngine()
    return RayEngine(address, **options)
