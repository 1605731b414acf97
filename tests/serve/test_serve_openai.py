"""The OpenAI client against the live server: answers, streaming parity, concurrency, listing."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_mentions_paris(server: Any, client: Any) -> None:
    reply = client.chat.completions.create(
        model=server.model_name, messages=CAPITAL, max_tokens=24, temperature=0
    )
    choice = reply.choices[0]
    assert "Paris" in choice.message.content
    assert choice.message.role == "assistant"
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.completion_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_chat_stream_matches_non_stream(server: Any, client: Any) -> None:
    kwargs: dict[str, Any] = dict(
        model=server.model_name, messages=CAPITAL, temperature=0, max_tokens=12
    )
    full = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] in ("stop", "length") and all(f is None for f in finals[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1


def test_completion_stream_matches_non_stream(server: Any, client: Any) -> None:
    kwargs: dict[str, Any] = dict(
        model=server.model_name, prompt="The sky is", max_tokens=10, temperature=0
    )
    full = client.completions.create(**kwargs)
    assert full.object == "text_completion" and full.usage.prompt_tokens >= 3
    chunks = list(client.completions.create(**kwargs, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full.choices[0].text
    assert chunks[-1].choices[0].finish_reason == full.choices[0].finish_reason


def test_completion_prompt_forms_and_logprobs(server: Any, client: Any) -> None:
    reply = client.completions.create(
        model=server.model_name,
        prompt=[[504, 3893, 314], [504, 3893, 314]],
        max_tokens=3,
        temperature=0,
        logprobs=2,
        extra_body={"top_k": 5, "ignore_eos": True},
    )
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].text == reply.choices[1].text  # same token ids, greedy
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == 3 and len(logprobs.top_logprobs[0]) == 2
    assert reply.usage.prompt_tokens == 6 and reply.usage.completion_tokens == 6


def test_chat_logprobs_and_stop(server: Any, client: Any) -> None:
    reply = client.chat.completions.create(
        model=server.model_name, messages=CAPITAL, max_completion_tokens=16, temperature=0,
        logprobs=True, top_logprobs=3, stop=["Paris"],
    )  # fmt: skip
    choice = reply.choices[0]
    assert "Paris" not in choice.message.content and choice.finish_reason == "stop"
    assert len(choice.logprobs.content[0].top_logprobs) == 3


def test_64_concurrent_clients(server: Any) -> None:
    async def one(http: httpx.AsyncClient, i: int) -> dict[str, Any]:
        response = await http.post(
            "/v1/completions",
            json={"model": server.model_name, "prompt": f"Fact {i}:", "max_tokens": 6,
                  "temperature": 0.7, "seed": i, "ignore_eos": True},
        )  # fmt: skip
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    async def run() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as http:
            return await asyncio.gather(*(one(http, i) for i in range(64)))

    replies = asyncio.run(run())
    assert len({r["id"] for r in replies}) == 64
    for reply in replies:
        assert reply["choices"][0]["finish_reason"] == "length"
        assert reply["usage"]["completion_tokens"] == 6
    server.wait_idle()


def test_models_health_version(server: Any, client: Any) -> None:
    assert [m.id for m in client.models.list().data] == [server.model_name]
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    assert httpx.get(f"{server.base_url}/version").json()["version"]
