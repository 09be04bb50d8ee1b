"""Token choice on the model's device: no host round trip except reading the chosen id.

``DeviceTokenChooser`` makes the same choice as ``TokenChooser`` (``decoding.py``, built on
transformers' logits processors, the reference) with the state on the device: the repetition
penalty reads a boolean *seen-token mask* over the vocabulary instead of gathering a list of
context ids that grows by one per token (GPU-FACTS: 0.8 ms per token over 12.9k ids on the host
path), and the chosen id stays a device tensor that is fed straight to the next decode step.

What is guaranteed (and tested): for the same logits, greedy choice is the same token; sampled
choice computes bit-identical probabilities (the same float32 operations in the same order:
banned ids, penalty, temperature, top-k, top-p) and draws with ``torch.multinomial`` from a
generator on the same device seeded the same way, so the same seed gives the same tokens as the
reference, on the same device. Across devices (CPU vs CUDA) random streams differ by design.
"""

from __future__ import annotations

import torch

from svlm_ros.engine.decoding import SamplingConfig


class DeviceTokenChooser:
    """Picks tokens for one stream on ``device``; owns its generator and seen-token mask.

    Args:
        config: Sampling settings (the same dataclass the host chooser takes).
        device: Where logits live and the choice is made.
        vocab_size: Length of the logits vector.
        banned_ids: Ids that are never chosen (vision placeholders, turn openers).
    """

    def __init__(self, config: SamplingConfig, device: torch.device, vocab_size: int,
                 banned_ids: list[int] | tuple[int, ...] = ()):
        self.config = config.resolved()
        self.device = device
        self.vocab_size = vocab_size
        banned = torch.zeros(vocab_size, dtype=torch.bool)
        if banned_ids:
            banned[torch.tensor(sorted(set(banned_ids)), dtype=torch.long)] = True
        self.banned = banned.to(device)
        self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
        self.reseed()

    def reseed(self) -> None:
        """Restart the random sequence from the configured seed."""
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.config.seed)

    def start(self, context_ids: torch.Tensor) -> None:
        """Set the seen-token mask to the ids in ``context_ids`` (once per round or answer)."""
        self.seen.zero_()
        if self.config.repetition_penalty != 1.0 and context_ids.numel():
            # Cached ids are all vocabulary ids (video pads included); index_fill_ needs no
            # host sync, unlike filtering with a boolean mask would.
            ids = context_ids.to(self.device, non_blocking=True).long()
            self.seen.index_fill_(0, ids, True)

    def mark_seen(self, token: torch.Tensor) -> None:
        """Add a chosen (or forced) token to the seen-token mask, on the device."""
        if self.config.repetition_penalty != 1.0:
            self.seen.index_fill_(0, token.reshape(-1), True)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """The processed scores (float32 ``(vocab,)``) that the choice is drawn from."""
        cfg = self.config
        scores = logits.float().masked_fill(self.banned, float("-inf"))
        if cfg.repetition_penalty != 1.0:
            # transformers' RepetitionPenaltyLogitsProcessor: shrink seen scores toward "less
            # likely" (divide positives, multiply negatives) by the penalty.
            penalised = torch.where(scores < 0, scores * cfg.repetition_penalty,
                                    scores / cfg.repetition_penalty)
            scores = torch.where(self.seen, penalised, scores)
        if cfg.greedy:
            return scores
        scores = scores / cfg.temperature
        if 0 < cfg.top_k < scores.numel():
            # transformers' TopKLogitsWarper: keep the scores at least as large as the k-th.
            kth = torch.topk(scores, cfg.top_k).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if cfg.top_p < 1.0:
            # transformers' TopPLogitsWarper: drop the least likely tokens whose cumulative
            # probability (ascending) stays within 1 - top_p; the most likely is always kept.
            sorted_scores, sorted_index = torch.sort(scores, descending=False)
            cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            remove_sorted = cumulative <= (1 - cfg.top_p)
            remove_sorted[-1:] = False
            remove = remove_sorted.scatter(0, sorted_index, remove_sorted)
            scores = scores.masked_fill(remove, float("-inf"))
        return scores

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """Next token from ``(vocab,)`` logits as a ``(1,)`` long tensor on the device.

        The token is also added to the seen-token mask. Nothing here waits for the device.
        """
        scores = self.scores(logits)
        if self.config.greedy:
            token = scores.argmax(dim=-1, keepdim=True)
        else:
            probs = torch.softmax(scores[None, :], dim=-1)
            token = torch.multinomial(probs, 1, generator=self.generator)[0]
        self.mark_seen(token)
        return token
