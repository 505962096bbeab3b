"""Model code on diffusers/transformers/safetensors. Imports neither ``loom.server`` nor the node library."""
