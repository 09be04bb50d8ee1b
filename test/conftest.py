"""Fixtures and options shared by every test folder; nothing here needs ROS.

``test/engine`` (engine, image conversion, pip build) runs on a machine without ROS, e.g. a
training box; ``test/node`` (rclpy, real DDS, the installed node) has its own conftest.
Slow tests (marked ``slow``) are deselected unless ``--run-slow`` or a ``-m`` expression
is given.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", help="also run tests marked slow (tiny-model e2e)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Qwen2.5-VL checkpoint directory (svlm-make-tiny), made once per test session."""
    from svlm_ros.engine.tiny_model import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny_model") / "tiny")
