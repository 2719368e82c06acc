"""A stream's end and its client going away race (the end is written on a worker thread
while the client may hang up): the request is observed once, with the outcome that came
first."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from llmhost import runtime
from llmhost.observe import RequestObservation
from llmhost.serving import http_app
from llmhost.serving.watch import RequestWatch, observe


class Collector:
    def __init__(self) -> None:
        self.seen: list[RequestObservation] = []
        self.lock = threading.Lock()

    def observe(self, observation: RequestObservation) -> None:
        with self.lock:
            self.seen.append(observation)


@pytest.fixture
def collector() -> Iterator[Collector]:
    seen = Collector()
    runtime.override(request_observers=[seen])
    yield seen
    runtime.reset()


def wait_for(collector: Collector, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(collector.seen) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_client_leaving_while_the_end_is_written_does_not_observe_it_again(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def scenario() -> None:
        # Given a worker thread that has not yet taken the stream's end (a busy pool)
        release = asyncio.Event()

        async def busy_pool(func: Any, *args: Any, **kwargs: Any) -> Any:
            await release.wait()
            return func(*args, **kwargs)

        monkeypatch.setattr(http_app, "run_in_threadpool", busy_pool)
        watch = RequestWatch("chat")
        # When the stream ends whole, and its client goes away before the end is written
        ending = asyncio.create_task(http_app._observe_end(watch, None))
        await asyncio.sleep(0)
        http_app._abandoned(watch)
        release.set()
        await ending

    asyncio.run(scenario())
    wait_for(collector, 2)
    # Then the request is observed once, as the stream that ended whole
    assert [o.status for o in collector.seen] == [200]


def test_observing_from_many_threads_at_once_observes_once(collector: Collector) -> None:
    for _ in range(50):
        watch = RequestWatch("chat")
        start = threading.Barrier(4)

        def end(status: int, watch: RequestWatch = watch, start: Any = start) -> None:
            start.wait()
            observe(watch, status)

        threads = [threading.Thread(target=end, args=(s,)) for s in (200, 499, 500, 503)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(collector.seen) == 50
