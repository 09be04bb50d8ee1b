"""The StreamingVLM conversation format, as token ids.

One round per second of stream: a user turn with the time text (``Time=12.0-13.0s``) and that
second's frames as one video block, then the assistant's words, which end with the `` ...``
marker (a silent second is just ``\\n ...``). The first round is preceded by the sink: the system
prompt and the task instruction, which stay in the cache forever.

Pieces are tokenized separately and concatenated, so every round's ids are independent of what
came before; the chat framing is Qwen's (``<|im_start|>role\\n ... <|im_end|>\\n``).
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SYSTEM_PROMPT = (
    "You are the eyes of a robot. You watch its camera live and say what is happening, "
    "briefly, as it happens."
)
DEFAULT_INSTRUCTION = "Narrate what happens in front of the camera."
END_MARKER = " ..."

VIDEO_PAD = "<|video_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


def time_text(start: float, end: float) -> str:
    """The per-round time stamp, e.g. ``Time=12.0-13.0s``."""
    return f"Time={start:.1f}-{end:.1f}s"


def clean_narration(text: str) -> str:
    """Strip the end-of-second marker and whitespace; an empty result means a silent second."""
    text = text.strip()
    while text.endswith(END_MARKER.strip()):
        text = text[: -len(END_MARKER.strip())].rstrip()
    return text


@dataclass(frozen=True)
class PromptFormat:
    """Builds the token ids of every piece of the stream for one tokenizer."""

    tokenizer: object
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    instruction: str = DEFAULT_INSTRUCTION

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
        names = (VIDEO_PAD, VISION_START, VISION_END, IM_START, "<|image_pad|>", "<|vision_pad|>",
                 "<|endoftext|>")
        ids = (self.tokenizer.convert_tokens_to_ids(name) for name in names)
        return [int(i) for i in ids if i is not None and i != self.tokenizer.unk_token_id]

    def sink_ids(self) -> list[int]:
        """System prompt and the opening of the first user turn with the instruction."""
        return (
            self.encode(f"{IM_START}system\n")
            + self.encode_plain(self.system_prompt)
            + self.encode(f"{IM_END}\n{IM_START}user\n")
            + self.encode_plain(f"{self.instruction}\n")
        )

    def encode_time(self, start: float, end: float) -> list[int]:
        """Token ids of a round's time stamp (see ``time_text``)."""
        return self.encode(time_text(start, end))

    def close_ids(self) -> list[int]:
        """Ends an assistant turn."""
        return self.encode(f"{IM_END}\n")

    def question_ids(self, question: str) -> list[int]:
        """A user question as its own turn, followed by the assistant header."""
        return (
            self.encode(f"{IM_START}user\n")
            + self.encode_plain(question)
            + self.encode(f"{IM_END}\n{IM_START}assistant\n")
        )
