"""Text <-> token ids, chat templates and streaming detokenization.

    tok = Tokenizer.from_pretrained("smollm2-135m")   # or an HF folder, or a .gguf file
    ids = tok.encode(tok.apply_chat_template([{"role": "user", "content": "Hi"}]), False)
    detok = IncrementalDetokenizer(tok, prompt_ids=ids)
    for token_id in generated:
        print(detok.push(token_id), end="")           # only whole characters, never half of one
    print(detok.flush())

An HF folder gives ``tokenizer.json`` (+ ``tokenizer_config.json``); a GGUF file gives its
``tokenizer.ggml.*`` metadata, from which a byte-level BPE tokenizer is rebuilt. No torch here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from .model_config import BUILTIN_MODELS, gguf_metadata, open_gguf, resolve_model_path

# llama.cpp ``tokenizer.ggml.pre`` values whose splitter isolates every digit before the GPT-2
# regex (llama-vocab.cpp groups smollm with starcoder, refact, command-r, codeshell, exaone).
_DIGIT_SPLIT_PRE = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone")
_GPT2_PRE = ("gpt2", "default", "gpt-2")
_LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3", "smaug-bpe")
# Llama 3's splitter: contractions, letters, 1-3 digits, punctuation, newlines, spaces.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus the special tokens and chat template of one model."""

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        eos_token_ids: Sequence[int] = (),
        bos_token: str | None = None,
        eos_token: str | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.backend = backend
        self.eos_token_ids: tuple[int, ...] = tuple(dict.fromkeys(eos_token_ids))
        self.bos_token, self.eos_token = bos_token, eos_token
        self.chat_template = chat_template

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path_or_name: str | Path) -> Tokenizer:
        """A built-in model name, a ``.gguf`` file, or a folder holding ``tokenizer.json``."""
        path = Path(path_or_name).expanduser()
        if str(path_or_name) in BUILTIN_MODELS or path.suffix == ".gguf":
            return cls.from_gguf(resolve_model_path(path_or_name))
        if (path / "tokenizer.json").is_file():
            return cls.from_folder(path)
        raise ValueError(f"tokenizer {str(path_or_name)!r}: no tokenizer.json, GGUF or known name")

    @classmethod
    def from_folder(cls, folder: str | Path) -> Tokenizer:
        folder = Path(folder)
        backend = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = _read_json(folder / "tokenizer_config.json")
        bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
        eos_id = backend.token_to_id(eos) if eos else None
        eos_ids: list[int] = [eos_id] if eos_id is not None else []
        for extra in ("generation_config.json", "config.json"):
            value = _read_json(folder / extra).get("eos_token_id")
            eos_ids += [value] if isinstance(value, int) else list(value or [])
        template = config.get("chat_template")
        if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
            named = {t["name"]: t["template"] for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        jinja_file = folder / "chat_template.jinja"
        if template is None and jinja_file.is_file():
            template = jinja_file.read_text()
        return cls(backend, eos_ids, bos, eos, template)

    @classmethod
    def from_gguf(cls, path: str | Path) -> Tokenizer:
        """Rebuild the byte-level BPE tokenizer llama.cpp describes in a GGUF's metadata."""
        meta = gguf_metadata(open_gguf(str(path)), arrays=True)
        kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
        if kind != "gpt2":
            raise ValueError(f"{path}: tokenizer.ggml.model {kind!r} unsupported (only 'gpt2')")
        tokens: list[str] = meta["tokenizer.ggml.tokens"]
        merges = [tuple(m.split(" ", 1)) for m in meta.get("tokenizer.ggml.merges", [])]
        bpe = models.BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False)
        backend = tokenizers.Tokenizer(bpe)
        backend.pre_tokenizer = _byte_level_pre_tokenizer(pre, path)
        backend.decoder = decoders.ByteLevel()
        types = meta.get("tokenizer.ggml.token_type") or [0] * len(tokens)
        backend.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types)
             if k == _CONTROL]
        )  # fmt: skip
        backend.add_tokens(
            [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types)
             if k == _USER_DEFINED]
        )  # fmt: skip
        bos_id = meta.get("tokenizer.ggml.bos_token_id")
        eos_id = meta.get("tokenizer.ggml.eos_token_id")
        bos = tokens[bos_id] if bos_id is not None else None
        if bos is not None and meta.get("tokenizer.ggml.add_bos_token", False):
            backend.post_processor = processors.TemplateProcessing(
                single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 $B:1", special_tokens=[(bos, bos_id)]
            )
        eos = tokens[eos_id] if eos_id is not None else None
        eos_ids = [eos_id] if eos_id is not None else []
        return cls(backend, eos_ids, bos, eos, meta.get("tokenizer.chat_template"))

    # -- text <-> ids ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return int(self.backend.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return str(self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens))

    def detokenizer(
        self, prompt_ids: Sequence[int] = (), skip_special_tokens: bool = False
    ) -> IncrementalDetokenizer:
        """A fresh streaming detokenizer for one sequence that follows ``prompt_ids``."""
        return IncrementalDetokenizer(self, prompt_ids, skip_special_tokens)

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """Render the model's Jinja chat template the way transformers does (sandboxed)."""
        if self.chat_template is None:
            raise ValueError("apply_chat_template: this tokenizer has no chat template")
        return _render_chat_template(
            self.chat_template,
            messages=[dict(m) for m in messages],
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
            **kwargs,
        )


def load_tokenizer(path_or_name: str | Path) -> Tokenizer:
    """``Tokenizer.from_pretrained``: a built-in name, a ``.gguf`` file or an HF folder."""
    return Tokenizer.from_pretrained(path_or_name)


class IncrementalDetokenizer:
    """Turn a stream of token ids into text, emitting only complete characters.

    NOTE(engine): byte-level tokens may end inside a UTF-8 character; decoding such a prefix
    yields U+FFFD, so text is held back until the window decodes without a trailing U+FFFD.
    Two offsets keep each decode short:

        ids   ... | prefix_offset ...... read_offset | read_offset ...... len(ids)
                  | already emitted (context)        | not yet emitted

    Emitted text is ``decode(ids[prefix:]) - decode(ids[prefix:read])``; the context tokens make
    a leading space of the new tokens render as the full decode would.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = False,
        num_context_tokens: int = 5,
    ) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.ids: list[int] = list(prompt_ids[-num_context_tokens:]) if prompt_ids else []
        self.prefix_offset = 0
        self.read_offset = len(self.ids)
        self.text = ""

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def push(self, token_ids: int | Iterable[int]) -> str:
        """Add new ids; return the newly completed text ("" while a character is unfinished)."""
        self.ids += [token_ids] if isinstance(token_ids, int) else list(token_ids)
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full_text = self._decode(self.ids[self.prefix_offset :])
        if len(full_text) <= len(prefix_text) or full_text.endswith("\ufffd"):
            return ""
        new_text = full_text[len(prefix_text) :]
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        self.text += new_text
        return new_text

    def flush(self) -> str:
        """The held-back remainder at the end of a stream (may contain U+FFFD)."""
        prefix_text = self._decode(self.ids[self.prefix_offset : self.read_offset])
        new_text = self._decode(self.ids[self.prefix_offset :])[len(prefix_text) :]
        self.prefix_offset = self.read_offset = len(self.ids)
        self.text += new_text
        return new_text


def _byte_level_pre_tokenizer(pre: str, path: str | Path) -> pre_tokenizers.PreTokenizer:
    if pre in _DIGIT_SPLIT_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    if pre in _GPT2_PRE:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _LLAMA3_PRE:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    raise ValueError(f"{path}: tokenizer.ggml.pre {pre!r} is not supported")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON ({err})") from err
    return data if isinstance(data, dict) else {}


def _token_text(token: Any) -> str | None:
    """``"<s>"`` or ``{"content": "<s>", ...}`` (older tokenizer_config.json) -> ``"<s>"``."""
    if isinstance(token, dict):
        return token.get("content")
    return token if isinstance(token, str) else None


def _render_chat_template(template: str, **context: Any) -> str:
    from jinja2 import TemplateError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise TemplateError(message)

    def tojson(value: Any, indent: int | None = None) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template).render(**context)
    except TemplateError as err:
        raise ValueError(f"chat template: {err}") from err
