"""Choosing an image subscription's QoS to match what the camera's publishers offer.

A reliable subscription never receives from a best-effort publisher, and a best-effort one
receives from a reliable publisher but, under load, loses much of what a reliable pair would
deliver (measured: a raw 640x480 camera at 30 Hz with rclpy's default reliable QoS got 94 % of
its frames lost to a best-effort narrator, 4 % with both reliable). ``ros2 bag record`` avoids
this by taking the QoS its publishers offer; ``qos_reliability: auto`` does the same:

- every publisher reliable: reliable (it matches them all, and gets their retransmissions);
- any publisher best effort: best effort (the only setting that matches every publisher);
- no publisher yet: best effort (it matches whatever comes), re-checked when one appears.

Durability: transient local only when every publisher offers it (a transient-local
subscription does not match a volatile publisher); volatile otherwise.

Plain Python: the node passes what ``get_publishers_info_by_topic`` reports, reduced to names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

BEST_EFFORT = "best_effort"
RELIABLE = "reliable"
VOLATILE = "volatile"
TRANSIENT_LOCAL = "transient_local"


@dataclass(frozen=True)
class OfferedQos:
    """One publisher's offer, as plain names (``reliable``/``best_effort``,
    ``volatile``/``transient_local``)."""

    reliability: str
    durability: str = VOLATILE


@dataclass(frozen=True)
class QosChoice:
    """What to subscribe with, and why (for status, ``/diagnostics`` and the log)."""

    reliability: str
    durability: str
    publishers: int
    reason: str


def choose_qos(offers: Sequence[OfferedQos]) -> QosChoice:
    """The subscription QoS that matches every publisher in ``offers`` and loses least."""
    if not offers:
        return QosChoice(BEST_EFFORT, VOLATILE, 0,
                         "no publisher yet: best effort matches any; re-checked when one appears")
    count = len(offers)
    best_effort = sum(offer.reliability != RELIABLE for offer in offers)
    if best_effort:
        reliability = BEST_EFFORT
        reason = (f"{best_effort} of {count} publisher(s) best effort: only best effort "
                  "matches them")
    else:
        reliability = RELIABLE
        reason = f"all {count} publisher(s) reliable: reliable, as they offer"
    transient = all(offer.durability == TRANSIENT_LOCAL for offer in offers)
    durability = TRANSIENT_LOCAL if transient else VOLATILE
    return QosChoice(reliability, durability, count, reason)


def offers_from_endpoints(endpoints) -> list[OfferedQos]:
    """``OfferedQos`` of rclpy ``TopicEndpointInfo`` items (``get_publishers_info_by_topic``)."""
    offers = []
    for endpoint in endpoints:
        profile = endpoint.qos_profile
        reliability = getattr(profile.reliability, "name", str(profile.reliability)).lower()
        durability = getattr(profile.durability, "name", str(profile.durability)).lower()
        offers.append(OfferedQos(RELIABLE if reliability == RELIABLE else BEST_EFFORT,
                                 TRANSIENT_LOCAL if durability == TRANSIENT_LOCAL
                                 else VOLATILE))
    return offers
