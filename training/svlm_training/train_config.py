"""The typed training configuration: parsed from the command line, saved beside every checkpoint.

``TrainConfig`` is the single source of truth for a run: ``svlm-train`` builds it from its flags,
writes it as ``train_config.json`` into every checkpoint directory, and ``--resume`` and the
export read it back, so a checkpoint always says how it was made.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from svlm_training.chunking import ChunkConfig

#: Linear layers of the Qwen2.5-VL language model that LoRA adapts by default (all of them).
DEFAULT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CONFIG_FILE = "train_config.json"


@dataclass
class TrainConfig:
    """Everything that shapes a training run.

    Attributes:
        data: Dataset directory (``svlm-bag2dataset``'s output).
        model: Base checkpoint directory (Qwen2.5-VL family; ``svlm-make-tiny``'s for tests).
        out: Run directory: checkpoints, loss log and plot, and the exported model.
        method: ``lora`` (adapters on the language model) or ``full`` (every weight).
        lora_rank, lora_alpha, lora_dropout: LoRA shape (ignored by ``full``).
        lora_targets: Names of the language-model linear layers LoRA adapts.
        sharding: ``auto`` (FSDP2 for ``full`` on several ranks, else DDP), ``ddp`` (the model
            replicated; plain in one process) or ``fsdp`` (``full`` only: fp32 master weights,
            gradients and AdamW state sharded over the ranks, ``dtype`` compute; see
            ``svlm_training.fsdp``).
        memory_budget_gb: Memory per rank the run may use, in GiB (default: the GPU's free
            memory; on the CPU no check without it). A run whose estimate exceeds it is refused
            before the first step (``svlm_training.memory_plan``).
        memory_check: Check the estimate against the budget before training.
        train_vision: Also train the vision tower (``full`` only; frozen by default, as in
            StreamingVLM).
        dtype: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32`` or ``bfloat16``.
        device: ``auto`` (CUDA if present, the local rank's GPU under torchrun), ``cpu``, ``cuda``.
        attn_implementation: Attention kernel for training (``sdpa`` or ``eager``, or
            ``flash_attention_2`` where installed).
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        grad_accum: Chunks each process accumulates per optimizer step. The global batch is
            ``grad_accum * world_size`` chunks (one chunk per micro-step: chunks differ in length
            and are never padded).
        lr: Peak learning rate (default 1e-4 for LoRA, 1e-5 for full fine-tuning).
        min_lr_ratio: The cosine schedule ends at ``lr * min_lr_ratio``.
        warmup_ratio: Share of the steps with a linear warm-up from 0.
        weight_decay, adam_beta1, adam_beta2, adam_eps: AdamW.
        max_grad_norm: Gradient clipping (0 turns it off).
        epochs: Passes over the chunks (the step count is derived from it).
        max_steps: Stop after this many optimizer steps (overrides ``epochs`` when set).
        seed: Seed of the chunk order and of LoRA's initialisation.
        save_every: Optimizer steps between checkpoints (0: only the final one).
        keep_checkpoints: Newest step checkpoints kept (older ones are deleted).
        export: Write the merged model to ``OUT/model`` at the end.
        chunk_seconds, overlap_seconds, max_new_tokens, text_sink_tokens, text_window_tokens,
        system_prompt: The chunking (see ``ChunkConfig``); they must match the node's
            settings at inference (the ``previous text`` turn starts empty, as the node's).
        instruction: The instruction of a chunk that starts a stream (see ``ChunkConfig``):
            none by default, as StreamingVLM trained; the node's to train the stream's first
            second as inference shows it.
    """

    data: str
    model: str
    out: str
    method: str = "lora"
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    sharding: str = "auto"
    memory_budget_gb: float | None = None
    memory_check: bool = True
    train_vision: bool = False
    dtype: str = "auto"
    device: str = "auto"
    attn_implementation: str = "sdpa"
    gradient_checkpointing: bool = True
    grad_accum: int = 1
    lr: float | None = None
    min_lr_ratio: float = 0.0
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int | None = None
    seed: int = 0
    save_every: int = 200
    keep_checkpoints: int = 2
    export: bool = True
    chunk_seconds: int = 24
    overlap_seconds: int = 12
    max_new_tokens: int = 20
    text_sink_tokens: int = 512
    text_window_tokens: int = 512
    system_prompt: str = ChunkConfig.system_prompt
    instruction: str = ChunkConfig.instruction

    def __post_init__(self):
        self.lora_targets = tuple(self.lora_targets)
        if self.method not in ("lora", "full"):
            raise ValueError(f"method must be 'lora' or 'full', got {self.method!r}")
        if self.train_vision and self.method == "lora":
            raise ValueError("train_vision needs method 'full' (LoRA adapts the language model)")
        if self.sharding not in ("auto", "ddp", "fsdp"):
            raise ValueError(f"sharding must be auto, ddp or fsdp, got {self.sharding!r}")
        if self.sharding == "fsdp" and self.method != "full":
            raise ValueError("sharding 'fsdp' is for method 'full'; LoRA trains under DDP")
        if self.memory_budget_gb is not None and self.memory_budget_gb <= 0:
            raise ValueError(f"memory_budget_gb must be > 0, got {self.memory_budget_gb}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"dtype must be auto, float32 or bfloat16, got {self.dtype!r}")
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
        self.chunk_config()  # validates the chunking fields

    @property
    def peak_lr(self) -> float:
        if self.lr is not None:
            return self.lr
        return 1e-4 if self.method == "lora" else 1e-5

    def chunk_config(self) -> ChunkConfig:
        return ChunkConfig(
            chunk_seconds=self.chunk_seconds,
            overlap_seconds=self.overlap_seconds,
            max_new_tokens=self.max_new_tokens,
            text_sink_tokens=self.text_sink_tokens,
            text_window_tokens=self.text_window_tokens,
            system_prompt=self.system_prompt,
            instruction=self.instruction,
        )

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> TrainConfig:
        path = Path(directory) / CONFIG_FILE
        if not path.is_file():
            raise ValueError(f"{directory} has no {CONFIG_FILE}: not an svlm-train checkpoint")
        values = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def build_parser() -> argparse.ArgumentParser:
    """The ``svlm-train`` command line; every flag is a ``TrainConfig`` field."""
    d = TrainConfig(data="", model="", out="")
    p = argparse.ArgumentParser(
        prog="svlm-train",
        description="Fine-tune a Qwen2.5-VL narrator on a svlm-bag2dataset dataset with chunked "
                    "full-attention SFT. Run it as is on one device, or under torchrun for DDP.",
    )
    p.add_argument("--data", help="dataset directory (svlm-bag2dataset --out); required "
                                   "unless --resume")
    p.add_argument("--model", help="base checkpoint directory; required unless --resume")
    p.add_argument("--out", help="run directory: checkpoints, loss.jsonl/csv/png, model/ (the "
                                  "export); required unless --dry-run")
    p.add_argument("--method", choices=("lora", "full"), default=d.method,
                   help="LoRA adapters on the language model, or full fine-tuning (default lora)")
    p.add_argument("--lora-rank", type=int, default=d.lora_rank, help="LoRA rank (default 16)")
    p.add_argument("--lora-alpha", type=int, default=d.lora_alpha, help="LoRA alpha (default 32)")
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout,
                   help="LoRA dropout (default 0)")
    p.add_argument("--lora-targets", default=",".join(d.lora_targets),
                   help="comma-separated language-model linear layers for LoRA (default: all)")
    p.add_argument("--sharding", choices=("auto", "ddp", "fsdp"), default=d.sharding,
                   help="auto: FSDP2 for --method full under torchrun with several processes, "
                        "else DDP; fsdp: shard fp32 weights, gradients and AdamW state over the "
                        "ranks (full only; also on one process); ddp: replicate (default auto)")
    p.add_argument("--memory-budget-gb", type=float, default=None,
                   help="GiB per rank the run may use (default: the GPU's free memory; on the "
                        "CPU, no check without it); a run estimated above it is refused")
    p.add_argument("--no-memory-check", dest="memory_check", action="store_false",
                   help="train even when the memory estimate exceeds the budget")
    p.add_argument("--dry-run", action="store_true",
                   help="print the per-rank memory estimate (weights, gradients, optimizer, "
                        "activations) and whether it fits, then exit without training; "
                        "needs only --model (its config.json)")
    p.add_argument("--world-size", default=None, metavar="N[,N...]",
                   help="with --dry-run: rank counts to estimate for (default: torchrun's "
                        "WORLD_SIZE, else 1)")
    p.add_argument("--train-vision", action="store_true",
                   help="also train the vision tower (full only; frozen by default)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default=d.dtype,
                   help="weights and compute dtype; auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--device", default=d.device,
                   help="auto (the local rank's GPU if any, else cpu), cpu or cuda (default auto)")
    p.add_argument("--attn-implementation", default=d.attn_implementation,
                   choices=("sdpa", "eager", "flash_attention_2"),
                   help="attention kernel (default sdpa)")
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing",
                   action="store_false", help="keep activations instead of recomputing them")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum,
                   help="chunks per process per optimizer step; global batch = grad_accum x "
                        "processes (default 1)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 1e-4 for lora, 1e-5 for full)")
    p.add_argument("--min-lr-ratio", type=float, default=d.min_lr_ratio,
                   help="final learning rate as a share of the peak (default 0)")
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio,
                   help="share of steps with linear warm-up (default 0.03)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay,
                   help="AdamW weight decay (default 0)")
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm,
                   help="gradient clipping norm, 0 to disable (default 1)")
    p.add_argument("--epochs", type=float, default=d.epochs,
                   help="passes over the chunks (default 1)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop after this many optimizer steps (overrides --epochs)")
    p.add_argument("--seed", type=int, default=d.seed, help="chunk order and init seed (default 0)")
    p.add_argument("--save-every", type=int, default=d.save_every,
                   help="optimizer steps between checkpoints, 0: only the final one (default 200)")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints,
                   help="newest step checkpoints to keep (default 2)")
    p.add_argument("--no-export", dest="export", action="store_false",
                   help="do not write the merged model to OUT/model at the end")
    p.add_argument("--chunk-seconds", type=int, default=d.chunk_seconds,
                   help="seconds per training chunk (default 24)")
    p.add_argument("--overlap-seconds", type=int, default=d.overlap_seconds,
                   help="seconds shared by consecutive chunks (default 12)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help="per-second token budget, as the node's max_new_tokens (default 20)")
    p.add_argument("--text-sink-tokens", type=int, default=d.text_sink_tokens,
                   help="previous-text sink, as the node's (default 512)")
    p.add_argument("--text-window-tokens", type=int, default=d.text_window_tokens,
                   help="previous-text window, as the node's (default 512)")
    p.add_argument("--system-prompt", default=d.system_prompt,
                   help="system prompt, as the node's (default: the engine's)")
    p.add_argument("--instruction", default=d.instruction,
                   help="instruction after the first second's video of a chunk that starts a "
                        "stream (default none, as StreamingVLM trained; the node's to train "
                        "the stream's first second as inference shows it)")
    p.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                   help="continue from OUT's newest checkpoint (or the one named); the saved "
                        "config is used, except --max-steps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """A ``TrainConfig`` from parsed ``svlm-train`` flags."""
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values["lora_targets"] = tuple(t.strip() for t in args.lora_targets.split(",") if t.strip())
    return TrainConfig(**values)
