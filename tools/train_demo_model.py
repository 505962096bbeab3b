"""Train ``loom-demo``: the small text-to-image model that ships with Loom, from nothing, on 2 CPU cores.

    python tools/train_demo_model.py                        # ~1.5 hours on 2 cores; writes the shipped file
    python tools/train_demo_model.py --cache /tmp/demo      # the same, keeping the autoencoder and latents
    python tools/train_demo_model.py --unet-steps 300 --vae-steps 100 --detail-steps 0 --out /tmp/quick.safetensors

What it makes: a latent diffusion model in the SD1 single-file layout (``model.diffusion_model.*``,
``first_stage_model.*``, ``cond_stage_model.transformer.*``), so it loads through CheckpointLoaderSimple
like any SD1.5 file and every sampler, scheduler and latent node works on it. The parts are diffusers'
``UNet2DConditionModel`` and ``AutoencoderKL`` and transformers' ``CLIPTextModel`` at small widths, the
real CLIP BPE vocabulary (Loom's own tokenizer), SD1's noise schedule (scaled-linear betas, 1000 steps,
epsilon prediction) and latent scale 0.18215.

How: pictures of simple scenes and their captions come from ``tools/demo_scenes.py`` (nothing is
downloaded; the held-out tenth of the captions is never used). First the autoencoder learns to reproduce
64-pixel crops of the scenes (shape pixels weighted up, three latent channels anchored to the mean colour
of each 8×8 cell); its latents are then centred and scaled (exactly, through its first and last 1x1
convolutions) so that latent × 0.18215 has unit spread, as SD1's format expects. Then the UNet and the
text encoder learn together to predict the noise, in two stages: composition (offset noise, the loss
weighted by 1 + σ² so the high-noise steps where the caption matters count) and detail (the weight capped
at 5, so edges and corners sharpen), with 10 % empty captions for classifier-free guidance; an
exponential moving average of the weights is what gets saved. The text encoder runs through Loom's own
``run_clip`` with Loom's tokenizer, so training sees exactly the conditioning that inference computes.
Every 500 steps the current average is written out, so an interrupted run still leaves a usable file, and
``--resume FILE`` starts the detail stage from such a file. Seeded: the same seed and thread count give
the same file. Why each choice: docs/demo-model.md.
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tools import demo_scenes  # noqa: E402

DEFAULT_OUT = REPO / "nodes" / "builtin_models" / "checkpoints" / "loom-demo.safetensors"
LATENT_SCALE = 0.18215          # SD1's latent format
TEXT_WIDTH = 64
TEXT_LAYERS = 3
UNET_CHANNELS = (64, 128, 160)
VAE_CHANNELS = (64, 128, 128, 64)
# (Loom reads SD's 32 normalisation groups off every VAE: a 32-channel level would normalise each channel on
# its own and lose the flat colours these scenes are made of; 64 learns several times faster per step.)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# The networks, at the widths the loader reads back from their shapes
# ---------------------------------------------------------------------------------------------

def build_unet():
    from diffusers import UNet2DConditionModel

    # no attention at the full latent resolution: it costs most of the training time and the scenes
    # need none there; SD1's 8 attention heads everywhere else
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=UNET_CHANNELS, layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=32)


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=VAE_CHANNELS,
                         layers_per_block=1, latent_channels=4, norm_num_groups=32, mid_block_add_attention=False)


def build_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    from loom.nodes.runtime.tokenizer import BOS_TOKEN, EOS_TOKEN

    config = CLIPTextConfig(vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
                            num_hidden_layers=TEXT_LAYERS, num_attention_heads=max(1, TEXT_WIDTH // 64),
                            max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                            bos_token_id=BOS_TOKEN, eos_token_id=EOS_TOKEN, pad_token_id=1)
    return CLIPTextModel(config)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------

def render_dataset(count: int, seed: int, single_share: float = 0.4) -> tuple[torch.Tensor, list[str]]:
    """``count`` training pictures ``[n, 3, 128, 128]`` as uint8 and their captions.

    One-thing scenes are a small part of what the grammar can say (about 6 %), so ``single_share`` of the
    pictures are drawn from them: they are half of what the benchmark asks for."""
    training, _held_out = demo_scenes.split_scenes()
    rng = random.Random(seed)
    singles = [s for s in training if s.second is None]
    pairs = [s for s in training if s.second is not None]
    n_single = round(count * single_share)
    order = [singles[i % len(singles)] for i in range(n_single)]
    order += [pairs[i % len(pairs)] for i in range(count - n_single)]
    rng.shuffle(order)
    pixels = np.empty((count, demo_scenes.SIZE, demo_scenes.SIZE, 3), dtype=np.uint8)
    captions = []
    for index, scene in enumerate(order):
        pixels[index] = np.asarray(demo_scenes.render(scene, rng))
        captions.append(demo_scenes.caption_of(scene))
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), captions


def to_signed(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float() / 127.5 - 1.0


def to_uint8(signed: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`to_signed`, clamped and rounded."""
    return ((signed.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def token_ids(captions: list[str]) -> torch.Tensor:
    """Loom's SD1 token chunk (BOS, words, EOS, EOS padding; 77 long) of each caption."""
    from loom.nodes.runtime.text_encoding import convention, tokenize

    pad = convention("sd1", "l").pad_token
    cache: dict[str, list[int]] = {}
    rows = []
    for caption in captions:
        if caption not in cache:
            (chunk,) = tokenize(caption, pad_token=pad, embedding_size=TEXT_WIDTH, embedding_key="clip_l",
                                embedding_dirs=[])
            cache[caption] = [int(token) for token, _weight in chunk]
        rows.append(cache[caption])
    return torch.tensor(rows)


def encode_text(text_encoder, ids: torch.Tensor) -> torch.Tensor:
    """The SD1 conditioning of token rows, computed as inference computes it."""
    from loom.nodes.runtime.text_encoding import convention, run_clip

    conv = convention("sd1", "l")
    hidden, _pooled = run_clip(text_encoder, ids.tolist(), conv.default_layer, conv.layer_norm_hidden,
                               conv.projected_pooled)
    return hidden


# ---------------------------------------------------------------------------------------------
# Autoencoder
# ---------------------------------------------------------------------------------------------

def train_vae(vae, pixels: torch.Tensor, steps: int, seed: int, batch: int = 16, crop: int = 64,
              lr: float = 1e-3, shape_weight: float = 4.0, anchor_weight: float = 1.0,
              report_every: int = 250) -> None:
    """Train the autoencoder on random crops.

    Two things make it learn these scenes fast. The shapes are a small part of each picture, so their
    pixels (those that differ from the background, read off the corner) count ``1 + shape_weight`` times.
    And the first three latent channels are pulled towards the 8×8 mean colour of the picture: the code
    starts out as a small colour picture instead of being searched for, the decoder's task becomes drawing
    sharp shapes from a coarse colour map, and the UNet later diffuses in a space where colour and place
    are plain to read. The fourth channel is free."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    limit = pixels.shape[-1] - crop
    started = time.time()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 20) * (0.5 * (1 + math.cos(math.pi * step / steps)) * 0.95 + 0.05)
        index = torch.randint(0, pixels.shape[0], (batch,), generator=generator)
        y0, x0 = (int(v) // 8 * 8 for v in torch.randint(0, limit + 1, (2,), generator=generator))
        chosen = pixels[index]
        cropped = chosen[:, :, y0:y0 + crop, x0:x0 + crop]
        images = to_signed(cropped)
        foreground = (cropped.float() - chosen[:, :, :1, :1].float()).abs().amax(1, keepdim=True) > 24
        weight = 1.0 + shape_weight * foreground.float()
        latent = vae.encode(images).latent_dist.mean
        decoded = vae.decode(latent).sample
        error = decoded - images
        reconstruction = ((error.abs() + error.pow(2)) * weight).mean() / weight.mean()
        anchor = F.mse_loss(latent[:, :3], F.avg_pool2d(images, 8))
        loss = reconstruction + anchor_weight * anchor
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % 50 == 0 or step == steps - 1:
            log(f"vae step {step}/{steps} loss {reconstruction.item():.4f} anchor {anchor.item():.4f} "
                f"({time.time() - started:.0f} s)")
        if report_every and (step + 1) % report_every == 0 and step + 1 < steps:
            log(f"vae step {step + 1}: {round_trip_report(vae)}")


@torch.no_grad()
def autoencode(vae, pixels: torch.Tensor) -> torch.Tensor:
    """``[n, 3, h, w]`` uint8 pictures through the autoencoder and back, as uint8."""
    return to_uint8(vae.decode(vae.encode(to_signed(pixels)).latent_dist.mean).sample)


def reconstruction_report(vae, pixels: torch.Tensor, count: int = 256) -> str:
    """How well the autoencoder keeps the scenes: mean error in 0..255 and the share of pixels whose
    nearest named colour survives the round trip (what the caption checker looks at)."""
    from PIL import Image

    originals = pixels[:count]
    restored = autoencode(vae, originals)
    error = (restored.float() - originals.float()).abs().mean().item()
    kept = []
    for before, after in zip(originals, restored):
        maps = [demo_scenes.colour_map(Image.fromarray(x.permute(1, 2, 0).numpy())) for x in (before, after)]
        kept.append((maps[0] == maps[1]).mean())
    return f"mean error {error:.2f}/255, named colour kept at {100 * float(np.mean(kept)):.2f} % of pixels"


def round_trip_report(vae, count: int = 40) -> str:
    """The share of scenes whose autoencoded picture the caption checker still accepts: the ceiling of
    the whole model's adherence."""
    from PIL import Image

    training, _ = demo_scenes.split_scenes()
    rng = random.Random(12345)
    accepted = 0
    was_training = vae.training
    vae.eval()
    for scene in rng.sample(training, count):
        original = torch.from_numpy(np.array(demo_scenes.render(scene, rng))).permute(2, 0, 1)[None]
        picture = autoencode(vae, original)[0].permute(1, 2, 0).numpy()
        accepted += demo_scenes.check(Image.fromarray(picture), demo_scenes.caption_of(scene)).ok
    vae.train(was_training)
    return f"checker accepts {accepted}/{count} autoencoded scenes"


@torch.no_grad()
def encode_all(vae, pixels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    return torch.cat([vae.encode(to_signed(pixels[i:i + batch])).latent_dist.mean
                      for i in range(0, pixels.shape[0], batch)])


@torch.no_grad()
def normalise_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Centre and scale each latent channel inside the VAE (its quant convolutions), exactly.

    The encoder's mean rows of ``quant_conv`` become ``(W z + b - m) * k`` and ``post_quant_conv``
    undoes it, so decoding is unchanged while latent × 0.18215 has unit spread. The log-variance rows
    are set to a constant far below zero: the posterior is a point, so sampling it equals its mean.
    """
    channels = latents.shape[1]
    centre = latents.mean(dim=(0, 2, 3))
    spread = latents.std(dim=(0, 2, 3))
    gain = (1.0 / LATENT_SCALE) / spread
    quant, post = vae.quant_conv, vae.post_quant_conv
    quant.weight[:channels] *= gain[:, None, None, None]
    quant.bias[:channels] = (quant.bias[:channels] - centre) * gain
    quant.weight[channels:] = 0
    quant.bias[channels:] = -30.0
    post.bias += (post.weight[:, :, 0, 0] @ centre)
    post.weight /= gain[None, :, None, None]
    return (latents - centre[None, :, None, None]) * gain[None, :, None, None]


# ---------------------------------------------------------------------------------------------
# Diffusion
# ---------------------------------------------------------------------------------------------

class Average:
    """An exponential moving average of a module's parameters (what gets exported)."""

    def __init__(self, modules: list[torch.nn.Module], decay: float) -> None:
        self.modules, self.decay = modules, decay
        self.shadow = [[p.detach().clone() for p in m.parameters()] for m in modules]

    @torch.no_grad()
    def update(self, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        for module, shadow in zip(self.modules, self.shadow):
            for average, parameter in zip(shadow, module.parameters()):
                average.lerp_(parameter, 1 - decay)

    @torch.no_grad()
    def state_dicts(self) -> list[dict[str, torch.Tensor]]:
        out = []
        for module, shadow in zip(self.modules, self.shadow):
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            names = [name for name, _ in module.named_parameters()]
            state.update({name: value.clone() for name, value in zip(names, shadow)})
            out.append(state)
        return out


PROBE_CAPTIONS = ("a red circle in the center on a blue background", "a white square on the left on a black background",
                  "a green triangle at the top on a yellow background", "")


@torch.no_grad()
def probe(unet, text_encoder, vae, sigmas: torch.Tensor) -> str:
    """What the UNet makes of pure noise at the first sampling step, for a few captions: the nearest named
    colour of the decoded estimate's border and centre. Before the caption is used these all agree."""
    from PIL import Image

    noise = torch.randn((1, 4, 16, 16), generator=torch.Generator().manual_seed(7)).repeat(len(PROBE_CAPTIONS), 1, 1, 1)
    sigma = sigmas[-1]
    context = encode_text(text_encoder, token_ids(list(PROBE_CAPTIONS)))
    eps = unet(noise * sigma / (sigma ** 2 + 1).sqrt(), torch.full((len(PROBE_CAPTIONS),), len(sigmas) - 1),
               context).sample
    estimate = noise * sigma - sigma * eps
    pictures = to_uint8(vae.decode(estimate / LATENT_SCALE).sample)
    words = []
    for caption, picture in zip(PROBE_CAPTIONS, pictures):
        colours = demo_scenes.colour_map(Image.fromarray(picture.permute(1, 2, 0).numpy()))
        names = list(demo_scenes.COLORS)
        border = names[np.bincount(np.concatenate([colours[:8].ravel(), colours[-8:].ravel()]), minlength=8).argmax()]
        centre = names[np.bincount(colours[48:80, 48:80].ravel(), minlength=8).argmax()]
        background = caption.rpartition(" on ")[2].partition(" ")[2].removesuffix(" background")
        words.append(f"{background or '(empty)'}: {border}/{centre}")
    return "t=999 estimate border/centre: " + ", ".join(words)


def train_diffusion(unet, text_encoder, vae, latents: torch.Tensor, ids: torch.Tensor, steps: int, seed: int,
                    out: Path, batch: int = 64, lr: float = 8e-4, save_every: int = 500,
                    stop_after: int | None = None, offset_noise: float = 0.15, probe_every: int = 250,
                    weight_cap: float | None = None) -> None:
    """Train on a cosine schedule of ``steps``; every ``save_every`` steps (and at the end) write the averaged
    weights with the VAE to ``out``.

    Two departures from plain epsilon training, both because the caption is only needed at high noise:
    the background is one flat colour, so the picture's mean leaks through SD1's noise even at t = 999
    (its terminal signal is 7 % of the picture) and a model can read it off its input instead of the
    caption; per-channel *offset noise* (``offset_noise`` × one normal number per channel) hides the mean.
    And the epsilon loss is weighted by ``1 + σ²``, the weighting of v-prediction's loss: with plain
    epsilon loss an error δ in the picture costs only δ/σ in the predicted noise, so at σ = 14.6 the picture
    has 1/213 of the weight and composition is learnt last. The file stays an epsilon-prediction SD1 model.
    ``weight_cap`` bounds that weight (the detail stage: once composition is learnt, the low-noise steps
    that draw sharp edges and corners get their share back)."""
    from loom.nodes.runtime.model_types import ModelSampling

    sigmas = ModelSampling.scaled_linear().sigmas  # SD1's, one per training timestep
    weights = (1.0 + sigmas ** 2).clamp(max=weight_cap or math.inf)
    weights = weights / weights.mean()
    empty = token_ids([""])[0]
    generator = torch.Generator().manual_seed(seed)
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=0.01, betas=(0.9, 0.99))
    average = Average([unet, text_encoder], decay=0.998)
    started = time.time()
    last = min(steps, stop_after or steps)
    for step in range(last):
        warm = min(1.0, (step + 1) / 100)
        for group in optimizer.param_groups:
            group["lr"] = lr * warm * (0.5 * (1 + math.cos(math.pi * step / steps)) * 0.97 + 0.03)
        index = torch.randint(0, latents.shape[0], (batch,), generator=generator)
        x0 = latents[index]
        rows = ids[index].clone()
        rows[torch.rand(batch, generator=generator) < 0.1] = empty
        t = torch.randint(0, len(sigmas), (batch,), generator=generator)
        sigma = sigmas[t][:, None, None, None]
        noise = torch.randn(x0.shape, generator=generator)
        noise = noise + offset_noise * torch.randn((batch, x0.shape[1], 1, 1), generator=generator)
        noisy = (x0 + sigma * noise) / (sigma ** 2 + 1).sqrt()
        context = encode_text(text_encoder, rows)
        predicted = unet(noisy, t, context).sample
        loss = (weights[t] * (predicted - noise).pow(2).mean(dim=(1, 2, 3))).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        average.update(step)
        if step % 50 == 0 or step == steps - 1:
            elapsed = time.time() - started
            log(f"diffusion step {step}/{steps} loss {loss.item():.4f} ({elapsed:.0f} s, "
                f"{elapsed / (step + 1):.2f} s/step)")
        if probe_every and (step + 1) % probe_every == 0:
            log(f"diffusion step {step + 1}: {probe(unet, text_encoder, vae, sigmas)}")
        if (step + 1) % save_every == 0 or step == last - 1:
            unet_state, text_state = average.state_dicts()
            export(unet_state, unet.config, vae, text_state, out,
                   {"trained_steps": str(step + 1), "schedule_steps": str(steps)})


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------

def export(unet_state: dict, unet_config, vae, text_state: dict, out: Path, extra: dict[str, str]) -> None:
    """Write the SD1 single-file checkpoint (float16, like published ones) atomically."""
    from safetensors.torch import save_file

    from loom.nodes.runtime.ldm_layout import clip_to_hf_ldm, unet_to_ldm, vae_to_ldm

    state = unet_to_ldm(unet_state, unet_config)
    state.update(vae_to_ldm(vae.state_dict(), vae.config))
    state.update(clip_to_hf_ldm(text_state, "cond_stage_model.transformer."))
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sorted(state.items())}
    metadata = {"name": "loom-demo", "layout": "SD1 single file", "trained_by": "tools/train_demo_model.py",
                "license": "MIT", **extra}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_suffix(".partial")
    save_file(state, str(partial), metadata=dict(sorted(metadata.items())))
    partial.replace(out)
    log(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, {extra})")


def load_exported(unet, text_encoder, path: Path) -> None:
    """Put the UNet and text encoder of a file written by :func:`export` back into the modules (the same
    renaming as the export, inverted; float16 values widened to float32)."""
    from safetensors.torch import load_file

    from loom.nodes.runtime.ldm_layout import clip_to_hf_ldm, unet_to_ldm

    tensors = load_file(str(path))
    for module, names in ((unet, unet_to_ldm({k: k for k in unet.state_dict()}, unet.config)),
                          (text_encoder, clip_to_hf_ldm({k: k for k in text_encoder.state_dict()},
                                                        "cond_stage_model.transformer."))):
        state = {own: tensors[saved].float() for saved, own in names.items()}
        missing = module.load_state_dict(state, strict=False).missing_keys
        if any(not key.endswith("position_ids") for key in missing):
            raise KeyError(f"{path} lacks {missing[:3]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--images", type=int, default=12_000, help="training pictures rendered")
    parser.add_argument("--vae-steps", type=int, default=1000)
    parser.add_argument("--unet-steps", type=int, default=2400, help="the length of the learning-rate schedule")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end the UNet phase after this many steps (the schedule still spans --unet-steps)")
    parser.add_argument("--detail-steps", type=int, default=1200,
                        help="UNet steps of the second stage, the loss weight capped at 5 (0: none)")
    parser.add_argument("--resume", type=Path, default=None,
                        help="a file this script wrote: skip to the detail stage from its UNet and text encoder")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None,
                        help="keep the trained autoencoder and the encoded latents here and reuse them")
    parser.add_argument("--autoencoder-only", action="store_true", help="stop after the autoencoder phase")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vae, unet, text_encoder = build_vae(), build_unet(), build_text_encoder()
    log(f"parameters: unet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M, vae "
        f"{sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M, text "
        f"{sum(p.numel() for p in text_encoder.parameters()) / 1e6:.2f} M")
    cached = args.cache / "autoencoder.pt" if args.cache else None
    if cached and cached.is_file():
        saved = torch.load(cached)
        vae.load_state_dict(saved["vae"])
        latents, captions = saved["latents"], saved["captions"]
        vae.eval().requires_grad_(False)
        log(f"autoencoder and {len(captions)} latents from {cached}")
    else:
        log(f"rendering {args.images} scenes")
        pixels, captions = render_dataset(args.images, args.seed)
        train_vae(vae, pixels, args.vae_steps, args.seed + 1)
        vae.eval().requires_grad_(False)
        log(f"autoencoder: {reconstruction_report(vae, pixels)}; {round_trip_report(vae)}")
        latents = normalise_latents(vae, encode_all(vae, pixels)) * LATENT_SCALE
        del pixels
        if cached:
            cached.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"vae": vae.state_dict(), "latents": latents, "captions": captions}, cached)
            log(f"saved the autoencoder and latents to {cached}")
    log(f"latents {tuple(latents.shape)}, spread {latents.std():.3f}")
    if args.autoencoder_only:
        return 0
    ids = token_ids(captions)
    if args.resume is None:
        log("composition stage")
        train_diffusion(unet, text_encoder, vae, latents, ids, args.unet_steps, args.seed + 2, args.out,
                        batch=args.batch, stop_after=args.stop_after)
    if args.detail_steps:
        # the detail stage starts from the file just written (or --resume), so a resumed run is the same run
        load_exported(unet, text_encoder, args.resume or args.out)
        log(f"detail stage from {args.resume or args.out}")
        train_diffusion(unet, text_encoder, vae, latents, ids, args.detail_steps, args.seed + 3, args.out,
                        batch=args.batch, lr=4e-4, weight_cap=5.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
