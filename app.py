"""Composition root: configuration, tools and the web app, and ``python app.py`` to serve.

Nothing reads the environment at import time: ``main()`` loads ``.env``, builds everything
from it and serves with ``relay.serving.config``. ``create_app()`` builds the app alone, for
embedding; media streams need the server protocol that ``relay.serving`` configures.
"""

from __future__ import annotations

import logging
import os
import sys
from functools import partial
from pathlib import Path

from dotenv import load_dotenv
from starlette.applications import Starlette
from starlette.routing import BaseRoute, WebSocketRoute

from relay import log_format, masking, serving, workers
from relay.call_control import end_call, transfer_call
from relay.config import Settings
from relay.draining import DrainingServer, DrainTimes
from relay.errors import ConfigError, ToolError
from relay.local.agent import local_agent_endpoint
from relay.local.softphone import phone_routes
from relay.monitor import CallEndedHook
from relay.routes import Relay
from relay.routes import create_app as create_web_app
from relay.tools import Registry, load_tools

log = logging.getLogger("relay")
# The user's tools: plain modules in a folder, loaded by path (TOOLS_DIR chooses another).
TOOLS_DIR = Path(__file__).resolve().parent / "tools"


def load_registry(settings: Settings) -> Registry:
    """The built-in call control, then every tool of the tools folder."""
    builtin = Registry([end_call, transfer_call] if settings.transfers_enabled else [end_call])
    return load_tools(settings.tools_dir or TOOLS_DIR, builtin)


def load_settings() -> Settings:
    load_dotenv()
    return Settings.from_env(os.environ)


def configure_logging(settings: Settings) -> None:
    log_format.configure(settings.log_format, settings.log_level)
    for handler in logging.getLogger().handlers:  # numbers masked in library lines too
        masking.install(handler)


def build(settings: Settings, *, call_ended: CallEndedHook | None = None) -> Starlette:
    """The app for ``settings``; ``call_ended`` is awaited with each finished call's record."""
    configure_logging(settings)
    registry = load_registry(settings)
    if settings.local_agent:
        log.info("agent: the built-in local agent (echo test; no ASSEMBLYAI_API_KEY is set). "
                 "Set ASSEMBLYAI_API_KEY in .env to talk to AssemblyAI's Voice Agent API.")
    else:
        log.info("agent: AssemblyAI Voice Agent API at %s", settings.agent_ws_url)
    if not settings.verify_signatures:
        log.warning("TWILIO_AUTH_TOKEN is not set: Twilio signatures cannot be checked, so "
                    "only clients on this machine may place calls (local use only)")
    log.info("tools: %s", ", ".join(registry.names()) or "none")
    log.info("Twilio voice webhook: POST %s/twiml; media stream: %s",
             settings.public_base, settings.stream_url)
    if settings.phone_enabled:
        log.info("browser softphone: http://localhost:%d/phone (this machine only%s)",
                 settings.port, "; others with PHONE_PASSWORD" if settings.phone_password else "")
    return create_web_app(settings, registry, extra_routes=partial(local_routes, settings),
                          call_ended=call_ended)


def local_routes(settings: Settings, relay: Relay) -> list[BaseRoute]:
    """What lets you try the relay without a phone: the local agent and the softphone."""
    routes: list[BaseRoute] = []
    if settings.local_agent:
        routes.append(WebSocketRoute("/local-agent", local_agent_endpoint(settings.agent_key)))
    if settings.phone_enabled:
        routes += phone_routes(relay)
    return routes


def create_app() -> Starlette:
    """The app, configured from the environment (serve it with ``relay.serving.config``)."""
    return build(load_settings())


def main() -> int:
    try:
        settings = load_settings()
        if settings.workers > 1:
            load_registry(settings)  # a broken tool stops the parent, not each worker in turn
            return serve_workers(settings)
        server = draining_server(settings)
    except (ConfigError, ToolError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    server.run()
    # 0 after a drain (SIGTERM, Ctrl-C); 1 when start-up failed or a second signal cut it short
    return 0 if server.started and not server.forced else 1


def draining_server(settings: Settings) -> DrainingServer:
    """The app for ``settings``, served with the relay's protocol and its drain on SIGTERM."""
    app = build(settings)
    config = serving.config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level.lower())
    return DrainingServer(config, app.state.relay, drain_times(settings))


def worker_server() -> DrainingServer:
    """A worker's server, configured from the environment (``relay.workers`` calls it)."""
    return draining_server(load_settings())


def drain_times(settings: Settings) -> DrainTimes:
    # A call ended by the drain deadline says goodbye within HANGUP_TIMEOUT, then closes.
    return DrainTimes(settings.drain_seconds,
                      settings.hangup_timeout + settings.agent_close_timeout + 1.0)


def serve_workers(settings: Settings) -> int:
    """``WORKERS`` processes on one socket, each building the app with ``create_app``."""
    configure_logging(settings)
    log.info("serving with %d worker processes", settings.workers)
    if not settings.redis_url:
        log.warning("WORKERS=%d without REDIS_URL: each worker process counts its own limits "
                    "and single-use tokens, keeps its own call outcomes for the <Connect "
                    "action> and lists only its own calls", settings.workers)
    return workers.serve(settings, "app:worker_server")


if __name__ == "__main__":
    sys.exit(main())
