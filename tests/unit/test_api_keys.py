"""API keys of the public stream URL: hashes cached with a bounded age, per-key rates."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aws_lambda_powertools.utilities.parameters import base
from aws_lambda_powertools.utilities.parameters.base import BaseProvider

from llmhost.serving.auth import (
    CACHE_SECONDS,
    FAILED_LOAD_RETRY_SECONDS,
    ApiKeyAuth,
    KeysUnavailable,
    SecretKeys,
    Unauthorized,
    hash_key,
)
from llmhost.serving.ratelimit import KeyRateLimiter, RateLimited, RateLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    """One clock for the keys' checks and for Powertools Parameters' cache ages."""
    current = Clock()

    class FollowingClock(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Any:
            return datetime.fromtimestamp(current.now, tz or UTC).replace(tzinfo=None)

    monkeypatch.setattr(base, "datetime", FollowingClock)
    yield current


class Secret(BaseProvider):
    """A key secret behind Powertools Parameters that counts its reads; ``value`` None makes
    a read fail."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value
        self.reads = 0

    def _get(self, name: str, **sdk_options: Any) -> str:
        self.reads += 1
        if self.value is None:
            raise ConnectionError("Secrets Manager timed out")
        return json.dumps(self.value)

    def _get_multiple(self, path: str, **sdk_options: Any) -> dict[str, str]:
        raise NotImplementedError


def keys(secret: Secret, clock: Clock) -> ApiKeyAuth:
    return ApiKeyAuth(SecretKeys("keys", provider=secret, clock=clock), clock=clock)


def test_keys_are_read_once_per_cache_period(clock: Clock) -> None:
    secret = Secret({"team": hash_key("llmh-a")})
    auth = keys(secret, clock)
    for _ in range(50):
        assert auth.authenticate("Bearer llmh-a").key_name == "team"
    assert secret.reads == 1
    clock.now += CACHE_SECONDS + 1
    auth.authenticate("Bearer llmh-a")
    assert secret.reads == 2


def test_a_cached_check_never_reads_the_secret_and_says_when_a_read_is_due(clock: Clock) -> None:
    secret = Secret({"team": hash_key("llmh-a")})
    auth = keys(secret, clock)
    # Before the first read, and once the cache period is over: None, and nothing read
    assert auth.authenticate_cached("Bearer llmh-a") is None
    assert secret.reads == 0
    auth.authenticate("Bearer llmh-a")
    # While the hashes are fresh: the same answers as authenticate, without a read
    assert auth.authenticate_cached("Bearer llmh-a") == auth.authenticate("Bearer llmh-a")
    with pytest.raises(Unauthorized):
        auth.authenticate_cached("Bearer llmh-wrong")
    clock.now += CACHE_SECONDS + 1
    assert auth.authenticate_cached("Bearer llmh-a") is None
    assert secret.reads == 1


def test_an_empty_secret_is_not_read_again_on_every_request(clock: Clock) -> None:
    # Given the secret the stack creates, which holds no keys yet
    secret = Secret({})
    auth = keys(secret, clock)
    # When many requests arrive
    for _ in range(50):
        with pytest.raises(Unauthorized) as refused:
            auth.authenticate("Bearer llmh-a")
    # Then the secret was read once, and the answer says how to add a key
    assert secret.reads == 1
    assert "python -m llmhost.serving.auth" in refused.value.message
    # And a key added later is seen within the cache period for an empty secret
    secret.value = {"team": hash_key("llmh-a")}
    clock.now += FAILED_LOAD_RETRY_SECONDS + 1
    assert auth.authenticate("Bearer llmh-a").key_name == "team"


def test_a_failing_secret_answers_503_and_is_retried_at_a_bounded_rate(clock: Clock) -> None:
    # Given a secret that cannot be read
    secret = Secret(None)
    auth = keys(secret, clock)
    # When many requests arrive, each gets a 503 with Retry-After, not a 500
    for _ in range(50):
        with pytest.raises(KeysUnavailable) as unavailable:
            auth.authenticate("Bearer llmh-a")
        assert unavailable.value.status == 503
        assert unavailable.value.retry_after == FAILED_LOAD_RETRY_SECONDS
    # And Secrets Manager was asked once, not once per request
    assert secret.reads == 1
    # When it recovers, the next read after the retry period succeeds
    secret.value = {"team": hash_key("llmh-a")}
    clock.now += FAILED_LOAD_RETRY_SECONDS + 1
    assert auth.authenticate("Bearer llmh-a").key_name == "team"
    assert secret.reads == 2


def test_a_failed_refresh_keeps_the_keys_it_had(clock: Clock) -> None:
    secret = Secret({"team": hash_key("llmh-a")})
    auth = keys(secret, clock)
    auth.authenticate("Bearer llmh-a")
    secret.value = None
    clock.now += CACHE_SECONDS + 1
    for _ in range(20):
        assert auth.authenticate("Bearer llmh-a").key_name == "team"
    assert secret.reads == 2  # one failed refresh, then the old keys until the retry period


def test_a_secret_in_the_wrong_shape_is_unavailable_not_unauthorized(clock: Clock) -> None:
    auth = keys(Secret(["not", "an", "object"]), clock)
    with pytest.raises(KeysUnavailable):
        auth.authenticate("Bearer llmh-a")


# ------------------------------------------------------------------------- rate limits


def test_a_key_over_its_rate_gets_429_with_retry_after() -> None:
    clock = Clock()
    limiter = KeyRateLimiter(RateLimits(requests_per_minute=60, burst=5), clock=clock)
    for _ in range(5):
        limiter.take("team")
    with pytest.raises(RateLimited) as limited:
        limiter.take("team")
    assert limited.value.status == 429 and limited.value.retry_after == 1
    # Other keys have their own bucket
    limiter.take("other")
    # And the bucket refills at the rate: one request per second here
    clock.now += 1
    limiter.take("team")
    with pytest.raises(RateLimited):
        limiter.take("team")


def test_retry_after_is_when_the_next_request_will_pass() -> None:
    clock = Clock()
    limiter = KeyRateLimiter(RateLimits(requests_per_minute=6, burst=1), clock=clock)
    limiter.take("team")
    with pytest.raises(RateLimited) as limited:
        limiter.take("team")
    wait = limited.value.retry_after
    assert wait == 10
    clock.now += wait - 1
    with pytest.raises(RateLimited):
        limiter.take("team")
    clock.now += 1
    limiter.take("team")


def test_rate_zero_turns_limits_off_and_bad_settings_are_refused() -> None:
    limiter = KeyRateLimiter(RateLimits.from_env({"API_KEY_REQUESTS_PER_MINUTE": "0"}))
    for _ in range(1000):
        limiter.take("team")
    assert RateLimits.from_env({}) == RateLimits(60, 20)
    assert RateLimits.from_env({"API_KEY_REQUESTS_PER_MINUTE": "600", "API_KEY_BURST": "50"}) == (
        RateLimits(600, 50)
    )
    for bad in (
        {"API_KEY_REQUESTS_PER_MINUTE": "-1"},
        {"API_KEY_BURST": "0"},
        {"API_KEY_BURST": "x"},
    ):
        with pytest.raises(ValueError, match="API_KEY_REQUESTS_PER_MINUTE"):
            RateLimits.from_env(bad)


def test_a_cache_peek_the_parameters_library_does_not_support_falls_back_to_a_read(
    clock: Clock,
) -> None:
    # Given keys read once through Powertools Parameters
    secret = Secret({"team": hash_key("llmh-a")})
    auth = keys(secret, clock)
    assert auth.authenticate("Bearer llmh-a").key_name == "team"

    # When the Parameters library's private cache API is not what the peek expects
    def other_signature(*args: Any, **kwargs: Any) -> str:
        raise TypeError("unexpected keyword argument 'transform'")

    secret._build_cache_key = other_signature  # type: ignore[method-assign]
    # Then the cached check says "read as usual" (None) instead of failing the request
    assert auth.authenticate_cached("Bearer llmh-a") is None
