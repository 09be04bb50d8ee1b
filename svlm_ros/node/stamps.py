"""Conversions between ``builtin_interfaces/Time`` and float seconds."""

from __future__ import annotations

from builtin_interfaces.msg import Time


def stamp_to_seconds(stamp: Time) -> float:
    """``builtin_interfaces/Time`` to float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def seconds_to_stamp(seconds: float) -> Time:
    """Float seconds (>= 0) to ``builtin_interfaces/Time``, rounded to the nanosecond."""
    nanoseconds = max(0, round(seconds * 1e9))
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)
