"""Socket types (nodes/kernel/sockets.py) and the executor's check of every value linked into a socket.

A value of the wrong type reaching a socket (through a ``*`` output, a node pack, a checkpoint without a
VAE) fails its prompt before the node runs, with ``exception_type`` ``invalid_input_type`` and a message
naming the node, the input and the problem; a literal in place of a link fails validation the same way.
"""
from __future__ import annotations

import aiohttp
import pytest
import torch

from loom.nodes.kernel import sockets
from loom.nodes.kernel.schema import Float, Node, Output, Schema, Socket, String
from loom.nodes.runtime.clip_vision import ClipVisionModel, ClipVisionOutput
from loom.nodes.runtime.controlnet import ControlNet
from loom.nodes.runtime.custom_sampling import CFGGuider, EmptyNoise, RandomNoise, SamplerChoice
from loom.nodes.runtime.model_types import DiffusionModel, TextEncoderModel, VAEModel
from loom.nodes.runtime.style_model import StyleModel
from loom.server.executor import Executor
from loom.server.validation import validate_prompt
from tests.fixtures_server import LiveServer, new_client_id, queue_prompt, run_async, wait_done
from tests.fixtures_sockets import ExecutionFailed, registry_with, run_node


def _bare(cls: type) -> object:
    """An instance of a runtime value class without its (heavy) contents: enough for a type check."""
    return object.__new__(cls)


IMAGE = torch.zeros(1, 8, 8, 3)
CONDITIONING = [[torch.zeros(1, 77, 8), {}]]
LATENT = {"samples": torch.zeros(1, 4, 8, 8)}


@pytest.mark.parametrize("kind, good", [
    (sockets.MODEL, _bare(DiffusionModel)),
    (sockets.CLIP, _bare(TextEncoderModel)),
    (sockets.VAE, _bare(VAEModel)),
    (sockets.CONTROL_NET, _bare(ControlNet)),
    (sockets.CLIP_VISION, _bare(ClipVisionModel)),
    (sockets.CLIP_VISION_OUTPUT, _bare(ClipVisionOutput)),
    (sockets.STYLE_MODEL, _bare(StyleModel)),
    (sockets.SAMPLER, SamplerChoice("euler")),
    (sockets.NOISE, RandomNoise(3)),
    (sockets.NOISE, EmptyNoise()),
    (sockets.GUIDER, _bare(CFGGuider)),
    (sockets.CONDITIONING, CONDITIONING),
    (sockets.CONDITIONING, []),
    (sockets.LATENT, LATENT),
    (sockets.IMAGE, IMAGE),
    (sockets.MASK, torch.zeros(1, 8, 8)),
    (sockets.MASK, torch.zeros(8, 8)),
    (sockets.SIGMAS, torch.tensor([1.0, 0.0])),
])
def test_each_socket_type_takes_its_values_and_names_what_is_wrong_with_others(kind, good):
    assert kind.check(good) is None
    for bad in (7, "text", {"samples": "x"}, [[1, 2, 3]], torch.zeros(2, 2, 2, 2, 2)):
        problem = kind.check(bad)
        assert problem is not None and problem.startswith("is not a") and kind.name in problem, (kind, bad)
        assert "got " in problem
    assert kind.check(None).startswith(f"is None, not a{'n' if kind.name[0] in 'AEIOU' else ''} {kind.name}")


def test_messages_say_what_a_value_is_and_what_arrived():
    assert sockets.IMAGE.check(torch.zeros(8, 8)) == ("is not an IMAGE (a [batch, height, width, channels] "
                                                       "tensor); got a Tensor of shape (8, 8)")
    assert sockets.VAE.check(3).startswith("is not a VAE (a VAE model); got int; connect a checkpoint or VAE loader")
    assert "the checkpoint has no valid VAE model" in sockets.VAE.check(None)
    assert sockets.CONDITIONING.check([torch.zeros(1)]).endswith("got a list of 1 items")
    assert "dict with keys ['latent']" in sockets.LATENT.check({"latent": 1})


def test_unions_and_unchecked_types():
    either = sockets.socket_type("IMAGE,MASK")
    assert either is sockets.socket_type("IMAGE,MASK")
    assert either.check(IMAGE) is None and either.check(torch.zeros(1, 8, 8)) is None
    assert "IMAGE,MASK" in either.check(torch.zeros(3))
    for name in ("*", "INT", "STRING", "SOME_PACK_TYPE", "IMAGE,SOME_PACK_TYPE"):
        assert sockets.socket_type(name) is None


def test_a_class_registered_by_a_node_pack_is_taken():
    kind = sockets.SocketType("PACK_THING", "a pack's thing")

    class Thing:
        pass

    assert kind.check(Thing()) is not None  # nothing registered: nothing is one
    kind.register(Thing)
    kind.register(Thing)
    assert kind.check(Thing()) is None and kind._classes == (Thing,)


def test_socket_takes_a_type_object_or_its_name():
    assert Socket("model", sockets.MODEL).type == "MODEL" == Socket("model", "MODEL").type
    assert Socket("model", sockets.MODEL).info() == ["MODEL", {}]
    assert Socket("vae", "VAE", optional=True).check_linked(None) is None
    assert Socket("clip", "CLIP", takes_none=True).check_linked(None) is None
    assert Socket("vae", "VAE").check_linked(None).startswith("is None")
    assert Socket("anything", "*").check_linked(object()) is None


# -------------------------------------------------------------------------------------------------
# the executor: one check per linked value, before the node runs
# -------------------------------------------------------------------------------------------------

GUIDER = _bare(CFGGuider)
SIGMAS = torch.tensor([1.0, 0.0])

WRONG = [  # (node, its inputs with one wrong socket value, the input, the type)
    ("ModelSamplingSD3", {"model": "model.safetensors", "shift": 3.0}, "model", "MODEL"),
    ("CLIPSetLastLayer", {"clip": IMAGE, "stop_at_clip_layer": -1}, "clip", "CLIP"),
    ("VAEDecode", {"samples": LATENT, "vae": _bare(DiffusionModel)}, "vae", "VAE"),
    ("ConditioningZeroOut", {"conditioning": LATENT}, "conditioning", "CONDITIONING"),
    ("LatentMultiply", {"samples": IMAGE, "multiplier": 2.0}, "samples", "LATENT"),
    ("Canny", {"image": LATENT, "low_threshold": 0.4, "high_threshold": 0.8}, "image", "IMAGE"),
    ("SetLatentNoiseMask", {"samples": LATENT, "mask": 0.5}, "mask", "MASK"),
    ("ControlNetApply", {"conditioning": CONDITIONING, "control_net": _bare(StyleModel), "image": IMAGE,
                         "strength": 1.0}, "control_net", "CONTROL_NET"),
    ("CLIPVisionEncode", {"clip_vision": _bare(ControlNet), "image": IMAGE, "crop": "center"},
     "clip_vision", "CLIP_VISION"),
    ("unCLIPConditioning", {"conditioning": CONDITIONING, "clip_vision_output": IMAGE, "strength": 1.0,
                            "noise_augmentation": 0.0}, "clip_vision_output", "CLIP_VISION_OUTPUT"),
    ("StyleModelApply", {"conditioning": CONDITIONING, "style_model": _bare(ClipVisionModel),
                         "clip_vision_output": _bare(ClipVisionOutput), "strength": 1.0,
                         "strength_type": "multiply"}, "style_model", "STYLE_MODEL"),
    ("SamplerCustomAdvanced", {"noise": 1234, "guider": GUIDER, "sampler": SamplerChoice("euler"),
                               "sigmas": SIGMAS, "latent_image": LATENT}, "noise", "NOISE"),
    ("SamplerCustomAdvanced", {"noise": RandomNoise(1), "guider": _bare(DiffusionModel),
                               "sampler": SamplerChoice("euler"), "sigmas": SIGMAS, "latent_image": LATENT},
     "guider", "GUIDER"),
    ("SamplerCustomAdvanced", {"noise": RandomNoise(1), "guider": GUIDER, "sampler": "euler", "sigmas": SIGMAS,
                               "latent_image": LATENT}, "sampler", "SAMPLER"),
    ("FlipSigmas", {"sigmas": torch.zeros(2, 2)}, "sigmas", "SIGMAS"),
]


@pytest.mark.parametrize("class_type, inputs, name, type_name", WRONG, ids=[f"{w[0]}-{w[3]}" for w in WRONG])
def test_a_wrong_value_linked_into_a_socket_fails_before_the_node_runs(class_type, inputs, name, type_name):
    with pytest.raises(ExecutionFailed) as failed:
        run_node(class_type, **inputs)
    error = failed.value.error
    assert error["node_id"] == "node" and error["node_type"] == class_type
    assert error["exception_type"] == "invalid_input_type"
    assert error["exception_class"] == "loom.nodes.kernel.schema.InputValueError"
    article = "an" if type_name[0] in "AEIOU" else "a"
    assert error["exception_message"].startswith(f"{class_type}: input '{name}' is not {article} {type_name} (")
    assert error["executed"] == [key for key in error["executed"] if key.startswith("emit_")]  # it never ran


def test_none_from_a_checkpoint_without_the_part_is_named_and_an_optional_input_takes_it():
    with pytest.raises(ExecutionFailed, match="VAEEncode: input 'vae' is None, not a VAE: if it comes from a "
                                              "checkpoint loader, the checkpoint has no valid VAE model"):
        run_node("VAEEncode", pixels=IMAGE, vae=None)
    destination, source = torch.zeros(1, 8, 8, 3), torch.ones(1, 4, 4, 3)
    (out,) = run_node("ImageCompositeMasked", destination=destination, source=source, x=0, y=0,
                      resize_source=False, mask=None)
    assert out[0, :4, :4].eq(1).all() and out[0, 4:].eq(0).all()


class _EmitList(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("EmitList", inputs=[String("kind")], outputs=[Output("*", is_list=True)])

    @classmethod
    def execute(cls, kind: str) -> tuple:
        return ([LATENT, "not a latent"],)


def test_an_item_of_a_list_is_named():
    from loom.nodes.latent_ops import LatentMultiply

    registry = registry_with(LatentMultiply)
    registry.add(_EmitList)
    prompt = {"1": {"class_type": "EmitList", "inputs": {"kind": "x"}},
              "2": {"class_type": "LatentMultiply", "inputs": {"samples": ["1", 0], "multiplier": 2.0}},
              "3": {"class_type": "KeepValue", "inputs": {"key": "k", "value": ["2", 0]}}}
    result = Executor(registry).execute(prompt, "list")
    assert result.error["exception_message"].startswith(
        "LatentMultiply: input 'samples' (item 1 of the 2 it received) is not a LATENT")


def test_a_literal_in_place_of_a_link_fails_validation_naming_the_input(registry):
    prompt = {"1": {"class_type": "VAEDecode", "inputs": {"samples": {"samples": [[0.0]]}, "vae": "vae.pt"}},
              "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}}
    result = validate_prompt(prompt, registry)
    assert not result.ok
    errors = result.node_errors["1"]["errors"]
    assert [e["extra_info"]["input_name"] for e in errors] == ["samples", "vae"]
    assert {e["type"] for e in errors} == {"invalid_input_type"}
    assert errors[1]["details"].startswith("vae is not a VAE (a VAE model); got str")
    assert "a VAE input takes a link" in errors[1]["details"]


def test_the_server_reports_a_wrong_value_and_runs_the_next_prompt(tmp_path, registry):
    """An INT passed through a ``*`` output into CLIPTextEncode's clip: the client gets the error, the server
    stays up and runs the next prompt."""
    from loom.nodes.kernel import folders
    from loom.server.app import ServerConfig

    previous = folders.current()
    folders.configure(tmp_path)
    live = LiveServer(ServerConfig(registry=registry))
    wrong = {"1": {"class_type": "TestConstInt", "inputs": {"value": 5}},
             "2": {"class_type": "TestSleep", "inputs": {"value": ["1", 0], "seconds": 0.0, "steps": 1}},
             "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "a fox", "clip": ["2", 0]}},
             "4": {"class_type": "TestOutput", "inputs": {"value": ["3", 0]}}}
    fine = {"1": {"class_type": "TestConstInt", "inputs": {"value": 6}},
            "4": {"class_type": "TestOutput", "inputs": {"value": ["1", 0]}}}

    async def main():
        client_id = new_client_id()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"{live.ws_url}?clientId={client_id}") as ws:
                await ws.receive_json()
                queued = await queue_prompt(session, live.url, wrong, client_id)
                seen = await wait_done(ws, queued["prompt_id"])
                error = next(m["data"] for m in seen if m["type"] == "execution_error")
                assert error["node_id"] == "3" and error["node_type"] == "CLIPTextEncode"
                assert error["exception_type"] == "invalid_input_type"
                assert error["exception_message"].startswith(
                    "CLIPTextEncode: input 'clip' is not a CLIP (a text encoder); got int")
                queued = await queue_prompt(session, live.url, fine, client_id)
                seen = await wait_done(ws, queued["prompt_id"])
                assert any(m["type"] == "execution_success" for m in seen)

    try:
        run_async(main())
    finally:
        live.close()
        folders.configure(previous.base_dir, previous.models_dir, previous.extra_paths)



def test_the_message_says_where_the_value_came_from():
    with pytest.raises(ExecutionFailed) as failed:
        run_node("VAEDecode", samples=LATENT, vae=3)
    assert failed.value.error["exception_message"].endswith("(it came from output 0 of node emit_vae, EmitValue)")


class _Ranged(Node):
    @classmethod
    def define_schema(cls) -> Schema:
        return Schema("Ranged", inputs=[Float("scale", min=-2.0, max=5.0), Float("free"), String("text")])


@pytest.mark.parametrize("name, value, message", [
    ("scale", 5.5, r"Ranged: input 'scale' must be between -2.0 and 5.0, got 5.5"),
    ("scale", -3, r"Ranged: input 'scale' must be between -2.0 and 5.0, got -3"),
    ("scale", float("nan"), r"Ranged: input 'scale' must be a number, got nan"),
    ("scale", True, r"Ranged: input 'scale' must be a number, got True"),
    ("free", "1.0", r"Ranged: input 'free' must be a number, got '1.0'"),
    ("free", float("inf"), r"Ranged: input 'free' must be a finite number, got inf"),
])
def test_a_linked_float_is_held_to_the_range_its_schema_declares(name, value, message):
    with pytest.raises(ValueError, match=f"^{message}$"):
        _Ranged.linked_float(name, value)


def test_a_linked_float_in_range_comes_back_as_a_float():
    assert _Ranged.linked_float("scale", 5) == 5.0 and isinstance(_Ranged.linked_float("scale", 5), float)
    assert _Ranged.linked_float("free", -1e300) == -1e300  # no declared range: any finite number
    with pytest.raises(TypeError, match="Ranged has no FLOAT input 'text'"):
        _Ranged.linked_float("text", 1.0)
