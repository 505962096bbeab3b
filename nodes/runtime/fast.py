"""The opt-in fast path (``loom serve/run --fast``, a workflow's ``extra.loom.fast``): what it changes.

Off (the default) every result is ComfyUI's, bit for bit. On, the diffusion network samples with a
bfloat16 copy of its weights where the CPU computes bfloat16 natively (avx512_bf16 or AMX, oneDNN's
kernels): on the 2-core development machine a 2048² matmul runs ~4x faster in bfloat16 than in float32
and a UNet call 1.7-2.9x faster (0.34x of the time at 128², 0.60x at 512²), at about 1.7 % relative error
per call (42-51 dB PSNR against the exact images of the SD1.5 and SD3 conformance cases; docs/performance.md
"The fast path" has the measurements). FLUX stays exact (:data:`EXACT_FAMILIES`). Everything else stays as it is:

* the candidates that measured slower are not used: ``torch.compile`` (slower than eager on this CPU,
  and 70-80 s to compile), channels_last, and running the CFG halves as two batches of one;
* attention already runs in PyTorch's fused ``scaled_dot_product_attention`` on both paths;
* on CUDA the diffusion model already computes in float16, so the fast path changes nothing there.

The copy is made once per network and kept while the network lives (it holds half the float32 network's
bytes, counted against the model cache's budget with the entry that holds the network); weight patches
(LoRA, merges) are applied to it for each run as they are to the original. A network whose weights are
stored in another dtype than they compute in (:mod:`manual_cast`, e.g. fp8 FLUX files) is left as it is.
"""
from __future__ import annotations

import copy
import threading
import weakref

import torch

from loom.nodes.kernel import config
from loom.nodes.runtime import manual_cast, model_cache
from loom.nodes.runtime.model_types import DiffusionModel

FAST_DTYPE = torch.bfloat16

_copies: "weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def cpu_has_fast_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 matmuls and convolutions natively (avx512_bf16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


EXACT_FAMILIES = frozenset({"flux"})
"""Families the fast path leaves exact: FLUX's conformance case came out at 23.5 dB against the exact image
in bfloat16 (the aim is 35 dB). diffusers' FLUX transformer rounds its time and guidance inputs to the compute
dtype before their sinusoidal embeddings, which would explain it (not verified further)."""


def sampling_model(model: DiffusionModel) -> DiffusionModel:
    """The MODEL to sample with: ``model`` itself unless the fast path is on and applies to its network."""
    if not config.fast_enabled() or model.family in EXACT_FAMILIES:
        return model
    network = fast_network(model.unet)
    return model if network is model.unet else model.replace(unet=network)


def fast_network(network: torch.nn.Module) -> torch.nn.Module:
    """The bfloat16 copy of a float32 CPU network (made once, kept while ``network`` lives), or ``network``
    itself where the fast path does not apply."""
    parameter = next(network.parameters(), None)
    if parameter is None or parameter.device.type != "cpu" or parameter.dtype != torch.float32:
        return network
    if not cpu_has_fast_bfloat16() or _casts_per_layer(network):
        return network
    with _lock:
        fast = _copies.get(network)
        if fast is None:
            fast = _copies[network] = bfloat16_copy(network)
            model_cache.models.add_companion_bytes(network, model_cache.tensor_bytes(fast))
    return fast


def bfloat16_copy(network: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``network`` whose floating-point parameters and buffers are bfloat16, made without a second
    float32 copy (each tensor is converted straight into the copy)."""
    memo: dict[int, object] = {}
    for tensor in list(network.parameters()) + list(network.buffers()):
        if tensor.is_floating_point():
            converted = tensor.detach().to(FAST_DTYPE)
            memo[id(tensor)] = torch.nn.Parameter(converted, requires_grad=False) \
                if isinstance(tensor, torch.nn.Parameter) else converted
    fast = copy.deepcopy(network, memo)
    if hasattr(fast, "compute_dtype"):  # FluxNetwork casts its inputs to this
        fast.compute_dtype = FAST_DTYPE
    return fast


def _casts_per_layer(network: torch.nn.Module) -> bool:
    return any(isinstance(module, manual_cast._CastParameters) for module in network.modules())
