"""Runnable micro-benchmarks (``python -m svlm_ros.benchmarks.<name>``); not imported by nodes."""
