"""Choosing the next token: greedy, or sampled with temperature, top-p and repetition penalty.

Built on transformers' own logits processors so the numbers match ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings. ``temperature == 0`` means greedy (deterministic).

    StreamingVLM narrates with temperature 0.9 and repetition penalty 1.05.
    """

    temperature: float = 0.9
    top_p: float = 1.0
    repetition_penalty: float = 1.05
    seed: int = 0

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


class TokenChooser:
    """Picks tokens for one stream; owns the random generator so a seed reproduces a stream."""

    def __init__(self, config: SamplingConfig, device: torch.device,
                 banned_ids: list[int] | tuple[int, ...] = ()):
        self.config = config
        self.device = device
        # Vision placeholders and turn openers must never be generated: a generated video pad
        # would be taken for a video block by position bookkeeping and by the model itself.
        self.banned_ids = torch.tensor(sorted(set(banned_ids)), dtype=torch.long, device=device)
        processors = LogitsProcessorList()
        if config.repetition_penalty != 1.0:
            processors.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
        if not config.greedy:
            processors.append(TemperatureLogitsWarper(config.temperature))
            if config.top_p < 1.0:
                processors.append(TopPLogitsWarper(config.top_p))
        self.processors = processors
        self.reseed()

    def reseed(self) -> None:
        """Restart the random sequence from the configured seed."""
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.config.seed)

    def choose(self, logits: torch.Tensor, context_ids: torch.Tensor) -> int:
        """Next token from ``(vocab,)`` logits, with ``context_ids`` ``(n,)`` for the penalty."""
        scores = logits.float()[None, :].clone()
        if self.banned_ids.numel():
            scores[0, self.banned_ids] = float("-inf")
        scores = self.processors(context_ids[None, :].to(logits.device), scores)
        if self.config.greedy:
            return int(scores.argmax(dim=-1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
