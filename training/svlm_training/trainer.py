"""``svlm-train``: chunked full-attention SFT of the narrator, on one device or under torchrun.

    svlm-train --data data/kitchen --model ckpt/StreamingVLM --out runs/kitchen
    torchrun --nproc_per_node=8 -m svlm_training.trainer --data ... --model ... --out ...
    svlm-train --dry-run --model ckpt/StreamingVLM --method full --world-size 1,8,16

LoRA replicates the model (DDP); full fine-tuning on several ranks shards it with FSDP2
(``svlm_training.fsdp``, ``--sharding``). Before loading the model every run checks the memory
estimate (``svlm_training.memory_plan``) against the budget and refuses what cannot fit.

One optimizer step takes ``grad_accum * world_size`` chunks (the global batch), one chunk per
micro-step per process. The loss is the mean over every trained token of the global batch:
each process scales its summed token losses by ``world_size / trained tokens of the global
batch`` (counted with one all-reduce before the forward passes), so DDP's gradient averaging
yields exactly that mean, whatever the split over processes. The chunk order is a seeded
permutation per epoch and step ``k`` always takes the same chunks: one process with
``--grad-accum 2N`` and N processes with ``--grad-accum 2`` train on the same data in the same
steps, and a resumed run continues the order where it stopped.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from svlm_ros.engine.model_loading import load_model
from svlm_training import distributed as dist_utils
from svlm_training.adaptation import count_parameters, load_trainable_state, prepare_trainable
from svlm_training.checkpoints import (
    checkpoint_state,
    is_sharded_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    resolve_resume,
    save_checkpoint,
    save_sharded_checkpoint,
)
from svlm_training.chunking import IGNORE, ChunkRenderer, ChunkSample, plan_chunks
from svlm_training.dataset_format import SecondsDataset
from svlm_training.export import STREAM_KEYS, save_merged, trained_settings
from svlm_training.fsdp import gather_trainable_state, grad_norm, resolve_sharding, shard_model
from svlm_training.memory_preflight import check_run, dry_run, parse_world_sizes
from svlm_training.plots import plot_loss
from svlm_training.train_config import TrainConfig, build_parser, config_from_args

LOG_FIELDS = ("step", "epoch", "loss", "lr", "grad_norm", "chunks", "tokens", "trained_tokens",
              "step_seconds", "tokens_per_second")


def cosine_schedule(optimizer, total_steps: int, warmup_ratio: float, min_lr_ratio: float):
    """Linear warm-up from 0 over ``warmup_ratio`` of the steps, then cosine to the minimum."""
    warmup = math.ceil(total_steps * warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ChunkOrder:
    """Which chunks step ``k`` trains on: a seeded permutation per epoch, read in order."""

    def __init__(self, chunks: int, global_batch: int, seed: int):
        if chunks < 1:
            raise ValueError("the dataset has no chunk to train on")
        self.chunks = chunks
        self.global_batch = global_batch
        self.seed = seed
        self._permutations: dict[int, list[int]] = {}

    def _permutation(self, epoch: int) -> list[int]:
        if epoch not in self._permutations:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._permutations[epoch] = torch.randperm(self.chunks, generator=generator).tolist()
        return self._permutations[epoch]

    def step(self, step: int) -> list[int]:
        """The global batch of step ``step`` (0-based), ``global_batch`` chunk indices."""
        first = step * self.global_batch
        return [self._permutation(i // self.chunks)[i % self.chunks]
                for i in range(first, first + self.global_batch)]

    def epoch_of(self, step: int) -> float:
        return (step + 1) * self.global_batch / self.chunks


def chunk_loss(model, sample: ChunkSample, device: torch.device, dtype: torch.dtype):
    """Summed cross-entropy over the chunk's trained tokens, and how many there are.

    Logits are computed only where a trained token is predicted (``logits_to_keep`` with the
    positions before each label): a 24 s chunk has ~19k tokens but ~500 labels, and full logits
    over a 152k vocabulary would take more memory than the whole model.
    """
    predicted_from = torch.nonzero(sample.labels[1:] != IGNORE).squeeze(1)
    targets = sample.labels[predicted_from + 1].to(device)
    output = model(
        input_ids=sample.input_ids[None].to(device),
        position_ids=sample.position_ids[:, None, :].to(device),
        pixel_values_videos=sample.pixel_values_videos.to(device, dtype),
        video_grid_thw=sample.video_grid_thw.to(device),
        logits_to_keep=predicted_from.to(device),
        use_cache=False,
    )
    loss = F.cross_entropy(output.logits[0].float(), targets, reduction="sum")
    return loss, int(targets.numel())


class LossLog:
    """The loss log of a run: ``loss.jsonl`` and ``loss.csv`` (rank 0 writes)."""

    def __init__(self, out: Path, keep_until: int | None):
        self.jsonl = out / "loss.jsonl"
        self.csv = out / "loss.csv"
        self.records: list[dict] = []
        if keep_until is not None and self.jsonl.is_file():
            # A resumed run re-does the steps after its checkpoint: drop their old records.
            for line in self.jsonl.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                if record["step"] <= keep_until:
                    self.records.append(record)
        self._rewrite()

    def _rewrite(self) -> None:
        with self.jsonl.open("w", encoding="utf-8") as stream:
            for record in self.records:
                stream.write(json.dumps(record) + "\n")
        with self.csv.open("w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, LOG_FIELDS)
            writer.writeheader()
            writer.writerows(self.records)

    def append(self, record: dict) -> None:
        self.records.append(record)
        with self.jsonl.open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(record) + "\n")
        with self.csv.open("a", newline="", encoding="utf-8") as stream:
            csv.DictWriter(stream, LOG_FIELDS).writerow(record)


def train(config: TrainConfig, *, resume: str | None = None, quiet: bool = False,
          on_finish=None) -> dict:
    """Run (or continue) a training run; returns the end summary (every process).

    Args:
        config: The run.
        resume: ``latest`` or a checkpoint path to continue from, or None.
        quiet: No progress bar.
        on_finish: Called on every process as ``on_finish(model, context)`` with the trained
            (unwrapped, not yet merged) model before the process group closes; the multi-process
            tests use it to compare the ranks' weights.
    """
    sharding = run_sharding(config, resume)
    context = dist_utils.setup_distributed(config.device, group_of_one=sharding == "fsdp")
    try:
        return _train(config, context, sharding, resume, quiet, on_finish)
    finally:
        dist_utils.cleanup(context)


def run_sharding(config: TrainConfig, resume: str | None) -> str:
    """``ddp`` or ``fsdp`` for this run: ``--sharding``, where ``auto`` follows the checkpoint
    being resumed (an FSDP run resumed on one rank stays FSDP) or else the method and the
    number of processes.

    Raises:
        ValueError: an FSDP run asked to resume from a replicated (safetensors) checkpoint.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    sharding = resolve_sharding(config.sharding, config.method, world_size)
    if resume is None:
        return sharding
    checkpoint = resolve_resume(config.out, resume)
    saved = checkpoint_state(checkpoint).get("sharding", "ddp")
    if config.sharding == "auto":
        return saved
    if sharding == "fsdp" and not is_sharded_checkpoint(checkpoint):
        raise ValueError(f"{checkpoint} is a replicated (DDP) checkpoint; an FSDP run resumes "
                         "only from a sharded one: resume it with --sharding ddp")
    return sharding


def resumed_grad_accum(checkpoint: Path, context, grad_accum: int) -> int:
    """The accumulation that keeps a checkpoint's global batch on this run's number of
    processes (a run resumed on other ranks trains on the same chunks per step).

    Raises:
        ValueError: the processes cannot split the global batch evenly.
    """
    saved = int(checkpoint_state(checkpoint)["global_batch"])
    if saved % context.world_size:
        raise ValueError(f"{checkpoint} was trained with a global batch of {saved} chunks, "
                         f"which {context.world_size} processes cannot split evenly")
    if saved // context.world_size != grad_accum and context.is_main:
        print(f"svlm-train: {context.world_size} process(es) now: --grad-accum "
              f"{saved // context.world_size} keeps the global batch of {saved}",
              file=sys.stderr)
    return saved // context.world_size


def _train(config: TrainConfig, context, sharding: str, resume: str | None, quiet: bool,
           on_finish) -> dict:
    out = Path(config.out)
    if resume is None and list_checkpoints(out):
        # A fresh run here would mix its checkpoints and log with the old run's, and a later
        # --resume could pick up the old run's weights.
        raise FileExistsError(
            f"{out} holds checkpoints of an earlier run; continue it with --resume, or choose "
            "another --out"
        )
    # Before anything is written or loaded: refuse what cannot fit instead of failing at the
    # first optimizer step, after a whole forward and backward pass.
    check_run(config, context.world_size, sharding, context.device)
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
    dist_utils.barrier(context)
    dataset = SecondsDataset(config.data)
    dtype = config.dtype
    if dtype == "auto":
        dtype = "bfloat16" if context.device.type == "cuda" else "float32"
    # FSDP keeps fp32 master weights and computes in ``dtype`` (its mixed-precision policy).
    loaded = load_model(config.model, device=str(context.device),
                        dtype="float32" if sharding == "fsdp" else dtype,
                        attn_implementation=config.attn_implementation)
    model = loaded.model
    if config.gradient_checkpointing:
        # Non-reentrant checkpointing works with frozen inputs (LoRA, frozen embeddings) and DDP.
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name
            model.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False})
    model = prepare_trainable(model, config)
    model.train()
    trainable, total = count_parameters(model)
    torch_dtype = getattr(torch, dtype)
    if sharding == "fsdp":
        # The optimizer must be built on the sharded parameters, so this comes first.
        model = shard_model(model, context.device, torch_dtype)
    renderer = ChunkRenderer(
        loaded.processor, loaded.model.config, config.chunk_config(),
        max_pixels=int(dataset.manifest["max_pixels"]),
        min_pixels=int(dataset.manifest["min_pixels"]), fps=dataset.fps,
    )
    chunks = plan_chunks(dataset.episodes(), config.chunk_config())
    # What the model saw, kept in every checkpoint and written beside the exported model.
    trained_stream = {key: dataset.manifest[key] for key in STREAM_KEYS}
    if resume is not None:
        config.grad_accum = resumed_grad_accum(resolve_resume(out, resume), context,
                                               config.grad_accum)
    global_batch = config.grad_accum * context.world_size
    total_steps = config.max_steps or max(1, math.ceil(config.epochs * len(chunks) / global_batch))
    order = ChunkOrder(len(chunks), global_batch, config.seed)

    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=config.peak_lr, betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_eps, weight_decay=config.weight_decay,
    )
    scheduler = cosine_schedule(optimizer, total_steps, config.warmup_ratio, config.min_lr_ratio)
    start_step = 0
    if resume is not None:
        checkpoint = resolve_resume(out, resume)
        state = load_checkpoint(checkpoint, model, optimizer, scheduler)
        if state["global_batch"] != global_batch:
            raise ValueError(
                f"{checkpoint} was trained with a global batch of {state['global_batch']} "
                f"chunks; this run has {global_batch} (grad_accum x processes must match)"
            )
        start_step = int(state["step"])
    train_model = model
    if context.distributed and sharding == "ddp":
        device_ids = [context.device.index] if context.device.type == "cuda" else None
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    log = LossLog(out, start_step) if context.is_main else None
    if context.is_main:
        print(f"svlm-train: {len(dataset)} seconds in {len(dataset.episodes())} episode(s) -> "
              f"{len(chunks)} chunks of {config.chunk_seconds} s; {context.world_size} process(es)"
              f" x {config.grad_accum} = global batch {global_batch}; {total_steps} steps; "
              f"{config.method}: {trainable:,} of {total:,} parameters train; {sharding}; "
              f"{dtype} compute{' on fp32 master weights' if sharding == 'fsdp' else ''} on "
              f"{context.device}", file=sys.stderr)
    progress = tqdm(total=total_steps, initial=start_step, unit="step", desc="svlm-train",
                    disable=quiet or not context.is_main)
    started = time.perf_counter()
    tokens_seen = 0

    def render_step(step: int) -> list[ChunkSample]:
        """This process's share of step ``step``'s global batch, rendered."""
        mine = order.step(step)[context.rank::context.world_size]
        return [renderer.render_chunk(dataset, chunks[i]) for i in mine]

    # Rendering (patchifying frames on the CPU) runs one step ahead in a thread, so it overlaps
    # the previous step's forward and backward passes instead of adding to them.
    prefetch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="svlm-render")
    upcoming = prefetch.submit(render_step, start_step) if start_step < total_steps else None
    try:
        step = start_step
        for step in range(start_step, total_steps):
            step_started = time.perf_counter()
            samples = upcoming.result()
            if step + 1 < total_steps:
                upcoming = prefetch.submit(render_step, step + 1)
            counts = torch.tensor([sum(s.trained_tokens for s in samples),
                                   sum(s.tokens for s in samples)], dtype=torch.float64)
            counts = dist_utils.all_reduce_sum(counts, context)
            trained_tokens, tokens = int(counts[0]), int(counts[1])
            loss_sum = torch.zeros((), dtype=torch.float64)
            for index, sample in enumerate(samples):
                # DDP all-reduces only on the last micro-step. FSDP reduce-scatters on every
                # one: skipping would hold whole unsharded gradients, the memory it saves.
                sync = index == len(samples) - 1 or sharding == "fsdp"
                with dist_utils.no_sync(train_model, context, sync):
                    loss, _ = chunk_loss(train_model, sample, context.device, torch_dtype)
                    (loss * (context.world_size / max(trained_tokens, 1))).backward()
                loss_sum += loss.detach().double().cpu()
            loss_sum = dist_utils.all_reduce_sum(loss_sum, context)
            norm = grad_norm(parameters, config.max_grad_norm)
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - step_started
            tokens_seen += tokens
            record = {
                "step": step + 1,
                "epoch": round(order.epoch_of(step), 4),
                "loss": float(loss_sum) / max(trained_tokens, 1),
                "lr": lr,
                "grad_norm": norm,
                "chunks": global_batch,
                "tokens": tokens,
                "trained_tokens": trained_tokens,
                "step_seconds": seconds,
                "tokens_per_second": tokens / seconds,
            }
            if context.is_main:
                log.append(record)
                progress.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
                progress.update()
            done = step + 1 == total_steps
            if done or (config.save_every and (step + 1) % config.save_every == 0):
                _save(out, step + 1, model, optimizer, scheduler, config, context, sharding,
                      {"total_steps": total_steps, "global_batch": global_batch,
                       "world_size": context.world_size, "stream": trained_stream})
    finally:
        # On an error the step being rendered ahead is not waited for.
        prefetch.shutdown(wait=False, cancel_futures=True)
    progress.close()
    elapsed = time.perf_counter() - started
    if on_finish is not None:
        on_finish(model, context)
    summary = {
        "steps": total_steps,
        "resumed_from": start_step,
        "seconds": elapsed,
        "tokens": tokens_seen,
        "tokens_per_second": tokens_seen / elapsed if elapsed > 0 else 0.0,
        "world_size": context.world_size,
        "global_batch": global_batch,
        "sharding": sharding,
    }
    export_model = model
    if config.export and sharding == "fsdp":
        export_model = _gathered_model(model, config, dtype, context)  # collective
    if context.is_main:
        records = log.records
        summary["first_loss"] = records[0]["loss"] if records else None
        summary["final_loss"] = records[-1]["loss"] if records else None
        if records:
            plot_loss(records, out / "loss.png")
        if config.export:
            summary["model"] = str(save_merged(export_model, loaded.processor, out / "model",
                                               settings=trained_settings(config, trained_stream)))
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    dist_utils.barrier(context)
    return summary


def _gathered_model(model, config: TrainConfig, dtype: str, context):
    """A plain copy of an FSDP model for the export, on rank 0 (None elsewhere): the base
    loaded on the CPU in the compute dtype, with the trained weights gathered from the shards.
    """
    state = gather_trainable_state(model)
    if not context.is_main:
        return None
    plain = prepare_trainable(load_model(config.model, device="cpu", dtype=dtype).model, config)
    load_trainable_state(plain, state)
    return plain


def _save(out: Path, step: int, model, optimizer, scheduler, config: TrainConfig, context,
          sharding: str, state: dict) -> None:
    if sharding == "fsdp":
        save_sharded_checkpoint(out, step, model, optimizer, scheduler, config, state,
                                is_main=context.is_main)
        if context.is_main:
            prune_checkpoints(out, config.keep_checkpoints)
        dist_utils.barrier(context)
        return
    if context.is_main:
        save_checkpoint(out, step, model, optimizer, scheduler, config, state)
        prune_checkpoints(out, config.keep_checkpoints)
    dist_utils.barrier(context)


def format_summary(summary: dict, out: str) -> str:
    lines = [f"svlm-train: {summary['steps']} steps done in {out}"]
    if summary.get("first_loss") is not None:
        lines.append(f"  loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f} "
                     f"(loss.jsonl, loss.csv, loss.png)")
    lines.append(f"  {summary['tokens']:,} tokens in {summary['seconds']:.1f} s: "
                 f"{summary['tokens_per_second']:.0f} tokens/s over {summary['world_size']} "
                 f"process(es), global batch {summary['global_batch']} chunks")
    if "model" in summary:
        model = summary["model"]
        lines.append(f"  model exported to {model} (run the node with model_path:={model})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``svlm-train``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.dry_run:
        if args.model is None:
            parser.error("--dry-run needs --model (its config.json is enough)")
        try:
            config = config_from_args(args)
            sizes = parse_world_sizes(args.world_size, int(os.environ.get("WORLD_SIZE", "1")))
            device = dist_utils.pick_device(config.device)
            print(dry_run(config, sizes, device))
        except ValueError as error:
            print(f"svlm-train: error: {error}", file=sys.stderr)
            return 1
        return 0
    if args.out is None:
        parser.error("--out is required")
    if args.world_size is not None:
        parser.error("--world-size is for --dry-run; a run's world size is torchrun's")
    if args.resume is None and (args.data is None or args.model is None):
        parser.error("--data and --model are required (unless --resume)")
    try:
        if args.resume is not None:
            checkpoint = resolve_resume(args.out, args.resume)
            config = TrainConfig.load(checkpoint)
            config.out = args.out  # the run lives where --out says (it may have been moved)
            if args.max_steps is not None:
                config.max_steps = args.max_steps
            # The memory check may be re-budgeted on another machine; the rest is the run's.
            if args.memory_budget_gb is not None:
                config.memory_budget_gb = args.memory_budget_gb
            if not args.memory_check:
                config.memory_check = False
        else:
            config = config_from_args(args)
        summary = train(config, resume=args.resume, quiet=args.quiet)
    except (ValueError, FileExistsError) as error:
        print(f"svlm-train: error: {error}", file=sys.stderr)
        return 1
    if "final_loss" in summary:
        print(format_summary(summary, config.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
