#!/bin/sh
# Trim a virtualenv for an image: what no import of the agent or controller reaches.
# Each line is safe because nothing in edgefleet (or the library itself at import) uses it;
# the images' smoke checks (e2e/podman) import and run both after the trim.
set -eu
venv=$1
site=$(echo "$venv"/lib/python3*/site-packages)
# test suites shipped inside wheels
find "$site" -depth -type d \( -name tests -o -name testing -o -name test \) \
    -path '*/numpy/*' -exec rm -rf {} +
find "$site" -depth -type d -name tests -path '*/onnxruntime/*' -exec rm -rf {} +
# onnxruntime's C API library (35 MB) is for native programs linking against it: the
# Python binding is a complete build of its own and links nothing from it
rm -f "$site"/onnxruntime/capi/libonnxruntime.so.*
# onnxruntime's model tooling (quantization, transformer optimisers, converters): offline
# tools for whoever prepares a model, never imported by `import onnxruntime`
rm -rf "$site"/onnxruntime/quantization "$site"/onnxruntime/transformers \
    "$site"/onnxruntime/tools "$site"/onnxruntime/datasets
# numpy's C headers, type stubs and f2py (a compiler front end)
rm -rf "$site"/numpy/_core/include "$site"/numpy/f2py "$site"/numpy/_pyinstaller \
    "$site"/numpy/doc
find "$site" -name '*.pyi' -delete
# C/C++ headers any package ships for building against it
find "$site" -name include -type d -prune -exec rm -rf {} +
rm -rf "$venv"/include
