"""Several worker processes on one machine, serving one listening socket (``WORKERS``).

uvicorn's supervisor (``uvicorn.supervisors.Multiprocess``) does most of it: the parent binds
the socket once, spawns ``WORKERS`` processes that serve it, and restarts a worker that dies or
stops answering its health check. ``Supervisor`` changes three things:

* **Each worker drains.** A worker builds the relay's own server in the worker process, by
  calling a server factory named by an import string (``app:worker_server``): a
  ``relay.draining.DrainingServer`` on the app it builds from the environment, with the
  media-stream protocol of ``relay.serving``. On SIGTERM or Ctrl-C the parent sends SIGTERM
  to each worker, and each worker runs the relay's drain: it refuses new calls, ``/readyz``
  answers 503, its calls go on for up to ``DRAIN_SECONDS`` and are then ended politely, and
  it exits once they are done. A worker without calls exits at once; the others keep serving
  the socket. Workers ignore SIGINT: a terminal's Ctrl-C reaches the whole process group,
  and only the parent's SIGTERM counts, so one Ctrl-C is one signal for every worker.
* **A second signal ends everything at once.** uvicorn's parent waits for its workers
  without looking at signals; this one keeps handling them while it waits: a second SIGTERM
  or Ctrl-C is sent on to every worker still running (their second signal: calls are cut
  with 1012), and the parent then exits 1, as a single process does.
* **Metrics add up over the workers** (``relay.worker_metrics``): the parent gives the
  workers a private directory for prometheus-client's multiprocess mode, marks a worker
  that died or was replaced as dead there (its live gauges go, its counters stay), and
  removes the directory when it exits.

SIGHUP, SIGTTIN and SIGTTOU (uvicorn's restart and resize) are ignored with a warning:
restart the relay to change ``WORKERS``.

What the workers must agree on is set in the parent's environment before they start: the key
of the stream tokens (a webhook answered by one worker is streamed to another) and the
metrics directory.

uvicorn's internals used
------------------------
Tested with uvicorn 0.54 (pinned in ``pyproject.toml``); ``check_supervisor()`` stops the
start-up with one line when the installed uvicorn lacks any of it. Of
``uvicorn/supervisors/multiprocess.py``: ``Process`` (its ``target``, which runs
``self.server``, the ``_server`` it caches, ``start``, ``kill``, ``join``, ``is_alive``,
``terminate``, ``pid``, ``exitcode``, ``process``) and ``Multiprocess`` (``run``, which
calls ``init_processes``, ``keep_subprocess_alive``, ``handle_signals`` (which calls
``handle_int`` and ``handle_term``), ``terminate_all`` and ``join_all``; ``processes``,
``processes_num``, ``signal_queue``, ``should_exit``, ``config``, ``sockets``).
``init_processes`` and ``keep_subprocess_alive`` are uvicorn's, mirrored with
``WorkerProcess`` in place of ``Process``.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import sys
from collections.abc import Callable, MutableMapping
from importlib.metadata import version
from socket import socket

from uvicorn.config import STARTUP_FAILURE, Config
from uvicorn.importer import import_from_string
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from relay import serving, worker_metrics
from relay.config import Settings
from relay.draining import DrainingServer
from relay.errors import ConfigError

log = logging.getLogger(__name__)

TESTED = "uvicorn 0.54"
PROCESS_METHODS = ("target", "start", "kill", "join", "is_alive", "terminate")
PROCESS_STATE = ("_server", "process", "pid", "exitcode")
SUPERVISOR_METHODS = ("run", "init_processes", "keep_subprocess_alive", "handle_signals",
                      "handle_int", "handle_term", "terminate_all", "join_all")
SUPERVISOR_STATE = ("processes", "processes_num", "signal_queue", "should_exit", "config",
                    "sockets")
# How often the parent, waiting for draining workers, looks at the signals it got.
JOIN_POLL = 0.25
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def check_supervisor(process: type = Process, supervisor: type = Multiprocess) -> None:
    """Fail at start-up, in one line, when uvicorn's supervisor lacks what ``Supervisor`` uses.

    Raises:
        ConfigError: naming what is missing, the installed version and the tested one.
    """
    missing = [f"Process.{name}" for name in
               serving.lacking(process, PROCESS_METHODS, PROCESS_STATE)]
    missing += [f"Multiprocess.{name}" for name in
                serving.lacking(supervisor, SUPERVISOR_METHODS, SUPERVISOR_STATE)]
    if missing:
        raise ConfigError(
            f"relay.workers needs {', '.join(missing)} of uvicorn's supervisor, which uvicorn "
            f"{version('uvicorn')} lacks; it is tested with {TESTED}: pip install -e . "
            f"installs it")


class WorkerProcess(Process):
    """One worker; the server it runs is built in the worker by ``server_factory``."""

    def __init__(self, config: Config, sockets: list[socket], server_factory: str) -> None:
        self.server_factory = server_factory
        super().__init__(config, sockets)

    def target(self, sockets: list[socket] | None = None) -> None:  # in the worker
        try:
            server = import_from_string(self.server_factory)()
        except Exception:  # the worker's boundary: the parent stops, as for uvicorn's app load
            log.exception("the worker could not build its server")
            sys.exit(STARTUP_FAILURE)
        if not isinstance(server, DrainingServer):
            log.error("%s did not return a DrainingServer", self.server_factory)
            sys.exit(STARTUP_FAILURE)
        server.ignored_signals = frozenset({signal.SIGINT})
        self._server = server  # before uvicorn's target starts answering health checks with it
        super().target(sockets)


class Supervisor(Multiprocess):
    """uvicorn's supervisor, with workers that drain and a parent that keeps hearing signals."""

    def __init__(self, config: Config, sockets: list[socket], server_factory: str,
                 metrics_dir: str | None = None) -> None:
        super().__init__(config, sockets)
        self.server_factory = server_factory
        self.metrics_dir = metrics_dir
        self.forced = False  # a second signal cut the drain short

    def new_process(self) -> WorkerProcess:
        return WorkerProcess(self.config, self.sockets, self.server_factory)

    def init_processes(self) -> None:
        for _ in range(self.processes_num):
            process = self.new_process()
            process.start()
            self.processes.append(process)

    def keep_subprocess_alive(self) -> None:
        # uvicorn's, with WorkerProcess, and a dead worker's live metrics removed
        if self.should_exit.is_set():
            return
        for idx, process in enumerate(self.processes):
            if process.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            process.kill()  # hung: kill it
            process.join()
            self._gone(process)
            if process.exitcode == STARTUP_FAILURE:
                # it failed before serving: every restart would fail the same way
                log.error("Child process [%s] failed to start, stopping the parent process.",
                          process.pid)
                self.should_exit.set()
                return
            if self.should_exit.is_set():
                return
            log.info("Child process [%s] died", process.pid)
            process = self.new_process()
            process.start()
            self.processes[idx] = process

    def join_all(self) -> None:
        """Wait for the workers to finish draining; a further signal ends them at once."""
        while running := [p for p in self.processes if p.exitcode is None]:
            running[0].process.join(JOIN_POLL)
            stop = [sig for sig in self.signal_queue if sig in STOP_SIGNALS]
            self.signal_queue.clear()
            if stop and not self.forced:
                self.forced = True
                log.warning("second signal: ending the %d worker(s) still draining at once",
                            len(running))
                for process in running:
                    if process.exitcode is None and process.pid is not None:
                        os.kill(process.pid, signal.SIGTERM)
        for process in self.processes:
            self._gone(process)

    def handle_int(self) -> None:
        self._stop(signal.SIGINT, super().handle_int)

    def handle_term(self) -> None:
        self._stop(signal.SIGTERM, super().handle_term)

    def _stop(self, sig: int, first: Callable[[], None]) -> None:
        if self.should_exit.is_set():
            # A second stop signal handled with the first (they came within one tick):
            # left in the queue, where ``join_all`` finds it and ends the drain.
            self.signal_queue.append(sig)
            return
        first()

    def handle_hup(self) -> None:
        log.warning("SIGHUP ignored: restart the relay to restart its workers")

    def handle_ttin(self) -> None:
        log.warning("SIGTTIN ignored: restart the relay to change WORKERS")

    def handle_ttou(self) -> None:
        log.warning("SIGTTOU ignored: restart the relay to change WORKERS")

    def _gone(self, process: Process) -> None:
        if self.metrics_dir is not None and process.pid is not None:
            worker_metrics.worker_gone(process.pid, self.metrics_dir)


def share_secret(settings: Settings, env: MutableMapping[str, str]) -> None:
    """Give every worker the same token key when none is configured (else each has its own)."""
    if not (env.get("RELAY_SECRET", "").strip() or settings.twilio_auth_token):
        env["RELAY_SECRET"] = secrets.token_urlsafe(32)


def serve(settings: Settings, server_factory: str = "app:worker_server") -> int:
    """Serve with ``settings.workers`` processes, each running ``server_factory()``.

    ``server_factory``: the import string of a function that builds a worker's
    ``DrainingServer`` from the environment. Returns the exit status: 1 when a worker could
    not start (it would fail the same way in every worker) or a second signal cut the drain
    short, else 0.

    Raises:
        ConfigError: the installed uvicorn lacks what the supervisor or the protocol uses.
    """
    check_supervisor()
    share_secret(settings, os.environ)
    # The parent's configuration is never loaded: each worker builds its own server and app.
    config = serving.config(server_factory, host=settings.host, port=settings.port,
                            log_level=settings.log_level.lower(), workers=settings.workers)
    with worker_metrics.shared_directory(os.environ) as metrics_dir:
        supervisor = Supervisor(config, [config.bind_socket()], server_factory, metrics_dir)
        supervisor.run()
    failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    return 1 if failed or supervisor.forced else 0
