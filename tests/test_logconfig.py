"""Redaction happens in the processor chain, before any renderer."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from hipchatd import logconfig

SECRET = "tok-9f8e7d6c5b4a"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    logconfig.register_secret(SECRET)
    logconfig.configure("debug", json=True, stream=out, cache=False)
    yield out
    structlog.reset_defaults()
    logging.getLogger().handlers.clear()


def test_secret_redacted_in_values_nested_and_exceptions(stream: io.StringIO) -> None:
    log = structlog.get_logger()
    log.info("thing.happened", url=f"https://h/v1?auth_token={SECRET}", nested={"a": [SECRET]})
    try:
        raise ValueError(f"bad token {SECRET}")
    except ValueError:
        log.exception("thing.failed")
    text = stream.getvalue()
    assert SECRET not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[0]["url"] == f"https://h/v1?auth_token={logconfig.REDACTED}"
    assert lines[0]["nested"] == {"a": [logconfig.REDACTED]}
    assert "bad token [REDACTED]" in lines[1]["exception"]


def test_stdlib_logs_go_through_redaction(stream: io.StringIO) -> None:
    logging.getLogger("httpx").warning("request to %s failed", f"https://x/?t={SECRET}")
    logging.getLogger("httpx").info("below WARNING is dropped")
    text = stream.getvalue()
    assert SECRET not in text
    assert "[REDACTED]" in text
    assert "below WARNING" not in text


def test_short_strings_are_not_treated_as_secrets() -> None:
    logconfig.register_secret("ab")
    assert logconfig.redact("abc") == "abc"
