"""``texteval export-training --out FILE``: corrected items in the fine-tune's training format.

One JSONL line per exported item::

    {"prompt": "<start_of_turn>user\\n…<end_of_turn>\\n<start_of_turn>model",
     "completion": "{\\"nota\\": 3, \\"feedback\\": \\"…\\"}",
     "job_id": "…", "item_index": 0, "target_source": "teacher"}

- ``prompt`` is exactly what ``texteval render-prompt`` prints for the item
  in the ``gemma_finetune`` format (``consumer.engine.prompt``, the golden
  pair's format): the text after ``<bos>``, which the trainer's Gemma
  tokenizer puts in front, as the prompt code does for the engine.
- ``completion`` is the JSON the model emits, in its fixed layout
  (``consumer.engine.output.output_regex``): ``{"nota": N, "feedback": "…"}``;
  the trainer appends the end-of-turn as in the fine-tune's notebook.
- ``prompt`` + ``completion`` is the text a ``prompt``/``completion`` dataset
  (e.g. TRL's SFT) trains on; the other keys say where the line came from.

The target, and the rule for corrections of the grade alone:
- with the teacher's ``feedback``: the teacher's grade and feedback
  (``target_source: teacher``);
- without feedback, and the teacher kept the model's grade: the model's own
  feedback, now confirmed (``target_source: model_feedback_confirmed``);
- without feedback, and the teacher changed the grade (or the result was an
  error): not exported (``grade_only_changed``): the model's feedback argues
  for the grade it gave, and training a new grade on it would teach a
  feedback that contradicts its grade.
- a feedback the serving grammar cannot produce (a ``"`` or ``\\``, a
  character beyond U+07FF, longer than ``FEEDBACK_MAX_CHARS``): not exported
  (``feedback_outside_grammar``): the model is decoded under that grammar,
  so it could never emit this target.
- an item whose request text was not found: not exported (``request_not_found``).
- an erased job (contract 1.3): left out before anything is read of it, and
  counted (``erased jobs skipped``).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from consumer.contract import Item
from consumer.corrections import Correction, ErasedSkipped
from consumer.engine.output import feedback_pattern
from consumer.engine.prompt import PromptBuilder
from consumer.tools.loop_sources import GradedItem


class TargetSource(StrEnum):
    TEACHER = "teacher"
    MODEL_FEEDBACK_CONFIRMED = "model_feedback_confirmed"


class Excluded(StrEnum):
    GRADE_ONLY_CHANGED = "grade_only_changed"
    FEEDBACK_OUTSIDE_GRAMMAR = "feedback_outside_grammar"
    REQUEST_NOT_FOUND = "request_not_found"


def target_json(nota: int, feedback: str) -> str:
    """The model's output for this grade, byte for byte (the grammar allows no escapes)."""
    return json.dumps({"nota": nota, "feedback": feedback}, ensure_ascii=False)


@dataclass
class Export:
    lines: list[dict[str, Any]] = field(default_factory=list)
    by_source: Counter[str] = field(default_factory=Counter)
    excluded: Counter[str] = field(default_factory=Counter)
    erased: ErasedSkipped = field(default_factory=ErasedSkipped)  # left out before export (contract 1.3)

    def jsonl(self) -> str:
        return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in self.lines)


def _target(correction: Correction, result: GradedItem | None) -> tuple[str, TargetSource] | Excluded:
    if correction.feedback is not None:
        # NFC and trimmed, like the prompt's text and the model's parsed output.
        return unicodedata.normalize("NFC", correction.feedback.strip()), TargetSource.TEACHER
    if result is not None and result.ok and result.nota == correction.nota and result.feedback is not None:
        return result.feedback, TargetSource.MODEL_FEEDBACK_CONFIRMED
    return Excluded.GRADE_ONLY_CHANGED


def build_export(
    corrections: Mapping[str, Correction],
    results: Mapping[str, GradedItem],
    items: Mapping[str, Item],
    *,
    feedback_max_chars: int,
    erased: ErasedSkipped | None = None,
) -> Export:
    """``corrections``: result_id -> the correction that counts, erased jobs already left out
    (``erased`` says how many); lines in (job_id, item_index) order."""
    builder = PromptBuilder.gemma_finetune()
    grammar = re.compile(feedback_pattern(feedback_max_chars))
    export = Export(erased=erased or ErasedSkipped())
    for rid, correction in sorted(corrections.items(), key=lambda kv: (kv[1].job_id, kv[1].item_index)):
        item = items.get(rid)
        if item is None:
            export.excluded[Excluded.REQUEST_NOT_FOUND] += 1
            continue
        target = _target(correction, results.get(rid))
        if isinstance(target, Excluded):
            export.excluded[target] += 1
            continue
        feedback, source = target
        if not grammar.fullmatch(feedback):
            export.excluded[Excluded.FEEDBACK_OUTSIDE_GRAMMAR] += 1
            continue
        export.lines.append(
            {
                "prompt": builder.build(item).text,
                "completion": target_json(correction.nota, feedback),
                "job_id": correction.job_id,
                "item_index": correction.item_index,
                "target_source": source.value,
            }
        )
        export.by_source[source] += 1
    return export


def summary(export: Export) -> str:
    sources = ", ".join(f"{name}: {count}" for name, count in sorted(export.by_source.items())) or "none"
    excluded = ", ".join(f"{name}: {count}" for name, count in sorted(export.excluded.items())) or "none"
    return f"{len(export.lines)} items exported ({sources}); not exported: {excluded}; {export.erased}"
