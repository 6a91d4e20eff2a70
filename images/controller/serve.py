"""The controller image's entry point: ``edgefleet controller serve`` without the CLI.

The ``edgefleet`` command's Typer app comes with the ``cli`` extra (Typer, Rich, onnx,
onnxruntime), which a server has no use for, so the image calls what the command calls.
Every setting comes from ``EDGEFLEET_*`` variables or ``EDGEFLEET_CONFIG``.
"""

from edgefleet.controller.serve import serve
from edgefleet.controller.settings import load_settings

if __name__ == "__main__":
    serve(load_settings())
