"""Model code on diffusers/transformers/safetensors. Never imports ``server``."""
