"""qos_reliability: auto takes what the camera's publishers offer (plain logic)."""

from __future__ import annotations

from types import SimpleNamespace

from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

from svlm_ros.node.qos_matching import (
    BEST_EFFORT,
    RELIABLE,
    TRANSIENT_LOCAL,
    VOLATILE,
    OfferedQos,
    choose_qos,
    offers_from_endpoints,
)


def test_no_publisher_yet_subscribes_best_effort_which_matches_any():
    choice = choose_qos([])
    assert (choice.reliability, choice.durability, choice.publishers) == (BEST_EFFORT,
                                                                         VOLATILE, 0)
    assert "re-checked" in choice.reason


def test_all_reliable_publishers_get_a_reliable_subscription():
    choice = choose_qos([OfferedQos(RELIABLE), OfferedQos(RELIABLE)])
    assert choice.reliability == RELIABLE and choice.durability == VOLATILE
    assert "all 2" in choice.reason


def test_one_best_effort_publisher_makes_the_subscription_best_effort():
    choice = choose_qos([OfferedQos(RELIABLE), OfferedQos(BEST_EFFORT)])
    assert choice.reliability == BEST_EFFORT
    assert "1 of 2" in choice.reason


def test_transient_local_only_when_every_publisher_offers_it():
    assert choose_qos([OfferedQos(RELIABLE, TRANSIENT_LOCAL)]).durability == TRANSIENT_LOCAL
    assert choose_qos([OfferedQos(RELIABLE, TRANSIENT_LOCAL),
                       OfferedQos(RELIABLE, VOLATILE)]).durability == VOLATILE


def test_offers_are_read_from_rclpy_endpoint_profiles():
    endpoints = [
        SimpleNamespace(qos_profile=QoSProfile(depth=10)),  # rclpy's default: reliable
        SimpleNamespace(qos_profile=QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT,
                                               durability=DurabilityPolicy.TRANSIENT_LOCAL)),
    ]
    assert offers_from_endpoints(endpoints) == [OfferedQos(RELIABLE, VOLATILE),
                                                OfferedQos(BEST_EFFORT, TRANSIENT_LOCAL)]
