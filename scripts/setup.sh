#!/usr/bin/env bash
# Creates .venv with surgray and everything its jobs and tests need, on a CPU machine.
# The torch pin lives in constraints.txt so that pip never pulls a CUDA build here;
# GPU machines install surgray into their own environment and keep their torch.
# Idempotent: a second run with unchanged pyproject.toml returns in a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SURGRAY_VENV:-.venv}
stamp="$VENV/.surgray-setup-$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }
pip_install -c constraints.txt torch==2.13.0
pip_install -c constraints.txt -e ".[all,test]"
# Meta's reference package, for the parity tests and benchmarks only. It ships as an sdist whose
# build would pull a CUDA torch and torchvision; this builds it against the torch above, without them.
if ! "$VENV/bin/python" -c "import sam2" 2>/dev/null; then
  SAM2_BUILD_CUDA=0 pip_install --no-deps --no-build-isolation sam2==1.1.0
fi
rm -f "$VENV"/.surgray-setup-*
touch "$stamp"
