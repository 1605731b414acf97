"""Tokenizer from GGUF metadata and from a folder; chat templates; streaming detokenization."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helix.runtime.tokenizer import IncrementalDetokenizer, Tokenizer, load_tokenizer

TEXTS = [
    "The capital of France is",
    "In 2024, 12345 people paid $3.50 each.",
    "héllo wörld, naïve café — déjà vu",
    "你好，世界！日本語のテキスト",
    "emoji 🙂🚀 and a flag 🇫🇷 and a family 👩‍👩‍👧",
    "Привет, мир! مرحبا بالعالم",
    "  leading spaces\n\nnew lines\tand\ttabs   ",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "def f(x):\n    return x ** 2  # code",
]
CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Say ünïcödé 🙂"},
    ],
]


@pytest.mark.parametrize("text", TEXTS)
def test_gguf_tokenizer_matches_transformers(text, smollm2_tokenizer, hf_smollm2_tokenizer) -> None:
    ids = smollm2_tokenizer.encode(text)
    assert ids == hf_smollm2_tokenizer.encode(text)
    assert smollm2_tokenizer.encode(text, add_special_tokens=False) == ids  # no BOS for SmolLM2
    assert smollm2_tokenizer.decode(ids) == hf_smollm2_tokenizer.decode(ids) == text


def test_gguf_tokenizer_special_tokens(smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    assert tok.eos_token_ids == (2,)
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tok.vocab_size == 49152
    assert tok.encode("<|im_start|>")[0] == 1
    assert tok.decode([1, 504, 2], skip_special_tokens=True) == "The"
    # llama.cpp's smollm splitter isolates digits: every digit is its own token
    assert [tok.decode([i]) for i in tok.encode("2024")] == ["2", "0", "2", "4"]


@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(
    messages, add_generation_prompt, smollm2_tokenizer, hf_smollm2_tokenizer
) -> None:
    ours = smollm2_tokenizer.apply_chat_template(messages, add_generation_prompt)
    theirs = hf_smollm2_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == theirs
    assert ours.endswith("<|im_start|>assistant\n") == add_generation_prompt


def test_folder_tokenizer_round_trip(smollm2_tokenizer, tmp_path: Path) -> None:
    smollm2_tokenizer.backend.save(str(tmp_path / "tokenizer.json"))
    template = smollm2_tokenizer.chat_template
    config = {"eos_token": {"content": "<|im_end|>"}, "bos_token": "<|im_start|>"}
    config["chat_template"] = [{"name": "default", "template": template}]
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_token_ids == (2, 0)
    for text in TEXTS:
        assert tok.encode(text) == smollm2_tokenizer.encode(text)
    assert tok.apply_chat_template(CHATS[1]) == smollm2_tokenizer.apply_chat_template(CHATS[1])


def test_missing_tokenizer_and_template_raise(tmp_path: Path, smollm2_tokenizer) -> None:
    with pytest.raises(ValueError, match="no tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)
    bare = Tokenizer(smollm2_tokenizer.backend)
    with pytest.raises(ValueError, match="no chat template"):
        bare.apply_chat_template(CHATS[0])
    failing = Tokenizer(bare.backend, chat_template="{{ raise_exception('no system role') }}")
    with pytest.raises(ValueError, match="no system role"):
        failing.apply_chat_template(CHATS[0])


@pytest.mark.parametrize("text", TEXTS[2:6])
def test_incremental_detokenizer_never_splits_a_character(text, smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.push(token_id) for token_id in ids]
    assert all("\ufffd" not in piece for piece in pieces)
    assert detok.flush() == ""
    assert "".join(pieces) == detok.text == text


def test_incremental_detokenizer_holds_back_split_bytes(smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    ids = tok.encode("你好 🙂")
    # at least one token ends inside a UTF-8 character, so decoding it alone gives U+FFFD
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    prompt = tok.encode("Say hi:")
    detok = tok.detokenizer(prompt)
    pieces = [detok.push(i) for i in ids]
    assert "" in pieces[:-1]
    assert "".join(pieces) == "你好 🙂"
    assert detok.push([]) == ""


def test_incremental_detokenizer_flushes_an_unfinished_character(smollm2_tokenizer) -> None:
    tok = smollm2_tokenizer
    ids = tok.encode("ok 你")
    split = next(i for i in range(1, len(ids) + 1) if tok.decode(ids[:i]).endswith("\ufffd"))
    detok = IncrementalDetokenizer(tok)
    assert "".join(detok.push(i) for i in ids[:split]) == tok.decode(ids[: split - 1])
    assert detok.flush().endswith("\ufffd")
