"""The request path users pay for: retrieve, pack the prompt, invoke the model, answer.

``ServingService`` is shared by the API Gateway handler (``/v1/rag``, non-streamed chat) and
the streaming HTTP app (OpenAI-compatible, behind the Lambda Web Adapter). It owns no I/O of
its own: the registry (through ``ModelDirectory``), the embedder, the vector store and the
SageMaker invoker are passed in, each created lazily by ``llmhost.runtime``.
"""

from __future__ import annotations

import calendar
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from llmhost.engines.chat_templates import render_prompt
from llmhost.engines.codecs import (
    ChatMessage,
    Completion,
    EngineCodec,
    GenerationParams,
    StreamDelta,
    codec_for,
    iter_deltas,
)
from llmhost.rag.prompt import (
    ContextChunk,
    RagPrompt,
    budget_after_rejection,
    build_rag_prompt,
)
from llmhost.serving.errors import ModelUnavailable, PromptTooLong
from llmhost.serving.hold import Hold, waitable
from llmhost.serving.invoke import InvocationTarget, ModelInvoker
from llmhost.serving.requests import ChatCompletionRequest, RagRequest, RetrievalOptions
from llmhost.serving.routing import ModelDirectory, ModelNotReady, ModelRoute
from llmhost.token_counting import token_counter_for

if TYPE_CHECKING:
    from llmhost.rag.embeddings import Embedder
    from llmhost.rag.store import VectorStore
    from llmhost.serving.watch import RequestWatch

FALLBACK_TEMPLATE = "chatml"  # only for counting tokens when the engine applies its own
T = TypeVar("T")


def engine_applies_template(
    route: ModelRoute, codec: EngineCodec, params: GenerationParams
) -> bool:
    """Whether a request goes to the engine's chat API, which renders the conversation with
    the model's own chat template, rather than to its generate API with a prompt llmhost
    renders itself (``llmhost.engines.chat_templates.render_prompt``).

    The chat API whenever the model's tokenizer ships a template and the engine has one.
    llmhost renders the prompt only for models without a template (Flan-T5, Falcon
    instruct: ``CatalogModel.ships_chat_template``), for engines without a chat API
    (hf-inference), and for a repetition_penalty the engine's chat API cannot take (TGI,
    LMI), so no generation parameter is dropped. A model llmhost does not know always goes
    to the chat API: only the engine has its template.
    """
    if route.chat_template is None:
        return True
    if not (route.ships_chat_template and codec.chat_api):
        return False
    return params.repetition_penalty is None or codec.chat_repetition_penalty


class ChatStream(Iterator[dict[str, Any]]):
    """A streamed answer's ``chat.completion.chunk`` objects. The first ``ready`` of them are
    at hand: taking them waits for nothing (the model's first event was read already), so a
    server can send them before it hands the rest to a reader of its own."""

    def __init__(self, chunks: Iterator[dict[str, Any]], ready: int) -> None:
        self._chunks = chunks
        self.ready = ready

    def __next__(self) -> dict[str, Any]:
        return next(self._chunks)

    def close(self) -> None:
        _close(self._chunks)


@dataclass
class Prepared:
    """Everything decided before the model is called."""

    route: ModelRoute
    codec: EngineCodec
    params: GenerationParams
    payload: dict[str, Any]
    rag: RagPrompt | None
    timings_ms: dict[str, float]
    build: Callable[[int], dict[str, Any]] | None = None  # payload for a smaller input limit
    estimated_prompt_tokens: int = 0  # llmhost's count of the prompt (without RAG context)
    chat: bool = False  # sent to the engine's chat API (see ``engine_applies_template``)
    watch: RequestWatch | None = None
    sent: str | list[ChatMessage] | None = None  # the prompt sent, when not a RAG prompt
    collection: str | None = None
    generate_start_ms: float | None = None  # when the model was called (``watch``'s clock)

    def prompt_tokens(self) -> int:
        """llmhost's count of the prompt as sent (after any RAG rebuild)."""
        return self.rag.estimated_tokens if self.rag else self.estimated_prompt_tokens


class ServingService:
    def __init__(
        self,
        directory: ModelDirectory,
        invoker: Callable[[], ModelInvoker],
        embedder: Callable[[], Embedder],
        store: Callable[[], VectorStore],
    ) -> None:
        self._directory = directory
        self._invoker = invoker
        self._embedder = embedder
        self._store = store

    # ------------------------------------------------------------------------------ models

    def models(self) -> dict[str, Any]:
        """OpenAI's model list: every deployment, with llmhost's status alongside."""
        data = []
        for record in self._directory.records():
            # created_at is UTC: timegm, not mktime (which reads it as local time).
            created = calendar.timegm(time.strptime(record.created_at[:19], "%Y-%m-%dT%H:%M:%S"))
            data.append(
                {
                    "id": record.name,
                    "object": "model",
                    "created": created,
                    "owned_by": "llmhost",
                    "llmhost": {
                        "status": record.status,
                        "hosting": record.spec.hosting.kind,
                        "engine": record.spec.engine.name,
                    },
                }
            )
        return {"object": "list", "data": data}

    # ------------------------------------------------------------------------------- rag

    def rag(
        self, request: RagRequest, hold: Hold | None = None, watch: RequestWatch | None = None
    ) -> dict[str, Any]:
        """Answer ``request.query`` from ``request.collection`` with its sources; with a
        ``hold``, a cold model is waited for (see ``llmhost.serving.hold``); ``watch``
        collects what the request did (``llmhost.serving.watch``)."""
        started = time.perf_counter()
        options = RetrievalOptions(
            collection=request.collection, k=request.k, filters=request.filters
        )
        if watch is not None:
            watch.asked(
                request.model,
                query=request.query,
                collection=request.collection,
                **_watched_parameters(_rag_overrides(request)),
            )

        def prepare() -> Prepared:
            return self._prepare(
                request.model,
                [ChatMessage("user", request.query)],
                _rag_overrides(request),
                options,
                system=request.system,
                stream=False,
                watch=watch,
            )

        prepared, completion = self._held(request.model, hold, prepare, self._complete, watch)
        timings = {**prepared.timings_ms, "total": _ms(started)}
        _watch_answer(prepared, completion)
        return {
            "answer": completion.text,
            "model": prepared.route.name,
            "finish_reason": completion.finish_reason,
            "sources": _sources(prepared.rag),
            "usage": _usage(completion, prepared),
            "latency_ms": timings,
        }

    # ------------------------------------------------------------------------------ chat

    def chat(
        self,
        request: ChatCompletionRequest,
        hold: Hold | None = None,
        watch: RequestWatch | None = None,
    ) -> dict[str, Any]:
        """An OpenAI ``chat.completion`` object; with a ``hold``, a cold model is waited
        for (see ``llmhost.serving.hold``); ``watch`` collects what the request did (its
        request id is the completion's id)."""
        started = time.perf_counter()
        _watch_chat(watch, request)
        prepared, completion = self._held(
            request.model,
            hold,
            lambda: self._prepare_chat(request, stream=False, watch=watch),
            self._complete,
            watch,
        )
        _watch_answer(prepared, completion)
        reply: dict[str, Any] = {
            "id": _completion_id(watch),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": prepared.route.name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "finish_reason": _openai_finish(completion.finish_reason),
                    "logprobs": None,
                }
            ],
            "usage": _usage(completion, prepared),
        }
        reply["llmhost"] = {
            "latency_ms": {**prepared.timings_ms, "total": _ms(started)},
            "sources": _sources(prepared.rag),
        }
        return reply

    def chat_stream(
        self,
        request: ChatCompletionRequest,
        hold: Hold | None = None,
        watch: RequestWatch | None = None,
    ) -> ChatStream:
        """OpenAI ``chat.completion.chunk`` objects, each yielded as the engine produces it.

        Routing, retrieval, the SageMaker call and the engine's first event all happen before
        this returns, so a request that cannot be served (a sleeping model, a prompt the
        engine refuses in its first event, as TGI does) raises with its HTTP status instead
        of breaking a stream that has started. A RAG prompt the engine finds too long is
        rebuilt smaller and sent again, as for a plain answer. The role announcement, and
        the engine's first text when its first event had some, are ready at once. With a
        ``hold``, a cold model is waited for before any of this returns. ``watch`` collects
        what the request did, up to the stream's last chunk.
        """
        _watch_chat(watch, request)
        prepared, (chunks, deltas, first) = self._held(
            request.model,
            hold,
            lambda: self._prepare_chat(request, stream=True, watch=watch),
            lambda p: self._call(p, self._open_stream),
            watch,
        )
        self._directory.answered(prepared.route.name)
        ready = 2 if first is not None and first.text else 1
        return ChatStream(self._chunks(request, prepared, chunks, deltas, first), ready)

    def _open_stream(
        self, prepared: Prepared
    ) -> tuple[Iterator[bytes], Iterator[StreamDelta], StreamDelta | None]:
        route = prepared.route
        target = InvocationTarget(route.endpoint_name, route.inference_component)
        watch = prepared.watch
        if watch is not None:
            prepared.generate_start_ms = watch.elapsed_ms()
        chunks = self._invoker().stream(target, prepared.payload)
        deltas = iter_deltas(prepared.codec, chunks)
        try:
            first = next(deltas, None)
        except BaseException:
            _close(chunks)
            raise
        if watch is not None and first is not None and first.text:
            watch.ttft_ms = watch.elapsed_ms()
        return chunks, deltas, first

    def _chunks(
        self,
        request: ChatCompletionRequest,
        prepared: Prepared,
        chunks: Iterator[bytes],
        deltas: Iterator[StreamDelta],
        first_delta: StreamDelta | None,
    ) -> Iterator[dict[str, Any]]:
        watch = prepared.watch
        ident, created, model = (
            _completion_id(watch),
            int(time.time()),
            prepared.route.name,
        )

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                ],
                **extra,
            }

        first = chunk({"role": "assistant", "content": ""})
        if prepared.rag is not None:
            first["llmhost"] = {"sources": _sources(prepared.rag)}
        yield first
        usage = None
        finish = None
        text_parts: list[str] = []
        events = 0  # token events: the answer's length when the stream reports none (LMI chat)
        try:
            for delta in itertools.chain([first_delta] if first_delta else [], deltas):
                if delta.text or delta.finish_reason:
                    events += 1
                if delta.text:
                    if watch is not None and watch.ttft_ms is None:
                        watch.ttft_ms = watch.elapsed_ms()
                    text_parts.append(delta.text)
                    yield chunk({"content": delta.text})
                if delta.finish_reason:
                    finish = delta.finish_reason
                if delta.usage:
                    usage = delta.usage
        finally:
            _close(chunks)
            if watch is not None:
                # Noted however the stream ends: a failure keeps what was answered so far.
                completed = usage.completion_tokens if usage else None
                _watch_answer(
                    prepared,
                    Completion(
                        "".join(text_parts),
                        finish or "stop",
                        usage.prompt_tokens if usage else None,
                        events if completed is None and prepared.chat else completed,
                    ),
                )
        yield chunk({}, _openai_finish(finish or "stop"))
        if request.stream_options and request.stream_options.include_usage:
            completed = usage.completion_tokens if usage else None
            completion = Completion(
                "".join(text_parts),
                finish or "stop",
                usage.prompt_tokens if usage else None,
                events if completed is None and prepared.chat else completed,
            )
            yield {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(completion, prepared),
            }

    # -------------------------------------------------------------------------- internals

    def _held(
        self,
        model: str,
        hold: Hold | None,
        prepare: Callable[[], Prepared],
        call: Callable[[Prepared], T],
        watch: RequestWatch | None = None,
    ) -> tuple[Prepared, T]:
        """``call(prepare())``; with a ``hold``, a refusal a cold model's wake will end is
        waited out: after each pause the model's record is read again (a failed or refused
        wake, or a deletion, ends the hold with its error) and the request is prepared again
        only if its route changed (a RAG request's retrieval is not redone per poll)."""
        prepared: Prepared | None = None
        while True:
            attempt = watch.elapsed_ms() if watch is not None else 0.0
            try:
                if hold is not None and hold.polls:
                    route = self._directory.route(model, fresh=True)
                    if prepared is None or route != prepared.route:
                        prepared = prepare()
                elif prepared is None:
                    prepared = prepare()
                return prepared, call(prepared)
            except (ModelNotReady, ModelUnavailable) as refused:
                cold = waitable(refused)
                if watch is not None and cold:
                    watch.cold = True
                    if not any(stage.name == "wake" for stage in watch.stages):
                        # The attempt that found the model without a copy (and woke it).
                        watch.stage(
                            "wake",
                            attempt,
                            watch.elapsed_ms() - attempt,
                            **{"llmhost.refusal": refused.code},
                        )
                if hold is None or not cold:
                    raise
                paused = watch.elapsed_ms() if watch is not None else 0.0
                try:
                    hold.pause(refused)
                finally:
                    if watch is not None:
                        watch.stage("wait", paused, watch.elapsed_ms() - paused)

    def prepare_offline(
        self, route: ModelRoute, request: ChatCompletionRequest | RagRequest
    ) -> Prepared:
        """The plain (not streamed) payload the real-time route would send for ``request``,
        for work that runs on capacity of its own (a batch transform job): same chat
        template, token budget and retrieval, decided for ``route`` without asking whether
        the model is up. Raises what the real-time route raises for a bad request."""
        if isinstance(request, RagRequest):
            return self._prepare(
                request.model,
                [ChatMessage("user", request.query)],
                _rag_overrides(request),
                RetrievalOptions(
                    collection=request.collection, k=request.k, filters=request.filters
                ),
                system=request.system,
                stream=False,
                route=route,
            )
        return self._prepare_chat(request, stream=False, route=route)

    def _prepare_chat(
        self,
        request: ChatCompletionRequest,
        stream: bool,
        route: ModelRoute | None = None,
        watch: RequestWatch | None = None,
    ) -> Prepared:
        messages = [
            ChatMessage("system" if m.role == "developer" else m.role, m.text())
            for m in request.messages
        ]
        overrides = {
            "max_new_tokens": request.new_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "stop": tuple(request.stop) if request.stop else None,
            "seed": request.seed,
        }
        return self._prepare(
            request.model, messages, overrides, request.rag, None, stream, route=route, watch=watch
        )

    def _prepare(
        self,
        model: str,
        messages: list[ChatMessage],
        overrides: dict[str, Any],
        retrieval: RetrievalOptions | None,
        system: str | None,
        stream: bool,
        route: ModelRoute | None = None,
        watch: RequestWatch | None = None,
    ) -> Prepared:
        route = route or self._directory.route(model)
        if watch is not None:
            watch.routed(route)
        codec = codec_for(route.engine, seq2seq=route.chat_template == "flan-t5")
        params = GenerationParams.from_defaults(
            route.defaults, **{k: v for k, v in overrides.items() if v is not None}
        )
        timings: dict[str, float] = {}
        chat = engine_applies_template(route, codec, params)
        # llmhost's own rendering of the model's format: the prompt sent when the engine
        # does not apply the template, and in every case the text whose tokens are counted.
        template = route.chat_template or FALLBACK_TEMPLATE
        counter = token_counter_for(route.chat_template)
        if retrieval is None:
            sent: str | list[ChatMessage]
            if chat:
                payload = codec.build_chat(messages, params, stream, model=route.name)
                sent = messages
            else:
                sent = render_prompt(template, messages)
                payload = codec.build_generate(sent, params, stream, model=route.name)
            estimate = counter(render_prompt(template, messages, bos=True))
            return Prepared(
                route,
                codec,
                params,
                payload,
                None,
                timings,
                estimated_prompt_tokens=estimate,
                chat=chat,
                watch=watch,
                sent=sent,
            )

        from llmhost.rag.retrieve import retrieve

        question = next(m.content for m in reversed(messages) if m.role == "user")
        system = system or next((m.content for m in messages if m.role == "system"), None)
        retrieving = watch.elapsed_ms() if watch is not None else 0.0
        found = retrieve(
            question,
            retrieval.collection,
            retrieval.k,
            retrieval.filters,
            self._embedder(),
            self._store(),
        )
        timings.update(found.timings_ms)
        if watch is not None:
            _watch_retrieval(watch, retrieving, found.timings_ms, len(found.hits))
        chunks = [
            ContextChunk(
                id=f"{hit.doc_id}#{hit.chunk_index}",
                text=hit.text,
                score=hit.score,
                metadata={**hit.metadata, "doc_id": hit.doc_id, "start": hit.start, "end": hit.end},
            )
            for hit in found.hits
        ]

        def build(input_limit: int) -> tuple[RagPrompt, dict[str, Any]]:
            rag = build_rag_prompt(
                question,
                chunks,
                template=template,
                count_tokens=counter,
                max_input_tokens=input_limit,
                max_total_tokens=route.max_total_tokens,
                max_new_tokens=params.max_new_tokens,
                system=system,
            )
            if chat:
                return rag, codec.build_chat(rag.messages, params, stream, model=route.name)
            return rag, codec.build_generate(rag.prompt, params, stream, model=route.name)

        rag, payload = build(route.max_input_tokens)
        prepared = Prepared(
            route,
            codec,
            params,
            payload,
            rag,
            timings,
            chat=chat,
            watch=watch,
            collection=retrieval.collection,
        )
        prepared.build = lambda limit: _rebuild(prepared, build, limit)
        return prepared

    def _complete(self, prepared: Prepared) -> Completion:
        route = prepared.route
        target = InvocationTarget(route.endpoint_name, route.inference_component)
        started = time.perf_counter()
        if prepared.watch is not None:
            prepared.generate_start_ms = prepared.watch.elapsed_ms()
        body = self._call(prepared, lambda p: self._invoker().invoke(target, p.payload))
        self._directory.answered(route.name)
        completion = prepared.codec.parse_reply(body)
        prepared.timings_ms["generate"] = _ms(started)
        return completion

    def _call(self, prepared: Prepared, call: Callable[[Prepared], T]) -> T:
        """``call(prepared)``, the one way plain and streamed requests reach the model: a RAG
        prompt the engine finds too long is rebuilt smaller and tried once more (twice when
        the second refusal names a tighter limit than the first), and a refused invocation
        becomes the client's error (waking a sleeping model)."""
        allowed: list[int | None] = []  # the input each refusal allowed, in order
        try:
            while True:
                try:
                    return call(prepared)
                except PromptTooLong as rejected:
                    # Our token estimate was too optimistic for this text, or the engine's
                    # limits are below the deployment's: shrink by what the engine counted
                    # (plain chat has no context to drop). TGI checks the total before the
                    # input limit, so a first refusal may name only the looser of the two; a
                    # retry is worth it only when the refusal taught a tighter limit.
                    if prepared.rag is None or prepared.build is None:
                        raise
                    now = rejected.limits.allowed_input_tokens
                    if allowed:
                        before = allowed[-1]
                        tighter = now is not None and (before is None or now < before)
                        if len(allowed) >= 2 or not tighter:
                            raise
                    allowed.append(now)
                    budget = budget_after_rejection(
                        prepared.rag.input_limit,
                        rejected.limits,
                        estimated_prompt_tokens=prepared.rag.estimated_tokens,
                    )
                    prepared.payload = prepared.build(budget)
        except ModelUnavailable as refused:
            raise self._cold(prepared.route, refused) from refused

    def _cold(self, route: ModelRoute, refused: ModelUnavailable) -> ModelUnavailable:
        """The error for a refused invocation; a model without a copy is woken first, and the
        client's Retry-After comes from this deployment's recorded wakes."""
        if refused.reason != "sleeping":
            return refused
        wait = self._directory.refused_for_capacity(route.name)
        return ModelUnavailable("sleeping", log_detail=refused.log_detail, retry_after=wait)


def _rebuild(
    prepared: Prepared, build: Callable[[int], tuple[RagPrompt, dict[str, Any]]], limit: int
) -> dict[str, Any]:
    rag, payload = build(limit)
    prepared.rag = rag
    return payload


def _rag_overrides(request: RagRequest) -> dict[str, Any]:
    return {
        "max_new_tokens": request.max_new_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "stop": tuple(request.stop) if request.stop else None,
    }


def _close(chunks: Iterator[Any]) -> None:
    close = getattr(chunks, "close", None)
    if close:
        close()


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _openai_finish(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _sources(rag: RagPrompt | None) -> list[dict[str, Any]]:
    return sources_of(rag)


def sources_of(rag: RagPrompt | None) -> list[dict[str, Any]]:
    """The sources of a RAG answer as the API shows them (none for a plain chat)."""
    if rag is None:
        return []
    sources = []
    for item in rag.packed.sources():
        metadata = dict(item["metadata"])
        sources.append(
            {
                "index": item["index"],
                "id": metadata.pop("doc_id", item["id"]),
                "chunk": item["id"],
                "score": round(float(item["score"]), 6),
                "trimmed": item["trimmed"],
                "start": metadata.pop("start", None),
                "end": metadata.pop("end", None),
                "metadata": metadata,
            }
        )
    return sources


def _usage(completion: Completion, prepared: Prepared) -> dict[str, int]:
    return usage_of(
        completion,
        estimated_prompt_tokens=prepared.prompt_tokens(),
        engine_counts_prompt=prepared.chat and prepared.codec.chat_stream_usage,
    )


def usage_of(
    completion: Completion, *, estimated_prompt_tokens: int, engine_counts_prompt: bool
) -> dict[str, int]:
    """OpenAI's usage, the same for a plain and a streamed answer to the same request.

    The chat APIs of TGI and vLLM count the prompt in both kinds of reply (a stream in its
    include_usage chunk), so their count is used (``engine_counts_prompt``). LMI's chat
    counts it only in a plain reply, and the generate APIs (TGI, LMI) only in a stream's
    last event, so those answers report llmhost's count of the prompt it sent
    (``estimated_prompt_tokens``: conservative, it errs high), never 0.
    """
    prompt_tokens = completion.prompt_tokens
    if not engine_counts_prompt or prompt_tokens is None:
        prompt_tokens = estimated_prompt_tokens
    completion_tokens = completion.completion_tokens
    if completion_tokens is None:
        completion_tokens = len(completion.text.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


# ---------------------------------------------------------------------------- watching


def _completion_id(watch: RequestWatch | None) -> str:
    """A chat completion's id: its request's, for a chat request (so its trace is found by
    it), else a new one (a job's answer)."""
    if watch is not None and watch.kind == "chat":
        return watch.request_id
    return f"chatcmpl-{uuid.uuid4().hex}"


def _watched_parameters(overrides: dict[str, Any]) -> dict[str, Any]:
    """A request's generation parameters under the names traces use."""
    return {
        "max_tokens": overrides.get("max_new_tokens"),
        "temperature": overrides.get("temperature"),
        "top_p": overrides.get("top_p"),
        "seed": overrides.get("seed"),
        "stop": list(overrides["stop"]) if overrides.get("stop") else None,
    }


def _watch_chat(watch: RequestWatch | None, request: ChatCompletionRequest) -> None:
    if watch is None:
        return
    question = next((m.text() for m in reversed(request.messages) if m.role == "user"), None)
    watch.asked(
        request.model,
        query=question,
        collection=request.rag.collection if request.rag else None,
        max_tokens=request.new_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        seed=request.seed,
        stop=list(request.stop) if request.stop else None,
    )


def _watch_retrieval(
    watch: RequestWatch, started_ms: float, timings: dict[str, float], hits: int
) -> None:
    """The embed and retrieve stages, laid end to end from ``started_ms``."""
    embed = float(timings.get("embed", 0.0))
    watch.stage("embed", started_ms, embed)
    search = max(0.0, watch.elapsed_ms() - started_ms - embed)
    watch.stage("retrieve", started_ms + embed, search, **{"llmhost.retrieve.hits": hits})


def _watch_answer(prepared: Prepared, completion: Completion) -> None:
    """Note the prompt as sent, the sources, the answer, its tokens and the generate stage."""
    watch = prepared.watch
    if watch is None:
        return
    usage = _usage(completion, prepared)
    watch.input_tokens = usage["prompt_tokens"]
    watch.output_tokens = usage["completion_tokens"]
    watch.answer = completion.text
    watch.finish_reason = _openai_finish(completion.finish_reason)
    watch.prompt = sent_prompt(prepared)
    if prepared.rag is not None:
        from llmhost.observe import RetrievedSource

        watch.sources = tuple(
            RetrievedSource(chunk.id, round(float(chunk.score), 6), prepared.collection, chunk.text)
            for chunk in prepared.rag.packed.included
        )
    start = prepared.generate_start_ms
    if start is not None:
        if watch.ttft_ms is None and not watch.stream:
            watch.ttft_ms = watch.elapsed_ms()  # a plain answer's first token is its last
        watch.stage(
            "generate",
            start,
            watch.elapsed_ms() - start,
            **{"gen_ai.usage.output_tokens": watch.output_tokens},
        )


def sent_prompt(prepared: Prepared) -> str | list[dict[str, Any]] | None:
    """The prompt exactly as sent to the engine: the chat messages for its chat API, the
    rendered prompt for its generate API."""
    sent: str | list[ChatMessage] | None
    if prepared.rag is not None:
        sent = list(prepared.rag.messages) if prepared.chat else prepared.rag.prompt
    else:
        sent = prepared.sent
    if sent is None or isinstance(sent, str):
        return sent
    return [{"role": m.role, "content": m.content} for m in sent]
