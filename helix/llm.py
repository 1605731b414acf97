"""`LLM`: the offline API users know from vLLM.

from helix import LLM, SamplingParams
llm = LLM()                                   # the built-in smollm2-135m
out = llm.generate(["Hello"], SamplingParams(temperature=0, max_tokens=32))
print(out[0].outputs[0].text)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from helix.runtime.outputs import RequestOutput
from helix.runtime.sampling_params import SamplingParams

Prompt = str | dict[str, Any]


class LLM:
    def __init__(self, model: str | None = None, **engine_args: Any) -> None:
        from helix.runtime.engine import LLMEngine
        from helix.runtime.engine_config import EngineConfig

        self.engine = LLMEngine(EngineConfig(model=model, **engine_args))

    @classmethod
    def from_engine(cls, engine: Any) -> LLM:
        """Wrap an existing engine (e.g. a ClusterEngine coordinating a sharded cluster)."""
        llm = cls.__new__(cls)
        llm.engine = engine
        return llm

    def get_tokenizer(self) -> Any:
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in prompt order."""
        if isinstance(prompts, (str, dict)):
            prompts = [prompts]
        prompts = list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        params = (
            [sampling_params] * len(prompts)
            if isinstance(sampling_params, SamplingParams)
            else list(sampling_params)
        )
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling_params for {len(prompts)} prompts")
        ids = [self.engine.add_request(prompt, p) for prompt, p in zip(prompts, params)]
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[dict[str, str]] | list[list[dict[str, str]]],
        sampling_params: SamplingParams | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation (or several) and generate."""
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        prompts: list[Prompt] = []
        for conversation in conversations:
            text = self.engine.tokenizer.apply_chat_template(
                conversation,
                add_generation_prompt=True,
            )
            prompts.append(
                {
                    "prompt_token_ids": self.engine.tokenizer.encode(
                        text, add_special_tokens=False
                    ),
                    "prompt": text,
                }
            )
        return self.generate(prompts, sampling_params, use_tqdm)

    def _run(self, ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        results: dict[str, RequestOutput] = {}
        progress = None
        if use_tqdm:
            from rich.progress import Progress

            progress = Progress(transient=True)
            task = progress.add_task("generating", total=len(ids))
            progress.start()
        try:
            while self.engine.has_unfinished_requests():
                self.engine.step()
                for output in self.engine.pop_finished():
                    results[output.request_id] = output
                    if progress is not None:
                        progress.advance(task)
            for output in self.engine.pop_finished():
                results[output.request_id] = output
        finally:
            if progress is not None:
                progress.stop()
        return [results[request_id] for request_id in ids]
