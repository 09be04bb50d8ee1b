"""Lost frames between camera and narrator: measured from the stamps alone (plain Python).

A camera stamps its frames at a steady rate. Consecutive frames that arrived with stamps two
intervals apart mean one frame in between was lost on the way (middleware, network, a full
subscription queue). So, over the newest ``window`` arrivals:

* the camera's interval is the median of the stamp differences close to their 10th
  percentile (those between two frames that both arrived; robust to lost frames and jitter),
  and ``stamp_rate`` = 1 / interval is the rate the stamps imply;
* each difference ``d`` stands for ``round(d / interval)`` frames published, of which one
  arrived; ``lost_fraction`` = 1 - arrived / published;
* a difference longer than ``STALL_SECONDS`` is a stall (the camera stopped), not loss, and is
  left out, while such gaps are rare (one, or at most ``STALL_SHARE`` of the differences).
  Gaps that keep coming are the frames arriving sparsely: nearly all lost (a 900 KB raw
  image through Fast DDS's default segment can lose 99 %, every gap then seconds long), or a
  camera that publishes slowly. They all count, so the worst loss is not mistaken for stalls;
* ``received_rate`` = ``stamp_rate`` x (1 - ``lost_fraction``): frames per second of camera
  time that reached the node.

Everything is in camera time, so a bag replayed at any speed or simulated time reads the same.
``explain`` turns the figures into a warning that names the likely cause and the fixes.

Nearly all frames lost gives no estimate at all (fewer than ``MIN_SAMPLES`` arrivals): a
640x480 rgb8 camera through Fast DDS's default segment was measured delivering 0 or 1 frames
in 40 s. ``StarvationWatch`` reports that case from the publisher count: a camera matched for
``STARVED_SECONDS`` that delivered fewer frames than an estimate needs.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

#: Stamp differences longer than this (s) are stalls, not lost frames.
STALL_SECONDS = 3.0
#: Long gaps are stalls while at most this share of the differences (and a single one always
#: is); more of them are sparse arrivals and count as loss (or set a slow camera's rate).
STALL_SHARE = 0.1
#: Fewer stamp differences than this give no estimate.
MIN_SAMPLES = 5
#: Loss above this fraction is reported as a warning.
WARN_LOST_FRACTION = 0.2
#: Fast DDS's default shared-memory segment (bytes): larger best-effort messages are mostly
#: lost between processes on one host.
FASTDDS_DEFAULT_SEGMENT_BYTES = 512 * 1024


@dataclass(frozen=True)
class ArrivalFigures:
    """What the stamps say about arrival (NaN while there are too few frames).

    Attributes:
        stamp_rate: Frames per second the camera publishes, from the stamp spacing.
        received_rate: Frames per second of camera time that arrived.
        lost_fraction: Share of published frames that never arrived, in [0, 1].
        message_bytes: Size of the newest message's image data.
    """

    stamp_rate: float
    received_rate: float
    lost_fraction: float
    message_bytes: int


class ArrivalMonitor:
    """Keeps the newest stamps of one camera and estimates the frames lost in transport.

    Args:
        window: Stamp differences kept.
    """

    def __init__(self, window: int = 120) -> None:
        if window < MIN_SAMPLES:
            raise ValueError(f"window must be >= {MIN_SAMPLES}, got {window}")
        self._lock = threading.Lock()
        self._differences: deque[float] = deque(maxlen=window)
        self._last_stamp: float | None = None
        self._message_bytes = 0

    def record(self, stamp: float, message_bytes: int) -> None:
        """One message arrived with header stamp ``stamp`` (s) and ``message_bytes`` of data."""
        if not math.isfinite(stamp):
            return
        with self._lock:
            self._message_bytes = int(message_bytes)
            if self._last_stamp is not None and stamp > self._last_stamp:
                self._differences.append(stamp - self._last_stamp)
            # A stamp going back (clock restart) starts the differences over from it.
            self._last_stamp = stamp

    def figures(self) -> ArrivalFigures:
        """The estimate over the window."""
        with self._lock:
            differences = list(self._differences)
            message_bytes = self._message_bytes
        stalls = sum(d > STALL_SECONDS for d in differences)
        if stalls <= max(1, STALL_SHARE * len(differences)):
            differences = [d for d in differences if d <= STALL_SECONDS]
        if len(differences) < MIN_SAMPLES:
            return ArrivalFigures(math.nan, math.nan, math.nan, message_bytes)
        ordered = sorted(differences)
        # A low percentile is a spacing between two frames that both arrived; the median of
        # the spacings near it is the camera's interval, free of the stamps' jitter.
        low = ordered[len(ordered) // 10]
        single = [d for d in ordered if d < 1.5 * low]
        interval = single[len(single) // 2]
        published = sum(max(1, round(d / interval)) for d in differences)
        lost = 1.0 - len(differences) / published
        stamp_rate = 1.0 / interval
        return ArrivalFigures(stamp_rate, stamp_rate * (1.0 - lost), lost, message_bytes)


#: Where Fast DDS looks for an XML profile: FASTRTPS_DEFAULT_PROFILES_FILE up to Fast DDS 2.x
#: (Humble, Jazzy), FASTDDS_DEFAULT_PROFILES_FILE from 3.0 (Kilted). Each release ignores the
#: other's name, so a profile meant to work on every distro is given under both.
PROFILE_VARIABLES = ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE")
#: The fix for raw images larger than Fast DDS's default segment, said by both warnings.
PROFILE_FIX = ("start the camera with FASTDDS_DEFAULT_PROFILES_FILE (Kilted) or "
               "FASTRTPS_DEFAULT_PROFILES_FILE (Humble, Jazzy) set to svlm_ros's "
               "config/fastdds_large_images.xml")


def with_profile(environment: dict[str, str], profile: str) -> dict[str, str]:
    """``environment`` with the Fast DDS profile ``profile`` set for every distro."""
    return dict(environment, **dict.fromkeys(PROFILE_VARIABLES, profile))


def without_profile(environment: Mapping[str, str]) -> dict[str, str]:
    """``environment`` with no Fast DDS profile variable."""
    return {k: v for k, v in environment.items() if k not in PROFILE_VARIABLES}
#: A publisher matched this long with too few frames for an estimate is reported (s).
STARVED_SECONDS = 10.0


class StarvationWatch:
    """Notices a camera topic with a publisher whose frames (nearly) never arrive."""

    def __init__(self) -> None:
        self._since: float | None = None  # when a publisher was first seen, monotonic
        self._received_then = 0

    def check(self, publishers: int, received: int, now: float, *, transport: str) -> str:
        """A warning when ``publishers`` > 0 for ``STARVED_SECONDS`` and fewer than
        ``MIN_SAMPLES`` + 1 of the ``received`` frames (a running count) came in that time;
        '' otherwise (and the watch starts over when the publishers go or frames flow)."""
        if publishers <= 0:
            self._since = None
            return ""
        if self._since is None:
            self._since, self._received_then = now, received
            return ""
        arrived = received - self._received_then
        if arrived > MIN_SAMPLES:
            self._since, self._received_then = now, received  # flowing: watch from here
            return ""
        waited = now - self._since
        if waited < STARVED_SECONDS:
            return ""
        fixes = (
            "Likely cause: raw images larger than Fast DDS's default 512 KB shared-memory "
            f"segment (a 640x480 rgb8 frame is 900 KB). Fixes: {PROFILE_FIX}; or publish and "
            "subscribe compressed (image_transports: compressed)"
            if transport == "raw" else
            "Likely cause: a QoS or network problem between camera and narrator. Fixes: check "
            "the camera's QoS (ros2 topic info -v) and the network"
        )  # fmt: skip
        return (f"frames lost in transport: {publishers} publisher(s) matched for "
                f"{waited:.0f} s but {arrived} frame(s) arrived (lost before the node, or the "
                f"camera publishes nothing). {fixes}")


def explain(figures: ArrivalFigures, *, transport: str, reliability: str) -> str:
    """A warning naming the likely cause of lost frames and the fixes; '' when none are lost.

    Args:
        figures: The camera's arrival figures.
        transport: ``raw`` or ``compressed``.
        reliability: The ``qos_reliability`` parameter (``auto``, ``best_effort`` or
            ``reliable``); only a forced ``best_effort`` gets the hint to subscribe reliable
            (``auto`` already does where the camera offers it).
    """
    if not figures.lost_fraction > WARN_LOST_FRACTION:  # also false for NaN
        return ""
    head = (
        f"frames lost in transport: {figures.received_rate:.1f} of {figures.stamp_rate:.1f} "
        f"frames/s arrive ({figures.lost_fraction:.0%} lost before the node)"
    )
    reliable_hint = (
        "; or, if the camera publishes reliable, qos_reliability: reliable here"
        if reliability == "best_effort" else ""
    )  # fmt: skip
    if transport == "raw" and figures.message_bytes > FASTDDS_DEFAULT_SEGMENT_BYTES:
        # Measured (README, transport table): the publisher's profile, reliable QoS on both
        # sides and compressed images each bring arrival back to 94-100 %; the profile on the
        # narrator's side alone does not.
        return (
            f"{head}. Likely cause: {figures.message_bytes // 1024} KB images are larger than "
            "Fast DDS's default 512 KB shared-memory segment (the publisher's segment counts). "
            f"Fixes: {PROFILE_FIX} (in the narrator alone it does not help)"
            f"{reliable_hint}; or publish and subscribe compressed (image_transports: "
            "compressed)"
        )
    return (
        f"{head}. Likely cause: a busy network or CPU, or a shallow queue. Fixes: compressed "
        f"or smaller images; a deeper qos_depth{reliable_hint}; fewer processes on a busy CPU"
    )
