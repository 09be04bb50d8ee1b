"""``svlm-train`` under torchrun, saving every rank's trained weights at the end.

Usage: ``python -m torch.distributed.run --nproc_per_node=2 ddp_worker.py DUMP_DIR <svlm-train
flags>``. Each rank writes ``DUMP_DIR/rank<R>.safetensors`` through ``train``'s ``on_finish``
hook, so the test can check that the ranks end with identical weights. An FSDP run's weights are
gathered first, and only rank 0 holds (and writes) them.
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import save_file
from svlm_training.fsdp import gather_trainable_state
from svlm_training.train_config import build_parser, config_from_args
from svlm_training.trainer import train


def dump_weights(directory: Path):
    def save(model, context) -> None:
        weights = gather_trainable_state(model)  # collective for a sharded model
        if weights:
            weights = {name: t.contiguous() for name, t in weights.items()}
            save_file(weights, str(directory / f"rank{context.rank}.safetensors"))

    return save


def main(argv: list[str]) -> int:
    directory = Path(argv[0])
    directory.mkdir(parents=True, exist_ok=True)
    config = config_from_args(build_parser().parse_args(argv[1:]))
    train(config, quiet=True, on_finish=dump_weights(directory))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
