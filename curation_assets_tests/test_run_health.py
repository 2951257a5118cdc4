"""No stuck pools, no silent hang: a killed run's slot is freed, pool waits are reported.

The scenario of every test: a tiny job whose only op is in the ``gpu`` pool (one slot, as in
the project's ``dagster.yaml``) runs in a subprocess on a temporary DAGSTER_HOME; it is killed
with SIGKILL while its step holds the slot.
"""

import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
import yaml

from curation_assets.defs import run_health
from curation_assets.instance import install_dagster_yaml, install_instance_config
from curation_assets.tools.devserver import ACTIVE, dagster_dev

CONFIG = Path(run_health.__file__).resolve().parents[1] / "configs" / "dagster.yaml"

JOB = """
import os
import time
from pathlib import Path

import dagster as dg


@dg.op(pool="gpu")
def hold():
    flag = os.environ.get("HOLD_FLAG")
    if flag:
        Path(flag).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("HOLD_S", "0")))


@dg.job
def pool_job():
    hold()


if __name__ == "__main__":
    with dg.DagsterInstance.get() as instance:
        if os.environ.get("GUARD"):
            from curation_assets.defs.run_health import guard_runs

            guard_runs(instance, echo=lambda line: print(line, flush=True))
        result = pool_job.execute_in_process(instance=instance, raise_on_error=False)
        print("run", result.run_id, "success" if result.success else "failed", flush=True)
"""

DEV_DEFS = """
import os
import time
from pathlib import Path

import dagster as dg

FLAG = Path(os.environ["POOL_TEST_FLAG"])


@dg.asset(pool="gpu")
def held() -> None:
    if not FLAG.exists():  # the first attempt records its worker's pid and hangs
        FLAG.write_text(str(os.getpid()))
        time.sleep(600)


defs = dg.Definitions(
    assets=[held],
    jobs=[dg.define_asset_job("pool_job", selection=[held])],
    executor=dg.in_process_executor,  # as the project: the step runs in the run worker
)
"""

LAUNCH = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }
"""

LOCATIONS = """
{ repositoriesOrError { ... on RepositoryConnection { nodes { location { name } } } } }
"""


@dg.op(pool="gpu")
def hold_briefly():
    time.sleep(0.1)


@dg.job
def pool_job():
    hold_briefly()


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> object:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {what} after {timeout_s}s")
        time.sleep(0.2)


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A DAGSTER_HOME with the project's dagster.yaml, for this process and its children."""
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    install_dagster_yaml(dagster_home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    (tmp_path / "pool_job.py").write_text(JOB)
    return dagster_home


def start_job(tmp_path: Path, name: str, **env: str) -> tuple[subprocess.Popen, Path]:
    """Run the tiny job in a subprocess; returns it and the file receiving its output."""
    out = tmp_path / f"{name}.log"
    with open(out, "wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-W", "ignore", str(tmp_path / "pool_job.py")],
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    return proc, out


def start_holder(tmp_path: Path, name: str = "holder", hold_s: float = 600) -> subprocess.Popen:
    """A run whose step holds the gpu slot for ``hold_s`` (returns once it does)."""
    flag = tmp_path / f"{name}.pid"
    proc, out = start_job(tmp_path, name, HOLD_FLAG=str(flag), HOLD_S=str(hold_s))
    try:
        wait_for(lambda: flag.exists() or proc.poll() is not None, 90, "holder step")
    except TimeoutError:
        proc.kill()
        raise
    assert flag.exists(), out.read_text()
    return proc


def failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    events = instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    return " ".join(e.dagster_event.message or "" for e in events if e.dagster_event)


def run_of(instance: dg.DagsterInstance, pid: int) -> dg.DagsterRun:
    for record in instance.get_run_records():
        if pid in {w.pid for w in run_health.run_workers(instance, record.dagster_run.run_id)}:
            return record.dagster_run
    raise AssertionError(f"no run recorded pid {pid}")


@pytest.mark.timeout(300)
def test_killed_run_is_failed_and_its_slot_freed(tmp_path, home):
    holder = start_holder(tmp_path)
    with dg.DagsterInstance.get() as instance:
        run = run_of(instance, holder.pid)
        assert run.status == dg.DagsterRunStatus.STARTED
        (slot,) = run_health.pool_slots(instance)
        assert (slot.pool, slot.run_id, slot.claimed) == ("gpu", run.run_id, True)
        assert run_health.pool_waits(instance) == []
        assert run_health.release_dead_runs(instance) == []  # alive: left alone

        holder.send_signal(signal.SIGKILL)  # not reaped yet: a zombie counts as dead
        wait_for(lambda: run_health.worker_state(instance, run.run_id)[0] == "dead", 10, "death")
        assert run_health.pool_slots(instance) == [slot]  # what the tester saw: stuck for good

        (cleaned,) = run_health.release_dead_runs(instance)
        holder.wait()
        assert (cleaned.run_id, cleaned.action, cleaned.freed) == (
            run.run_id,
            "marked failed",
            (slot,),
        )
        assert f"run worker process {holder.pid} died" in cleaned.describe()
        after = instance.get_run_by_id(run.run_id)
        assert after is not None and after.status == dg.DagsterRunStatus.FAILURE
        assert (
            f"run worker process {holder.pid} died (killed?); marked failed by curation run"
            in failure_message(instance, run.run_id)
        )
        assert run_health.pool_slots(instance) == []
        assert run_health.release_dead_runs(instance) == []  # idempotent

    proc, out = start_job(tmp_path, "next")
    try:
        assert proc.wait(timeout=90) == 0, out.read_text()
    finally:
        proc.kill()
    assert "success" in out.read_text()


@pytest.mark.timeout(300)
def test_curation_run_guard_cleans_up_and_a_pooled_run_completes(tmp_path, home):
    holder = start_holder(tmp_path)
    holder.kill()
    holder.wait()
    proc, out = start_job(tmp_path, "next", GUARD="1")
    try:
        assert proc.wait(timeout=90) == 0, out.read_text()
    finally:
        proc.kill()
    text = out.read_text()
    assert "cleaned up a dead run: run " in text and f"process {holder.pid} died" in text, text
    assert "freed pool gpu slot (hold)" in text and "success" in text, text


@pytest.mark.timeout(300)
def test_watcher_frees_a_slot_whose_holder_dies_during_the_wait(tmp_path, home):
    holder = start_holder(tmp_path)
    proc, out = start_job(tmp_path, "waiter", GUARD="1")
    try:
        wait_for(lambda: "waiting:" in out.read_text() or proc.poll() is not None, 60, "report")
        holder.kill()
        holder.wait()
        assert proc.wait(timeout=60) == 0, out.read_text()
    finally:
        proc.kill()
        holder.kill()
    text = out.read_text()
    assert "waits for pool 'gpu'" in text and "alive" in text, text
    assert "released a dead run: run" in text and f"process {holder.pid} died" in text, text
    assert "freed pool gpu slot (hold)" in text and "success" in text, text


@pytest.mark.timeout(300)
def test_wait_is_reported_with_its_holder(tmp_path, home):
    holder = start_holder(tmp_path, hold_s=10)
    lines: list[str] = []
    try:
        with dg.DagsterInstance.get() as instance:
            holder_run = run_of(instance, holder.pid)
            run_health.guard_runs(instance, echo=lines.append)
            result = pool_job.execute_in_process(instance=instance, raise_on_error=False)
        assert result.success
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
    waits = [line for line in lines if "waiting:" in line]
    assert waits, lines
    run_id = result.run_id[:8]
    assert f"step hold_briefly of run {run_id} waits for pool 'gpu' (limit 1)" in waits[0]
    assert f"held by run {holder_run.run_id[:8]} (pool_job, STARTED, worker pid " in waits[0]
    assert "alive), step hold, since" in waits[0]
    assert not any("stopped waiting" in line for line in lines), lines


@pytest.mark.timeout(300)
def test_ctrl_c_stops_a_run_waiting_for_a_pool(tmp_path, home):
    holder = start_holder(tmp_path)
    proc, out = start_job(tmp_path, "waiter", GUARD="1")
    try:
        wait_for(lambda: "waiting:" in out.read_text() or proc.poll() is not None, 60, "report")
        proc.send_signal(signal.SIGINT)  # Dagster alone swallows it and keeps waiting
        proc.wait(timeout=30)
        text = out.read_text()
        assert "interrupted while waiting for pool gpu" in text and " failed" in text, text
        with dg.DagsterInstance.get() as instance:
            slots = run_health.pool_slots(instance)
            assert [s.run_id for s in slots] == [run_of(instance, holder.pid).run_id]
    finally:
        proc.kill()
        holder.kill()
        holder.wait()


def test_instance_config_monitors_runs_and_frees_slots(tmp_path, monkeypatch):
    config = yaml.safe_load(CONFIG.read_text())
    monitoring = config["run_monitoring"]
    assert monitoring["enabled"] is True
    assert 0 < monitoring["free_slots_after_run_end_seconds"] <= 120
    assert 0 < monitoring["poll_interval_seconds"] <= 60
    assert monitoring["max_resume_run_attempts"] == 0  # the default run launcher cannot resume
    assert config["concurrency"]["pools"]["default_limit"] == 1

    dagster_home = install_instance_config(tmp_path / "home")
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.get() as instance:
        assert instance.run_monitoring_enabled
        assert "MONITORING" in instance.get_required_daemon_types()
        settings = instance.run_monitoring_settings
        free_after = monitoring["free_slots_after_run_end_seconds"]
        assert settings["free_slots_after_run_end_seconds"] == free_after
        assert instance.run_retries_enabled


def test_dagster_yaml_of_an_older_version_is_replaced(tmp_path, monkeypatch):
    target = tmp_path / "dagster.yaml"
    assert install_dagster_yaml(target) is None and target.read_text() == CONFIG.read_text()
    assert install_dagster_yaml(target) is None

    old = "concurrency:\n  pools:\n    default_limit: 1\n"
    target.write_text(old)
    note = install_dagster_yaml(target)  # the user's own file: kept, with a warning
    assert note is not None and "has no run_monitoring" in note and target.read_text() == old

    shipped = {hashlib.sha256(old.encode()).hexdigest()}
    monkeypatch.setattr("curation_assets.instance.SHIPPED_INSTANCE_CONFIGS", shipped)
    note = install_dagster_yaml(target)  # a copy of an earlier version of ours: replaced
    assert note is not None and "updated" in note and target.read_text() == CONFIG.read_text()


@pytest.mark.slow
@pytest.mark.daemon
@pytest.mark.timeout(600)
def test_dagster_dev_retries_a_killed_run_and_the_retry_gets_the_slot(tmp_path):
    home = tmp_path / "home"
    install_instance_config(home)
    defs_file = tmp_path / "pool_defs.py"
    defs_file.write_text(DEV_DEFS)
    flag = tmp_path / "worker.pid"
    with dagster_dev(
        home,
        tmp_path / "dagster-dev.log",
        env={"POOL_TEST_FLAG": str(flag)},
        target=["-f", str(defs_file)],
    ) as dev:
        (location,) = {
            n["location"]["name"] for n in dev.query(LOCATIONS)["repositoriesOrError"]["nodes"]
        }
        selector = {
            "repositoryLocationName": location,
            "repositoryName": "__repository__",
            "jobName": "pool_job",
        }
        launched = dev.query(LAUNCH, {"params": {"selector": selector, "runConfigData": {}}})
        first = launched["launchRun"]["run"]["runId"]
        wait_for(flag.exists, 180, "first attempt's step")
        os.kill(int(flag.read_text()), signal.SIGKILL)

        def retry_finished() -> dict | None:
            for run in dev.runs():
                if run["tags"].get("dagster/parent_run_id") == first:
                    if run["status"] not in ACTIVE and run["status"] != "QUEUED":
                        return run
            return None

        t0 = time.monotonic()
        try:
            retry = wait_for(retry_finished, 300, "finished retry")
        except TimeoutError:
            raise AssertionError(f"{dev.runs()}\n{dev.log_tail(80)}") from None
        took = time.monotonic() - t0
        statuses = {r["runId"]: r["status"] for r in dev.runs()}
        assert statuses[first] == "FAILURE"
        assert isinstance(retry, dict) and retry["status"] == "SUCCESS", (retry, took)
