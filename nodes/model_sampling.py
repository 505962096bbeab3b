"""ComfyUI's model-sampling nodes: ModelSamplingDiscrete, ModelSamplingSD3, ModelSamplingAuraFlow,
ModelSamplingFlux and ModelSamplingContinuousEDM (``comfy_extras/nodes_model_advanced.py``).

Each returns a new MODEL handle with another model-sampling object (:mod:`nodes.runtime.model_sampling`),
ComfyUI's ``add_object_patch("model_sampling", ...)``: the schedules, the samplers' flow branches and the
model adapter then follow it. The weights are shared, the input handle is unchanged.
"""
from __future__ import annotations

from typing import Any

from loom.nodes.kernel.schema import MAX_RESOLUTION, Boolean, Combo, Float, Int, Node, Output, Schema, Socket, register

DISCRETE_SAMPLINGS = ("eps", "v_prediction", "lcm", "x0", "img_to_img")
EDM_SAMPLINGS = ("v_prediction", "edm", "edm_playground_v2.5", "eps", "cosmos_rflow")
EDM_UNSUPPORTED = {"edm_playground_v2.5": "Playground v2.5's latent format",
                   "cosmos_rflow": "the Cosmos model family"}
"""ComfyUI's choices that need something Loom does not have."""


def _shift(name: str, default: float) -> Float:
    return Float(name, default=default, min=0.0, max=100.0, step=0.01)


@register
class ModelSamplingDiscrete(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ModelSamplingDiscrete", category="advanced/model",
                      inputs=[Socket("model", "MODEL"), Combo("sampling", options_source=DISCRETE_SAMPLINGS),
                              Boolean("zsnr", default=False)],
                      outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model: Any, sampling: str, zsnr: bool) -> tuple:
        from loom.nodes.runtime.model_sampling import DistilledSampling, ModelSampling

        if sampling not in DISCRETE_SAMPLINGS:
            raise ValueError(f"ModelSamplingDiscrete: input 'sampling': {sampling!r} is not one of "
                             f"{', '.join(DISCRETE_SAMPLINGS)}")
        prediction = "v" if sampling == "v_prediction" else sampling
        table = ModelSampling.scaled_linear(prediction=prediction, zero_terminal_snr=bool(zsnr))
        if sampling == "lcm":
            table = DistilledSampling.from_full(table.sigmas, prediction="lcm")
        return (model.replace(sampling=table),)


@register
class ModelSamplingSD3(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ModelSamplingSD3", category="advanced/model",
                      inputs=[Socket("model", "MODEL"), _shift("shift", 3.0)], outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model: Any, shift: float) -> tuple:
        from loom.nodes.runtime.model_sampling import FlowSampling

        return (model.replace(sampling=FlowSampling(shift=float(shift), multiplier=1000)),)


@register
class ModelSamplingAuraFlow(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ModelSamplingAuraFlow", category="advanced/model",
                      inputs=[Socket("model", "MODEL"), _shift("shift", 1.73)], outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model: Any, shift: float) -> tuple:
        from loom.nodes.runtime.model_sampling import FlowSampling

        return (model.replace(sampling=FlowSampling(shift=float(shift), multiplier=1.0)),)


@register
class ModelSamplingFlux(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ModelSamplingFlux", category="advanced/model",
                      inputs=[Socket("model", "MODEL"), _shift("max_shift", 1.15), _shift("base_shift", 0.5),
                              Int("width", default=1024, min=16, max=MAX_RESOLUTION, step=8),
                              Int("height", default=1024, min=16, max=MAX_RESOLUTION, step=8)],
                      outputs=[Output("MODEL")])

    @classmethod
    def execute(cls, model: Any, max_shift: float, base_shift: float, width: int, height: int) -> tuple:
        from loom.nodes.runtime.model_sampling import FluxSampling, flux_mu

        mu = flux_mu(int(width), int(height), float(max_shift), float(base_shift))
        return (model.replace(sampling=FluxSampling(shift=mu)),)


@register
class ModelSamplingContinuousEDM(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("ModelSamplingContinuousEDM", category="advanced/model",
                      inputs=[Socket("model", "MODEL"), Combo("sampling", options_source=EDM_SAMPLINGS),
                              Float("sigma_max", default=120.0, min=0.0, max=1000.0, step=0.001, round=False),
                              Float("sigma_min", default=0.002, min=0.0, max=1000.0, step=0.001, round=False)],
                      outputs=[Output("MODEL")])

    @classmethod
    def validate_inputs(cls, sampling: str) -> bool | str:
        if sampling in EDM_UNSUPPORTED:
            return f"sampling {sampling!r} needs {EDM_UNSUPPORTED[sampling]}, which Loom does not support"
        return True

    @classmethod
    def execute(cls, model: Any, sampling: str, sigma_max: float, sigma_min: float) -> tuple:
        from loom.nodes.runtime.model_sampling import ContinuousEDMSampling

        verdict = cls.validate_inputs(sampling)
        if verdict is not True:
            raise ValueError(f"ModelSamplingContinuousEDM: input 'sampling': {verdict}")
        prediction = {"v_prediction": "v", "eps": "eps", "edm": "edm"}[sampling]
        try:
            table = ContinuousEDMSampling(prediction, float(sigma_min), float(sigma_max),
                                          sigma_data=0.5 if sampling == "edm" else 1.0)
        except ValueError as problem:
            raise ValueError(f"ModelSamplingContinuousEDM: {problem}") from None
        return (model.replace(sampling=table),)
