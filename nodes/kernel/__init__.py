"""The kernel: what the node library, the model runtime and the server all share.

``schema`` (the typed node schema and the registry), ``sockets`` (the link types and their checks),
``progress`` (the execution context a node reports through), ``folders`` (model and output folders),
``config`` (the runtime configuration) and ``services`` (what the server asks of the model runtime,
registered by it). The kernel imports nothing else of Loom; the server imports nothing of ``loom.nodes``
but the kernel (tests/test_layering.py, docs/layout.md).
"""
