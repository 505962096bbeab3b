"""Skipping transformer blocks of a DiT for one network call (ComfyUI's ``patches_replace["dit"]`` entries
``("double_block", i)`` / ``("single_block", i)`` whose replacement returns its inputs; SkipLayerGuidance uses
them).

A MODEL handle's ``options`` may carry ``"dit_skip_blocks"``: a frozenset of ``(kind, index)`` pairs, kind
``"double_block"`` (SD3's joint blocks, FLUX's double-stream blocks: diffusers' ``transformer_blocks``) or
``"single_block"`` (FLUX's single-stream blocks: ``single_transformer_blocks``). A skipped block passes its
hidden states and context through unchanged; a ControlNet residual for that block is still added after it,
as in ComfyUI, where the residual is added outside the replaced block. Indices the network does not have are
ignored (ComfyUI never looks them up), and so are the entries on a UNet, whose call never reads them.

SD3 hands the double blocks to diffusers' own ``skip_layers`` argument; FLUX, whose diffusers call has none,
swaps the blocks for :class:`SkippedBlock` for the one call and puts them back afterwards, so the network
shared by every handle of a checkpoint is never left patched.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Mapping

import torch

SKIP_BLOCKS = "dit_skip_blocks"
DOUBLE = "double_block"
SINGLE = "single_block"


def with_skipped_blocks(options: Mapping[str, Any], double: Iterable[int], single: Iterable[int]) -> dict[str, Any]:
    """A copy of ``options`` that also skips the given double and single blocks."""
    skipped = set(options.get(SKIP_BLOCKS, ()))
    skipped.update((DOUBLE, int(i)) for i in double)
    skipped.update((SINGLE, int(i)) for i in single)
    return {**options, SKIP_BLOCKS: frozenset(skipped)}


def skipped_indices(options: Mapping[str, Any], kind: str, count: int) -> list[int]:
    """The sorted indices below ``count`` of the ``kind`` blocks ``options`` skips."""
    return sorted({i for k, i in options.get(SKIP_BLOCKS, ()) if k == kind and 0 <= i < count})


class SkippedBlock(torch.nn.Module):
    """A diffusers joint/single transformer block that returns ``(encoder_hidden_states, hidden_states)``
    as it was given them."""

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                *args: Any, **kwargs: Any) -> tuple[torch.Tensor | None, torch.Tensor]:
        return encoder_hidden_states, hidden_states


def sd3_skip_layers(network: Any, options: Mapping[str, Any]) -> list[int] | None:
    """``skip_layers`` for diffusers' ``SD3Transformer2DModel`` call (``None`` when nothing is skipped)."""
    return skipped_indices(options, DOUBLE, len(network.transformer_blocks)) or None


@contextlib.contextmanager
def flux_blocks_skipped(transformer: Any, options: Mapping[str, Any]) -> Iterator[None]:
    """The FLUX transformer's skipped blocks replaced by :class:`SkippedBlock` for the body of the ``with``."""
    swapped: list[tuple[torch.nn.ModuleList, int, torch.nn.Module]] = []
    try:
        for kind, blocks in ((DOUBLE, transformer.transformer_blocks), (SINGLE, transformer.single_transformer_blocks)):
            for index in skipped_indices(options, kind, len(blocks)):
                swapped.append((blocks, index, blocks[index]))
                blocks[index] = SkippedBlock()
        yield
    finally:
        for blocks, index, block in reversed(swapped):
            blocks[index] = block


__all__ = ["SKIP_BLOCKS", "DOUBLE", "SINGLE", "SkippedBlock", "with_skipped_blocks", "skipped_indices",
           "sd3_skip_layers", "flux_blocks_skipped"]
