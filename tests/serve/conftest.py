"""One real server for the whole session: SmolLM2 behind uvicorn on a free port, in a thread.

Skipped when fastapi/uvicorn/openai are missing or the built-in model is not installed. Test
modules get everything through the fixtures (never `from conftest import`: several test folders
have a conftest.py, so the module name is ambiguous).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

MODEL_NAME = "smollm2-test"
MAX_MODEL_LEN = 512


@dataclass
class LiveServer:
    base_url: str
    engine: Any
    app: Any
    idle_usage: float
    model_name: str = MODEL_NAME
    max_model_len: int = MAX_MODEL_LEN

    def wait_idle(self, timeout_s: float = 20.0) -> dict[str, float]:
        """Poll engine stats until nothing runs, waits or is in flight; returns the stats."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.engine.stats()
            busy = stats["num_requests_running"] + stats["num_requests_waiting"]
            busy += stats["num_requests_in_flight"]
            if not busy and stats["kv_cache_usage"] <= self.idle_usage:
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"engine still busy after {timeout_s}s: {stats}")
            time.sleep(0.05)


@pytest.fixture(scope="session")
def server() -> Iterator[LiveServer]:
    for module in ("fastapi", "uvicorn", "httpx", "openai", "prometheus_client"):
        pytest.importorskip(module)
    from helix.runtime.model_config import resolve_model_path

    try:
        resolve_model_path("smollm2-135m")
    except ValueError as exc:
        pytest.skip(str(exc))
    import uvicorn

    from helix.runtime.async_engine import AsyncEngine
    from helix.runtime.engine_config import EngineConfig
    from helix.runtime.server import build_app

    engine = AsyncEngine.from_config(
        EngineConfig(max_model_len=MAX_MODEL_LEN, kv_cache_memory_gb=0.25)
    )
    app = build_app(engine, MODEL_NAME, api_key=None, max_request_bytes=64 * 1024)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    uv = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    live = LiveServer(f"http://127.0.0.1:{port}", engine, app, engine.stats()["kv_cache_usage"])
    try:
        yield live
    finally:
        uv.should_exit = True
        thread.join(10)
        engine.shutdown()
        sock.close()


@pytest.fixture
def client(server: LiveServer) -> Iterator[Any]:
    import openai

    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", timeout=60) as c:
        yield c
