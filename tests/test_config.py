"""Settings: one source of defaults."""

from __future__ import annotations

import dataclasses

import pytest

from relay.config import Settings

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
