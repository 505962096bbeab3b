"""LoRA files as weight patches: parsing the formats found in the wild and applying them at use time.

    lora = load_lora_file("models/loras/style.safetensors")
    model2 = model.replace(patches=with_lora(model.patches, lora.for_unet(model), 0.8))
    clip2 = clip.replace(patches=with_lora(clip.patches, lora.for_text_encoders(clip), 0.6))

Formats (one file may mix them): kohya (``lora_unet_*``, ``lora_te_*``, SDXL ``lora_te1_*``/``lora_te2_*``;
``.lora_down.weight``/``.lora_up.weight``/``.alpha``, ``.lora_mid.weight`` for Tucker-decomposed LoCon
convolutions), with the UNet modules named either the diffusers way (``down_blocks_0_attentions_0_...``)
or the original LDM way (``input_blocks_1_1_...``); diffusers/peft (``unet.<module>.lora_A.weight``/
``lora_B.weight``, ``text_encoder.``/``text_encoder_2.``, also ``.lora.down``/``.lora.up`` and
``.lora_linear_layer.down``/``.up``); and full ``.diff``/``.diff_b`` weight differences. Every module
name is looked up in a map built from the loaded model's own modules: the model family owns the map of its
diffusion network (``Family.lora_key_map``: the UNet families' below, SD3's and FLUX's in
:mod:`nodes.runtime.lora_dit`, where a LoRA on a fused BFL/MMDiT weight such as ``qkv`` patches Loom's split
diffusers weights with the matching rows of its up matrix), the text encoders' map is built here. As in
ComfyUI, modules that match nothing are logged as a warning ("lora key not loaded: ...") and skipped; a LoRA
that matches nothing, has the wrong shapes, or was made for another model family is an error.

A LoRA changes a weight by ``strength * (alpha / rank) * up @ down`` (no alpha: a scale of 1), computed in
float32 and cast to the weight's dtype, in the order ComfyUI computes it. Patched text-encoder weights are
rounded to float16 first: ComfyUI keeps text encoders in float16 on every device (computing in float32 on
the CPU), so that is the precision a LoRA'd prompt encoding has there; it keeps the conformance case within
5e-6 of ComfyUI instead of 7e-4. Patches are never baked into
the shared model: :meth:`LoraStack.applied` swaps patched copies of the affected parameters in for the
duration of a sampling or encoding run and puts the original parameter objects back afterwards, so the
base model is bit-identical afterwards and memory grows only by the patched tensors while in use.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import torch


log = logging.getLogger(__name__)


class LoraError(ValueError):
    """A LoRA file that cannot be read, is in an unsupported format, or does not fit the model."""


@dataclass(frozen=True)
class LoraTarget:
    """Where (part of) one LoRA module's change goes: a module of a model component, and which rows of the
    change it takes (``rows``: ``(start, stop)`` ranges of the LoRA's output rows, concatenated in order;
    ``None``: all of them). A LoRA made for a fused weight (BFL's ``qkv``) has one target per split weight."""

    component: str
    path: str
    rows: tuple[tuple[int, int], ...] | None = None


KeyMap = dict[str, tuple[LoraTarget, ...]]
"""LoRA module name (as written in a file) → the targets it patches."""


def whole(component: str, path: str) -> tuple[LoraTarget, ...]:
    """The targets of a LoRA module that patches one whole weight."""
    return (LoraTarget(component, path),)


# (suffix, role) pairs; the longest suffix that matches a key wins
_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_mid.weight", "mid"),
    (".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".alpha", "alpha"), (".diff", "diff"), (".diff_b", "diff_b"),
)
_UNSUPPORTED = {
    "hada_w1_a": "LoHa", "hada_w1_b": "LoHa", "lokr_w1": "LoKr", "lokr_w2": "LoKr", "lokr_w1_a": "LoKr",
    "dora_scale": "DoRA", "oft_blocks": "OFT", "oft_diag": "OFT", "a1.weight": "GLoRA", "b1.weight": "GLoRA",
}
_TEXT_ENCODER_PREFIXES = ("lora_te_", "lora_te1_", "lora_te2_", "lora_te3_", "text_encoder.", "text_encoder_2.",
                          "te.", "te1.", "te2.", "lora_te.", "text_encoders.")


# ---------------------------------------------------------------------------------------------
# One module's update
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModuleUpdate:
    """The change a LoRA makes to one module: low-rank factors and/or full differences."""

    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    mid: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None

    @property
    def rank(self) -> int:
        assert self.down is not None
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        """``alpha / rank`` (1 when the file gives no alpha, as peft's default ``alpha == rank``)."""
        return 1.0 if self.alpha is None else self.alpha / self.rank

    def weight_delta(self, shape: torch.Size, device: torch.device) -> torch.Tensor | None:
        """``up @ down`` (or the full difference) in float32, shaped like the weight; ``None`` if no change."""
        if self.up is not None and self.down is not None:
            up = self.up.to(device=device, dtype=torch.float32)
            down = self.down.to(device=device, dtype=torch.float32)
            if self.mid is not None:  # Tucker LoCon: fold the 3x3 core into the down factor
                mid = self.mid.to(device=device, dtype=torch.float32)
                folded_shape = [down.shape[1], down.shape[0], mid.shape[2], mid.shape[3]]
                down = torch.mm(down.transpose(0, 1).flatten(start_dim=1),
                                mid.transpose(0, 1).flatten(start_dim=1)).reshape(folded_shape).transpose(0, 1)
            return torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(shape)
        if self.diff is not None:
            return self.diff.to(device=device, dtype=torch.float32).reshape(shape)
        return None

    def take_rows(self, rows: tuple[tuple[int, int], ...] | None) -> "ModuleUpdate":
        """The update restricted to some output rows (the up factor's, the difference's and the bias
        difference's): what a LoRA on a fused weight does to one part of it."""
        if rows is None:
            return self

        def cut(tensor: torch.Tensor | None) -> torch.Tensor | None:
            if tensor is None:
                return None
            return torch.cat([tensor[start:stop] for start, stop in rows], dim=0)

        return replace(self, up=cut(self.up), diff=cut(self.diff), diff_b=cut(self.diff_b))

    def out_rows(self) -> int | None:
        """How many output rows the update has (the up factor's or the difference's)."""
        tensor = self.up if self.up is not None else self.diff if self.diff is not None else self.diff_b
        return None if tensor is None else int(tensor.shape[0])

    def delta_numel(self) -> int | None:
        """How many weight elements the update produces (to check it against the module)."""
        if self.up is not None and self.down is not None:
            kernel = 1
            if self.mid is not None:
                kernel = int(self.mid.shape[2] * self.mid.shape[3])
            return int(self.up.shape[0]) * int(self.down[0].numel()) * kernel
        if self.diff is not None:
            return int(self.diff.numel())
        return None


# ---------------------------------------------------------------------------------------------
# Parsing a file into per-module groups
# ---------------------------------------------------------------------------------------------

@dataclass
class LoraFile:
    """The modules of one LoRA file, keyed by the module name as written in the file."""

    name: str
    modules: dict[str, ModuleUpdate]
    stray_keys: list[str]  # keys that are not part of any recognised module update

    def for_unet(self, model: Any, *, require_any: bool = True) -> dict[tuple[str, str], ModuleUpdate]:
        """The updates for a ``DiffusionModel``'s network (its family's key map); text-encoder modules are
        skipped. ``require_any``: a LoRA with network modules of which none fits is an error."""
        from loom.nodes.runtime import families

        try:
            key_map = families.get(model.family).lora_key_map(model)
        except ValueError as exc:  # a family without a LoRA key map
            raise LoraError(f"{self.name}: {exc}") from None
        unet_modules = {n: u for n, u in self.modules.items() if not n.startswith(_TEXT_ENCODER_PREFIXES)}
        return self._resolve(unet_modules, key_map, {"unet": model.unet}, model.family, "diffusion model",
                             stray=[k for k in self.stray_keys if not k.startswith(_TEXT_ENCODER_PREFIXES)],
                             require_any=require_any)

    def for_text_encoders(self, clip: Any, *, require_any: bool = True) -> dict[tuple[str, str], ModuleUpdate]:
        """The updates for a ``TextEncoderModel``'s encoders; UNet modules are skipped."""
        key_map = {name: whole(*target) for name, target in text_encoder_key_map(clip).items()}
        te_modules = {n: u for n, u in self.modules.items() if n.startswith(_TEXT_ENCODER_PREFIXES)}
        components = {name: model for name, (_tokenizer, model) in clip.encoders.items()}
        return self._resolve(te_modules, key_map, components, clip.family, "text encoder",
                             stray=[k for k in self.stray_keys if k.startswith(_TEXT_ENCODER_PREFIXES)],
                             require_any=require_any)

    def for_models(self, model: Any, clip: Any | None) -> tuple[dict, dict]:
        """Network and text-encoder updates, with every problem of the file in one error. Modules that match
        nothing are skipped with a warning (ComfyUI's "lora key not loaded"), the text-encoder ones too when
        there is no ``clip`` (LoraLoaderModelOnly); a LoRA of which nothing fits is an error."""
        unet_updates: dict = {}
        te_updates: dict = {}
        problems: list[str] = []
        try:
            unet_updates = self.for_unet(model, require_any=False)
        except LoraError as exc:
            problems.append(str(exc))
        if clip is not None:
            try:
                te_updates = self.for_text_encoders(clip, require_any=False)
            except LoraError as exc:
                problems.append(str(exc))
        if problems:
            raise LoraError("; ".join(problems))
        if self.modules and not unet_updates and not te_updates:
            raise LoraError(f"{self.name} does not fit this model: none of its {len(self.modules)} LoRA module(s) "
                            f"match the {model.family} model (e.g. {', '.join(sorted(self.modules)[:5])})")
        if clip is None:
            for name in sorted(n for n in self.modules if n.startswith(_TEXT_ENCODER_PREFIXES)):
                log.warning("lora key not loaded: %s (%s: no text encoder given)", name, self.name)
        return unet_updates, te_updates

    def _resolve(self, modules: Mapping[str, ModuleUpdate], key_map: Mapping[str, tuple[LoraTarget, ...]],
                 components: Mapping[str, torch.nn.Module], family: str, part: str,
                 stray: list[str], require_any: bool) -> dict[tuple[str, str], ModuleUpdate]:
        """Each module's update per target weight. Unmatched modules are warned about and skipped (as
        ComfyUI's "lora key not loaded"); wrong shapes, nothing matching, or a LoRA whose names belong to
        another model family are an error."""
        what = f"{family} {part}"
        resolved: dict[tuple[str, str], ModuleUpdate] = {}
        unmatched: list[str] = list(stray)
        misfit: list[str] = []
        for name, update in modules.items():
            targets = key_map.get(name)
            if targets is None:
                unmatched.append(name)
                continue
            covered = [sum(stop - start for start, stop in t.rows) for t in targets if t.rows is not None]
            if covered and update.out_rows() not in (None, sum(covered)):
                misfit.append(f"{name} ({_update_shape(update)} vs {sum(covered)} fused rows)")
                continue
            parts: list[tuple[tuple[str, str], torch.nn.Module, ModuleUpdate]] = []
            for target in targets:
                module = components[target.component].get_submodule(target.path)
                piece = update.take_rows(target.rows)
                if piece.delta_numel() not in (None, module.weight.numel()) or \
                        (piece.diff_b is not None and getattr(module, "bias", None) is not None
                         and piece.diff_b.numel() != module.bias.numel()):
                    misfit.append(f"{name} ({_update_shape(update)} vs weight {tuple(module.weight.shape)})")
                    break
                parts.append(((target.component, target.path), module, piece))
            else:
                for key, module, piece in parts:
                    resolved[key] = piece if key not in resolved else _summed(resolved[key], piece, module)
        foreign = _foreign_layout(modules.keys(), family)
        if misfit or (require_any and modules and not resolved) or (unmatched and foreign):
            problems = []
            if unmatched:
                problems.append(f"{len(unmatched)} LoRA module(s) match nothing in this {what}: "
                                + ", ".join(sorted(unmatched)[:8]) + (" ..." if len(unmatched) > 8 else ""))
            if misfit:
                problems.append(f"{len(misfit)} have the wrong shape: " + ", ".join(sorted(misfit)[:5])
                                + (" ..." if len(misfit) > 5 else ""))
            hint = f" (the LoRA looks made for {foreign})" if foreign else ""
            raise LoraError(f"{self.name} does not fit this model: " + "; ".join(problems) + hint)
        for name in sorted(unmatched):
            log.warning("lora key not loaded: %s (%s, %s)", name, self.name, what)
        return resolved


def _summed(first: ModuleUpdate, second: ModuleUpdate, module: torch.nn.Module) -> ModuleUpdate:
    """Two modules of one file that patch the same weight (a fused and a split name): one full difference,
    each scaled by its own alpha / rank (the strength applies to the sum, as to each)."""
    weight = module.weight
    total = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
    for update in (first, second):
        delta = update.weight_delta(weight.shape, weight.device)
        if delta is not None:
            total += (update.scale if update.up is not None else 1.0) * delta
    biases = [u.diff_b.float() for u in (first, second) if u.diff_b is not None]
    return ModuleUpdate(diff=total, diff_b=sum(biases) if biases else None)


def _update_shape(update: ModuleUpdate) -> str:
    if update.up is not None and update.down is not None:
        return f"up {tuple(update.up.shape)} down {tuple(update.down.shape)}"
    if update.diff is not None:
        return f"diff {tuple(update.diff.shape)}"
    return "bias only"


# (what the LoRA looks made for, the families whose names these are, markers in its module names)
_LAYOUT_MARKERS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("SDXL: it has two text encoders", ("sdxl", "sdxl_refiner", "sd3", "flux"),
     ("lora_te1_", "lora_te2_", "text_encoder_2.")),
    ("SDXL", ("sdxl", "sdxl_refiner"), ("input_blocks_7_1_transformer_blocks_9", "input_blocks.7.1.transformer_blocks.9")),
    ("FLUX.1", ("flux",), ("double_blocks", "single_blocks", "single_transformer_blocks")),
    ("SD3", ("sd3",), ("joint_blocks",)),
    ("an SD1/SD2/SDXL UNet", ("sd1", "sd2", "sdxl", "sdxl_refiner"),
     ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block")),
)


def _foreign_layout(names: Iterable[str], family: str) -> str | None:
    """What a LoRA looks made for when its module names belong to another family's layout, else ``None``."""
    names = list(names)
    for made_for, owners, markers in _LAYOUT_MARKERS:
        if family not in owners and any(marker in name for name in names for marker in markers):
            return made_for
    return None


def parse_lora(state: Mapping[str, torch.Tensor], name: str = "LoRA") -> LoraFile:
    """Group a LoRA state dict into per-module updates, as written in the file."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    stray: list[str] = []
    for key, tensor in state.items():
        for suffix, role in sorted(_SUFFIXES, key=lambda s: -len(s[0])):
            if key.endswith(suffix):
                groups.setdefault(key[:-len(suffix)], {})[role] = tensor
                break
        else:
            stray.append(key)
    unsupported = sorted({kind for key in stray for marker, kind in _UNSUPPORTED.items()
                          if key.endswith("." + marker)})
    if unsupported:
        raise LoraError(f"{name} is a {'/'.join(unsupported)} network; Loom applies LoRA/LoCon (kohya, diffusers, "
                        "peft) and full weight differences only")
    modules: dict[str, ModuleUpdate] = {}
    for module, parts in groups.items():
        if ("up" in parts) != ("down" in parts):
            stray.append(f"{module} (has {'lora_up' if 'up' in parts else 'lora_down'} without its pair)")
            continue
        if not ({"up", "diff", "diff_b"} & parts.keys()):
            stray.extend(f"{module}.{role}" for role in parts)  # an alpha without weights
            continue
        alpha = parts.get("alpha")
        modules[module] = ModuleUpdate(up=parts.get("up"), down=parts.get("down"), mid=parts.get("mid"),
                                       alpha=None if alpha is None else float(alpha.float().reshape(-1)[0]),
                                       diff=parts.get("diff"), diff_b=parts.get("diff_b"))
    if not modules:
        raise LoraError(f"{name} holds no LoRA weights (found e.g. {', '.join(list(state)[:5]) or 'nothing'})")
    return LoraFile(name=name, modules=modules, stray_keys=stray)


def load_lora_file(path: str | Path) -> LoraFile:
    """Read and parse a LoRA file (safetensors; pickles only with ``--allow-pickle``)."""
    from loom.nodes.runtime import checkpoint

    path = Path(path)
    try:
        state = checkpoint.read_state_dict(path)
    except checkpoint.CheckpointError as exc:
        raise LoraError(str(exc)) from None
    return parse_lora(state, path.name)


# ---------------------------------------------------------------------------------------------
# Key maps: every name a LoRA may use for a module of the loaded model
# ---------------------------------------------------------------------------------------------

_RESNET_TO_LDM = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                  ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
_FIXED_TO_LDM = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
                 "time_embedding.linear_2": "time_embed.2", "add_embedding.linear_1": "label_emb.0.0",
                 "add_embedding.linear_2": "label_emb.0.2", "conv_norm_out": "out.0", "conv_out": "out.2"}


def _resnet_part(rest: str) -> str | None:
    for old, new in _RESNET_TO_LDM:
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return None


def unet_module_to_ldm(path: str, layers_per_block: int, up_has_attention: list[bool]) -> str | None:
    """The original (LDM) name of a diffusers ``UNet2DConditionModel`` module, or ``None`` if it has none."""
    if path in _FIXED_TO_LDM:
        return _FIXED_TO_LDM[path]
    parts = path.split(".")
    per = layers_per_block + 1
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) >= 4:
        level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        side = "input_blocks" if parts[0] == "down_blocks" else "output_blocks"
        block = (1 + level * per + index) if side == "input_blocks" else level * per + index
        if kind == "resnets":
            inner = _resnet_part(rest)
            return None if inner is None else f"{side}.{block}.0.{inner}"
        if kind == "attentions":
            return f"{side}.{block}.1" + (f".{rest}" if rest else "")
        if kind == "downsamplers" and rest == "conv":
            return f"input_blocks.{(level + 1) * per}.0.op"
        if kind == "upsamplers" and rest == "conv":
            return f"output_blocks.{level * per + layers_per_block}.{2 if up_has_attention[level] else 1}.conv"
        return None
    if parts[0] == "mid_block" and len(parts) >= 3:
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            inner = _resnet_part(rest)
            return None if inner is None else f"middle_block.{2 * index}.{inner}"
        if kind == "attentions":
            return "middle_block.1" + (f".{rest}" if rest else "")
    return None


def _patchable_modules(module: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    for name, child in module.named_modules():
        if isinstance(child, (torch.nn.Linear, torch.nn.Conv2d)) and name:
            yield name, child


def unet_key_map(unet: torch.nn.Module) -> dict[str, tuple[str, str]]:
    """LoRA module name → ``("unet", diffusers module path)`` for every linear/conv of the UNet."""
    config = unet.config
    up_has_attention = ["CrossAttn" in t for t in config.up_block_types]
    key_map: dict[str, tuple[str, str]] = {}
    for path, _module in _patchable_modules(unet):
        target = ("unet", path)
        for alias in (f"lora_unet_{path.replace('.', '_')}", f"unet.{path}", path,
                      f"base_model.model.{path}"):
            key_map[alias] = target
        ldm = unet_module_to_ldm(path, config.layers_per_block, up_has_attention)
        if ldm is not None:
            for alias in (f"lora_unet_{ldm.replace('.', '_')}", f"diffusion_model.{ldm}",
                          f"model.diffusion_model.{ldm}"):
                key_map.setdefault(alias, target)
    return key_map


def _clip_path(path: str) -> str:
    """A transformers CLIP module path in the ``text_model.`` form LoRA files use."""
    if path.startswith("text_model.") or path.startswith("text_projection"):
        return path
    return "text_model." + path


def _encoder_prefixes(names: set[str]) -> dict[str, tuple[tuple[str, str], ...]]:
    """The LoRA name prefixes (and separators) of each text encoder, as ComfyUI's ``model_lora_keys_clip``:
    CLIP-L is ``lora_te_``/``lora_te1_``/``text_encoder.``; with CLIP-L, CLIP-G is the second encoder
    (``lora_te2_``/``text_encoder_2.``), alone the first; T5-XXL comes after the CLIPs (SD3: ``lora_te3_``;
    FLUX, CLIP-L + T5: ``lora_te2_`` and ``lora_te3_``)."""
    prefixes: dict[str, tuple[tuple[str, str], ...]] = {}
    has_l, has_g = "l" in names, "g" in names
    for name in names:
        if name == "t5xxl":
            index = 1 + has_g + has_l
            found = (f"lora_te{index}_",) if not (has_l and index == 2) else ("lora_te2_", "lora_te3_")
            prefixes[name] = tuple((prefix, "_") for prefix in found)
        elif has_l and has_g:  # SDXL base, SD3: te1 is CLIP-L, te2 is bigG
            prefixes[name] = ((("lora_te1_", "_"), ("text_encoder.", "."), ("te1.", "."), ("lora_te_", "_"))
                              if name == "l" else (("lora_te2_", "_"), ("text_encoder_2.", "."), ("te2.", ".")))
        else:
            prefixes[name] = (("lora_te_", "_"), ("text_encoder.", "."), ("te.", "."))
            if "t5xxl" in names:  # FLUX: CLIP-L is te1, T5 te2/te3
                prefixes[name] += (("lora_te1_", "_"),)
            else:  # SD1/SD2/refiner (as before: a single encoder also answers to lora_te2_)
                prefixes[name] += (("lora_te2_", "_"),)
    return prefixes


def text_encoder_key_map(clip: Any) -> dict[str, tuple[str, str]]:
    """LoRA module name → ``(encoder name, module path)`` for the encoders of a ``TextEncoderModel``."""
    prefixes = _encoder_prefixes(set(clip.encoders))
    key_map: dict[str, tuple[str, str]] = {}
    for name, (_tokenizer, model) in clip.encoders.items():
        for path, _module in _patchable_modules(model):
            full = path.removeprefix("model.") if name == "t5xxl" else _clip_path(path)
            for prefix, sep in prefixes[name]:
                key_map.setdefault(prefix + full.replace(".", sep), (name, path))
    return key_map


# ---------------------------------------------------------------------------------------------
# Applying: the patch object stored in a handle's ``patches``
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoraPatch:
    """One LoRA at one strength: resolved updates keyed by ``(component, module path)``."""

    name: str
    strength: float
    updates: Mapping[tuple[str, str], ModuleUpdate]


TEXT_ENCODER_STORAGE_DTYPE = torch.float16
"""The precision ComfyUI stores text-encoder weights in (patched ones included), whatever the device."""


def _components(handle: Any) -> dict[str, torch.nn.Module]:
    if hasattr(handle, "unet"):
        return {"unet": handle.unet}
    return {name: model for name, (_tokenizer, model) in handle.encoders.items()}


@dataclass(frozen=True)
class LoraStack:
    """Every LoRA chained onto a handle, applied together (summed in float32, cast once per weight)."""

    loras: tuple[LoraPatch, ...]

    def plus(self, lora: LoraPatch) -> "LoraStack":
        return LoraStack(self.loras + (lora,))

    @contextlib.contextmanager
    def applied(self, handle: Any) -> Iterator[None]:
        """Patched copies of the affected parameters swapped in; the originals put back on exit."""
        components = _components(handle)
        storage = TEXT_ENCODER_STORAGE_DTYPE if hasattr(handle, "encoders") else None
        originals: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
        try:
            with torch.no_grad():
                for (component, path), changes in self._grouped().items():
                    module = components[component].get_submodule(path)
                    for attr, patched in _patched_tensors(module, changes, storage):
                        originals.append((module, attr, module._parameters[attr]))
                        module._parameters[attr] = torch.nn.Parameter(patched, requires_grad=False)
            yield
        finally:
            for module, attr, parameter in reversed(originals):
                module._parameters[attr] = parameter

    def _grouped(self) -> dict[tuple[str, str], list[tuple[float, ModuleUpdate]]]:
        grouped: dict[tuple[str, str], list[tuple[float, ModuleUpdate]]] = {}
        for lora in self.loras:
            if lora.strength == 0:
                continue
            for target, update in lora.updates.items():
                grouped.setdefault(target, []).append((lora.strength, update))
        return grouped


def _patched_tensors(module: torch.nn.Module, changes: list[tuple[float, ModuleUpdate]],
                     storage: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The module's patched weight (and bias), rounded through ``storage`` when given."""
    weight: torch.Tensor = module.weight

    def stored(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return (tensor if storage is None else tensor.to(storage)).to(dtype)

    patched = weight.detach().to(torch.float32, copy=True)
    changed = False
    for strength, update in changes:
        delta = update.weight_delta(weight.shape, weight.device)
        if delta is not None:
            scale = update.scale if update.up is not None else 1.0
            patched += (strength * scale) * delta
            changed = True
    if changed:
        yield "weight", stored(patched, weight.dtype)
    bias = getattr(module, "bias", None)
    bias_changes = [(s, u.diff_b) for s, u in changes if u.diff_b is not None]
    if bias is not None and bias_changes:
        patched_bias = bias.detach().to(torch.float32, copy=True)
        for strength, diff_b in bias_changes:
            patched_bias += strength * diff_b.to(device=bias.device, dtype=torch.float32).reshape(bias.shape)
        yield "bias", stored(patched_bias, bias.dtype)


def with_lora(patches: tuple[Any, ...], lora: LoraPatch) -> tuple[Any, ...]:
    """A handle's ``patches`` with ``lora`` added to its LoRA stack (a new tuple; the old one is untouched).

    LoRAs chained one after another share one stack; after another kind of patch (a merge) a new stack
    starts, so the patches apply in the order the nodes added them, as ComfyUI's do."""
    if patches and isinstance(patches[-1], LoraStack):
        return tuple(patches[:-1]) + (patches[-1].plus(lora),)
    return tuple(patches) + (LoraStack((lora,)),)


def lora_names(handle: Any) -> list[tuple[str, float]]:
    """``(file name, strength)`` of the LoRAs on a handle, in the order they were added."""
    return [(lora.name, lora.strength) for patch in getattr(handle, "patches", ())
            if isinstance(patch, LoraStack) for lora in patch.loras]

