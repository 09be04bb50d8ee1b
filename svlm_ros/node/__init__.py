"""The narrator node: rclpy here, the streaming engine (``svlm_ros.engine``) underneath.

One concern per file:

- ``narrator``: the ``NarratorNode`` (a ``LifecycleNode``): parameter declaration and
  on-set checks, lifecycle transitions, wiring of the parts below; ``main`` (the ``narrator``
  executable).
- ``streams``: the loaded model, one engine session per camera (``CameraStream``), the model
  lock and the active flag, shared by the parts (plain Python, no rclpy).
- ``camera_intake``: image subscriptions; frames converted and offered to the streams.
- ``narration_worker``: the thread that runs rounds and publishes ``narration`` and
  ``narration_text``.
- ``ask_service``: the ``ask`` service and the ``answer`` topic.
- ``status_reporter``: ``status`` and ``/diagnostics``.
- ``parameters``: the one table of parameters, their checks, the engine config they make
  (plain Python).
- ``stream_stats``: per-camera counters and latency windows (plain Python).
- ``fair_lock``: the first-come-first-served lock of the model.
- ``stamps``: ``builtin_interfaces/Time`` to and from seconds.
- ``transport_monitor``: frames lost before the node, estimated from the stamps, and the
  warning that explains them (plain Python).
- ``exit_watchdog``: the deadline on the process's exit once shutdown starts (plain Python).
- ``ask_client``: the ``svlm-ask`` command.
- ``sim_camera`` and ``demo_monitor``: the demo's simulated camera node and its monitor
  (``scripts/demo.sh``).

Importing this package imports nothing; import the modules you need.
"""
