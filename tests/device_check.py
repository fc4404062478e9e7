"""A CPU-side check for device-placement mistakes: the model on the ``meta`` device stands in
for a GPU, and every aten operation must see all its tensors on one device.

CI has no GPU, so a tensor left on the CPU next to a GPU model (a batch never moved, a target
drawn on the CPU) would only fail hours into a GPU run. Under ``DeviceCheck`` such a mix fails
at once, naming the operation and the devices, as CUDA would: 0-dim CPU tensors may meet
another device (CUDA allows scalars), and copies between devices (``.to``) are the legitimate
crossings. Meta tensors hold no data, so data-dependent results get placeholders: ``.item()``
returns 0.5 (or 1 / True), ``nonzero`` and boolean masks select half the elements, a copy to
the host is zeros; that is enough for the code to run on, not to compute anything.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten
CROSSING = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default}
META = torch.device("meta")


class DeviceMismatch(RuntimeError):
    pass


def _placeholder(tensor: torch.Tensor):
    if tensor.dtype == torch.bool:
        return True
    return 1 if not tensor.dtype.is_floating_point else 0.5


class DeviceCheck(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if func not in CROSSING:
            devices = {t.device for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)}
            if len(devices) > 1:
                names = ", ".join(sorted(str(d) for d in devices))
                raise DeviceMismatch(f"{func} mixes tensors on {names}")
        meta = any(t.is_meta for t in tensors)
        target = kwargs.get("device")
        if func is aten._to_copy.default and tensors[0].is_meta and target not in (None, META):
            dtype = kwargs.get("dtype") or tensors[0].dtype  # results gathered on the host
            return torch.zeros(tensors[0].shape, dtype=dtype, device=target)
        if meta and func is aten._local_scalar_dense.default:
            return _placeholder(tensors[0])
        if meta and func in (aten.nonzero.default,):
            source = tensors[0]
            count = max(1, source.numel() // 2)
            return torch.zeros(count, source.dim(), dtype=torch.long, device="meta")
        if meta and func in (aten.masked_select.default,):
            count = max(1, tensors[0].numel() // 2)
            return torch.empty(count, dtype=tensors[0].dtype, device="meta")
        if meta and func is aten.index.Tensor and any(_is_mask(i) for i in args[1]):
            source, mask = args[0], next(i for i in args[1] if _is_mask(i))
            count = max(1, mask.numel() // 2)
            shape = (count, *source.shape[mask.dim() :])
            return torch.empty(shape, dtype=source.dtype, device="meta")
        return func(*args, **kwargs)


def _is_mask(index) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype == torch.bool
