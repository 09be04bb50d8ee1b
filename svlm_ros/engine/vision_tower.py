"""The vision tower's index tensors for one frame size, computed once on the host.

transformers' Qwen2.5-VL tower derives from ``grid_thw`` the patches' rotary positions, the
window order, and the boundaries and longest lengths of the windows and of the frames. Given a
``grid_thw`` on the GPU it reads it back for that (``.tolist()`` twice, ``.item()`` twice),
builds the window order on the host and copies it up: several waits for the GPU per round, and
graph breaks in ``compile_vision``'s compiled tower. The tower takes all of them precomputed
(its ``transformers.vision_utils.get_vision_*`` helpers pop them from the forward's kwargs), so
``TowerInputs`` computes them with those same helpers from the host ``grid_thw``, once per frame
size, and keeps them on the device. With them (and the windowed attention's device-built
indices, ``attention.windowed_sdpa_attention``) a tower forward never reads the device.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

#: Frame sizes whose inputs are kept (a camera changes size rarely; a few cameras share one).
KEPT_SIZES = 8


class TowerInputs:
    """The keyword arguments of ``model.model.visual(pixel_values, **inputs)`` per frame size.

    Args:
        vision_config: The model's vision config.
        device: Where the tower runs.
    """

    def __init__(self, vision_config, device: torch.device):
        self.config = vision_config
        self.device = torch.device(device)
        self._kept: OrderedDict[tuple[int, ...], dict] = OrderedDict()
        #: Frame sizes computed so far (a test counts them).
        self.computed = 0

    def __call__(self, grid_thw: torch.Tensor) -> dict:
        """``grid_thw`` and everything the tower derives from it, on the device.

        ``grid_thw`` should be a host tensor (``VideoBlock.grid_thw`` is): its values are the
        key (a device one is read back once here).
        """
        host = grid_thw.detach().cpu()
        key = tuple(int(n) for n in host.reshape(-1).tolist())
        inputs = self._kept.get(key)
        if inputs is None:
            inputs = self._compute(host)
            self._kept[key] = inputs
            self.computed += 1
            if len(self._kept) > KEPT_SIZES:
                self._kept.popitem(last=False)
        else:
            self._kept.move_to_end(key)
        return dict(inputs)

    def _compute(self, grid_thw: torch.Tensor) -> dict:
        from transformers.vision_utils import (
            get_vision_cu_seqlens,
            get_vision_position_ids,
            get_vision_window_index,
        )

        cfg = self.config
        position_ids = get_vision_position_ids(grid_thw, cfg.spatial_merge_size)
        cu_seqlens = get_vision_cu_seqlens(grid_thw)
        window_index, cu_window_seqlens = get_vision_window_index(
            grid_thw, spatial_merge_size=cfg.spatial_merge_size, window_size=cfg.window_size,
            patch_size=cfg.patch_size)

        def longest(bounds: torch.Tensor) -> int:
            return int((bounds[1:] - bounds[:-1]).max())

        device = self.device
        return {
            "grid_thw": grid_thw.to(device),
            "position_ids": position_ids.to(device),
            "cu_seqlens": cu_seqlens.to(device),
            "max_seqlen": longest(cu_seqlens),
            "window_index": window_index.to(device),
            "cu_window_seqlens": cu_window_seqlens.to(device),
            "max_window_seqlen": longest(cu_window_seqlens),
        }
