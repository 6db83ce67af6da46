"""[smtp] and [queue] configuration: defaults, routes, and errors that name the key."""

from __future__ import annotations

import pytest

from mailsrv.config import Config, ConfigError, build


def test_defaults() -> None:
    cfg = build(Config, {})
    assert cfg.smtp.max_message_size == 50 * 1024 * 1024 and cfg.smtp.max_recipients >= 100  # RFC 5321 §4.5.3.1.8
    assert cfg.queue.lifetime == 5 * 86400 and cfg.queue.route == {}


def test_routes() -> None:
    cfg = build(Config, {"queue": {"route": {
        "*": {"smarthost": "relay.example.net:587", "tls": "required", "username": "u", "password": "p"},
        "partner.test": {"smarthost": "[2001:db8::1]:25", "tls": "implicit"}}}})
    assert cfg.queue.route["*"].tls == "required" and cfg.queue.route["partner.test"].smarthost == "[2001:db8::1]:25"


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"queue": {"route": {"x.test": {"smarthost": "h:0"}}}}, "queue.route.x.test.smarthost"),
        ({"queue": {"route": {"x.test": {"tls": "sometimes"}}}}, "queue.route.x.test.tls"),
        ({"queue": {"retry_schedule": []}}, "queue.retry_schedule"),
        ({"queue": {"retry_schedule": [60, -1]}}, "queue.retry_schedule"),
        ({"queue": {"local_relay": "localhost"}}, "queue.local_relay"),
        ({"smtp": {"max_recipients": 0}}, "smtp.max_recipients"),
        ({"smtp": {"bogus": 1}}, "smtp.bogus"),
    ],
)
def test_bad_values_name_the_key(data: dict, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        build(Config, data, "mailsrv.toml")
    assert e.value.key == key and "mailsrv.toml" in str(e.value)
