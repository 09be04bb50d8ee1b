"""The cameras of the node: one ``CameraSpec`` per entry of ``camera_topics``.

Plain Python (no rclpy): names derived from topics, the compressed transport's topic, and the
checks that refuse list lengths that do not match and bad or repeated names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TRANSPORT_CHOICES = ("raw", "compressed")
# Last path parts that name the image rather than the camera: "/front/image_raw" is "front".
_IMAGE_TOPIC_SUFFIXES = frozenset(
    {"image", "image_raw", "image_color", "image_rect", "image_rect_color", "image_mono",
     "compressed"}
)  # fmt: skip
_CAMERA_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class CameraSpec:
    """One camera stream as configured.

    Attributes:
        name: Camera name (messages, ask, status).
        topic: The configured topic.
        transport: ``raw`` or ``compressed``.
        subscription_topic: The topic actually subscribed to (``<topic>/compressed`` for
            compressed transport).
    """

    name: str
    topic: str
    transport: str
    subscription_topic: str


def derive_camera_name(topic: str) -> str:
    """A camera name from its topic: ``/front/image_raw`` -> ``front``, ``image`` -> ``image``.

    Image-like last parts (``image_raw``, ``image_rect_color``, ``compressed``, ...) are dropped
    while something else is left; the remaining parts are joined with ``_``.
    """
    parts = [part for part in topic.strip("/").split("/") if part]
    while len(parts) > 1 and parts[-1] in _IMAGE_TOPIC_SUFFIXES:
        parts.pop()
    return "_".join(parts)


def subscription_topic(topic: str, transport: str) -> str:
    """The topic to subscribe to; image_transport puts compressed images at `<base>/compressed`."""
    if transport == "compressed" and not topic.rstrip("/").endswith("/compressed"):
        return topic.rstrip("/") + "/compressed"
    return topic


def camera_specs(values: Mapping[str, Any]) -> list[CameraSpec]:
    """One ``CameraSpec`` per entry of ``camera_topics``.

    Raises:
        ValueError: empty or repeated topics, list lengths that do not match, or bad or
            repeated camera names.
    """
    topics = list(values["camera_topics"])
    names = list(values["camera_names"])
    transports = list(values["image_transports"])
    if not topics:
        raise ValueError("camera_topics is empty; give at least one image topic")
    if any(not topic.strip() for topic in topics):
        raise ValueError(f"camera_topics has an empty entry: {topics}")
    if len(set(topics)) != len(topics):
        raise ValueError(f"camera_topics lists a topic twice: {topics}")
    if names and len(names) != len(topics):
        raise ValueError(
            f"camera_names has {len(names)} entries for {len(topics)} camera_topics; give one "
            "name per topic or none (names are then derived from the topics)"
        )
    if len(transports) not in (1, len(topics)):
        raise ValueError(
            f"image_transports has {len(transports)} entries for {len(topics)} camera_topics; "
            "give one per topic or a single value for all"
        )
    if len(transports) == 1:
        transports = transports * len(topics)
    for transport in transports:
        if transport not in TRANSPORT_CHOICES:
            raise ValueError(
                f"image_transports entries must be one of {', '.join(TRANSPORT_CHOICES)}; "
                f"got {transport!r}"
            )
    derived = not names
    if derived:
        names = [derive_camera_name(topic) for topic in topics]
    for name in names:
        if not _CAMERA_NAME_PATTERN.match(name):
            raise ValueError(
                f"camera name {name!r} must be non-empty letters, digits, '_', '.' or '-'"
            )
    if len(set(names)) != len(names):
        hint = " (derived from camera_topics; set camera_names)" if derived else ""
        raise ValueError(f"camera names must be unique, got {names}{hint}")
    return [
        CameraSpec(name, topic, transport, subscription_topic(topic, transport))
        for name, topic, transport in zip(names, topics, transports, strict=True)
    ]
