"""Several worker processes on one machine, serving one listening socket (``WORKERS``).

uvicorn's own supervisor does it: the parent binds the socket once and spawns ``WORKERS``
processes that each build the app from the environment (``app:create_app``, a factory) and
serve the shared socket with ``relay.serving``'s configuration, the media-stream protocol
included (it reaches each worker as part of the pickled configuration, a class named by its
module). The parent restarts a worker that dies or stops answering its health check, and on
SIGTERM or SIGINT sends SIGTERM to each worker by its pid and waits for them all to finish
their graceful shutdown.

What the workers must agree on is set in the parent's environment before they start: the key
of the stream tokens (a webhook answered by one worker is streamed to another).
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import MutableMapping

from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from relay import serving
from relay.config import Settings

log = logging.getLogger(__name__)


def share_secret(settings: Settings, env: MutableMapping[str, str]) -> None:
    """Give every worker the same token key when none is configured (else each has its own)."""
    if not (env.get("RELAY_SECRET", "").strip() or settings.twilio_auth_token):
        env["RELAY_SECRET"] = secrets.token_urlsafe(32)


def serve(settings: Settings, app: str = "app:create_app") -> int:
    """Serve ``app`` (an import string of an app factory) with ``settings.workers`` processes.

    Returns the exit status: 1 when a worker could not start (the app, or its configuration,
    fails the same way in every worker), else 0.
    """
    share_secret(settings, os.environ)
    config = serving.config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level.lower(), factory=True,
                            workers=settings.workers)
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    failed = any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    return 1 if failed else 0
