"""Loom's node library: the typed node schema, the built-in nodes, and the model runtime."""
