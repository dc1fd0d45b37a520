#!/usr/bin/env bash
# Creates .venv with surgray and everything its jobs and tests need, on a CPU machine.
# The torch pin lives in constraints.txt so that pip never pulls a CUDA build here;
# GPU machines install surgray into their own environment and keep their torch.
# Idempotent: a second run with unchanged pyproject.toml returns in a second.
# A fresh run takes 6-13 minutes; each step prints one line with its expected duration.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${SURGRAY_VENV:-.venv}
stamp="$VENV/.surgray-setup-$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
pip_install() { "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@"; }

# The steps, in order: "function|what it does|expected duration". To add a step, write its
# function and add its line here.
step_venv() { [ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"; }
step_torch() { pip_install -c constraints.txt torch==2.13.0; }
step_surgray() { pip_install -c constraints.txt -e ".[all,test]"; }
# Meta's reference package, for the parity tests and benchmarks only. It ships as an sdist whose
# build would pull a CUDA torch and torchvision; this builds it against the torch above, without them.
step_reference() {
  if ! "$VENV/bin/python" -c "import sam2" 2>/dev/null; then
    SAM2_BUILD_CUDA=0 pip_install --no-deps --no-build-isolation sam2==1.1.0
  fi
}
# Debian's Chromium, for the review page's browser tests (Playwright drives it; its own browser
# download needs the network). apt-get only when it is missing; where it cannot be installed
# the browser tests skip and say why.
step_chromium() {
  if command -v chromium >/dev/null 2>&1; then
    return 0
  fi
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if command -v apt-get >/dev/null 2>&1 && $sudo true 2>/dev/null; then
    $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q chromium >/dev/null ||
      echo "setup: WARNING: apt-get could not install chromium; browser tests (tests/test_ui_browser.py) will skip"
  else
    echo "setup: WARNING: no chromium and no apt-get (as root or passwordless sudo); browser tests (tests/test_ui_browser.py) will skip"
  fi
}
STEPS=(
  "step_venv|create the virtual environment $VENV|a few seconds"
  "step_torch|install CPU torch 2.13.0|1-3 min"
  "step_surgray|install surgray with Ray, PyAV, transformers and the test tools|4-8 min"
  "step_reference|build Meta's reference sam2 package (parity tests)|1-2 min"
  "step_chromium|install Debian's chromium for the browser tests, when missing|0-2 min"
)

started=$SECONDS
echo "setup: ${#STEPS[@]} steps, 6-13 min on a fresh 2-core machine (a second run returns at once)"
for n in "${!STEPS[@]}"; do
  IFS="|" read -r fn what expected <<<"${STEPS[$n]}"
  echo "setup: [$((n + 1))/${#STEPS[@]}] $what (expected: $expected)"
  "$fn"
done
rm -f "$VENV"/.surgray-setup-*
touch "$stamp"
echo "setup: done in $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s; .venv is ready"
