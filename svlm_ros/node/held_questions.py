"""Questions held for a camera's next round: asks in the format StreamingVLM was trained on.

StreamingVLM's training data puts a question inside a second's user turn, after its time text
and before its video (``Time=a-bs {question}<|vision_start|>...``), and the answer first in
that second's assistant text, the narration after it. With ``ask_mode: inline`` (the default)
the ask service therefore does not answer from the cache at once: it holds the question here
(``hold``), the narration worker gives it to the camera's next round (``take``), and the round's
answer comes back through the future while its narration is published as usual.

An ask falls back to an answer between rounds (``ask_mode: between``: a turn of its own,
without video, the stream left as it was) when no round takes it within ``ask_round_wait``
seconds (a camera without frames: ``withdraw``), or when the camera's cache still holds an
earlier question in its vision window (it has room for one).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from svlm_ros.node.worker_jobs import JobRefused

ASK_MODES = ("inline", "between")

#: The rows of ``parameters.PARAMETERS`` for how asks reach the model.
ASK_PARAMETERS: tuple[tuple[str, Any, str, dict[str, Any]], ...] = (
    ("ask_mode", "inline", "How ask puts a question to the model. inline (the checkpoint's "
     "format): held for the camera's next round, after that second's time text and before its "
     "video; the answer is what the round says first, and its narration is published as usual "
     "(answered between rounds when an earlier question is still in the vision window). "
     "between: answered at once from the memory in a turn of its own, without video (the "
     "stream is left as it was).", {"choices": ASK_MODES}),
    ("ask_round_wait", 3.0, "With ask_mode inline: seconds an ask waits for its camera's next "
     "round before it is answered between rounds instead (e.g. the camera sends no frames).",
     {"minimum": 0.1, "maximum": 60.0}),
)


@dataclass
class HeldQuestion:
    """A question waiting for a camera's next round, and where its answer goes."""

    question: str
    future: Future = field(default_factory=Future)
    #: Its length in tokens, counted when a round takes it.
    question_tokens: int = 0


class HeldQuestions:
    """At most one held question per camera (the ask service serves one ask at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, HeldQuestion] = {}

    def __len__(self) -> int:
        """Questions held now."""
        with self._lock:
            return len(self._held)

    def hold(self, camera: str, question: str) -> Future:
        """Hold ``question`` for ``camera``'s next round; the future gets its ``Answer`` (or
        the error). A question still held for that camera is refused in favour of this one."""
        held = HeldQuestion(question)
        with self._lock:
            previous, self._held[camera] = self._held.get(camera), held
        if previous is not None and previous.future.set_running_or_notify_cancel():
            previous.future.set_exception(JobRefused("a newer question replaced it"))
        return held.future

    def take(self, camera: str) -> HeldQuestion | None:
        """The question held for ``camera``, now taken by its round (worker thread), or None
        (none held, or withdrawn by its asker)."""
        with self._lock:
            held = self._held.pop(camera, None)
        if held is None or not held.future.set_running_or_notify_cancel():
            return None
        return held

    def withdraw(self, camera: str, future: Future) -> bool:
        """Take back a question no round has taken yet; False when a round already has it
        (its answer is coming)."""
        with self._lock:
            if self._held.get(camera) is not None and self._held[camera].future is future:
                del self._held[camera]
        return future.cancel()

    def refuse_all(self, reason: str) -> None:
        """Refuse every held question with ``reason`` (deactivated, stopping)."""
        with self._lock:
            held, self._held = list(self._held.values()), {}
        for question in held:
            if question.future.set_running_or_notify_cancel():
                question.future.set_exception(JobRefused(reason))
