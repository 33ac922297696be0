"""Item -> the exact model input.

The production model was fine-tuned on one fixed text format; it grades as
trained only when it sees that format byte for byte (golden pair:
``data/golden_item_A001.json`` -> ``data/golden_prompt_A001.txt``).

A prompt is kept as parts marked *trusted* (template text, where control
tokens such as ``<end_of_turn>`` are meant) or not (the user content, which
holds student text). Tokenizing the parts separately lets a student type
``<end_of_turn>`` and have it reach the model as plain characters.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from consumer.contract import Item

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# From the fine-tune's training notebook. The trailing space after
# "Per sota del nivell" is in the training data: keep it.
INSTRUCTION = (
    "Ets una professora experimentada avaluant textos d'estudiants catalans.\n"
    "Has d'avaluar amb una nota de 0 a 5 i proporcionar feedback constructiu.\n"
    "\n"
    "Escala d'avaluació:\n"
    "0 = Molt per sota del nivell\n"
    "1 = Per sota del nivell \n"
    "2 = Just acceptable\n"
    "3 = Nivell esperat\n"
    "4 = Per sobre del nivell\n"
    "5 = Excel·lent\n"
    "\n"
    'Respon NOMÉS amb JSON: {"nota": X, "feedback": "..."}'
)

GEMMA_PREFIX = "<start_of_turn>user\n"
GEMMA_SUFFIX = "<end_of_turn>\n<start_of_turn>model"


def user_content(item: Item) -> str:
    """The user turn: instruction plus the item, NFC-normalised like the training data."""
    curso, consigna, respuesta = (
        unicodedata.normalize("NFC", text) for text in (item.curso, item.consigna, item.respuesta)
    )
    return f'{INSTRUCTION}\n\nAlumne de {curso} respon a "{consigna}":\n{respuesta}'


@dataclass(frozen=True, slots=True)
class PromptPart:
    text: str
    trusted: bool  # template text: control tokens in it are meant


@dataclass(frozen=True)
class Prompt:
    parts: tuple[PromptPart, ...]
    # The format starts with the tokenizer's BOS token, exactly once, whatever
    # the tokenizer file says: the fine-tune was trained on `<bos>` + its format,
    # and a converted Gemma tokenizer adds no BOS while the hub one does.
    # Not part of ``text`` (the golden file is the text after BOS).
    bos: bool = False

    @cached_property
    def text(self) -> str:
        return "".join(part.text for part in self.parts)

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()


class PromptBuilder:
    """Wraps the user content in a fixed prefix and suffix (trusted template text)."""

    def __init__(self, prefix: str, suffix: str, *, bos: bool = False) -> None:
        self._prefix = PromptPart(prefix, trusted=True)
        self._suffix = PromptPart(suffix, trusted=True)
        self._bos = bos

    @property
    def needs_bos(self) -> bool:
        return self._bos

    @classmethod
    def gemma_finetune(cls) -> PromptBuilder:
        return cls(GEMMA_PREFIX, GEMMA_SUFFIX, bos=True)

    @classmethod
    def from_chat_template(cls, render: Callable[[str], str]) -> PromptBuilder:
        """Split the model's chat template around a sentinel user message.

        ``render(content)`` applies the template to one user message with the
        generation prompt added. Rendering once with a sentinel gives the
        template text before and after the content, so per-item work is a
        string join, not a Jinja render.
        """
        sentinel = "\u0000TEXTEVAL-USER-CONTENT\u0000"
        rendered = render(sentinel)
        if rendered.count(sentinel) != 1:
            raise ValueError("chat template must place the user content exactly once")
        prefix, suffix = rendered.split(sentinel)
        return cls(prefix, suffix)

    def build(self, item: Item) -> Prompt:
        return Prompt((self._prefix, PromptPart(user_content(item), trusted=False), self._suffix), bos=self._bos)


class PromptTokenizer:
    """Token ids for a prompt, with control tokens recognised only in trusted text.

        trusted text -> split at the tokenizer's added tokens (these become ids)
        everything between them, student text included -> one run tokenized with
        ``split_special_tokens=True``

    Joining the non-token text into runs reproduces what tokenizing the whole
    string does for ordinary text (Hugging Face tokenizers also split at
    added tokens first), so benign prompts get the training-time ids.

    In front: for a prompt that needs BOS, the tokenizer's BOS id exactly once
    (never what the post-processor happens to add); otherwise what the
    tokenizer itself adds, unless the template text already starts with BOS.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self._tokenizer = tokenizer
        self._added_ids: dict[str, int] = dict(tokenizer.get_added_vocab())
        # Longest first, so a token that contains another one wins.
        added = sorted(self._added_ids, key=len, reverse=True)
        self._added_re = re.compile("(" + "|".join(map(re.escape, added)) + ")") if added else None
        # Tokens the tokenizer itself puts in front (BOS for the hub Gemma
        # tokenizers, none for a converted Gemma GGUF or SmolLM2).
        self._leading_ids: list[int] = list(tokenizer("", add_special_tokens=True)["input_ids"])
        bos_id = tokenizer.bos_token_id
        self._bos_id: int | None = bos_id if isinstance(bos_id, int) else None

    @property
    def bos_id(self) -> int | None:
        return self._bos_id

    def encode(self, prompt: Prompt) -> list[int]:
        ids = self._encode_parts(prompt)
        if prompt.bos:
            if self._bos_id is None:
                raise ValueError("this prompt format starts with BOS, and the tokenizer has no BOS token")
            # Template text may already hold <bos> as its first token; one is enough.
            return ids if ids[:1] == [self._bos_id] else [self._bos_id, *ids]
        return self._leading_ids_for(prompt.text) + ids

    def _encode_parts(self, prompt: Prompt) -> list[int]:
        ids: list[int] = []
        run: list[str] = []
        for piece, is_token in self._pieces(prompt.parts):
            if is_token:
                ids.extend(self._encode_text("".join(run)))
                run.clear()
                ids.append(self._added_ids[piece])
            else:
                run.append(piece)
        ids.extend(self._encode_text("".join(run)))
        return ids

    def _leading_ids_for(self, text: str) -> list[int]:
        # A chat template that writes BOS itself must not get a second one.
        bos = self._tokenizer.bos_token
        if bos and text.startswith(bos):
            return []
        return list(self._leading_ids)

    def _pieces(self, parts: Sequence[PromptPart]) -> list[tuple[str, bool]]:
        pieces: list[tuple[str, bool]] = []
        for part in parts:
            if not part.trusted or self._added_re is None:
                pieces.append((part.text, False))
                continue
            for index, chunk in enumerate(self._added_re.split(part.text)):
                if chunk:
                    pieces.append((chunk, index % 2 == 1))
        return pieces

    def _encode_text(self, text: str) -> list[int]:
        if not text:
            return []
        return list(self._tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
