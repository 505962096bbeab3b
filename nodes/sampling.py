"""KSampler and KSamplerAdvanced: ComfyUI's sampling nodes, with its input names, order, defaults and ranges.

The sampler combo lists all of ComfyUI's sampler names so that shared workflows keep their shape;
validation refuses a name Loom does not implement, naming it and the ones it does.
"""
from __future__ import annotations

from typing import Any

from loom.nodes.runtime.samplers import SAMPLER_NAMES, sampler_spec
from loom.nodes.runtime.schedules import SCHEDULER_NAMES
from loom.nodes.kernel.schema import SEED_MAX, Combo, Float, Int, Node, Output, Schema, Socket, register


def sampler_name_problem(sampler_name: str) -> str | None:
    """What is wrong with a ``sampler_name`` input (unknown, not implemented), or ``None``."""
    try:
        sampler_spec(sampler_name)
    except ValueError as exc:
        return f"sampler_name: {exc}"
    return None


def _check_sampler(node: str, sampler_name: str) -> None:
    try:
        sampler_spec(sampler_name)
    except ValueError as exc:
        raise ValueError(f"{node}: input 'sampler_name': {exc}") from None


def _check_positive(node: str, positive: Any) -> None:
    if not positive:
        raise ValueError(f"{node}: input 'positive' is an empty CONDITIONING: there is nothing to guide the "
                         "sampling towards")


def _check_controls(node: str, model: Any, **conditionings: Any) -> None:
    """ControlNets on the conditionings must be made for the kind of model being sampled."""
    from loom.nodes.runtime.controlnet import check_controls

    for name, value in conditionings.items():
        check_controls(node, name, value, model)


def _common_inputs() -> list:
    return [Int("steps", default=20, min=1, max=10000, tooltip="The number of steps used in the denoising process."),
            Float("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01,
                  tooltip="The Classifier-Free Guidance scale balances creativity and adherence to the prompt. "
                          "Higher values result in images more closely matching the prompt however too high "
                          "values will negatively impact quality."),
            Combo("sampler_name", options_source=SAMPLER_NAMES,
                  tooltip="The algorithm used when sampling, this can affect the quality, speed, and style of "
                          "the generated output."),
            Combo("scheduler", options_source=SCHEDULER_NAMES,
                  tooltip="The scheduler controls how noise is gradually removed to form the image."),
            Socket("positive", "CONDITIONING",
                   tooltip="The conditioning describing the attributes you want to include in the image."),
            Socket("negative", "CONDITIONING",
                   tooltip="The conditioning describing the attributes you want to exclude from the image."),
            Socket("latent_image", "LATENT", tooltip="The latent image to denoise.")]


@register
class KSampler(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        common = _common_inputs()
        return Schema(
            "KSampler", display_name="KSampler", category="model/sampling",
            description="Uses the provided model, positive and negative conditioning to denoise the latent image.",
            inputs=[Socket("model", "MODEL", tooltip="The model used for denoising the input latent."),
                    Int("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                        tooltip="The random seed used for creating the noise."),
                    *common,
                    Float("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                          tooltip="The amount of denoising applied, lower values will maintain the structure of "
                                  "the initial image allowing for image to image sampling.")],
            outputs=[Output("LATENT", tooltip="The denoised latent.")])

    @classmethod
    def validate_inputs(cls, sampler_name: str) -> bool | str:
        return sampler_name_problem(sampler_name) or True

    @classmethod
    def execute(cls, model: Any, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                positive: Any, negative: Any, latent_image: dict, denoise: float = 1.0) -> tuple:
        from loom.nodes.runtime.sampling import sample

        _check_sampler("KSampler", sampler_name)
        _check_positive("KSampler", positive)
        _check_controls("KSampler", model, positive=positive, negative=negative)
        samples = sample(model, positive, negative, latent_image, seed=seed, steps=steps, cfg=cfg,
                         sampler_name=sampler_name, scheduler=scheduler, denoise=denoise)
        out = dict(latent_image)
        out["samples"] = samples
        return (out,)


@register
class KSamplerAdvanced(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema(
            "KSamplerAdvanced", display_name="KSampler (Advanced)", category="model/sampling",
            inputs=[Socket("model", "MODEL"),
                    Combo("add_noise", options_source=("enable", "disable")),
                    Int("noise_seed", default=0, min=0, max=SEED_MAX, control_after_generate=True),
                    *_common_inputs(),
                    Int("start_at_step", default=0, min=0, max=10000),
                    Int("end_at_step", default=10000, min=0, max=10000),
                    Combo("return_with_leftover_noise", options_source=("disable", "enable"))],
            outputs=[Output("LATENT")])

    @classmethod
    def validate_inputs(cls, sampler_name: str) -> bool | str:
        return sampler_name_problem(sampler_name) or True

    @classmethod
    def execute(cls, model: Any, add_noise: str, noise_seed: int, steps: int, cfg: float, sampler_name: str,
                scheduler: str, positive: Any, negative: Any, latent_image: dict, start_at_step: int,
                end_at_step: int, return_with_leftover_noise: str) -> tuple:
        from loom.nodes.runtime.sampling import sample

        _check_sampler("KSamplerAdvanced", sampler_name)
        _check_positive("KSamplerAdvanced", positive)
        _check_controls("KSamplerAdvanced", model, positive=positive, negative=negative)
        samples = sample(model, positive, negative, latent_image, seed=noise_seed, steps=steps, cfg=cfg,
                         sampler_name=sampler_name, scheduler=scheduler, denoise=1.0,
                         disable_noise=add_noise == "disable", start_step=start_at_step, last_step=end_at_step,
                         force_full_denoise=return_with_leftover_noise != "enable")
        out = dict(latent_image)
        out["samples"] = samples
        return (out,)
