"""The parts of WORKERS that need no worker: the supervisor's check of uvicorn, and the
multiprocess directory's set-up (the merged figures themselves: tests/test_workers.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from relay import worker_metrics, workers
from relay.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_uvicorn_has_what_the_supervisor_uses() -> None:
    workers.check_supervisor()


def test_a_supervisor_lacking_a_method_stops_the_start_up_in_one_line() -> None:
    lacking = type("_Multiprocess", (), {k: v for k, v in vars(Multiprocess).items()
                                         if k != "join_all"})
    with pytest.raises(ConfigError) as info:
        workers.check_supervisor(Process, lacking)
    message = str(info.value)
    assert "\n" not in message
    assert "needs Multiprocess.join_all of uvicorn's supervisor" in message
    assert f"uvicorn {version('uvicorn')} lacks" in message and "tested with uvicorn 0.54" in message


def test_a_process_lacking_state_is_named() -> None:
    with pytest.raises(ConfigError, match=r"needs Process.target, .*Process._server"):
        workers.check_supervisor(type("_Process", (), {}), Multiprocess)


def test_the_directory_is_private_named_for_the_workers_and_removed_after() -> None:
    env = {"OTHER": "1"}
    with worker_metrics.shared_directory(env) as path:
        assert env[worker_metrics.ENV] == path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        Path(path, "counter_1.db").write_bytes(b"")
    assert env == {"OTHER": "1"}
    assert not os.path.exists(path)


def test_a_directory_given_before_is_restored(tmp_path: Path) -> None:
    env = {worker_metrics.ENV: str(tmp_path)}
    with worker_metrics.shared_directory(env) as path:
        assert path != str(tmp_path)
    assert env == {worker_metrics.ENV: str(tmp_path)}
    assert tmp_path.is_dir()


def test_one_process_without_the_directory_keeps_its_own_metrics(tmp_path: Path) -> None:
    assert worker_metrics.directory({}) is None
    with pytest.raises(ConfigError, match="is not a directory"):
        worker_metrics.directory({worker_metrics.ENV: str(tmp_path / "nope")})
    # this process imported prometheus_client without it: its values are not in files
    with pytest.raises(ConfigError, match="set after prometheus_client was imported"):
        worker_metrics.directory({worker_metrics.ENV: str(tmp_path)})


# A worker whose metrics directory has gone (as on a full or lost disk): its copies fail, which
# must never reach a call's end or a scrape. prometheus-client picks its multiprocess mode at
# import, so this runs in a process of its own.
LOST_DIRECTORY = """
import logging, os, shutil, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
from relay.metrics import Metrics
from relay.outcomes import Outcome
metrics = Metrics(lambda: [], lambda: 0, multiprocess_dir=os.environ["PROMETHEUS_MULTIPROC_DIR"])
shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"])  # the live gauges' file cannot be made
for _ in range(3):
    metrics.call_ended(Outcome.CALLER_HUNG_UP)
    body = metrics.exposition()
print("scraped", type(body).__name__)
"""


def test_a_worker_whose_metrics_files_fail_goes_on_and_says_so_once(tmp_path: Path) -> None:
    directory = tmp_path / "metrics"
    directory.mkdir()
    env = {**os.environ, worker_metrics.ENV: str(directory)}
    done = subprocess.run([sys.executable, "-c", LOST_DIRECTORY], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("metrics not shared with the other workers") == 1, done.stdout
    assert "scraped bytes" in done.stdout
