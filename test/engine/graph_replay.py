"""A CPU stand-in for CUDA-graph capture and replay that replays what was captured.

A CUDA graph records kernels on fixed addresses: a replay reads whatever lies at the captured
input addresses and writes the captured output addresses, and every host-side value the step
read while it was captured (a slot, a length, a branch taken) stays as it was then. Re-running
the step's Python closure on the CPU (the earlier stand-in) shows none of that: a decoder that
rebinds its input tensors after capture, or whose step reads host state, passes on the CPU and
is wrong on a GPU. ``ReplayOnCpu`` instead

* traces the step once at capture into a graph of aten operations (``make_fx``, real tensors):
  every tensor the step touches (the decoder's fixed inputs, the cache buffers, the weights) is
  held by the graph as the very tensor captured, and every host value is frozen into it;
* replays that graph, never the closure, and copies its result into the outputs ``capture``
  handed out (as a graph overwrites its static outputs), which hold NaN until the first replay
  (a real capture only records: reading them before a replay reads garbage);
* at each replay, checks that the captured tensors still have their storage (data_ptr, shape,
  strides), and that every tensor reachable from the closure (its cells and the tensor
  attributes of the objects in them, one level down, e.g. ``GraphedDecoder._token`` or
  ``CameraGroup._inputs``) is still the tensor captured: a rebound or reallocated input fails
  here with ``GraphInputsMoved`` instead of silently reading a stale buffer.
"""

from __future__ import annotations

import torch
from torch.fx.experimental.proxy_tensor import make_fx


class GraphInputsMoved(AssertionError):
    """A tensor a captured graph reads or writes is not where it was at capture."""


def _tensors(value, path: str, out: dict, depth: int) -> None:
    if isinstance(value, torch.Tensor):
        out[path] = value
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _tensors(item, f"{path}[{index}]", out, depth)
    elif depth > 0 and hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
        for name, item in vars(value).items():
            _tensors(item, f"{path}.{name}", out, depth - 1)


def reachable_tensors(function) -> dict[str, torch.Tensor]:
    """Tensors in ``function``'s closure cells, and in the attributes of objects held there."""
    out: dict[str, torch.Tensor] = {}
    names = function.__code__.co_freevars
    for name, cell in zip(names, function.__closure__ or (), strict=True):
        _tensors(cell.cell_contents, name, out, depth=1)
    return out


def _where(tensor: torch.Tensor) -> tuple:
    return tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride())


class ReplayOnCpu:
    """Stands in for ``static_decode._CudaGraph`` on the CPU (see the module docstring)."""

    captures = 0
    replays = 0

    def __init__(self, device):
        self.device = device
        self.graph = None

    def capture(self, function):
        ReplayOnCpu.captures += 1
        self.function = function
        self.reachable = {path: (tensor, _where(tensor))
                          for path, tensor in reachable_tensors(function).items()}
        self.graph = make_fx(function, tracing_mode="real")()
        self.constants = [
            (node.target, getattr(self.graph, node.target))
            for node in self.graph.graph.nodes if node.op == "get_attr"
        ]
        self.constants = [(name, tensor, _where(tensor)) for name, tensor in self.constants
                          if isinstance(tensor, torch.Tensor)]
        result = self.graph()
        self.outputs = torch.empty_like(result).fill_(float("nan"))
        return self.outputs

    def check(self) -> None:
        """Raise ``GraphInputsMoved`` if a captured tensor moved or was rebound."""
        for name, tensor, where in self.constants:
            if _where(tensor) != where:
                raise GraphInputsMoved(f"captured tensor {name} was reallocated after capture")
        now = reachable_tensors(self.function)
        for path, (tensor, where) in self.reachable.items():
            current = now.get(path)
            if current is None or current is not tensor or _where(current) != where:
                raise GraphInputsMoved(
                    f"{path} is no longer the tensor captured: a graph would read the old one")

    def replay(self) -> None:
        ReplayOnCpu.replays += 1
        self.check()
        self.outputs.copy_(self.graph())
