"""OpenAI-compatible HTTP server over an AsyncEngine: completions, chat, models, health, metrics.

Request -> [auth -> size -> JSON -> fields -> tokenize -> length check] -> one engine request per
prompt -> JSON body, or SSE `data: {chunk}` lines ending with `data: [DONE]`. Every client error
is a 4xx in the OpenAI envelope; a client that goes away aborts its requests (KV freed).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from .async_engine import AsyncEngine
from .metrics import RequestTracker, ServingMetrics
from .outputs import RequestOutput
from .sampling_params import SamplingParams

Json = dict[str, Any]
MAX_N = 128
"""Most completions one request may ask for (n): each is a sequence in the engine."""
# Accepted only at their neutral values: anything else is a 400 naming the field.
_UNSUPPORTED: dict[str, tuple[Any, ...]] = {
    "presence_penalty": (0,), "frequency_penalty": (0,), "repetition_penalty": (1,),
    "min_tokens": (0,), "best_of": (1,), "echo": (False,), "suffix": ("",), "logit_bias": ({},),
    "tools": ([],), "tool_choice": ("none", "auto"), "response_format": ({"type": "text"},),
}  # fmt: skip
_JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "an array", dict: "an object", type(None): "null"}  # fmt: skip


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def envelope(self) -> Json:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        error = {"message": self.message, "type": kind, "param": self.param}
        return {"error": error | {"code": self.code or None}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.envelope(), status_code=self.status)


# ---- request parsing ----------------------------------------------------------------------
def _get(body: Json, name: str, kinds: tuple[type, ...], default: Any = None) -> Any:
    """body[name] if it has one of `kinds` (JSON types: bool is not a number), else a 400."""
    value = body.get(name)
    if value is None:
        return default
    if type(value) not in kinds and not (float in kinds and type(value) is int):
        wanted = " or ".join(_JSON_TYPES.get(k, k.__name__) for k in kinds)
        got = _JSON_TYPES.get(type(value), type(value).__name__)
        raise APIError(400, f"{name} must be {wanted}, got {got}", name, "invalid_type")
    return value


def _get_list(body: Json, name: str, kind: type) -> list[Any]:
    values: list[Any] = _get(body, name, (list,), [])
    if any(type(v) is not kind for v in values):
        what = _JSON_TYPES[kind].split()[-1]
        raise APIError(400, f"{name} must be an array of {what}s", name, "invalid_type")
    return values


def _sampling_params(body: Json, max_tokens: int, logprobs: int | None) -> SamplingParams:
    for name, neutral in _UNSUPPORTED.items():
        if body.get(name) is not None and body[name] not in neutral:
            raise APIError(400, f"{name}={body[name]!r} is not supported", name, "unsupported")
    stop = _get(body, "stop", (str, list), [])
    stop = [stop] if isinstance(stop, str) else _get_list(body, "stop", str)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise APIError(400, "stream_options must be an object", "stream_options", "invalid_type")
    if _get(body, "n", (int,), 1) > MAX_N:
        raise APIError(400, f"n must be <= {MAX_N}, got {body['n']}", "n", "invalid_value")
    seed = _get(body, "seed", (int,))
    if seed is not None and not -(2**63) <= seed < 2**63:
        raise APIError(
            400, f"seed must be a 64-bit signed integer, got {seed}", "seed", "invalid_value"
        )
    _get(body, "user", (str,))
    _get(body, "stream", (bool,))
    try:
        return SamplingParams(
            n=_get(body, "n", (int,), 1),
            temperature=_get(body, "temperature", (float,), 1.0),
            top_p=_get(body, "top_p", (float,), 1.0),
            top_k=_get(body, "top_k", (int,), 0),
            min_p=_get(body, "min_p", (float,), 0.0),
            seed=seed,
            max_tokens=max_tokens,
            stop=tuple(stop),
            stop_token_ids=tuple(_get_list(body, "stop_token_ids", int)),
            ignore_eos=_get(body, "ignore_eos", (bool,), False),
            logprobs=logprobs,
            skip_special_tokens=_get(body, "skip_special_tokens", (bool,), True),
            extra={
                "priority": _get(body, "priority", (int,), 0),
                "cache_salt": _get(body, "cache_salt", (str,)),
            },  # fmt: skip
        )
    except ValueError as exc:  # SamplingParams says "field message"
        raise APIError(400, str(exc), str(exc).split()[0], "invalid_value") from exc


def _max_tokens(body: Json, name: str, prompts: list[list[int]], limit: int, default: int) -> int:
    """The request's max_tokens; an explicit one must fit the context of every prompt."""
    room = limit - max(len(p) for p in prompts)
    asked = _get(body, name, (int,))
    if room < 1 or (asked is not None and asked > room):
        want = f"{limit - room + (asked or 1)}"
        raise APIError(
            400,
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{want} tokens ({limit - room} in the prompt, {asked or 1} for the completion). "
            f"Please reduce the prompt or {name}.",
            name,
            "context_length_exceeded",
        )
    return asked if asked is not None else min(default, room)


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def _completion_prompts(body: Json, tokenizer: Any) -> list[list[int]]:
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) or _is_token_ids(prompt) else prompt
    if (
        not isinstance(prompts, list)
        or not prompts
        or not all(isinstance(p, str) or _is_token_ids(p) for p in prompts)
    ):
        what = "a string, an array of strings, token ids or arrays of token ids"
        raise APIError(400, f"prompt is required and must be {what}", "prompt", "invalid_type")
    try:
        return [tokenizer.encode(p) if isinstance(p, str) else list(p) for p in prompts]
    except ValueError as exc:
        raise APIError(400, str(exc), "prompt", "invalid_value") from exc


def _chat_prompt(body: Json, tokenizer: Any) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise APIError(400, "messages must be a non-empty array", "messages", "invalid_type")
    conversation = []
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        ):
            content = "\n".join(p["text"] for p in content)
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or not isinstance(content, str | None):
            raise APIError(
                400,
                f"messages[{i}] needs a string role and text content",
                "messages",
                "invalid_type",
            )
        conversation.append({"role": role, "content": content or ""})
    try:
        text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True)
        return list(tokenizer.encode(text, add_special_tokens=False))
    except ValueError as exc:
        raise APIError(400, str(exc), "messages", "invalid_value") from exc


async def _read_json(request: Request, limit_bytes: int) -> Json:
    too_large = APIError(413, f"request body exceeds {limit_bytes} bytes", None, "too_large")
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit_bytes:
        raise too_large
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit_bytes:
                raise too_large
    except ClientDisconnect as exc:
        raise APIError(499, "client disconnected", None, "client_closed") from exc
    try:
        data = json.loads(body)
    except ValueError as exc:
        raise APIError(400, f"request body is not valid JSON: {exc}", None, "invalid_json") from exc
    if not isinstance(data, dict):
        raise APIError(400, "request body must be a JSON object", None, "invalid_json")
    return data


# ---- running requests ---------------------------------------------------------------------
class _Fanin:
    """Merge the snapshot streams of a request's prompts; `close` aborts whatever still runs."""

    def __init__(self, engine: AsyncEngine, metrics: ServingMetrics, prompts: list[list[int]],
                 params: SamplingParams, request_id: str) -> None:  # fmt: skip
        self.queue: asyncio.Queue[tuple[int, RequestOutput | Exception]] = asyncio.Queue()
        self.trackers: list[RequestTracker] = [metrics.track() for _ in prompts]
        self.finals: list[RequestOutput | None] = [None] * len(prompts)
        self.engine = engine
        self.tasks = [
            asyncio.create_task(
                self._pump(i, engine.generate({"prompt_token_ids": p}, params, f"{request_id}-{i}"))
            )  # fmt: skip
            for i, p in enumerate(prompts)
        ]

    async def _pump(self, index: int, outputs: AsyncIterator[RequestOutput]) -> None:
        try:
            async for output in outputs:
                self.queue.put_nowait((index, output))
        except (ValueError, RuntimeError) as exc:
            self.queue.put_nowait((index, exc))

    async def __aiter__(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        while any(f is None for f in self.finals):
            index, item = await self.queue.get()
            if isinstance(item, Exception):
                self.trackers[index].is_closed = True  # rejected: no latency, no success
            if isinstance(item, ValueError):
                raise APIError(400, str(item), None, "invalid_value")
            if isinstance(item, Exception):
                status, code = (
                    (500, "engine_error") if self.engine.is_alive else (503, "engine_down")
                )
                raise APIError(status, str(item), None, code)
            self.trackers[index].on_output(item)
            if item.finished:
                self.finals[index] = item
                self.trackers[index].finish(item)
            yield index, item

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()  # the engine generator's `finally` aborts the request
        for tracker in self.trackers:
            tracker.finish(None)  # no-op for the finished ones


async def _unless_disconnected(request: Request, work: asyncio.Future[Any], fanin: _Fanin) -> Any:
    """`await work`, but abort everything when the client disconnects first."""

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            raise APIError(499, "client disconnected", None, "client_closed")
        return work.result()
    finally:
        watcher.cancel()
        if not work.done() or work.cancelled() or work.exception() is not None:
            work.cancel()
            fanin.close()


class _Reply:
    """Turns snapshots into OpenAI JSON: a whole response, or SSE chunks holding diffs."""

    def __init__(self, head: Json, params: SamplingParams, num_prompts: int, chat: bool,
                 decode: Callable[[int], str]) -> None:  # fmt: skip
        self.head, self.chat, self.decode = head, chat, decode
        self.n, self.top = params.n, params.logprobs or 0
        # NOTE(helix): a stop string may arrive over several tokens and is cut from the text
        # when it completes, so a stream holds back its last len(stop) - 1 characters.
        self.holdback = max((len(s) for s in params.stop), default=1) - 1
        num_choices = num_prompts * self.n
        self.sent_chars, self.sent_tokens = [0] * num_choices, [0] * num_choices
        self.is_done = [False] * num_choices

    def full(self, finals: list[RequestOutput]) -> Json:
        choices = []
        for i, final in enumerate(finals):
            for c in final.outputs:
                text: Json = {"text": c.text}
                if self.chat:
                    text = {"message": {"role": "assistant", "content": c.text}}
                choices.append(
                    {"index": i * self.n + c.index, **text, "logprobs": self._logprobs(c, 0),
                     "finish_reason": c.finish_reason, "stop_reason": c.stop_reason}
                )  # fmt: skip
        return self.head | {"choices": choices, "usage": _usage(finals)}

    def first_chunks(self) -> list[str]:
        if not self.chat:
            return []
        delta = {"role": "assistant", "content": ""}
        return [
            self._chunk({"index": k, "delta": delta, "logprobs": None, "finish_reason": None})
            for k in range(len(self.is_done))
        ]

    def chunks(self, index: int, output: RequestOutput) -> list[str]:
        lines = []
        for c in output.outputs:
            k = index * self.n + c.index
            sent = self.sent_chars[k]
            end = len(c.text) if c.finished else max(sent, len(c.text) - self.holdback)
            delta = c.text[sent:end]
            if self.is_done[k] or (not delta and not c.finished):
                continue
            logprobs = self._logprobs(c, self.sent_tokens[k])
            self.sent_chars[k], self.sent_tokens[k], self.is_done[k] = (
                end,
                len(c.token_ids),
                c.finished,
            )
            body: Json = {"text": delta}
            if self.chat:
                body = {"delta": {"content": delta} if delta else {}}
            lines.append(self._chunk(
                {"index": k, **body, "logprobs": logprobs, "finish_reason": c.finish_reason}
            ))  # fmt: skip
        return lines

    def usage_chunk(self, finals: list[RequestOutput]) -> str:
        return _sse(self.head | {"choices": [], "usage": _usage(finals)})

    def _chunk(self, choice: Json) -> str:
        return _sse(self.head | {"choices": [choice]})

    def _logprobs(self, output: Any, start: int) -> Json | None:
        """OpenAI logprobs of tokens [start:] (chat: a `content` list; completions: arrays)."""
        if output.logprobs is None:
            return None
        rows = []
        for token_id, entry in zip(output.token_ids[start:], output.logprobs[start:]):
            alts = sorted(entry.items(), key=lambda kv: -kv[1])[: self.top]
            rows.append((self.decode(token_id), entry[token_id],
                         [(self.decode(t), lp) for t, lp in alts]))  # fmt: skip
        if self.chat:
            return {"content": [
                _token(s, lp) | {"top_logprobs": [_token(a, b) for a, b in alts]}
                for s, lp, alts in rows
            ]}  # fmt: skip
        offsets = itertools.accumulate((len(r[0]) for r in rows[:-1]), initial=0)
        return {"tokens": [r[0] for r in rows], "token_logprobs": [r[1] for r in rows],
                "top_logprobs": [dict(r[2]) for r in rows],
                "text_offset": list(offsets)[: len(rows)]}  # fmt: skip


def _token(text: str, logprob: float) -> Json:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def _sse(payload: Json) -> str:
    return f"data: {json.dumps(payload)}\n\n"


def _usage(finals: list[RequestOutput]) -> Json:
    prompt = sum(len(f.prompt_token_ids) for f in finals)
    completion = sum(len(c.token_ids) for f in finals for c in f.outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


async def _respond(request: Request, body: Json, fanin: _Fanin, reply: _Reply) -> Response:
    """Run the fanned-out request to a JSON response, or start its SSE stream."""
    if not _get(body, "stream", (bool,), False):

        async def collect() -> list[RequestOutput]:
            async for _ in fanin:
                pass
            return [f for f in fanin.finals if f is not None]

        finals = await _unless_disconnected(request, asyncio.ensure_future(collect()), fanin)
        return JSONResponse(reply.full(finals))
    events = fanin.__aiter__()
    # The first snapshot is awaited before the 200 goes out, so add-time errors are still 400s.
    first = await _unless_disconnected(request, asyncio.ensure_future(anext(events)), fanin)
    options = body.get("stream_options") or {}
    reply.head["object"] = "chat.completion.chunk" if reply.chat else "text_completion"

    async def stream() -> AsyncIterator[str]:
        try:
            for line in reply.first_chunks() + reply.chunks(*first):
                yield line
            async for index, output in events:
                for line in reply.chunks(index, output):
                    yield line
            if options.get("include_usage"):
                yield reply.usage_chunk([f for f in fanin.finals if f is not None])
        except APIError as exc:  # the engine failed mid-stream: say so in-band
            yield _sse(exc.envelope())
        finally:
            fanin.close()  # a disconnect cancels this generator: abort what still runs
        yield "data: [DONE]\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream")


# ---- the app ------------------------------------------------------------------------------
def build_app(
    engine: AsyncEngine,
    served_model_name: str,
    api_key: str | None = None,
    max_request_bytes: int = 1 << 20,
) -> FastAPI:
    """The OpenAI-compatible app; `app.state.metrics` holds its ServingMetrics."""
    from helix import __version__

    app = FastAPI(title="helix-serve", version=__version__, openapi_url=None)
    metrics = ServingMetrics(served_model_name)
    app.state.metrics, app.state.engine = metrics, engine
    tokenizer, max_model_len = engine.tokenizer, engine.max_model_len

    def decode(token_id: int) -> str:
        return str(tokenizer.decode([token_id]))

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise APIError(401, "Incorrect or missing API key (Authorization: Bearer KEY)",
                           None, "invalid_api_key")  # fmt: skip

    async def read_body(request: Request) -> Json:
        authorize(request)
        body = await _read_json(request, max_request_bytes)
        model = _get(body, "model", (str,), served_model_name)
        if model != served_model_name:
            raise APIError(404, f"The model `{model}` does not exist.", "model", "model_not_found")
        return body

    def start(request: Request, body: Json, prompts: list[list[int]], params: SamplingParams,
              chat: bool) -> Awaitable[Response]:  # fmt: skip
        request_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        kind = "chat.completion" if chat else "text_completion"
        head = {"id": request_id, "object": kind, "created": int(time.time()),
                "model": served_model_name}  # fmt: skip
        fanin = _Fanin(engine, metrics, prompts, params, request_id)
        reply = _Reply(head, params, len(prompts), chat, decode)
        return _respond(request, body, fanin, reply)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        body = await read_body(request)
        prompts = _completion_prompts(body, tokenizer)
        max_tokens = _max_tokens(body, "max_tokens", prompts, max_model_len, 16)
        params = _sampling_params(body, max_tokens, _get(body, "logprobs", (int,)))
        return await start(request, body, prompts, params, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        body = await read_body(request)
        prompt = _chat_prompt(body, tokenizer)
        name = (
            "max_tokens" if body.get("max_completion_tokens") is None else "max_completion_tokens"
        )
        max_tokens = _max_tokens(body, name, [prompt], max_model_len, max_model_len)
        is_logprobs = _get(body, "logprobs", (bool,), False)
        top = _get(body, "top_logprobs", (int,), 0)
        params = _sampling_params(body, max_tokens, top if is_logprobs else None)
        return await start(request, body, [prompt], params, chat=True)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        authorize(request)
        card = {"id": served_model_name, "object": "model", "created": int(time.time()),
                "owned_by": "helix", "max_model_len": max_model_len}  # fmt: skip
        return JSONResponse({"object": "list", "data": [card]})

    @app.get("/health")
    async def health() -> Response:
        if not engine.is_alive:
            return APIError(503, "the engine is not running", None, "engine_down").response()
        return Response(status_code=200)

    @app.get("/version")
    async def version() -> Response:
        return JSONResponse({"version": __version__})

    @app.get("/metrics")
    async def prometheus() -> Response:
        metrics.observe_engine(engine.stats())
        topology = engine.topology()
        metrics.observe_topology(topology.nodes, topology.routed, topology.planned)
        return Response(metrics.render(), media_type=metrics.content_type)

    @app.exception_handler(APIError)
    async def on_api_error(request: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(HTTPException)
    async def on_http_error(request: Request, exc: HTTPException) -> Response:
        return APIError(exc.status_code, str(exc.detail), None, "http_error").response()

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        return APIError(400, str(exc), None, "invalid_request").response()

    @app.exception_handler(Exception)
    async def on_bug(request: Request, exc: Exception) -> Response:
        message = f"internal server error ({type(exc).__name__})"
        return APIError(500, message, None, "internal_error").response()

    return app
