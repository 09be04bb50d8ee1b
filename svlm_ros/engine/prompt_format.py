"""The StreamingVLM conversation format (the published checkpoint's), as token ids.

The stream is one chat in Qwen's turn framing (``<|im_start|>role\\n ... <|im_end|>``)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>previous text\\n{previous text}<|im_end|>\\n
    <|im_start|>user\\nTime=0.0-1.0s<|vision_start|>...<|vision_end|>{instruction}<|im_end|>\\n
    <|im_start|>assistant\\n A red circle enters ...<|im_end|>\\n
    <|im_start|>user\\nTime=1.0-2.0s<|vision_start|>...<|vision_end|><|im_end|>\\n
    <|im_start|>assistant\\n ...<|im_end|>\\n
    ...

(line breaks after each ``\\n`` are for reading only). The system turn is Qwen's chat-template
default; the ``previous text`` turn is a role of StreamingVLM's own, where the words of seconds
that left the cache are gathered (before its ``<|im_end|>``); the instruction follows the first
second's video and leaves the cache with that second. Every second's assistant text is its
words, each with its leading space, then the end marker `` ...``; a silent second is `` ...``
alone. A question (training, or a question asked in the stream) follows the time text,
``Time=a-bs {question}``, and its answer comes first in the assistant text, before a newline.

Pieces are tokenized separately and concatenated, so every round's ids are independent of what
came before (with Qwen's vocabulary they equal the whole string tokenized at once: every piece
boundary is a special token or a newline that Qwen's pre-tokenizer splits anyway).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Qwen's chat-template default system prompt, which StreamingVLM's inference and training use.
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
#: The task instruction of StreamingVLM's inference command line (training had none).
DEFAULT_INSTRUCTION = "Commentate on this match"
#: The name of StreamingVLM's own turn that gathers the words of evicted seconds.
PREVIOUS_TEXT_ROLE = "previous text"
END_MARKER = " ..."

VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"


def time_text(start: float, end: float) -> str:
    """The per-round time stamp, e.g. ``Time=12.0-13.0s``."""
    return f"Time={start:.1f}-{end:.1f}s"


def clean_narration(text: str) -> str:
    """Strip the end-of-second marker and whitespace; an empty result means a silent second."""
    text = text.strip()
    while text.endswith(END_MARKER.strip()):
        text = text[: -len(END_MARKER.strip())].rstrip()
    return text


def split_answer(text: str) -> tuple[str, str]:
    """``(answer, narration)`` of an assistant text that answers a question first.

    The answer is everything before the first newline; the rest is the second's narration.
    """
    answer, _newline, rest = text.partition("\n")
    return clean_narration(answer), clean_narration(rest)


def answer_length(tokenizer, text_ids: list[int]) -> int:
    """Tokens of the answer in generated ``text_ids`` that answer first: those up to the
    token holding the first newline, that one counted when it also holds answer text (Qwen's
    ``.\n`` is one token); all of them when there is no newline."""
    for index, token in enumerate(text_ids):
        piece = tokenizer.decode([token])
        if "\n" in piece:
            return index + bool(piece.partition("\n")[0])
    return len(text_ids)


@dataclass(frozen=True)
class PromptFormat:
    """Builds the token ids of every piece of the stream for one tokenizer.

    Args:
        tokenizer: A Qwen2.5-VL tokenizer (its special tokens are required).
        system_prompt: The system turn's text.
        instruction: The task instruction after the first second's video ('' for none).
        previous_text: Text the ``previous text`` turn starts with (a scene description or
            task context; '' for none). It counts toward the text windows.
    """

    tokenizer: object
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    instruction: str = DEFAULT_INSTRUCTION
    previous_text: str = ""

    def encode(self, text: str) -> list[int]:
        """Token ids of format text, whose special-token strings (``<|im_start|>``...) count."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of user-supplied text (prompts, questions): a ``<|im_end|>`` typed by a
        user stays characters and cannot end a turn or open a fake video block."""
        return list(
            self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)
        )

    def token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {token!r} token: not a Qwen2.5-VL tokenizer")
        return int(token_id)

    @property
    def video_pad_id(self) -> int:
        return self.token_id(VIDEO_PAD)

    @property
    def end_of_turn_id(self) -> int:
        return self.token_id(IM_END)

    def never_generated_ids(self) -> list[int]:
        """Special tokens the model must not produce (vision placeholders, turn openers)."""
        names = (VIDEO_PAD, VISION_START, VISION_END, IM_START, "<|image_pad|>", "<|vision_pad|>")
        ids = (self.tokenizer.convert_tokens_to_ids(name) for name in names)
        return [int(i) for i in ids if i is not None and i != self.tokenizer.unk_token_id]

    def end_of_text_id(self) -> int | None:
        token_id = self.tokenizer.convert_tokens_to_ids(END_OF_TEXT)
        return None if token_id in (None, self.tokenizer.unk_token_id) else int(token_id)

    # ----- the sink: system turn and the previous-text turn ---------------------------------
    def sink_ids(self) -> list[int]:
        """The system turn and the opening of the ``previous text`` turn (never evicted)."""
        return (
            self.encode(f"{IM_START}system\n")
            + self.encode_plain(self.system_prompt)
            + self.encode(f"{IM_END}\n{IM_START}{PREVIOUS_TEXT_ROLE}\n")
        )

    def initial_previous_text_ids(self) -> list[int]:
        """What the ``previous text`` turn holds before any second has left the cache."""
        return self.encode_plain(self.previous_text) if self.previous_text else []

    def previous_text_close_ids(self) -> list[int]:
        """Ends the ``previous text`` turn (moved words go before it)."""
        return self.encode(f"{IM_END}\n")

    # ----- rounds -----------------------------------------------------------------------------
    def user_open_ids(self) -> list[int]:
        return self.encode(f"{IM_START}user\n")

    def encode_time(self, start: float, end: float) -> list[int]:
        """Token ids of a round's time stamp (see ``time_text``)."""
        return self.encode(time_text(start, end))

    def question_ids(self, question: str) -> list[int]:
        """A question as it follows the time text: a space, then the question."""
        return self.encode_plain(f" {question}")

    def instruction_ids(self) -> list[int]:
        """The instruction as it follows the first second's video."""
        return self.encode_plain(self.instruction) if self.instruction else []

    def assistant_header_ids(self) -> list[int]:
        """Closes the user turn and opens the assistant's."""
        return self.encode(f"{IM_END}\n{IM_START}assistant\n")

    def close_ids(self) -> list[int]:
        """Ends an assistant turn (the newline is the separator before the next turn)."""
        return self.encode(f"{IM_END}\n")

    def end_marker_ids(self) -> list[int]:
        """The end-of-second marker `` ...`` (one token with Qwen's vocabulary)."""
        return self.encode_plain(END_MARKER)

    def narration_ids(self, words: str, answer: str = "") -> list[int]:
        """The assistant ids of one second as trained: ``[answer\\n] words ...``.

        ``words`` get their leading space (each word keeps one); '' is a silent second.
        """
        words = " ".join(words.split())
        text = (f"{answer.strip()}\n" if answer.strip() else "")
        text += (f" {words}" if words else "") + END_MARKER
        return self.encode_plain(text)
