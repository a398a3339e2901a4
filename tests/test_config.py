"""Settings: one source of defaults, and every invalid key named at once."""

from __future__ import annotations

import dataclasses

import pytest

from relay.config import Settings
from relay.errors import ConfigError
from relay.security import StreamTokens

TOKEN = "an-auth-token"


@pytest.mark.parametrize(("env", "kwargs"), [
    ({}, {}),
    ({"PORT": "9000"}, {"port": 9000}),
    ({"TWILIO_AUTH_TOKEN": TOKEN}, {"twilio_auth_token": TOKEN}),
    ({"TWILIO_AUTH_TOKEN": TOKEN, "PUBLIC_URL": "https://relay.example.com"},
     {"twilio_auth_token": TOKEN, "public_url": "https://relay.example.com"}),
    ({"TWILIO_AUTH_TOKEN": TOKEN, "PHONE_ENABLED": "true"},
     {"twilio_auth_token": TOKEN, "phone_enabled": True}),
    ({"RELAY_SECRET": "s", "TWILIO_AUTH_TOKEN": TOKEN},
     {"relay_secret": "s", "twilio_auth_token": TOKEN}),
])
def test_the_environment_and_the_dataclass_share_their_defaults(
        env: dict[str, str], kwargs: dict[str, object]) -> None:
    from_env, built = Settings.from_env(env), Settings(**kwargs)  # type: ignore[arg-type]
    if "relay_secret" not in kwargs and "twilio_auth_token" not in kwargs:  # random per process
        from_env = dataclasses.replace(from_env, relay_secret="x")
        built = dataclasses.replace(built, relay_secret="x")
    assert from_env == built


def test_derived_defaults() -> None:
    assert Settings().public_url == "http://localhost:8080"
    assert Settings(port=9000).public_url == "http://localhost:9000"
    assert Settings().phone_enabled is True  # local use: no auth token
    assert Settings(twilio_auth_token=TOKEN).phone_enabled is False
    assert Settings(twilio_auth_token=TOKEN).relay_secret == TOKEN
    assert Settings().relay_secret != Settings().relay_secret  # random when nothing is shared


def test_every_invalid_key_is_named_at_once() -> None:
    env = {
        "PORT": "eighty", "WORKERS": "0", "PUBLIC_URL": "ftp://relay.example.com",
        "TWILIO_ACCOUNT_SID": "XX123", "TWILIO_PHONE_NUMBER": "555-1234",
        "AGENT_WS_URL": "http://agents.example.com", "LOG_LEVEL": "loud",
        "PHONE_ENABLED": "maybe", "TOOL_RESULT_TIMING": "later", "TOOL_TIMEOUT": "-1",
        "TRANSFER_ALLOWED": "+15550009999,nope", "MAX_CALL_SECONDS": "forever",
        "TWILIO_AUTH_TOKEN": TOKEN,
    }
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    message = str(info.value)
    assert message.startswith("invalid configuration: ") and "\n" not in message
    named = [key for key in env if f"{key}: " in message]
    assert named == [key for key in env if key != "TWILIO_AUTH_TOKEN"]


def test_a_public_url_that_is_not_local_needs_the_auth_token() -> None:
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN: required when PUBLIC_URL is not "
                                          "local"):
        Settings.from_env({"PUBLIC_URL": "https://relay.example.com"})
    with pytest.raises(ConfigError) as info:  # named together with the other problems
        Settings.from_env({"PUBLIC_URL": "https://relay.example.com", "PORT": "x"})
    assert "PORT: " in str(info.value) and "TWILIO_AUTH_TOKEN: " in str(info.value)
    assert Settings.from_env({"PUBLIC_URL": "https://relay.example.com",
                              "TWILIO_AUTH_TOKEN": TOKEN}).verify_signatures
    assert not Settings.from_env({"PUBLIC_URL": "http://localhost:8080"}).verify_signatures


def test_secrets_stay_out_of_repr() -> None:
    text = repr(Settings(twilio_auth_token=TOKEN, assemblyai_api_key="key-123",
                         phone_password="pw-456"))
    assert TOKEN not in text and "key-123" not in text and "pw-456" not in text


# ---------------------------------------------------------------------- stream tokens


def test_a_stream_token_expires() -> None:
    tokens = StreamTokens("secret")
    token = tokens.mint("CA1", now=1000.0, ttl=60)
    assert tokens.verify(token, "CA1", now=1000.0)
    assert tokens.verify(token, "CA1", now=1060.0)  # valid up to its expiry second
    assert not tokens.verify(token, "CA1", now=1060.5)
    assert not tokens.verify(token, "CA1", now=5000.0)


def test_a_stream_token_opens_only_its_own_call_and_purpose() -> None:
    tokens = StreamTokens("secret")
    token = tokens.mint("CA1", now=1000.0, ttl=60)
    assert not tokens.verify(token, "CA2", now=1000.0)
    assert not tokens.verify(token, "CA1", now=1000.0, purpose="phone")
    assert not StreamTokens("other secret").verify(token, "CA1", now=1000.0)
    expires, _, mac = token.partition(".")
    assert not tokens.verify(f"{int(expires) + 3600}.{mac}", "CA1", now=1000.0)  # extended
    for forged in ("", ".", "abc.def", f"{expires}.", "1060"):
        assert not tokens.verify(forged, "CA1", now=1000.0)


def test_the_fallback_and_recovery_settings_are_read_and_checked() -> None:
    settings = Settings.from_env({
        "FALLBACK_MESSAGE": "Sorry, call back later.", "FALLBACK_NUMBER": "+15550001234",
        "AGENT_RECONNECT_GREETING": "", "AGENT_READY_TIMEOUT": "2", "AGENT_RETRY_BACKOFF": "0.5",
        "AGENT_RESUME_TIMEOUT": "1.5", "AGENT_WAIT_BUDGET": "6", "AGENT_PING_INTERVAL": "5",
        "OUTCOME_TTL": "120", "TRANSFER_NUMBER": "+15550009999"})
    assert (settings.fallback_message, settings.fallback_number) == (
        "Sorry, call back later.", "+15550001234")
    assert settings.agent_reconnect_greeting is None  # empty: the fresh session listens first
    assert (settings.agent_ready_timeout, settings.agent_retry_backoff,
            settings.agent_resume_timeout, settings.agent_wait_budget,
            settings.agent_ping_interval, settings.outcome_ttl) == (2, 0.5, 1.5, 6, 5, 120)
    assert settings.transfers_enabled  # a number is enough: the <Connect action> dials it
    assert settings.action_url == "http://localhost:8080/call-action"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"FALLBACK_NUMBER": "555", "AGENT_WAIT_BUDGET": "0"})
    assert "FALLBACK_NUMBER: " in str(info.value) and "AGENT_WAIT_BUDGET: " in str(info.value)
