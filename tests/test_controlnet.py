"""ControlNet: the three file layouts, strength and start/end semantics in the loop, chaining, SDXL, Canny."""
from __future__ import annotations

import pytest
import torch

from loom.nodes.runtime.checkpoint import load_checkpoint
from loom.nodes.runtime.sampling import sample
from loom.nodes.runtime.text_encoding import encode_text
from tests.fixtures_checkpoints import checkpoint_path
from tests.fixtures_controlnet import LAYOUTS, write_controlnet


@pytest.fixture(scope="module")
def controlnet_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("controlnets")
    files = {layout: write_controlnet("sd1", folder / f"cn-{layout}.safetensors", layout=layout)
             for layout in LAYOUTS}
    files["second"] = write_controlnet("sd1", folder / "cn-second.safetensors", layout="ldm", seed=8)
    files["sdxl"] = write_controlnet("sdxl", folder / "cn-sdxl.safetensors", layout="diffusers")
    return files


@pytest.fixture
def controlnet_dir(base_dir, controlnet_files):
    folder = base_dir / "models" / "controlnet"
    folder.mkdir(parents=True, exist_ok=True)
    for path in controlnet_files.values():
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


@pytest.fixture(scope="module")
def sd1():
    model, clip, _vae = load_checkpoint(checkpoint_path("sd1"), device="cpu")
    return model, (encode_text(clip, "a house"), encode_text(clip, ""))


def _hint_image(size: int = 64) -> torch.Tensor:
    image = torch.zeros(1, size, size, 3)
    image[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1.0
    return image


def _sample(model, positive, negative, steps: int = 4, seed: int = 2):
    return sample(model, positive, negative, {"samples": torch.zeros(1, 4, 8, 8)}, seed=seed, steps=steps, cfg=5.0,
                  sampler_name="euler", scheduler="normal")


def _apply(control_net, conds, strength=1.0, start=0.0, end=1.0, image=None):
    from loom.nodes.controlnet import ControlNetApplyAdvanced

    image = _hint_image() if image is None else image
    return ControlNetApplyAdvanced.execute(conds[0], conds[1], control_net, image, strength, start, end)


def test_the_three_layouts_load_the_same_weights(controlnet_dir):
    from loom.nodes.controlnet import ControlNetLoader

    loaded = {layout: ControlNetLoader.execute(f"cn-{layout}.safetensors")[0] for layout in LAYOUTS}
    reference = loaded["diffusers"].model.state_dict()
    for layout in ("ldm", "ldm_bare"):
        assert loaded[layout].options["layout"] == layout
        assert loaded[layout].options["config"] == loaded["diffusers"].options["config"]
        state = loaded[layout].model.state_dict()
        assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)


def test_strength_zero_is_no_controlnet_and_strength_changes_the_result(controlnet_dir, sd1):
    from loom.nodes.controlnet import ControlNetLoader

    model, conds = sd1
    (control_net,) = ControlNetLoader.execute("cn-ldm.safetensors")
    plain = _sample(model, *conds)
    zero = _apply(control_net, conds, strength=0.0)
    assert zero == conds
    positive, negative = _apply(control_net, conds, strength=1.0)
    assert positive[0][1]["control"] is negative[0][1]["control"]  # shared: one batched ControlNet call
    assert "control" not in conds[0][0][1]  # the input conditioning is not modified
    controlled = _sample(model, positive, negative)
    assert not torch.allclose(controlled, plain, atol=1e-3)
    weaker = _sample(model, *_apply(control_net, conds, strength=0.3))
    assert (weaker - plain).abs().mean() < (controlled - plain).abs().mean()


def test_start_and_end_percent_choose_the_steps_by_noise_level(controlnet_dir, sd1):
    from loom.nodes.controlnet import ControlNetLoader
    from loom.nodes.runtime.denoiser import percent_to_sigma
    from loom.nodes.runtime.schedules import sampling_sigmas

    model, conds = sd1
    (control_net,) = ControlNetLoader.execute("cn-ldm.safetensors")
    timesteps: list[float] = []
    hook = control_net.model.register_forward_hook(lambda _m, args, _o: timesteps.append(float(args[1][0])))
    sigmas = sampling_sigmas(model.sampling, "normal", 6, 1.0, "euler")[:-1]
    try:
        for start, end in ((0.0, 1.0), (0.0, 0.5), (0.5, 1.0), (0.3, 0.6)):
            timesteps.clear()
            _sample(model, *_apply(control_net, conds, start=start, end=end), steps=6)
            low, high = percent_to_sigma(model.sampling, end), percent_to_sigma(model.sampling, start)
            expected = [float(model.sampling.timestep(s)) for s in sigmas if low <= float(s) <= high]
            assert timesteps == expected, (start, end)
            assert 0 < len(expected) <= 6 and (len(expected) < 6) == ((start, end) != (0.0, 1.0))
    finally:
        hook.remove()
    late_only = _sample(model, *_apply(control_net, conds, start=0.5, end=1.0), steps=6)
    early_only = _sample(model, *_apply(control_net, conds, start=0.0, end=0.5), steps=6)
    assert not torch.allclose(late_only, early_only, atol=1e-4)


def test_chained_controlnets_add_their_residuals(controlnet_dir, sd1):
    from loom.nodes.controlnet import ControlNetApply, ControlNetLoader

    model, conds = sd1
    (first,) = ControlNetLoader.execute("cn-ldm.safetensors")
    (second,) = ControlNetLoader.execute("cn-second.safetensors")
    once = _apply(first, conds, strength=0.8)
    twice = _apply(second, once, strength=0.5, image=_hint_image(32))  # another size: resized to the latent
    chained = twice[0][0][1]["control"]
    assert chained.previous is once[0][0][1]["control"]

    x = torch.randn(2, 4, 8, 8)
    sigma, timestep = torch.tensor([5.0, 5.0]), torch.tensor([700.0, 700.0])
    context = torch.cat([conds[1][0][0], conds[0][0][0]])
    total = chained.residuals(x, sigma, timestep, context, model=model)
    alone_first = once[0][0][1]["control"].residuals(x, sigma, timestep, context, model=model)
    alone_second = _apply(second, conds, strength=0.5, image=_hint_image(32))[0][0][1]["control"].residuals(
        x, sigma, timestep, context, model=model)
    for got, a, b in zip(total[0] + [total[1]], alone_first[0] + [alone_first[1]], alone_second[0] + [alone_second[1]]):
        assert torch.allclose(got, a + b, atol=1e-5)
    assert chained._resized[1].shape == (1, 3, 64, 64)

    (old_style,) = ControlNetApply.execute(conds[0], first, _hint_image(), 1.0)  # also steers the negative
    assert not torch.allclose(_sample(model, old_style, conds[1]), _sample(model, *once), atol=1e-4)


def test_sdxl_controlnet_runs_with_the_sdxl_added_conditioning(controlnet_dir):
    from loom.nodes.controlnet import ControlNetLoader

    model, clip, _vae = load_checkpoint(checkpoint_path("sdxl"), device="cpu")
    conds = (encode_text(clip, "a house"), encode_text(clip, ""))
    (control_net,) = ControlNetLoader.execute("cn-sdxl.safetensors")
    plain = _sample(model, *conds, steps=2)
    controlled = _sample(model, *_apply(control_net, conds, strength=1.0), steps=2)
    assert torch.isfinite(controlled).all() and not torch.allclose(controlled, plain, atol=1e-3)


def test_files_that_are_not_controlnets_are_clear_errors(controlnet_dir):
    from safetensors.torch import save_file

    from loom.nodes.controlnet import ControlNetLoader

    save_file({"lora_unet_conv_in.lora_down.weight": torch.zeros(2, 2)}, str(controlnet_dir / "lora.safetensors"))
    with pytest.raises(ValueError, match=r"ControlNetLoader: input 'control_net_name': could not load "
                                         r"'lora.safetensors': lora.safetensors is not a ControlNet"):
        ControlNetLoader.execute("lora.safetensors")
    save_file({"lora_controlnet": torch.zeros(1)}, str(controlnet_dir / "control-lora.safetensors"))
    with pytest.raises(ValueError, match="Control-LoRA"):
        ControlNetLoader.execute("control-lora.safetensors")


# The edge map of a 10×10 white square on black, exact: each side is a step whose two pixels tie after the blur,
# and the tie keeps the left or upper one, so the edge runs outside the square on the left and top, inside on the
# right and bottom.
SQUARE_EDGES = """
....................
....................
....................
....................
........####........
.....###....###.....
.....#........#.....
.....#........#.....
....#.........#.....
....#.........#.....
....#.........#.....
....#.........#.....
.....#........#.....
.....#........#.....
.....##########.....
....................
....................
....................
....................
....................
"""


def _edge_map(text: str) -> torch.Tensor:
    return torch.tensor([[float(c == "#") for c in line] for line in text.split()])


def test_canny_finds_the_outline_of_a_square_exactly():
    from loom.nodes.controlnet import Canny
    from loom.nodes.runtime.canny import canny

    image = torch.zeros(1, 20, 20, 3)
    image[:, 5:15, 5:15] = 1.0
    (edges,) = Canny.execute(image, 0.4, 0.8)
    assert edges.shape == (1, 20, 20, 3) and torch.equal(edges[..., 0], edges[..., 2])
    expected = _edge_map(SQUARE_EDGES)
    assert torch.equal(edges[0, :, :, 0], expected)
    # the same map for the other polarity and in double precision (other rounding), transposed for the transpose
    assert torch.equal(Canny.execute(1.0 - image, 0.4, 0.8)[0][0, :, :, 0], expected)
    assert torch.equal(canny(image.movedim(-1, 1).double(), 0.4, 0.8)[0, 0], expected.double())
    assert torch.equal(Canny.execute(image.transpose(1, 2), 0.4, 0.8)[0][0, :, :, 0], expected.t())
    (none,) = Canny.execute(torch.full((1, 20, 20, 3), 0.5), 0.4, 0.8)
    assert none.sum() == 0
    with pytest.raises(ValueError, match="Canny: input 'low_threshold'"):
        Canny.execute(image, 0.9, 0.2)


@pytest.mark.parametrize("rounding", [-1e-7, 0.0, 1e-7])
def test_canny_tie_keeps_the_left_or_upper_pixel_whatever_the_rounding(rounding):
    """A step's two tied magnitudes, one of them off by a float step either way: the left (upper) one is kept."""
    from loom.nodes.runtime.canny import non_maximum_suppression, tie_tolerance

    row = torch.tensor([0.0, 1.0, 2.0, 2.0 + rounding, 1.0, 0.0])
    tolerance = tie_tolerance(torch.ones(1, 1, 1, 1))
    across = non_maximum_suppression(row.view(1, 1, 1, 6), torch.zeros(1, 1, 1, 6), tolerance)
    assert across[0, 0, 0].tolist() == [False, False, True, False, False, False]
    down = non_maximum_suppression(row.view(1, 1, 6, 1), torch.full((1, 1, 6, 1), 2.0), tolerance)
    assert down[0, 0, :, 0].tolist() == [False, False, True, False, False, False]
    # either polarity of the gradient (180°, 270°) compares the same two neighbours
    assert torch.equal(non_maximum_suppression(row.view(1, 1, 1, 6), torch.full((1, 1, 1, 6), 4.0), tolerance),
                       across)
    # along a diagonal both comparisons are strict: a tie keeps neither pixel
    diagonal = torch.zeros(1, 1, 4, 4)
    diagonal[0, 0, 1, 1], diagonal[0, 0, 2, 2] = 2.0, 2.0 + rounding
    kept = non_maximum_suppression(diagonal, torch.ones(1, 1, 4, 4), tolerance)
    assert not kept[0, 0, 1, 1] and not kept[0, 0, 2, 2]
    # a real difference, far above the tolerance, still decides
    row[3] = 2.01
    assert non_maximum_suppression(row.view(1, 1, 1, 6), torch.zeros(1, 1, 1, 6),
                                   tolerance)[0, 0, 0].tolist() == [False, False, False, True, False, False]
