"""The kernel: what the node library, the model runtime and the server all share.

``schema`` (the typed node schema and the registry), ``progress`` (the execution context a node reports
through), ``folders`` (model and output folders) and ``config`` (the runtime configuration). The kernel
imports nothing else of Loom; the server imports nothing of ``loom.nodes`` but the kernel.
"""
