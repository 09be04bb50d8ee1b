"""Full fine-tuning sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Why FSDP2 for ``--method full``: replicated (DDP) full fine-tuning of the 7B needs ~107 GiB per
GPU (``svlm-train --dry-run``); sharding the fp32 master weights, gradients and AdamW moments
over N ranks divides them by N. Each decoder layer, vision block and the embedding and output
matrices is its own unit: a unit's full weights exist only while it computes (all-gathered in
the compute dtype, then freed), and its gradient is reduce-scattered as soon as it is ready.

Mixed precision (``MixedPrecisionPolicy``): the weights FSDP keeps, and so the optimizer's
state, are fp32; they are cast to the compute dtype (``--dtype``: bf16 on CUDA by default) for
the forward and backward passes, and gradients are reduced in fp32. AdamW at lr 1e-5 changes a
weight by far less than bf16's resolution; on fp32 masters the updates accumulate instead of
rounding away.

LoRA stays under DDP: its frozen base would be all-gathered in every forward and backward for
a ~0.5 % share of trainable weights that replicate cheaply.
"""

from __future__ import annotations

import torch

#: ``--sharding`` choices. ``ddp``: the model replicated (plain with one process).
SHARDINGS = ("auto", "ddp", "fsdp")


def resolve_sharding(requested: str, method: str, world_size: int) -> str:
    """The sharding a run uses: ``auto`` is FSDP for full fine-tuning on several ranks, else DDP.

    Raises:
        ValueError: an unknown choice, or FSDP asked for LoRA.
    """
    if requested not in SHARDINGS:
        raise ValueError(f"sharding must be one of {SHARDINGS}, got {requested!r}")
    if requested == "auto":
        return "fsdp" if method == "full" and world_size > 1 else "ddp"
    if requested == "fsdp" and method != "full":
        raise ValueError("--sharding fsdp is for --method full; LoRA trains under DDP (the "
                         "frozen base would be all-gathered in every pass for a few adapters)")
    return requested


def shard_units(model) -> list[torch.nn.Module]:
    """The modules that become FSDP units: decoder layers, vision blocks (the classes the model
    names as never to be split), and the input and output embeddings (untied: each is as large
    as a decoder layer of the 7B twice over)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    if not names:
        raise ValueError(f"{type(model).__name__} names no layer classes to shard "
                         "(_no_split_modules)")
    units = [m for m in model.modules() if type(m).__name__ in names]
    inputs, outputs = model.get_input_embeddings(), model.get_output_embeddings()
    units.append(inputs)
    if outputs is not None and outputs.weight is not inputs.weight:
        units.append(outputs)
    return units


def shard_model(model, device: torch.device, compute_dtype: torch.dtype):
    """Shard ``model`` (fp32, its trainable weights marked) over the default process group.

    Args:
        model: The model with fp32 weights, on the CPU or ``device``; ``fully_shard`` moves each
            rank's shard to ``device``.
        device: This rank's device (the mesh's device type).
        compute_dtype: Forward/backward dtype; fp32 turns the casting off.

    Returns:
        The same module, now sharded (its parameters are ``DTensor``s).
    """
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if any(p.dtype != torch.float32 for p in model.parameters()):
        raise ValueError("FSDP keeps fp32 master weights: load the model in float32")
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    policy = MixedPrecisionPolicy(
        param_dtype=None if compute_dtype == torch.float32 else compute_dtype,
        reduce_dtype=torch.float32,
    )
    for unit in shard_units(model):
        fully_shard(unit, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    return model


def is_sharded(model) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def gather_trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable weights as whole fp32 CPU tensors by name, on rank 0 (the export's input).

    Collective for a sharded model: every rank must call it, and only rank 0 gets the tensors
    (the others an empty dict), so no rank but the one that writes holds a full copy. A plain
    model's weights are returned on every rank.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if not is_sharded(model):
        return {name: p.detach().cpu() for name, p in model.named_parameters()
                if p.requires_grad}
    options = StateDictOptions(full_state_dict=True, cpu_offload=True,
                               ignore_frozen_params=True)
    return get_model_state_dict(model, options=options)


def grad_norm(parameters, max_norm: float) -> float:
    """Clip the gradients to ``max_norm`` (0: no clipping) and return their total norm.

    Works for sharded gradients too: their norm is a replicated ``DTensor``.
    """
    from torch.distributed.tensor import DTensor

    limit = max_norm if max_norm > 0 else float("inf")
    norm = torch.nn.utils.clip_grad_norm_(parameters, limit)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float(norm)
