"""Client mistakes get a 4xx in the OpenAI envelope with a message naming the problem."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

CHAT = [{"role": "user", "content": "Hi"}]


def _post(server: Any, path: str, body: Any, raw: bytes | None = None) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    return httpx.post(f"{server.base_url}{path}", content=content, headers=headers, timeout=60)


def _error(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], error
    return error  # type: ignore[no-any-return]


def test_malformed_json(server: Any) -> None:
    _error(_post(server, "/v1/completions", None, raw=b'{"prompt": "x",'), 400, "not valid JSON")
    _error(_post(server, "/v1/completions", [1, 2]), 400, "JSON object")


@pytest.mark.parametrize(
    ("path", "body", "field", "words"),
    [
        ("/v1/completions", {"prompt": "x", "max_tokens": "ten"}, "max_tokens", ("integer",)),
        ("/v1/completions", {"prompt": "x", "temperature": "hot"}, "temperature", ("number",)),
        ("/v1/completions", {"prompt": "x", "stream": "yes"}, "stream", ("boolean",)),
        ("/v1/completions", {"prompt": "x", "stop": 5}, "stop", ("string",)),
        ("/v1/completions", {"prompt": "x", "stop_token_ids": ["a"]}, "stop_token_ids", ()),
        ("/v1/completions", {"max_tokens": 4}, "prompt", ("required",)),
        ("/v1/completions", {"prompt": [1, "a"]}, "prompt", ()),
        ("/v1/completions", {"prompt": "x", "top_p": 1.5}, "top_p", ("(0, 1]",)),
        ("/v1/completions", {"prompt": "x", "top_p": 0}, "top_p", ()),
        ("/v1/completions", {"prompt": "x", "logprobs": 99}, "logprobs", ()),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens", (">= 1",)),
        ("/v1/completions", {"prompt": "x", "presence_penalty": 0.5}, "presence_penalty", ()),
        ("/v1/completions", {"prompt": "x", "echo": True}, "echo", ("not supported",)),
        ("/v1/completions", {"prompt": "x", "seed": 2**70}, "seed", ("64-bit",)),
        ("/v1/completions", {"prompt": "x", "n": 1000}, "n", ("<=",)),
        ("/v1/chat/completions", {"messages": "hi"}, "messages", ("array",)),
        ("/v1/chat/completions", {"messages": [{"content": "x"}]}, "messages", ("role",)),
        ("/v1/chat/completions", {"messages": CHAT, "top_logprobs": "3"}, "top_logprobs", ()),
    ],
)
def test_bad_fields(server: Any, path: str, body: dict[str, Any], field: str, words: Any) -> None:
    error = _error(_post(server, path, body), 400, field, *words)
    assert error["param"] == field and error["type"] == "invalid_request_error"


def test_unknown_model(server: Any) -> None:
    error = _error(_post(server, "/v1/completions", {"model": "gpt-9", "prompt": "x"}), 404)
    assert "gpt-9" in error["message"] and error["code"] == "model_not_found"


def test_max_tokens_beyond_context(server: Any) -> None:
    limit = server.max_model_len
    body = {"prompt": "Hello", "max_tokens": limit}
    error = _error(
        _post(server, "/v1/completions", body), 400, f"maximum context length is {limit}"
    )
    assert error["code"] == "context_length_exceeded"
    chat = {"messages": CHAT, "max_completion_tokens": limit}
    _error(_post(server, "/v1/chat/completions", chat), 400, "max_completion_tokens")
    _error(_post(server, "/v1/completions", {"prompt": [5] * limit}), 400, "context length")


def test_engine_rejection_is_a_400(server: Any) -> None:
    _error(_post(server, "/v1/completions", {"prompt": [10**8], "max_tokens": 2}), 400, "[0,")


def test_body_too_large(server: Any) -> None:
    body = {"prompt": "x" * (100 * 1024)}
    _error(_post(server, "/v1/completions", body), 413, "exceeds")


def test_unknown_route_and_method(server: Any) -> None:
    _error(httpx.get(f"{server.base_url}/v1/nothing"), 404)
    _error(httpx.get(f"{server.base_url}/v1/completions"), 405)


def test_api_key(server: Any) -> None:
    from helix.runtime.server import build_app

    app = build_app(server.engine, "keyed", api_key="sekret")

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            body = {"prompt": "Hi", "max_tokens": 1}
            return [
                await http.get("/v1/models"),
                await http.get("/v1/models", headers={"Authorization": "Bearer wrong"}),
                await http.post("/v1/completions", json=body),
                await http.get("/v1/models", headers={"Authorization": "Bearer sekret"}),
                await http.post(
                    "/v1/completions", json=body, headers={"Authorization": "Bearer sekret"}
                ),
                await http.get("/health"),
            ]

    missing, wrong, unauthorized_post, ok, ok_post, health = asyncio.run(run())
    for response in (missing, wrong, unauthorized_post):
        assert _error(response, 401)["code"] == "invalid_api_key"
    assert ok.json()["data"][0]["id"] == "keyed"
    assert ok_post.status_code == 200 and ok_post.json()["usage"]["completion_tokens"] == 1
    assert health.status_code == 200
