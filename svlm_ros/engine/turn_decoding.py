"""Decoding one assistant turn into a session's cache: on the host, or on the device.

Both loops choose (or, teacher-forced, take) one token at a time, ask the ``StopRule`` what it
does to the turn, and feed every token that continues the turn through the model at the next
position. The last token of the turn is not fed here: it goes in with the turn close
(``StreamingSession.close_round``), in one pass. ``CameraGroup`` runs the same rule over several
sessions at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from svlm_ros.engine.attention import sdpa_kernels
from svlm_ros.engine.stop_rule import Decision, StopRule


@dataclass
class DecodedTurn:
    """What a turn's decode produced.

    Attributes:
        text_ids: The turn's text (an ``<|im_end|>`` the model produced is not text).
        unfed: The tail of ``text_ids`` not yet in the cache (the last token, or nothing when
            the model ended its turn itself).
        chosen_tokens: Tokens chosen, the model's own ``<|im_end|>`` included.
        logits: The logits of every choice, when the session records them.
    """

    text_ids: list[int] = field(default_factory=list)
    unfed: list[int] = field(default_factory=list)
    chosen_tokens: int = 0
    logits: list[torch.Tensor] = field(default_factory=list)

    def take(self, token: int, decision: Decision) -> bool:
        """Account for a chosen token; True when the turn has ended."""
        self.chosen_tokens += 1
        if decision is Decision.END:
            return True
        self.text_ids.append(token)
        if decision is Decision.LAST:
            self.unfed = [token]
            return True
        return False


def _decision(rule: StopRule, turn: DecodedTurn, token: int,
              forced: list[int] | None) -> Decision:
    if forced is not None:
        return Decision.LAST if len(turn.text_ids) + 1 == len(forced) else Decision.CONTINUE
    return rule.decide(len(turn.text_ids), token)


def decode_turn(session, logits: torch.Tensor, rule: StopRule, chooser,
                forced: list[int] | None = None) -> DecodedTurn:
    """Decode a turn from the prompt's last ``logits`` into ``session``'s cache.

    Args:
        session: A ``StreamingSession`` (its cache, policy, layout and decode path).
        logits: ``(vocab,)`` logits after the prompt.
        rule: When the turn ends.
        chooser: A ``TokenChooser`` (eager decode) or ``DeviceTokenChooser``.
        forced: Teacher forcing: take these tokens instead of choosing (the turn's text).

    Raises:
        GenerationInterrupted: ``session.interrupt()`` was called (checked before each token).
    """
    turn = DecodedTurn(logits=[logits.detach().float().cpu()] if session.record_logits else [])
    on_device = session.static_decoder is not None
    if on_device:
        chooser.start(session.policy.token_ids)
    context = session.policy.token_ids
    while True:
        session.check_interrupted()
        if forced is not None:
            token_id = forced[len(turn.text_ids)]
            token = torch.full((1,), token_id, dtype=torch.long, device=session.device)
            if on_device:
                chooser.mark_seen(token)
        elif on_device:
            token = chooser.choose(logits)
            token_id = int(token)  # the one host sync per token
        else:
            token_id = chooser.choose(
                logits, torch.cat([context, torch.tensor(turn.text_ids, dtype=torch.long)]))
        if turn.take(token_id, _decision(rule, turn, token_id, forced)):
            return turn
        rendered = session.layout.render_generated(token_id, session.policy.next_position)
        if on_device:
            position = torch.full((1,), int(rendered.positions[0, 0]), dtype=torch.long,
                                  device=session.device)
            with sdpa_kernels(session.device):
                logits = session.static_decoder.step(token, position)
            session.policy.append(torch.tensor(rendered.ids, dtype=torch.long),
                                  rendered.positions)
        else:
            logits = session.feed(rendered)
        if session.record_logits:
            turn.logits.append(logits.detach().float().cpu())
