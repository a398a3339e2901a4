"""Settings: every knob the relay has, read once from a mapping (the environment).

Nothing here reads ``os.environ`` by itself: ``app.py`` loads ``.env`` and passes the
environment in, and tests pass plain dicts. Secrets are excluded from ``repr``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from limits import parse_many

from relay.errors import ConfigError
from relay.netaddr import is_local_url

DEFAULT_AGENT_WS_URL = "wss://agents.assemblyai.com/v1/ws"
DEFAULT_PROMPT = (
    "You are a friendly, concise phone assistant. Answer in one or two short sentences, "
    "and speak naturally: this is a phone call, so never use lists, markdown or emoji."
)
DEFAULT_GREETING = "Hi, thanks for calling. How can I help?"
DEFAULT_RECONNECT_GREETING = "Sorry, I lost you for a second. Could you say that again?"
DEFAULT_FALLBACK_MESSAGE = ("Sorry, our assistant is not available right now. "
                            "Please try again later.")
# Mean event-loop lag over a second above which new calls are refused (see README).
DEFAULT_MAX_LAG_MS = 50.0
E164 = re.compile(r"^\+[1-9]\d{6,14}$")

ToolResultTiming = Literal["after_reply", "immediate"]
LogFormat = Literal["text", "json"]


@dataclass(frozen=True, slots=True)
class Settings:
    host: str = "0.0.0.0"
    port: int = 8080
    # Processes serving the one listening socket (relay/workers.py); 1: this process alone.
    workers: int = 1
    public_url: str = ""  # "": http://localhost:{port}
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = field(default=None, repr=False)
    twilio_phone_number: str | None = None
    twilio_api_base_url: str | None = None
    assemblyai_api_key: str | None = field(default=None, repr=False)
    agent_ws_url: str = DEFAULT_AGENT_WS_URL
    agent_system_prompt: str = DEFAULT_PROMPT
    agent_greeting: str | None = DEFAULT_GREETING
    agent_voice: str = "ivy"
    # Key for the per-call stream tokens. "": TWILIO_AUTH_TOKEN, so every instance behind a
    # load balancer verifies every other instance's tokens (else a random key of this process).
    relay_secret: str = field(default="", repr=False)
    log_level: str = "INFO"
    # None: on only without TWILIO_AUTH_TOKEN (local use); always a bool once built.
    phone_enabled: bool | None = None
    # Lets clients other than this machine use the softphone (HTTP Basic, any user name).
    phone_password: str | None = field(default=None, repr=False)
    transfer_number: str | None = None
    transfer_allowed: tuple[str, ...] = ()
    # What the caller hears when no agent can be had (Twilio <Say>), then <Dial> to
    # FALLBACK_NUMBER, or <Hangup/> when it is unset.
    fallback_message: str = DEFAULT_FALLBACK_MESSAGE
    fallback_number: str | None = None
    # Spoken by a fresh session that replaces one lost mid-call (instead of the greeting).
    agent_reconnect_greeting: str | None = DEFAULT_RECONNECT_GREETING
    # The folder of the user's tools; None: ``tools/`` next to ``app.py``.
    tools_dir: str | None = None
    tool_result_timing: ToolResultTiming = "after_reply"
    # Monitoring: who may read /metrics, /calls and /api/* from elsewhere (Bearer or Basic).
    admin_token: str | None = field(default=None, repr=False)
    call_log_dir: str | None = None  # one JSON line per call, calls-YYYY-MM-DD.jsonl
    redact_transcripts: bool = True
    log_format: LogFormat = "text"
    # Named timeouts, in seconds.
    tool_timeout: float = 8.0
    start_timeout: float = 10.0
    # Getting an agent: the whole wait is bounded by AGENT_WAIT_BUDGET (from the stream's
    # start, or from a drop mid-call); within it, one retry or a resume then a fresh session.
    agent_open_timeout: float = 3.0  # TCP + TLS + WebSocket handshake, per attempt
    agent_ready_timeout: float = 3.0  # session.update (or session.resume) to session.ready
    agent_retry_backoff: float = 0.3  # before the one retry of a failed attempt
    agent_resume_timeout: float = 2.5  # a resume attempt, open and ready together
    agent_wait_budget: float = 6.5  # the caller's longest silence before the fallback
    # A keepalive ping to the agent this often; one left unanswered until the next means the
    # link is dead (a drop: resumed).
    agent_ping_interval: float = 10.0
    agent_close_timeout: float = 3.0
    # Each request to Twilio's REST API (a transfer, an outbound call, a poll of its status).
    twilio_rest_timeout: float = 10.0
    hangup_timeout: float = 15.0
    max_call_seconds: float = 3600.0
    # How long the outcome of a call is kept for Twilio's <Connect action> request.
    outcome_ttl: float = 300.0
    call_ended_hook_timeout: float = 10.0
    # A stream starts within seconds of its webhook: a token lives a minute, so a leaked one is
    # soon useless and the place of a call whose stream never came is soon free again.
    token_ttl: float = 60.0
    # Admission at /twiml and draining (see relay.admission, relay.load, relay.draining).
    max_concurrent_calls: int | None = None
    agent_max_sessions: int | None = None
    admission_max_lag_ms: float | None = DEFAULT_MAX_LAG_MS
    caller_rate_limit: str | None = "10/minute"
    drain_seconds: float = 300.0

    def __post_init__(self) -> None:
        """The defaults that follow from other settings: the one place they are decided."""
        if not self.public_url:
            object.__setattr__(self, "public_url", f"http://localhost:{self.port}")
        if not self.relay_secret:
            object.__setattr__(self, "relay_secret",
                               self.twilio_auth_token or secrets.token_urlsafe(32))
        if self.phone_enabled is None:
            object.__setattr__(self, "phone_enabled", not self.twilio_auth_token)
    # The shared store of several instances (relay/shared_state.py); None: this process only.
    redis_url: str | None = field(default=None, repr=False)  # may hold a password
    redis_timeout: float = 0.25  # each Redis operation; past it the relay fails open
    # A live call's entry (and agent-session slot) in the shared store lasts this long past
    # its holder's last renewal (every third of it): the time a crashed instance's calls
    # take to free their slots.
    call_lease: float = 15.0

    @property
    def local_agent(self) -> bool:
        """True when no AssemblyAI key is set: calls go to the built-in local agent."""
        return not self.assemblyai_api_key

    @property
    def transfers_enabled(self) -> bool:
        """A transfer can happen: a number to transfer to (the ``<Connect action>`` dials it)."""
        return bool(self.transfer_number or self.transfer_allowed)

    @property
    def action_url(self) -> str:
        """Where Twilio asks what to do once the stream ends (``<Connect action>``)."""
        return self.public_base + "/call-action"

    @property
    def verify_signatures(self) -> bool:
        """Twilio signatures can only be checked when the auth token is known."""
        return bool(self.twilio_auth_token)

    @property
    def public_base(self) -> str:
        return self.public_url.rstrip("/")

    @property
    def public_ws_base(self) -> str:
        """``PUBLIC_URL`` with the WebSocket scheme Twilio uses for the stream."""
        base = self.public_base
        if base.startswith("https://"):
            return "wss://" + base.removeprefix("https://")
        return "ws://" + base.removeprefix("http://")

    @property
    def stream_url(self) -> str:
        return self.public_ws_base + "/media"

    @property
    def agent_url(self) -> str:
        """Where the relay dials the agent: AssemblyAI, or its own local agent."""
        if self.local_agent:
            return f"ws://127.0.0.1:{self.port}/local-agent"
        return self.agent_ws_url

    @property
    def agent_key(self) -> str:
        if self.assemblyai_api_key:
            return self.assemblyai_api_key
        return "local-" + self.relay_secret[:16]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from an environment mapping.

        Raises:
            ConfigError: naming every missing or invalid key at once.
        """
        problems: list[str] = []
        values: dict[str, Any] = {}

        def get(key: str) -> str | None:
            value = env.get(key, "").strip()
            return value or None

        def take(key: str, attr: str, parse: Callable[[str], Any] = str) -> None:
            raw = get(key)
            if raw is None:
                return
            try:
                values[attr] = parse(raw)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")

        take("HOST", "host")
        take("PORT", "port", _port)
        take("WORKERS", "workers", _workers)
        take("PUBLIC_URL", "public_url", _http_url)
        take("TWILIO_ACCOUNT_SID", "twilio_account_sid", _prefixed("AC"))
        take("TWILIO_AUTH_TOKEN", "twilio_auth_token")
        take("TWILIO_PHONE_NUMBER", "twilio_phone_number", _e164)
        take("TWILIO_API_BASE_URL", "twilio_api_base_url", _http_url)
        take("ASSEMBLYAI_API_KEY", "assemblyai_api_key")
        take("AGENT_WS_URL", "agent_ws_url", _ws_url)
        take("AGENT_SYSTEM_PROMPT", "agent_system_prompt")
        take("AGENT_VOICE", "agent_voice")
        take("LOG_LEVEL", "log_level", _log_level)
        take("PHONE_ENABLED", "phone_enabled", _bool)
        take("PHONE_PASSWORD", "phone_password")
        take("TRANSFER_NUMBER", "transfer_number", _e164)
        take("TRANSFER_ALLOWED", "transfer_allowed", _e164_list)
        take("FALLBACK_MESSAGE", "fallback_message")
        take("FALLBACK_NUMBER", "fallback_number", _e164)
        take("TOOLS_DIR", "tools_dir")
        take("REDIS_URL", "redis_url", _redis_url)
        take("TOOL_RESULT_TIMING", "tool_result_timing", _choice("after_reply", "immediate"))
        take("ADMIN_TOKEN", "admin_token")
        take("CALL_LOG_DIR", "call_log_dir")
        take("REDACT_TRANSCRIPTS", "redact_transcripts", _bool)
        take("LOG_FORMAT", "log_format", _choice("text", "json"))
        for key in ("TOOL_TIMEOUT", "START_TIMEOUT", "AGENT_OPEN_TIMEOUT", "AGENT_READY_TIMEOUT",
                    "AGENT_RETRY_BACKOFF", "AGENT_RESUME_TIMEOUT", "AGENT_WAIT_BUDGET",
                    "AGENT_PING_INTERVAL",
                    "AGENT_CLOSE_TIMEOUT", "TWILIO_REST_TIMEOUT", "HANGUP_TIMEOUT",
                    "MAX_CALL_SECONDS", "TOKEN_TTL", "OUTCOME_TTL", "CALL_ENDED_HOOK_TIMEOUT",
                    "REDIS_TIMEOUT", "CALL_LEASE"):
            take(key, key.lower(), _seconds)
        take("MAX_CONCURRENT_CALLS", "max_concurrent_calls", _count)
        take("AGENT_MAX_SESSIONS", "agent_max_sessions", _count)
        take("ADMISSION_MAX_LAG_MS", "admission_max_lag_ms", _off_or(_milliseconds))
        take("CALLER_RATE_LIMIT", "caller_rate_limit", _off_or(_rate_limit))
        take("DRAIN_SECONDS", "drain_seconds", _seconds)
        for key in ("AGENT_GREETING", "AGENT_RECONNECT_GREETING"):
            if key in env:  # present but empty means: listen first, no greeting
                values[key.lower()] = get(key)
        take("RELAY_SECRET", "relay_secret")
        settings = cls(**values)  # every default is the dataclass's, derived ones included
        if not is_local_url(settings.public_url) and not settings.twilio_auth_token:
            problems.append("TWILIO_AUTH_TOKEN: required when PUBLIC_URL is not local, or anyone "
                            "could open streams (webhook signatures cannot be checked without it)")
        if problems:
            raise ConfigError("invalid configuration: " + "; ".join(problems))
        return settings


def _port(raw: str) -> int:
    port = int(raw)
    if not 0 <= port <= 65535:
        raise ValueError(f"{port} is not a TCP port")
    return port


def _workers(raw: str) -> int:
    workers = int(raw)
    if not 1 <= workers <= 64:
        raise ValueError(f"{workers} is not a number of processes from 1 to 64")
    return workers


def _http_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{raw!r} is not an http(s) URL")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query string or fragment")
    return raw.rstrip("/")


def _redis_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
        # never the URL itself in the message: it may hold a password
        raise ValueError("is not a redis://, rediss:// or unix:// URL")
    return raw


def _ws_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"{raw!r} is not a ws(s) URL")
    return raw


def _e164(raw: str) -> str:
    if not E164.match(raw):
        raise ValueError(f"{raw!r} is not an E.164 number like +15551234567")
    return raw


def _e164_list(raw: str) -> tuple[str, ...]:
    return tuple(_e164(n.strip()) for n in raw.split(",") if n.strip())


def _prefixed(prefix: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not raw.startswith(prefix):
            raise ValueError(f"must start with {prefix}")
        return raw

    return parse


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw not in choices:
            raise ValueError(f"{raw!r} is not one of {', '.join(choices)}")
        return raw

    return parse


def _positive(unit: str) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not value > 0:
            raise ValueError(f"must be a positive number of {unit}")
        return value

    return parse


_seconds = _positive("seconds")
_milliseconds = _positive("milliseconds")


def _count(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _rate_limit(raw: str) -> str:
    try:
        items = parse_many(raw)
    except ValueError:
        items = []
    if len(items) != 1:
        raise ValueError(f"{raw!r} is not one rate limit like 10/minute")
    return raw


def _off_or(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """``off`` (or ``none``) turns the limit off; anything else is parsed."""

    def parse_or_off(raw: str) -> Any:
        return None if raw.lower() in ("off", "none") else parse(raw)

    return parse_or_off


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{raw!r} is not a boolean (true/false)")


def _log_level(raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"{raw!r} is not DEBUG, INFO, WARNING or ERROR")
    return level
