"""When an assistant turn ends: the one stop rule of narration and answers.

StreamingVLM's inference calls ``generate`` with ``max_new_tokens=20``: a turn ends when the
model produces ``<|im_end|>`` or another end-of-sequence id of the checkpoint's generation
config (Qwen2.5-VL's lists ``<|endoftext|>``), or after 20 new tokens, ``<|im_end|>``
counted; a turn that did not end with ``<|im_end|>`` gets one appended. An answer to a question
also ends at the newline that separates it from the second's narration.

Every decode loop (host, device, batched cameras) asks ``StopRule.decide`` about each chosen
token and nothing else decides.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum


class Decision(Enum):
    """What a chosen token does to its turn."""

    CONTINUE = "continue"  #: part of the text; decode on
    LAST = "last"  #: part of the text, and the turn ends after it
    END = "end"  #: the turn's ``<|im_end|>``: not text, the turn ends


@dataclass(frozen=True)
class StopRule:
    """The stop rule for one kind of turn.

    Attributes:
        budget: Most new tokens, the model's own ``<|im_end|>`` included.
        end_of_turn_id: ``<|im_end|>``.
        end_ids: Other ids that end a turn and stay in its text (the generation config's
            end-of-sequence ids besides ``<|im_end|>``, e.g. ``<|endoftext|>``).
        newline_ids: Ids whose text holds a newline: they end an answer (empty for narration).
    """

    budget: int
    end_of_turn_id: int
    end_ids: frozenset[int] = frozenset()
    newline_ids: frozenset[int] = frozenset()

    def __post_init__(self):
        if self.budget < 1:
            raise ValueError(f"a turn's token budget must be >= 1, got {self.budget}")

    def decide(self, text_tokens: int, token: int) -> Decision:
        """The fate of ``token``, chosen after ``text_tokens`` tokens of this turn's text."""
        if token == self.end_of_turn_id:
            return Decision.END
        if token in self.end_ids or text_tokens + 1 >= self.budget:
            return Decision.LAST
        if token in self.newline_ids and text_tokens > 0:
            return Decision.LAST
        return Decision.CONTINUE


#: The byte-level BPE's stand-in character for the newline byte (GPT-2's byte table).
_BYTE_LEVEL_NEWLINE = "\u010a"


def newline_token_ids(tokenizer) -> frozenset[int]:
    """Ids of the tokens whose text contains a newline (for answers' stop rule), read from a
    byte-level BPE vocabulary (Qwen's, and the tiny models')."""
    return frozenset(token_id for token, token_id in tokenizer.get_vocab().items()
                     if _BYTE_LEVEL_NEWLINE in token)


def end_ids_from(generation_config, end_of_turn_id: int, never: Collection[int]) -> frozenset:
    """The checkpoint's end-of-sequence ids besides ``<|im_end|>`` (and besides ids that are
    never generated)."""
    eos = getattr(generation_config, "eos_token_id", None) if generation_config else None
    if eos is None:
        return frozenset()
    ids = {int(eos)} if isinstance(eos, int) else {int(i) for i in eos}
    return frozenset(ids - {end_of_turn_id} - set(never))
