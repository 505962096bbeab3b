"""Test support for the workflow-format tests: stand-in core node schemas and small UI-JSON builders.

The stand-ins carry ComfyUI's real class names and input names/order (KSampler's seed with
control_after_generate, LoadImage's image_upload combo, ...) so that UI workflows shaped like ComfyUI's
convert exactly; they are conversion-only shapes, not the real nodes (their ``execute`` is never called).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loom.nodes.kernel.schema import (SEED_MAX, Boolean, Combo, Float, Int, Node, NodeRegistry, Output, Schema, Socket,
                          String)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "workflows"
SAMPLERS = ["euler", "euler_ancestral", "dpmpp_2m"]
SCHEDULERS = ["normal", "karras", "simple"]


def _standin(schema: Schema) -> type[Node]:
    return type(schema.name, (Node,), {"define_schema": classmethod(lambda cls: schema),
                                        "python_module": "tests.standins"})


STANDIN_SCHEMAS = [
    Schema("CheckpointLoaderSimple", display_name="Load Checkpoint",
           inputs=[Combo("ckpt_name", options_source=["v1-5-pruned-emaonly.safetensors", "other.safetensors"])],
           outputs=[Output("MODEL"), Output("CLIP"), Output("VAE")]),
    Schema("CLIPTextEncode", display_name="CLIP Text Encode (Prompt)",
           inputs=[String("text", multiline=True, dynamic_prompts=True), Socket("clip", "CLIP")],
           outputs=[Output("CONDITIONING")]),
    Schema("EmptyLatentImage", display_name="Empty Latent Image",
           inputs=[Int("width", default=512, min=16, max=16384, step=8),
                   Int("height", default=512, min=16, max=16384, step=8),
                   Int("batch_size", default=1, min=1, max=4096)],
           outputs=[Output("LATENT")]),
    Schema("KSampler", inputs=[
        Socket("model", "MODEL"), Int("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True),
        Int("steps", default=20, min=1, max=10000), Float("cfg", default=8.0, min=0.0, max=100.0),
        Combo("sampler_name", options_source=SAMPLERS), Combo("scheduler", options_source=SCHEDULERS),
        Socket("positive", "CONDITIONING"), Socket("negative", "CONDITIONING"), Socket("latent_image", "LATENT"),
        Float("denoise", default=1.0, min=0.0, max=1.0)], outputs=[Output("LATENT")]),
    Schema("VAEDecode", display_name="VAE Decode", inputs=[Socket("samples", "LATENT"), Socket("vae", "VAE")],
           outputs=[Output("IMAGE")]),
    Schema("SaveImage", display_name="Save Image",
           inputs=[Socket("images", "IMAGE"), String("filename_prefix", default="ComfyUI")], output_node=True,
           outputs=[Output("IMAGE", "images")]),
    Schema("PreviewImage", display_name="Preview Image", inputs=[Socket("images", "IMAGE")], output_node=True,
           outputs=[Output("IMAGE", "images")]),
    Schema("LoadImage", display_name="Load Image",
           inputs=[Combo("image", options_source=["example.png"], image_upload=True)],
           outputs=[Output("IMAGE"), Output("MASK")]),
    Schema("LoadImageMask", display_name="Load Image (as Mask)",
           inputs=[Combo("image", options_source=["example.png"], image_upload=True),
                   Combo("channel", options_source=["alpha", "red", "green", "blue"])],
           outputs=[Output("MASK")]),
    Schema("LoraLoader", display_name="Load LoRA",
           inputs=[Socket("model", "MODEL"), Socket("clip", "CLIP"),
                   Combo("lora_name", options_source=["a.safetensors"]),
                   Float("strength_model", default=1.0), Float("strength_clip", default=1.0)],
           outputs=[Output("MODEL"), Output("CLIP")]),
    Schema("ImageScale", display_name="Upscale Image",
           inputs=[Socket("image", "IMAGE"), Combo("upscale_method", options_source=["nearest-exact", "bilinear"]),
                   Int("width", default=512), Int("height", default=512),
                   Combo("crop", options_source=["disabled", "center"])],
           outputs=[Output("IMAGE")]),
    Schema("ConditioningAverage", inputs=[Socket("conditioning_to", "CONDITIONING"),
                                          Socket("conditioning_from", "CONDITIONING"),
                                          Float("conditioning_to_strength", default=1.0)],
           outputs=[Output("CONDITIONING")]),
    Schema("ImageToMaskStandIn", inputs=[Socket("image", "IMAGE"), Boolean("invert", default=False)],
           outputs=[Output("MASK")]),
    # not a ComfyUI node: a combo with control_after_generate (the editor adds a filter box after it)
    Schema("ComboControlStandIn", inputs=[Combo("choice", options_source=["a", "b", "c"], control_after_generate=True),
                                          Int("count", default=1)],
           outputs=[Output("STRING")]),
]


def core_registry() -> NodeRegistry:
    registry = NodeRegistry()
    for schema in STANDIN_SCHEMAS:
        registry.add(_standin(schema))
    return registry


def load_fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


# ---- builders for small hand-written UI workflows --------------------------------------------

def inp(name: str, type_: str, link: int | None = None, widget: str | None = None, **extra: Any) -> dict:
    slot = {"name": name, "type": type_, "link": link}
    if widget:
        slot["widget"] = {"name": widget}
    return slot | extra


def out(name: str, type_: str, links: list[int] | None = None) -> dict:
    return {"name": name, "type": type_, "links": links}


def node(node_id: Any, type_: str, inputs: list | None = None, outputs: list | None = None,
         widgets: Any = None, mode: int = 0, **extra: Any) -> dict:
    entry = {"id": node_id, "type": type_, "pos": [0, 0], "size": [200, 100], "flags": {}, "order": 0,
             "mode": mode, "inputs": inputs or [], "outputs": outputs or [], "properties": {}}
    if widgets is not None:
        entry["widgets_values"] = widgets
    return entry | extra


def workflow(nodes: list, links: list, **extra: Any) -> dict:
    return {"last_node_id": 0, "last_link_id": 0, "nodes": nodes, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4} | extra
