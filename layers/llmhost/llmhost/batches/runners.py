"""How a batch's lines run: the runner protocol, the registered runners, and the choice.

A runner (see ``llmhost.batches``) starts lines, reports the finished ones and cancels the
rest. ``fanout`` (``llmhost.batches.fanout``) is always there; another one (SageMaker Batch
Transform) registers itself with ``register_runner``. ``choose_runner`` is pure: it takes
what the client asked, the batch's size and its model's state, and names a runner.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from llmhost.batches.lines import BatchLine, LineOutcome
from llmhost.batches.record import RUNNER_KEY, Batch
from llmhost.errors import LlmhostError

# A batch larger than this goes to a runner with its own capacity, when there is one: the
# live endpoint would serve it for minutes at the expense of interactive traffic.
FANOUT_MAX_LINES = 1_000


class BatchRunner(Protocol):
    name: str

    def start(self, batch: Batch, lines: Sequence[BatchLine]) -> None: ...

    def outcomes(self, batch: Batch, lines: Sequence[BatchLine]) -> dict[int, LineOutcome]: ...

    def cancel(self, batch: Batch, lines: Sequence[BatchLine]) -> None: ...


_factories: dict[str, Callable[[], BatchRunner]] = {}


def register_runner(name: str, factory: Callable[[], BatchRunner]) -> None:
    """Make ``name`` choosable (``factory`` builds the runner when a batch needs it)."""
    _factories[name] = factory


def registered() -> list[str]:
    """The runners a batch may use (``fanout`` registers itself when
    ``llmhost.batches.fanout`` is imported, as ``llmhost.batches.service`` does)."""
    return sorted(_factories)


def runner(name: str) -> BatchRunner:
    if name not in registered():
        raise UnknownRunner(name)
    return _factories[name]()


class UnknownRunner(LlmhostError):
    code = "invalid_request"
    status = 400

    def __init__(self, name: str) -> None:
        super().__init__(
            f"metadata.{RUNNER_KEY} is '{name[:40]}'; choose one of "
            + ", ".join(["auto", *registered()])
        )
        self.param = f"metadata.{RUNNER_KEY}"


@dataclass(frozen=True)
class ModelState:
    """What the choice needs to know of a batch's model(s): whether every one is serving now
    (``live``), and whether any is a deployment at all."""

    live: bool
    known: bool = True


def choose_runner(
    asked: str | None, lines: int, model: ModelState, available: Sequence[str]
) -> str:
    """The runner for a batch: the one the client named (``metadata.llmhost_runner``), else
    fan-out for a small batch on a live model, else transform where it is registered (its
    capacity exists only for the job, so a sleeping model can run it), else fan-out."""
    if asked and asked != "auto":
        return asked
    if "transform" in available and model.known and (lines > FANOUT_MAX_LINES or not model.live):
        return "transform"
    return "fanout"
