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
# protobuf: onnxruntime requires it for its model tooling (removed above); its runtime
# never imports it (the model is parsed in C++)
rm -rf "$site"/google/protobuf "$site"/protobuf-*.dist-info
rmdir "$site"/google 2>/dev/null || true
# The tzdata package is the IANA database for systems without one; Python's zoneinfo reads
# the system's first, so it goes only when the base has /usr/share/zoneinfo
if [ -d /usr/share/zoneinfo/Europe ]; then
    rm -rf "$site"/tzdata "$site"/tzdata-*.dist-info
fi
# C/C++ headers any package ships for building against it
find "$site" -name include -type d -prune -exec rm -rf {} +
rm -rf "$venv"/include
# The kubernetes client (k3s extra) ships an asyncio twin of itself (kubernetes/aio, 68 MB)
# and pulls aiohttp for it; the agent imports only the synchronous client
# (agent/k3s/api.py), and `import kubernetes` loads neither.
if [ -d "$site"/kubernetes ]; then
    rm -rf "$site"/kubernetes/aio
    for dist in aiohttp aiohttp_retry aiosignal aiohappyeyeballs frozenlist multidict \
        propcache yarl; do
        rm -rf "$site"/"$dist" "$site"/"$dist"-*.dist-info
    done
    # Its generated client (a module per API object, 34 MB of source) kept as bytecode
    # only: imports are unchanged, tracebacks inside it show no source lines.
    "$venv"/bin/python -m compileall -q -b -j 0 "$site"/kubernetes
    find "$site"/kubernetes -name '*.py' -delete
    find "$site"/kubernetes -name __pycache__ -prune -exec rm -rf {} +
fi
