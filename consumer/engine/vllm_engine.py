"""``GradingEngine`` on vLLM's ``AsyncLLM``, in-process.

Every ``grade`` call is one request; callers keep hundreds in flight and
vLLM's scheduler batches them continuously (a step decodes every running
sequence), which is what makes a GPU fast here. The instruction is the same
for every text, so prefix caching computes its KV once.

The engine receives token ids, never text: ``PromptTokenizer`` has already
made sure student text cannot turn into control tokens.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from consumer.contract import Item, Sampling
from consumer.engine import vllm_compat
from consumer.engine.base import EngineHealth, GradeOutcome
from consumer.engine.grading import grade_prompt
from consumer.engine.output import Generation, output_regex
from consumer.engine.prompt import Prompt, PromptBuilder, PromptTokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from vllm import SamplingParams
    from vllm.outputs import RequestOutput
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)


class VllmEngine:
    def __init__(
        self,
        llm: AsyncLLM,
        tokenizer: PreTrainedTokenizerBase,
        *,
        model_name: str,
        builder: PromptBuilder,
        sampling: Sampling,
        feedback_max_chars: int,
        max_model_len: int,
        attempts: int,
        device: str,
        timeout_s: float | None = None,
    ) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        self._llm: AsyncLLM | None = llm
        self._prompts = PromptTokenizer(tokenizer)
        self._builder = builder
        self._model_name = model_name
        self._sampling = sampling
        self._max_prompt_tokens = max_model_len - sampling.max_tokens
        self._attempts = attempts
        self._device = device
        self._timeout_s = timeout_s
        # The fine-tune's JSON layout with every byte fixed but the feedback,
        # which always closes inside max_tokens (consumer/engine/output.py).
        schema = StructuredOutputsParams(regex=output_regex(feedback_max_chars))
        # One parameter set per attempt: attempt n samples with seed + n, so
        # a retry can differ while every run stays reproducible.
        self._params: list[SamplingParams] = [
            SamplingParams(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=sampling.seed + attempt,
                structured_outputs=schema,
                output_kind=RequestOutputKind.FINAL_ONLY,  # no per-token streaming
            )
            for attempt in range(attempts)
        ]

    @classmethod
    async def start(
        cls,
        *,
        engine_args: dict[str, Any],
        model_name: str,
        builder: PromptBuilder,
        sampling: Sampling,
        feedback_max_chars: int,
        attempts: int,
        device: str,
        tokenizer: PreTrainedTokenizerBase,
        timeout_s: float | None = None,
    ) -> VllmEngine:
        """Load the model (tens of seconds) without blocking the event loop."""
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        args = AsyncEngineArgs(**engine_args)
        # Built in a worker thread so /health keeps answering while it loads;
        # AsyncLLM starts its output loop lazily, on the caller's event loop.
        llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        return cls(
            llm,
            tokenizer,
            model_name=model_name,
            builder=builder,
            sampling=sampling,
            feedback_max_chars=feedback_max_chars,
            max_model_len=int(engine_args["max_model_len"]),
            attempts=attempts,
            device=device,
            timeout_s=timeout_s,
        )

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def sampling(self) -> Sampling:
        return self._sampling

    def encode(self, item: Item) -> tuple[Prompt, list[int]]:
        """The item's prompt and the token ids the engine receives for it."""
        prompt = self._builder.build(item)
        return prompt, self._prompts.encode(prompt)

    def params(self, attempt: int) -> SamplingParams:
        """The sampling parameters of attempt ``attempt`` (0 = the first): seed + attempt."""
        return self._params[attempt]

    async def generate(self, token_ids: list[int], attempt: int, request_id: str) -> RequestOutput:
        """One request straight to vLLM; the final output. Cancelling this aborts the request."""
        from vllm.inputs import TokensPrompt

        final = None
        async for output in self._live().generate(
            TokensPrompt(prompt_token_ids=token_ids), self._params[attempt], request_id=request_id
        ):
            final = output
        if final is None or not final.outputs:
            raise RuntimeError("engine returned no output")
        return final

    async def grade(self, item: Item, request_id: str) -> GradeOutcome:
        prompt, token_ids = self.encode(item)

        async def generate(attempt: int) -> Generation:
            final = await self.generate(token_ids, attempt, f"{request_id}/a{attempt}")
            completion = final.outputs[0]
            return Generation(
                text=completion.text,
                finish_reason=completion.finish_reason,
                output_tokens=len(completion.token_ids),
                cached_prompt_tokens=final.num_cached_tokens or 0,
            )

        return await grade_prompt(
            prompt,
            prompt_tokens=len(token_ids),
            max_prompt_tokens=self._max_prompt_tokens,
            generate=generate,
            attempts=self._attempts,
            timeout_s=self._timeout_s,
        )

    def health(self) -> EngineHealth:
        if self._llm is None:
            return EngineHealth(loaded=False, detail="engine closed", device=self._device)
        if self._llm.errored:
            return EngineHealth(loaded=False, detail=f"engine dead: {self._llm.dead_error}", device=self._device)
        return EngineHealth(loaded=True, detail="ready", device=self._device, gpu_memory=_gpu_memory_gib())

    def _live(self) -> AsyncLLM:
        if self._llm is None:
            raise RuntimeError("engine closed")
        return self._llm

    async def close(self) -> None:
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        await vllm_compat.shut_down(llm)


def _gpu_memory_gib() -> dict[str, float]:
    import torch

    if not torch.cuda.is_available():
        return {}
    free, total = torch.cuda.mem_get_info()
    gib = 1024**3
    return {"gpu_memory_total_gib": total / gib, "gpu_memory_used_gib": (total - free) / gib}
