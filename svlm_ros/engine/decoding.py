"""Choosing the next token: greedy, or sampled (temperature, top-k, top-p, repetition penalty).

Built on transformers' own logits processors so the numbers match ``generate``, and set up the
way StreamingVLM's inference calls it: ``generate(do_sample=True, temperature=0.9,
repetition_penalty=1.05)``, everything else (top-k, top-p) from the checkpoint's
``generation_config.json``, and transformers' defaults (top-k 50, top-p 1.0) where that file
is silent (``SamplingConfig.resolved``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

#: What ``generate`` uses where neither the call nor the checkpoint sets it.
TRANSFORMERS_DEFAULT_TOP_K = 50
TRANSFORMERS_DEFAULT_TOP_P = 1.0


@dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings. ``temperature == 0`` means greedy (deterministic).

    StreamingVLM narrates with temperature 0.9 and repetition penalty 1.05. ``top_k`` and
    ``top_p`` left at None come from the checkpoint's generation config (``resolved``);
    ``top_k`` 0 and ``top_p`` 1.0 switch them off.
    """

    temperature: float = 0.9
    top_p: float | None = None
    repetition_penalty: float = 1.05
    seed: int = 0
    top_k: int | None = None

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {self.top_k}")
        if self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def resolved(self, generation_config=None) -> SamplingConfig:
        """These settings with ``top_k``/``top_p`` filled as ``generate`` would fill them:
        from ``generation_config`` (a model's ``generation_config``) where it sets them, else
        transformers' defaults."""

        def from_checkpoint(name: str, default):
            value = getattr(generation_config, name, None) if generation_config else None
            return default if value is None else value

        return replace(
            self,
            top_k=int(self.top_k if self.top_k is not None
                      else from_checkpoint("top_k", TRANSFORMERS_DEFAULT_TOP_K)),
            top_p=float(self.top_p if self.top_p is not None
                        else from_checkpoint("top_p", TRANSFORMERS_DEFAULT_TOP_P)),
        )


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
        config = config.resolved()
        self.config = config
        if not config.greedy:
            processors.append(TemperatureLogitsWarper(config.temperature))
            if config.top_k > 0:
                processors.append(TopKLogitsWarper(config.top_k))
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
