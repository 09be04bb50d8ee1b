"""Fixtures and options shared by every test folder; nothing here needs ROS.

``test/engine`` (engine, image conversion, pip build) runs on a machine without ROS, e.g. a
training box; ``test/node`` (rclpy, real DDS, the installed node) has its own conftest.
Slow tests (marked ``slow``) are deselected unless ``--run-slow`` or a ``-m`` expression
is given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


@pytest.fixture(scope="session")
def qwen_vocab_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-layer tiny Qwen2.5-VL with the real Qwen2.5-VL tokenizer (``svlm-make-tiny
    --qwen-vocab``: the published ids), made once per test session (about 5 s)."""
    from svlm_ros.engine.tiny_model import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("qwen_vocab") / "tiny", num_layers=1,
                                vocabulary="qwen")



@dataclass(frozen=True)
class InstalledWheel:
    """The repository's wheel installed into ``site`` (``pip install --target``), and an
    environment that sees only it: no ROS variables, no checkout on ``PYTHONPATH``."""

    site: Path
    env: dict[str, str]


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory: pytest.TempPathFactory) -> InstalledWheel:
    """``setup.py``'s wheel, built and installed once per test session (about 20 s)."""
    work = tmp_path_factory.mktemp("wheel")
    wheels, site = work / "wheels", work / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         str(REPO), "-w", str(wheels)],
        check=True, cwd=work,
    )
    (wheel,) = wheels.glob("svlm_ros-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
         str(wheel)],
        check=True, cwd=work,
    )
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AMENT", "COLCON", "ROS", "CMAKE", "PYTHONPATH"))}
    env["PYTHONPATH"] = str(site)
    return InstalledWheel(site, env)
