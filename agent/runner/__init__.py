"""The inference runner: one ONNX model served in a child process of the agent.

The child (``python -m edgefleet.agent.runner``: ``model``, ``inputs``,
``server``) is the only Edgefleet process that imports onnxruntime and NumPy,
so a crash of either takes down one model, not the agent, and the daemon's
memory never carries them. The agent's side (``supervisor``, ``client``,
``api``, ``errors``) is standard library only; this package imports nothing.
"""
