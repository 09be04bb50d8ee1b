"""Supervised fine-tuning of the streaming narrator from recorded rosbags (no ROS needed).

One concept per module:

- ``bag_reading``: open rosbag2 bags (sqlite3 or mcap, split or not) with ``rosbags``; images
  and text messages with their stamps; bad bags become ``BagError``.
- ``alignment``: frames -> whole seconds with the engine's ``FrameSampler``; text -> seconds.
- ``dataset_format``: the on-disk dataset (Arrow IPC, memory-mapped) and its manifest.
- ``bag2dataset``: the ``svlm-bag2dataset`` command.
- ``chunking``: overlapping chunks of seconds, rendered with the engine's ``RoundLayout`` to
  ids, 3-D positions, vision inputs and loss labels.
- ``train_config``: the typed training configuration saved beside every checkpoint.
- ``distributed``: torchrun / DDP setup (one process when not launched by torchrun).
- ``trainer``: the ``svlm-train`` command (the training loop, checkpoints, resume).
- ``export``: a trained checkpoint (LoRA merged) -> a model directory the engine loads.
- ``scoring``: chrF and silence agreement of a transcript against reference text.
- ``evaluation``: the ``svlm-eval`` command (a bag replayed through ``StreamingSession``).
- ``plots``: the PNG figures (loss curve, evaluation over stream time).

Nothing here imports rclpy.
"""

__all__: list[str] = []
