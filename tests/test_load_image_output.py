"""LoadImageOutput (ComfyUI nodes.py): LoadImage over the output folder, annotated ``"name [output]"`` names."""
from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from loom.nodes.image import LoadImage, LoadImageOutput
from loom.server.validation import validate_prompt


def test_object_info_lists_the_output_pictures_annotated(base_dir, registry):
    (base_dir / "output").mkdir(exist_ok=True)
    Image.new("RGB", (4, 3)).save(base_dir / "output" / "doll.webp")
    (base_dir / "output" / "notes.txt").write_text("not a picture")
    info = json.loads(json.dumps(registry.object_info("LoadImageOutput")["LoadImageOutput"]))
    assert info["category"] == "image" and info["experimental"] is True
    assert info["input"]["required"]["image"] == [["doll.webp [output]"], {"image_upload": True}]
    assert info["output"] == ["IMAGE", "MASK"]


def test_it_loads_what_a_run_saved_and_validation_names_a_missing_file(base_dir, registry):
    (base_dir / "output").mkdir(exist_ok=True)
    pixels = (np.random.default_rng(0).random((3, 4, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(base_dir / "output" / "doll.png")
    image, mask = LoadImageOutput.execute("doll.png [output]")
    torch.testing.assert_close(image, torch.from_numpy(pixels).float()[None] / 255.0)
    assert mask.shape == (1, 64, 64)
    assert LoadImageOutput.fingerprint("doll.png [output]") == LoadImage.fingerprint("doll.png [output]")
    prompt = {"1": {"class_type": "LoadImageOutput", "inputs": {"image": "gone.png [output]"}},
              "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    messages = validate_prompt(prompt, registry).messages()
    assert any("LoadImageOutput" in m and "'gone.png' is not in the output directory" in m for m in messages), messages
