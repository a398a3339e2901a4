"""Outbound calls: ``python -m relay.outbound +15551234567``, and the Python API behind it.

The call is created through Twilio's REST API with ``url=PUBLIC_URL/twiml?greeting=…&prompt=…``.
When the callee answers, Twilio signs and requests that URL like any voice webhook; the relay
answers with ``<Connect><Stream>`` and copies ``greeting`` and ``prompt`` into ``<Parameter>``s,
which come back in the stream's ``start`` and go into that call's ``session.update``, so the agent
speaks first with this call's greeting. Status callbacks go to ``PUBLIC_URL/call-status``.

    CallOptions           one call's options (greeting, prompt, caller id, ring time, machines)
    build_call_request()  pure: the keyword arguments for ``client.calls.create``
    create_call()         one REST request; Twilio's errors become a one-line CallError
    place_call()          both, with a client built from the settings: returns the call SID
    follow_call()         polls the call until it ends (``--wait``)
    main()                the command line
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
from dotenv import find_dotenv, load_dotenv
from twilio.base.exceptions import TwilioException, TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from relay import twilio_rest
from relay.config import E164, Settings
from relay.errors import ConfigError, RelayError
from relay.netaddr import is_local_url
from relay.routes import MAX_PARAMETER

STATUS_EVENTS = ("initiated", "ringing", "answered", "completed")
ENDED = frozenset({"completed", "busy", "failed", "no-answer", "canceled"})
# --machine-detection → Twilio's MachineDetection: hang up as soon as a machine is detected, or
# wait for the end of its greeting (the beep) to leave the message.
MACHINE_DETECTION = {"hangup": "Enable", "message": "DetectMessageEnd"}
MAX_MACHINE_MESSAGE = 1000
MAX_RING_SECONDS = 600
HEALTH_TIMEOUT = 3.0

TRIAL_ADVICE = ("a trial account only calls verified numbers: verify {to} in the Twilio console "
                "(Phone Numbers > Manage > Verified Caller IDs), or upgrade the account")
FROM_ADVICE = ("set TWILIO_PHONE_NUMBER (or --from) to a voice-capable Twilio number of this "
               "account, or to a verified caller ID, in E.164")
ADVICE = {
    21219: TRIAL_ADVICE,
    21608: TRIAL_ADVICE,
    21210: FROM_ADVICE,
    21212: FROM_ADVICE,
    20003: "check TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (Twilio console > Account info)",
    20404: "check TWILIO_ACCOUNT_SID (and TWILIO_API_BASE_URL, if set)",
    21211: "check the number you are calling",
    21215: "allow calls to {to}'s country in the Twilio console (Voice > Settings > Geo "
           "permissions)",
    21205: "set PUBLIC_URL to the relay's public https URL",
}


class CallError(RelayError):
    """A call that could not be placed, and what to do about it, in one line."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class CallProgress:
    """A call's status as the REST API reports it; ``duration`` in seconds once it ended."""

    status: str
    duration: int | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED

    def describe(self) -> str:
        if self.status == "in-progress":
            return "answered"
        if self.status == "completed" and self.duration is not None:
            return f"completed after {self.duration} s"
        return self.status


def check_number(number: str, what: str) -> None:
    """Raises CallError unless ``number`` is E.164."""
    if not E164.match(number):
        raise CallError(f"{what} {number!r} is not an E.164 number like +15551234567")


@dataclass(frozen=True, slots=True)
class CallOptions:
    """What one outbound call may set; every option is optional.

    ``greeting`` and ``prompt`` are this call's (else the relay's); ``from_`` is the caller id
    (else ``TWILIO_PHONE_NUMBER``); ``timeout`` how long it rings, in seconds;
    ``machine_detection`` one of ``MACHINE_DETECTION``'s names, and ``machine_message`` what to
    leave after the beep (with ``"message"``).
    """

    greeting: str | None = None
    prompt: str | None = None
    from_: str | None = None
    timeout: int | None = None
    machine_detection: str | None = None
    machine_message: str | None = None


NO_OPTIONS = CallOptions()


def build_call_request(settings: Settings, to: str,
                       options: CallOptions = NO_OPTIONS) -> dict[str, Any]:
    """The keyword arguments of ``client.calls.create`` for this call (pure, no I/O).

    Raises:
        CallError: an invalid number or option, or a ``PUBLIC_URL`` Twilio cannot reach.
    """
    greeting, prompt, from_ = options.greeting, options.prompt, options.from_
    timeout, machine_detection = options.timeout, options.machine_detection
    machine_message = options.machine_message
    check_number(to, "the number to call")
    caller = from_ or settings.twilio_phone_number
    if not caller:
        raise CallError("TWILIO_PHONE_NUMBER is not set: " + FROM_ADVICE)
    check_number(caller, "the caller id (--from or TWILIO_PHONE_NUMBER)")
    query: dict[str, str] = {}
    for name, value in (("greeting", greeting), ("prompt", prompt)):
        if value:
            limit = MAX_PARAMETER - len(name)
            if len(value) > limit:
                raise CallError(f"the {name} is {len(value)} characters long; a per-call {name} "
                                f"can be at most {limit} (it travels in a Twilio <Parameter>)")
            query[name] = value
    if timeout is not None and not 1 <= timeout <= MAX_RING_SECONDS:
        raise CallError(f"the ring timeout must be 1 to {MAX_RING_SECONDS} seconds, not {timeout}")
    if machine_detection is not None:
        if machine_detection not in MACHINE_DETECTION:
            raise CallError(f"machine detection must be one of {', '.join(MACHINE_DETECTION)}, "
                            f"not {machine_detection!r}")
        query["amd"] = machine_detection
    if machine_message:
        if machine_detection != "message":
            raise CallError("a machine message needs machine detection 'message'")
        if len(machine_message) > MAX_MACHINE_MESSAGE:
            raise CallError(f"the machine message can be at most {MAX_MACHINE_MESSAGE} characters")
        query["amd_message"] = machine_message
    if not settings.twilio_api_base_url and is_local_url(settings.public_url):
        raise CallError(f"PUBLIC_URL is {settings.public_base}, which Twilio cannot reach: set it "
                        "to the relay's public https URL (e.g. your ngrok URL)")
    base = settings.public_base
    request: dict[str, Any] = {
        "to": to,
        "from_": caller,
        "url": f"{base}/twiml" + (f"?{urlencode(query)}" if query else ""),
        "method": "POST",
        "status_callback": f"{base}/call-status",
        "status_callback_event": list(STATUS_EVENTS),
        "status_callback_method": "POST",
    }
    if timeout is not None:
        request["timeout"] = timeout
    if machine_detection is not None:
        request["machine_detection"] = MACHINE_DETECTION[machine_detection]
    return request


def rest_client(settings: Settings) -> Client:
    """Twilio's REST client for these settings (honours ``TWILIO_API_BASE_URL``).

    Raises:
        CallError: naming the missing credentials.
    """
    client = twilio_rest.make_client(settings)
    if client is None:
        missing = [key for key, value in (("TWILIO_ACCOUNT_SID", settings.twilio_account_sid),
                                          ("TWILIO_AUTH_TOKEN", settings.twilio_auth_token))
                   if not value]
        raise CallError(f"{' and '.join(missing)} not set: copy them from the Twilio console "
                        "(Account info) into .env")
    return client


def close_client(client: Client) -> None:
    if isinstance(client.http_client, TwilioHttpClient) and client.http_client.session:
        client.http_client.session.close()


def create_call(client: Client, request: Mapping[str, Any]) -> str:
    """``client.calls.create(**request)``; returns the call SID.

    Raises:
        CallError: Twilio refused the call (with its code), or could not be reached.
    """
    try:
        return str(client.calls.create(**request).sid)
    except TwilioException as exc:
        raise explain(exc, request) from exc
    except OSError as exc:  # requests' connection errors
        raise CallError(f"could not reach Twilio's REST API: {exc}") from exc


def explain(exc: TwilioException, request: Mapping[str, Any]) -> CallError:
    """Twilio's error as one line, with what to do about it."""
    code: int | None = None
    if isinstance(exc, TwilioRestException):
        code, text = exc.code, exc.msg.partition(": ")[2] or exc.msg
    elif isinstance(exc, TwilioServiceException):
        code, text = exc.code, exc.detail or exc.title
    else:
        text = str(exc)
    text = " ".join(str(text).split()).rstrip(".")
    if code is None or code < 10000:  # no Twilio error code, at most an HTTP status
        return CallError(f"Twilio's REST API failed: {text}", code=code)
    advice = ADVICE.get(code, "see https://www.twilio.com/docs/errors/{code}")
    advice = advice.format(to=request.get("to", ""), code=code)
    return CallError(f"Twilio error {code}: {text}. {advice[0].upper()}{advice[1:]}", code=code)


def place_call(
    to: str,
    options: CallOptions = NO_OPTIONS,
    *,
    settings: Settings | None = None,
    client: Client | None = None,
) -> str:
    """Call ``to``; when they answer, the agent speaks first. Returns the call SID.

    ``settings`` default to ``Settings.from_env(os.environ)``; ``client`` to a REST client built
    from them. Everything is validated before any request.

    Raises:
        CallError: an invalid option, missing configuration or Twilio's refusal, in one line.
        ConfigError: invalid settings in the environment.
    """
    if settings is None:
        settings = Settings.from_env(os.environ)
    request = build_call_request(settings, to, options)
    if client is not None:
        return create_call(client, request)
    own = rest_client(settings)
    try:
        return create_call(own, request)
    finally:
        close_client(own)


def fetch_progress(client: Client, sid: str) -> CallProgress:
    try:
        call = client.calls(sid).fetch()
    except TwilioException as exc:
        raise explain(exc, {}) from exc
    except OSError as exc:
        raise CallError(f"could not reach Twilio's REST API: {exc}") from exc
    duration = str(call.duration or "")
    return CallProgress(str(call.status), int(duration) if duration.isdigit() else None)


def follow_call(
    client: Client,
    sid: str,
    *,
    interval: float = 1.0,
    max_wait: float = 3600.0,
    on_change: Callable[[CallProgress], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> CallProgress:
    """Poll the call every ``interval`` seconds until it ends or ``max_wait`` elapses.

    ``on_change`` sees each new status. Returns the last one (``.ended`` tells which case).
    """
    deadline = clock() + max_wait
    last: str | None = None
    while True:
        progress = fetch_progress(client, sid)
        if progress.status != last and on_change is not None:
            on_change(progress)
        last = progress.status
        remaining = deadline - clock()
        if progress.ended or remaining <= 0:
            return progress
        sleep(min(interval, remaining))


def check_relay(settings: Settings, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """None when the relay answers ``GET PUBLIC_URL/healthz``, else a warning to show."""
    url = settings.public_base + "/healthz"
    try:
        response = httpx.get(url, timeout=timeout)
    except httpx.HTTPError as exc:
        return (f"the relay is not reachable at {url} ({exc or type(exc).__name__}): start it "
                "(python app.py) and check PUBLIC_URL, or the call will fail when answered")
    if response.status_code != 200:
        return (f"{url} answered HTTP {response.status_code}: is PUBLIC_URL this relay? "
                "The call will fail when answered if not")
    return None


def _seconds(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{raw!r} is not a positive number of seconds")
    return value


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m relay.outbound",
        description="Call a phone number; when they answer, the relay's agent speaks first. "
                    "Reads .env like the relay (TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN, "
                    "TWILIO_PHONE_NUMBER, PUBLIC_URL), and prints the call SID.",
        epilog="The relay must be running and reachable at PUBLIC_URL: Twilio fetches "
               "PUBLIC_URL/twiml when the call is answered.")
    parser.add_argument("to", help="the number to call, in E.164 (+15551234567)")
    parser.add_argument("--from", dest="from_", metavar="NUMBER",
                        help="caller id: a Twilio number of this account or a verified caller "
                             "ID (default: TWILIO_PHONE_NUMBER)")
    parser.add_argument("--greeting", metavar="TEXT",
                        help="what the agent says first on this call (default: the relay's "
                             f"AGENT_GREETING); at most {MAX_PARAMETER - len('greeting')} "
                             "characters")
    parser.add_argument("--prompt", metavar="TEXT",
                        help="the agent's instructions for this call only (default: the relay's "
                             f"AGENT_SYSTEM_PROMPT); at most {MAX_PARAMETER - len('prompt')} "
                             "characters")
    parser.add_argument("--timeout", type=int, metavar="SECONDS",
                        help=f"how long to let it ring, 1 to {MAX_RING_SECONDS} "
                             "(Twilio's default: 60)")
    parser.add_argument("--machine-detection", choices=sorted(MACHINE_DETECTION),
                        help="detect answering machines and hang up, or leave --machine-message "
                             "after the beep (default: off, the agent talks to whoever answers)")
    parser.add_argument("--machine-message", metavar="TEXT",
                        help="what to say to an answering machine with --machine-detection "
                             "message (default: a short generic message)")
    parser.add_argument("--wait", action="store_true",
                        help="follow the call (ringing, answered, completed with its duration) "
                             "until it ends; exit status 1 if it was not answered")
    parser.add_argument("--max-wait", type=_seconds, metavar="SECONDS",
                        help="with --wait: stop following after this long (default: the ring "
                             "time plus MAX_CALL_SECONDS plus a minute)")
    parser.add_argument("--poll-interval", type=_seconds, default=1.0, metavar="SECONDS",
                        help="with --wait: how often to ask Twilio for the call's status "
                             "(default: 1)")
    return parser


def required_keys(env: Mapping[str, str], *, need_from: bool) -> list[str]:
    """The keys a call needs that ``env`` lacks."""
    keys = ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"]
    keys += ["TWILIO_PHONE_NUMBER"] if need_from else []
    return [key for key in [*keys, "PUBLIC_URL"] if not env.get(key, "").strip()]


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    check_number(args.to, "the number to call")
    missing = required_keys(env, need_from=not args.from_)
    if missing:
        raise CallError(f"{', '.join(missing)} not set: add {'it' if len(missing) == 1 else 'them'}"
                        " to .env or the environment (see .env.example)")
    settings = Settings.from_env(env)
    request = build_call_request(settings, args.to, CallOptions(
        greeting=args.greeting, prompt=args.prompt, from_=args.from_, timeout=args.timeout,
        machine_detection=args.machine_detection, machine_message=args.machine_message))
    warning = check_relay(settings)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    client = rest_client(settings)
    try:
        sid = create_call(client, request)
        print(sid, flush=True)
        if not args.wait:
            return 0
        max_wait = args.max_wait or (args.timeout or 60) + settings.max_call_seconds + 60
        progress = follow_call(client, sid, interval=args.poll_interval, max_wait=max_wait,
                               on_change=lambda p: print(p.describe(), flush=True))
    finally:
        close_client(client)
    if not progress.ended:
        raise CallError(f"call {sid} is still {progress.status} after {max_wait:g} s; "
                        "stopped following it")
    if progress.status != "completed":
        print(f"error: call {sid} was not answered ({progress.status})", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """The command line. ``env`` defaults to the environment, after loading ``.env``."""
    args = parser().parse_args(argv)
    if env is None:
        load_dotenv(find_dotenv(usecwd=True))
        env = os.environ
    try:
        return run(args, env)
    except (CallError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted (a call already placed goes on)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
