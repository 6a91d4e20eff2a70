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
# The project is always rebuilt, dependencies reused; a fixed SOURCE_DATE_EPOCH makes its
# wheel the same bytes when the source is, so the image builds hit their layer cache.
rm -f "$OUT"/edgefleet-*.whl
# The controller image also has the `edgefleet` command for `edgefleet controller serve |
# migrate` (what the chart runs): the CLI's own imports, not the whole cli extra (onnx).
SOURCE_DATE_EPOCH=315532800 "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --wheel-dir "$OUT" \
    pip ".[$extras]" "typer>=0.12" "rich>=13" "httpx>=0.27" >"$OUT.log" 2>&1 ||
    { cat "$OUT.log" >&2; exit 1; }
echo "wheels: $(ls "$OUT" | wc -l) in $OUT ($(du -sh "$OUT" | cut -f1)), extras $extras"
