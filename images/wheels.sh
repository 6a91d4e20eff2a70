#!/usr/bin/env bash
# The project's wheels, built on the host with every dependency, into build/wheels/
# (git-ignored), so that nothing is downloaded inside an image build. pip's own wheel
# goes there too: the images run pip from it once, in their build stage, and never keep it.
# Wheels are for this host's CPython (cp311 here); the images' python must match it
# (Debian bookworm's python3 and python:3.11-slim both are 3.11).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=build/wheels

# The agent image takes the k3s extra too once pyproject.toml has one.
extras=$("$PYTHON" - <<'PY'
import tomllib

extras = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]
print(",".join(e for e in ("agent", "controller", "k3s") if e in extras))
PY
)
mkdir -p "$OUT"
rm -f "$OUT"/edgefleet-*.whl  # the project itself is always rebuilt; dependencies are reused
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$OUT" pip ".[$extras]"
echo "wheels: $(ls "$OUT" | wc -l) in $OUT ($(du -sh "$OUT" | cut -f1)), extras $extras"
