"""The HF static-batching baseline server (benchmarks/hf_static_server.py) on a tiny random Llama:
concurrent requests are batched and complete at their exact lengths, greedy text equals
`model.generate`, and EOS ends a request unless it asks for ignore_eos."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from helix.bench import random_dataset  # noqa: E402
from helix.bench_cli import BenchConfig, run_benchmark  # noqa: E402

SERVER_FILE = Path(__file__).parents[2] / "benchmarks" / "hf_static_server.py"
MAX_BATCH = 4


@dataclass
class Served:
    url: str
    app: Any
    model: Any
    tokenizer: Any


def _tiny_model_and_tokenizer() -> tuple[Any, Any]:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted({w for r in random_dataset(40, 30, 4, seed=1) for w in r.as_prompt().split()})
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", *words])}
    word_level = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=word_level, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>"
    )
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=48, intermediate_size=80, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=None, eos_token_id=2, pad_token_id=1,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)  # spread logits: no near-ties between greedy candidates
    return model, tokenizer


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    import uvicorn

    spec = importlib.util.spec_from_file_location("hf_static_server", SERVER_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    model, tokenizer = _tiny_model_and_tokenizer()
    app = module.build_app(model, tokenizer, "tiny", max_batch_size=MAX_BATCH)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield Served(f"http://127.0.0.1:{sock.getsockname()[1]}", app, model, tokenizer)
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def _generate(served: Served, prompt: str, max_tokens: int, eos: int | None = None) -> list[int]:
    import torch

    ids = served.tokenizer.encode(prompt, add_special_tokens=False)
    with torch.inference_mode():
        out = served.model.generate(
            torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False, eos_token_id=eos,
            pad_token_id=1,
        )  # fmt: skip
    return out[0, len(ids) :].tolist()


def _complete(served: Served, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0, **extra}
    response = httpx.post(f"{served.url}/v1/completions", json=body, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def test_concurrent_streamed_requests_are_batched_and_complete(served: Served) -> None:
    requests = random_dataset(10, 12, 9, range_ratio=0.5, seed=1)  # uneven prompts: padding
    config = BenchConfig(served.url, "tiny", seed=1)  # all at once, streamed with ignore_eos
    batches_before = len(served.app.state.batcher.batch_sizes)
    run = asyncio.run(run_benchmark(config, requests))
    for request, result in zip(requests, run.results):
        assert result.is_success, result.error
        assert result.output_len == request.output_len
        assert result.itl_s  # streamed step by step, not as one chunk at the end
    sizes = httpx.get(f"{served.url}/stats").json()["batch_sizes"][batches_before:]
    assert sum(sizes) == len(requests) and 1 < max(sizes) <= MAX_BATCH


def test_greedy_text_equals_generate_alone_and_in_a_padded_batch(served: Served) -> None:
    prompts = [r.as_prompt() for r in random_dataset(3, 10, 8, range_ratio=0.6, seed=2)]
    want = [served.tokenizer.decode(_generate(served, p, 8)) for p in prompts]
    alone = _complete(served, prompts[0], 8, ignore_eos=True)
    assert alone["choices"][0]["text"] == want[0]
    assert alone["usage"]["completion_tokens"] == 8

    async def together() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(timeout=30) as client:
            body = {"max_tokens": 8, "temperature": 0.0, "ignore_eos": True}
            replies = await asyncio.gather(
                *(client.post(f"{served.url}/v1/completions", json=body | {"prompt": p})
                  for p in prompts)
            )  # fmt: skip
        return [r.json() for r in replies]

    assert [r["choices"][0]["text"] for r in asyncio.run(together())] == want


def test_eos_stops_a_request_unless_ignore_eos(served: Served) -> None:
    prompt = random_dataset(1, 6, 1, seed=3)[0].as_prompt()
    tokens = _generate(served, prompt, 6)
    cut = tokens.index(tokens[2])  # the model "ends" where it first emits this token
    batcher = served.app.state.batcher
    eos_before, batcher.eos_ids = batcher.eos_ids, {tokens[2]}
    try:
        stopped = _complete(served, prompt, 6)
        kept_going = _complete(served, prompt, 6, ignore_eos=True)
    finally:
        batcher.eos_ids = eos_before
    assert stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["usage"]["completion_tokens"] == cut
    assert stopped["choices"][0]["text"] == served.tokenizer.decode(tokens[:cut])
    assert kept_going["choices"][0]["finish_reason"] == "length"
    assert kept_going["choices"][0]["text"] == served.tokenizer.decode(tokens)


def test_batch_mode_streams_the_whole_text_at_the_end(served: Served) -> None:
    requests = random_dataset(3, 6, 5, seed=4)
    batcher = served.app.state.batcher
    batcher.stream_steps = False  # what --stream batch sets
    try:
        run = asyncio.run(run_benchmark(BenchConfig(served.url, "tiny"), requests))
    finally:
        batcher.stream_steps = True
    for request, result in zip(requests, run.results):
        assert result.is_success and result.output_len == request.output_len
        assert result.itl_s == []  # one text chunk: the first token arrives with the last
