"""A real, model-free implementation of ``GradingEngine`` for tests and load runs.

It builds the same prompts, applies the same length check and runs its
generations through the same validation and retry code as ``VllmEngine``;
only the text generation itself is scripted.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
from collections.abc import Callable

from consumer.contract import Item, Sampling
from consumer.engine.base import EngineHealth, GradeOutcome
from consumer.engine.calibration import Calibration
from consumer.engine.confidence import GradeDistribution, fake_distribution
from consumer.engine.grading import grade_prompt
from consumer.engine.output import Generation
from consumer.engine.prompt import PromptBuilder
from consumer.engine.screening import Screener, Screening, shared_screener
from consumer.settings import (
    DEFAULT_MAX_MODEL_LEN,
    DEFAULT_REVIEW_CONFIDENCE,
    DEFAULT_SCREEN_ANSWERS,
    DEFAULT_TIE_MARGIN,
)

# (item, attempt) -> a generation; raising simulates an engine failure.
Script = Callable[[Item, int], Generation]

FAKE_MODEL_NAME = "texteval/fake-engine"
CHARS_PER_TOKEN = 4  # the fake's stand-in for a tokenizer


def with_grade(generation: Generation, nota: int) -> Generation:
    """A scripted generation continued with a forced grade (contract 1.3): the same feedback, that grade."""
    try:
        data = json.loads(generation.text)
    except json.JSONDecodeError:
        return Generation(text=generation.text, finish_reason=generation.finish_reason, output_tokens=1)
    if isinstance(data, dict):
        data["nota"] = nota
    text = json.dumps(data, ensure_ascii=False)
    return Generation(text=text, finish_reason=generation.finish_reason, output_tokens=generation.output_tokens)


def deterministic_script(item: Item, attempt: int) -> Generation:
    """A valid grade derived from the text, so equal items get equal grades (and equal distributions)."""
    digest = hashlib.sha256(item.respuesta.encode("utf-8")).digest()
    nota = digest[0] % 6
    text = json.dumps({"nota": nota, "feedback": f"Resposta de {len(item.respuesta)} caràcters."})
    distribution = GradeDistribution(grade=nota, probabilities=fake_distribution(nota, item.respuesta))
    return Generation(
        text=text, finish_reason="stop", output_tokens=len(text) // CHARS_PER_TOKEN, distribution=distribution
    )


class FakeEngine:
    def __init__(
        self,
        *,
        script: Script = deterministic_script,
        delay_s: float = 0.0,
        max_model_len: int = DEFAULT_MAX_MODEL_LEN,
        sampling: Sampling | None = None,
        attempts: int = 2,
        builder: PromptBuilder | None = None,
        max_concurrency: int | None = None,
        timeout_s: float | None = None,
        review_below: float | None = DEFAULT_REVIEW_CONFIDENCE,
        tie_margin: float = DEFAULT_TIE_MARGIN,
        screen_answers: bool = DEFAULT_SCREEN_ANSWERS,
        screener: Screener | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self._script = script
        self._delay_s = delay_s
        self._sampling = sampling or Sampling(temperature=0.1, top_p=0.95, max_tokens=200, seed=0)
        self._max_prompt_tokens = max_model_len - self._sampling.max_tokens
        self._attempts = attempts
        self._builder = builder or PromptBuilder.gemma_finetune()
        self._dead: str | None = None
        # Like a GPU's batch: at most this many generations progress at once,
        # so load runs take realistic time with many items in flight.
        self._slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        # When each slot is (virtually) free again, a heap. A GPU keeps
        # stepping while this process is busy: a generation queued behind a
        # finished one starts when that one ended, not when this event loop
        # got round to it (vLLM's engine runs in its own process). Without
        # it, every millisecond the consumer spends publishing would be a
        # millisecond of GPU idle, which no real engine has.
        self._free_at = [0.0] * (max_concurrency or 0)
        self._timeout_s = timeout_s
        # None: no grade distribution (GRADE_DISTRIBUTION=false). A script's
        # generation without one still grades: tests script outputs by hand.
        self._review_below = review_below
        self._tie_margin = tie_margin
        self._calibration = calibration
        # Contract 1.3: the same screening as the real engine (the shared one unless given).
        # Loaded here, not at the first item: its language model takes about a second to
        # load, which inside a running consumer's event loop would miss group heartbeats.
        self._screen_answers = screen_answers
        self._screener = screener if screener is not None or not screen_answers else shared_screener()
        self.in_flight = 0
        self.max_in_flight = 0
        self.calls = 0  # generations started, retries included

    @property
    def model_name(self) -> str:
        return FAKE_MODEL_NAME

    @property
    def sampling(self) -> Sampling:
        return self._sampling

    @property
    def prompt_format(self) -> str:
        return "gemma_finetune"

    @property
    def model_revision(self) -> str | None:
        return None

    def screen(self, item: Item) -> Screening | None:
        if not self._screen_answers:
            return None
        return (self._screener or shared_screener()).screen(item)

    async def grade(self, item: Item, request_id: str) -> GradeOutcome:
        screening = self.screen(item)
        graded = screening.graded if screening is not None else item
        prompt = self._builder.build(graded)

        async def generate(attempt: int, forced: int | None) -> Generation:
            self.calls += 1
            if self._dead is not None:
                raise RuntimeError(f"engine is dead: {self._dead}")
            if self._slots is not None:
                queued_at = asyncio.get_running_loop().time()
                async with self._slots:
                    await self._occupy_slot(queued_at)
            elif self._delay_s:
                await asyncio.sleep(self._delay_s)
            if self._dead is not None:
                raise RuntimeError(f"engine is dead: {self._dead}")
            generation = self._script(graded, attempt)
            return generation if forced is None else with_grade(generation, forced)

        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await grade_prompt(
                prompt,
                prompt_tokens=len(prompt.text) // CHARS_PER_TOKEN,
                max_prompt_tokens=self._max_prompt_tokens,
                generate=generate,
                attempts=self._attempts,
                timeout_s=self._timeout_s,
                review_below=self._review_below,
                tie_margin=self._tie_margin,
                answer_reasons=screening.reasons if screening is not None else None,
                calibration=self._calibration,
            )
        finally:
            self.in_flight -= 1

    async def _occupy_slot(self, queued_at: float) -> None:
        loop = asyncio.get_running_loop()
        # Holding the semaphore: one of the heap's entries is ours. Slots are
        # never shared (each start follows the end it replaces), so at most
        # ``max_concurrency`` generations overlap on this virtual timeline.
        end = max(queued_at, heapq.heappop(self._free_at)) + self._delay_s
        try:
            await asyncio.sleep(max(0.0, end - loop.time()))
        finally:
            heapq.heappush(self._free_at, min(end, loop.time()))  # an abort frees the slot now

    def kill(self, reason: str = "killed") -> None:
        """Simulate the engine process dying: health goes red, grades fail."""
        self._dead = reason

    def health(self) -> EngineHealth:
        if self._dead is not None:
            return EngineHealth(loaded=False, detail=f"engine dead: {self._dead}", device="cpu")
        return EngineHealth(loaded=True, detail="fake engine ready", device="cpu")

    async def close(self) -> None:
        self._dead = self._dead or "closed"
