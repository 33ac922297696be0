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
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypedDict, Unpack

from consumer.contract import Item, Sampling
from consumer.engine import vllm_compat
from consumer.engine.base import EngineHealth, GradeOutcome
from consumer.engine.calibration import Calibration
from consumer.engine.confidence import GradeDigits, GradeDistribution, grade_distribution
from consumer.engine.gpu_memory import read_gpu_memory
from consumer.engine.grading import grade_prompt
from consumer.engine.output import Generation, continuation_regex, output_regex
from consumer.engine.prompt import Prompt, PromptBuilder, PromptTokenizer
from consumer.engine.screening import Screener, Screening

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase
    from vllm import SamplingParams
    from vllm.outputs import CompletionOutput, RequestOutput
    from vllm.v1.engine.async_llm import AsyncLLM

logger = logging.getLogger(__name__)

# The warm-up's text: fixed, no student's (it goes through the real prompt format).
WARM_UP_ITEM = Item(
    id_alumno="warm-up",
    curso="warm-up",
    consigna="Explica en una frase què és la fotosíntesi.",
    respuesta="La fotosíntesi és com les plantes fan el seu aliment amb la llum del sol.",
)


# The warm-up's forced continuation starts here: what the output grammar makes
# every output begin with, and a grade (any: the text that follows is not read).
WARM_UP_GRADE_POSITION = '{"nota": 1'

# The warm-up's outputs stop here, past the grade: every token is at least one
# character, so the grade's digit (the last character of WARM_UP_GRADE_POSITION)
# is within them. What the warm-up is for is paid before the first token (the
# grammars' compilation, the first forward pass, the log-probability path at
# the grade); the ~100-token feedback that followed, decoded two sequences at a
# time, was half of a 24 s warm-up on a quiet 2-core machine, and nobody reads it.
WARM_UP_MAX_TOKENS = len(WARM_UP_GRADE_POSITION) + 2


# A warm-up output cut at WARM_UP_MAX_TOKENS ends with "length" (or "stop" if
# it closed first); a grammar that failed to compile ends it with "error".
_WARM_UP_ENDS = frozenset({"stop", "length"})


class EngineWarmUpError(RuntimeError):
    """The warm-up generation did not give a clean grade: the engine is not fit to be ready."""


@dataclass(frozen=True, slots=True)
class EngineStats:
    """Counters since start, for operators and tests (no texts)."""

    warm_up_s: float | None  # the warm-up generation, grammar compilation included; None before it
    generations: int  # requests sent to vLLM, warm-up and retries included
    errored_generations: int  # finished by vLLM with "error" (e.g. a grammar that failed to compile)
    retried_items: int  # grade() calls that needed more than one attempt


class EngineOptions(TypedDict):
    """How the engine grades, from the settings' engine section and the resolved model
    (``factory.build_engine``): given whole to ``VllmEngine.start`` and on to the engine."""

    model_name: str
    sampling: Sampling
    feedback_max_chars: int
    attempts: int
    device: str
    timeout_s: float | None
    review_below: float | None
    tie_margin: float
    screener: Screener | None
    prompt_format: str
    model_revision: str | None
    calibration: Calibration | None


class VllmEngine:
    def __init__(
        self,
        llm: AsyncLLM,
        tokenizer: PreTrainedTokenizerBase,
        *,
        builder: PromptBuilder,
        max_model_len: int,
        **options: Unpack[EngineOptions],
    ) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

        model_name, sampling, attempts = options["model_name"], options["sampling"], options["attempts"]
        review_below, feedback_max_chars = options["review_below"], options["feedback_max_chars"]

        self._llm: AsyncLLM | None = llm
        self._prompts = PromptTokenizer(tokenizer)
        self._tokenizer = tokenizer
        self._builder = builder
        self._model_name = model_name
        self._sampling = sampling
        self._max_prompt_tokens = max_model_len - sampling.max_tokens
        self._attempts = attempts
        self._device = options["device"]
        self._timeout_s = options["timeout_s"]
        self._tie_margin = options["tie_margin"]
        # Contract 1.3: the answer is read before the model reads it (screening.py);
        # None: no answer reasons (SCREEN_ANSWERS=false). Public: a benchmark compares both.
        self.screener = options["screener"]
        self._prompt_format = options["prompt_format"]
        self._model_revision = options["model_revision"]
        # Contract 1.2: with review_below set, every ok grade carries the
        # model's distribution over 0..5, read from the log-probabilities of
        # the digit tokens (consumer/engine/confidence.py says what vLLM gives).
        self._review_below = review_below
        # CALIBRATION_FILE's entry for this model and format (calibration.py)
        self._calibration = options["calibration"]
        self._digits = GradeDigits.from_tokenizer(tokenizer) if review_below is not None else None
        digit_logprobs: dict[str, Any] = {}
        if self._digits is not None:
            # Only these tokens, at every position (no top-k sort); flat: a
            # constant number of Python objects per request instead of one per token.
            digit_logprobs = {"logprob_token_ids": self._digits.token_ids, "flat_logprobs": True}
        self._warm_up_s: float | None = None
        self._generations = self._errored = self._retried = 0

        def params(attempt: int, grammar: str, **extra: Any) -> SamplingParams:
            # Attempt n samples with seed + n, so a retry can differ while every run stays reproducible.
            return SamplingParams(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                max_tokens=sampling.max_tokens,
                seed=sampling.seed + attempt,
                structured_outputs=StructuredOutputsParams(regex=grammar),
                output_kind=RequestOutputKind.FINAL_ONLY,  # no per-token streaming
                # Only the final text is read, so it is decoded once, at the
                # end (``text``), not step by step in vLLM's output loop for
                # every sequence, and every digit's log-probability token
                # with it (the distribution's cost: 0.13-0.28 s of a 9 s
                # batch on the CPU stand-in, on the event loop's core).
                detokenize=False,
                **extra,
            )

        # The fine-tune's JSON layout with every byte fixed but the feedback,
        # which always closes inside max_tokens (consumer/engine/output.py).
        whole, rest = output_regex(feedback_max_chars), continuation_regex(feedback_max_chars)
        self._params: list[SamplingParams] = [params(a, whole, **digit_logprobs) for a in range(attempts)]
        # Contract 1.3, a forced grade: the attempt's output continued from its grade
        # position with the most probable grade written there. Only the feedback is
        # left to write (its own grammar: the rest of the same layout), with the
        # attempt's seed; no distribution is read (the grade is given).
        self._forced_params: list[SamplingParams] = [params(a, rest) for a in range(attempts)]

    @classmethod
    async def start(
        cls,
        *,
        engine_args: dict[str, Any],
        prompt_parts: Callable[[object], tuple[PreTrainedTokenizerBase, PromptBuilder]],
        warm_up: bool = True,
        fork: bool = False,
        **options: Unpack[EngineOptions],
    ) -> VllmEngine:
        """Load the model (tens of seconds) without blocking the event loop, then warm it up.

        ``prompt_parts`` gets the tokenizer vLLM loaded (``vllm_compat.loaded_tokenizer``)
        and returns the tokenizer to use and the prompt format (it raises for
        one that cannot work). Gemma's tokenizer (262k pieces) takes ~4 s of
        Python to load; a second copy loaded beside vLLM's, in a thread of
        the same process, slowed vLLM's own by as much, before it spawns
        its engine process: on the path of every start.
        """
        from vllm import AsyncEngineArgs

        args = AsyncEngineArgs(**engine_args)
        # Built in a worker thread so /health keeps answering while it loads;
        # AsyncLLM starts its output loop lazily, on the caller's event loop.
        # ``fork``: vllm_compat.start_async_llm (the demo's start).
        llm = await asyncio.to_thread(vllm_compat.start_async_llm, args, fork=fork)
        try:
            tokenizer, builder = await asyncio.to_thread(prompt_parts, vllm_compat.loaded_tokenizer(llm))
        except BaseException:
            await vllm_compat.shut_down(llm)
            raise
        engine = cls(llm, tokenizer, builder=builder, max_model_len=int(engine_args["max_model_len"]), **options)
        if warm_up:
            try:
                await engine.warm_up()
            except BaseException:
                await engine.close()
                raise
        return engine

    async def warm_up(self) -> float:
        """The first attempt's generation and a forced grade's continuation, in one batch; returns its seconds.

        The first structured request pays for what no later one does: the
        grammar's compilation (~14 s for the 176-character bound with
        xgrammar on one quiet CPU thread; cached by vLLM afterwards), the grammar
        backend's vocabulary tables, the log-probability path. Paid here,
        before the caller reports ready, no item waits for it or is failed
        by vLLM's compilation timeout (see vllm_compat.REGEX_COMPILATION_TIMEOUT_S).

        The forced grade's grammar (the rest of the same layout) is compiled
        here too, not by the first item whose grade needs it. Its request does
        not wait for the first one's output: it continues a fixed grade
        position (``WARM_UP_GRADE_POSITION``), so both are in vLLM at once.
        vLLM compiles them one after the other (one compiling thread on a
        2-core host), the second in well under a second (xgrammar reuses what
        the first built), and decodes them in the same steps: the warm-up
        costs one generation, not two in a row (measured in docs/benchmarks.md).
        Both stop a few tokens past the grade (``WARM_UP_MAX_TOKENS``): the
        feedback after it would exercise nothing the grade's steps did not.
        """
        started = time.perf_counter()
        _, token_ids = self.encode(WARM_UP_ITEM)
        short = self._params[0].clone()
        short.max_tokens = WARM_UP_MAX_TOKENS
        first = self.generate(token_ids, 0, "warm-up", short)
        if self._digits is None:
            final = await first
        else:
            kept = self._tokenizer.encode(WARM_UP_GRADE_POSITION, add_special_tokens=False)
            final, forced = await asyncio.gather(
                first, self._continue(token_ids, kept, 0, "warm-up/forced", at_most=WARM_UP_MAX_TOKENS)
            )
            if forced.outputs[0].finish_reason not in _WARM_UP_ENDS:
                raise EngineWarmUpError(f"warm-up continuation ended with {forced.outputs[0].finish_reason!r}")
        completion = final.outputs[0]
        if completion.finish_reason not in _WARM_UP_ENDS:
            raise EngineWarmUpError(
                f"warm-up generation ended with {completion.finish_reason!r} (a grammar that failed to compile "
                "ends with 'error'; the engine's log has the cause)"
            )
        if self._digits is not None and self.distribution(completion) is None:
            raise EngineWarmUpError("warm-up output has no grade distribution: the digit tokens were not found")
        self._warm_up_s = time.perf_counter() - started
        logger.info("engine warmed up in %.1f s (grammars compiled, first generations done)", self._warm_up_s)
        return self._warm_up_s

    def stats(self) -> EngineStats:
        return EngineStats(
            warm_up_s=self._warm_up_s,
            generations=self._generations,
            errored_generations=self._errored,
            retried_items=self._retried,
        )

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def sampling(self) -> Sampling:
        return self._sampling

    @property
    def prompt_format(self) -> str:
        return self._prompt_format

    @property
    def model_revision(self) -> str | None:
        return self._model_revision

    def screen(self, item: Item) -> Screening | None:
        return self.screener.screen(item) if self.screener is not None else None

    def encode(self, item: Item) -> tuple[Prompt, list[int]]:
        """The prompt of exactly this item and the token ids the engine receives for it (no screening)."""
        prompt = self._builder.build(item)
        return prompt, self._prompts.encode(prompt)

    async def continue_with(
        self,
        token_ids: list[int],
        output_ids: list[int],
        distribution: GradeDistribution,
        grade: int,
        attempt: int,
        request_id: str,
    ) -> RequestOutput:
        """The output ``output_ids`` continued from its grade position with ``grade`` written there.

        The returned output's token ids are the whole output (the kept part, the grade, the rest).
        """
        if self._digits is None:
            raise RuntimeError("a forced grade needs the grade's digit tokens")
        kept = [*output_ids[: distribution.position], self._digits.token_for(distribution.prefix, grade)]
        return await self._continue(token_ids, kept, attempt, request_id)

    async def _continue(
        self, token_ids: list[int], kept: list[int], attempt: int, request_id: str, *, at_most: int | None = None
    ) -> RequestOutput:
        """``kept`` (an output up to and with its grade token) continued under the forced grade's grammar.

        ``at_most``: fewer tokens than the rest of the output's budget (the warm-up's).
        """
        from vllm.inputs import TokensPrompt

        params = self._forced_params[attempt].clone()
        params.max_tokens = max(1, self._sampling.max_tokens - len(kept))
        if at_most is not None:
            params.max_tokens = min(params.max_tokens, at_most)
        final = None
        self._generations += 1
        async for output in self._live().generate(
            TokensPrompt(prompt_token_ids=[*token_ids, *kept]), params, request_id=request_id
        ):
            final = output
        if final is None or not final.outputs:
            raise RuntimeError("engine returned no output")
        completion = final.outputs[0]
        if completion.finish_reason == "error":
            self._errored += 1
        completion.token_ids = [*kept, *completion.token_ids]
        return final

    def params(self, attempt: int) -> SamplingParams:
        """The sampling parameters of attempt ``attempt`` (0 = the first): seed + attempt."""
        return self._params[attempt]

    async def generate(
        self, token_ids: list[int], attempt: int, request_id: str, params: SamplingParams | None = None
    ) -> RequestOutput:
        """One request straight to vLLM; the final output. Cancelling this aborts the request.

        ``params`` replaces attempt ``attempt``'s parameters (benchmarks compare variants with it).
        """
        from vllm.inputs import TokensPrompt

        final = None
        self._generations += 1
        async for output in self._live().generate(
            TokensPrompt(prompt_token_ids=token_ids), params or self._params[attempt], request_id=request_id
        ):
            final = output
        if final is None or not final.outputs:
            raise RuntimeError("engine returned no output")
        if final.outputs[0].finish_reason == "error":
            self._errored += 1
        return final

    def text(self, completion: CompletionOutput) -> str:
        """The output's text, decoded as vLLM's detokenizer would (tested against it)."""
        text = self._tokenizer.decode(list(completion.token_ids), skip_special_tokens=True)
        assert isinstance(text, str)  # one sequence in, one string out
        return text

    def distribution(self, completion: CompletionOutput) -> GradeDistribution | None:
        """The grade distribution of one output, if the engine reads them and it has one."""
        logprobs = completion.logprobs
        if self._digits is None or logprobs is None:
            return None

        def at(position: int) -> dict[int, float]:
            return {token: lp.logprob for token, lp in logprobs[position].items()}

        return grade_distribution(completion.token_ids, at, self._digits)

    async def grade(self, item: Item, request_id: str) -> GradeOutcome:
        screening = self.screen(item)
        prompt, token_ids = self.encode(screening.graded if screening is not None else item)
        first: list[tuple[list[int], GradeDistribution]] = []  # the first output that had a distribution

        async def generate(attempt: int, forced: int | None) -> Generation:
            if forced is None:
                final = await self.generate(token_ids, attempt, f"{request_id}/a{attempt}")
                completion = final.outputs[0]
                distribution = self.distribution(completion)
                if distribution is not None and not first:
                    first.append((list(completion.token_ids), distribution))
            else:
                output_ids, read = first[0]
                final = await self.continue_with(
                    token_ids, output_ids, read, forced, attempt, f"{request_id}/a{attempt}/g{forced}"
                )
                completion, distribution = final.outputs[0], None
            return Generation(
                text=self.text(completion),
                finish_reason=completion.finish_reason,
                output_tokens=len(completion.token_ids),
                cached_prompt_tokens=final.num_cached_tokens or 0,
                distribution=distribution,
            )

        outcome = await grade_prompt(
            prompt,
            prompt_tokens=len(token_ids),
            max_prompt_tokens=self._max_prompt_tokens,
            generate=generate,
            attempts=self._attempts,
            timeout_s=self._timeout_s,
            review_below=self._review_below,
            require_distribution=self._digits is not None,
            tie_margin=self._tie_margin,
            answer_reasons=screening.reasons if screening is not None else None,
            calibration=self._calibration,
        )
        if outcome.attempts > 1:
            self._retried += 1
        return outcome

    def health(self) -> EngineHealth:
        if self._llm is None:
            return EngineHealth(loaded=False, detail="engine closed", device=self._device)
        if self._llm.errored:
            return EngineHealth(loaded=False, detail=f"engine dead: {self._llm.dead_error}", device=self._device)
        return EngineHealth(loaded=True, detail="ready", device=self._device, gpu_memory=_gpu_memory_gb(self._device))

    def _live(self) -> AsyncLLM:
        if self._llm is None:
            raise RuntimeError("engine closed")
        return self._llm

    async def close(self) -> None:
        if self._llm is None:
            return
        llm, self._llm = self._llm, None
        await vllm_compat.shut_down(llm)


def _gpu_memory_gb(device: str) -> dict[str, float]:
    """The card's memory in GB (10^9 bytes, the unit of GPU_MEMORY_BUDGET_GB), through NVML: no CUDA context here."""
    if device == "cpu":
        return {}
    memory = read_gpu_memory()
    if memory is None:
        return {}
    return {"gpu_memory_total_gb": memory.total_bytes / 1e9, "gpu_memory_used_gb": memory.used_bytes / 1e9}
