#!/usr/bin/env bash
# Runs the test suite against Detectron2 main (or any Detectron2 source tree), Python-only.
#
# Usage: dev/check_detectron2_main.sh D2_SRC [VENV] [-- PYTEST ARGS...]
#   D2_SRC  a Detectron2 source tree, e.g. `git clone https://github.com/facebookresearch/detectron2`
#           or `git -C MIRROR archive HEAD | tar -x -C D2_SRC`
#   VENV    where to build the virtualenv (default /tmp/d2main-venv); reused when it exists
#   PYTEST ARGS  default: -q tests
#
# The venv gets torch + torchvision ($CASCADE_ZOO_TORCH, as dev/setup_env.sh), dev/requirements.txt
# WITHOUT the v0.6 pins, the given Detectron2 built without its compiled ops (the same
# dev/prepare_detectron2_sdist.py that makes the v0.6 fallback installable: no extension build, and
# detectron2/_C.py becomes the stub that raises a clear error when a compiled op is called; a build
# with the ops takes ~35 min on 2 cores, this one seconds), and this project, editable.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[ $# -ge 1 ] || { sed -n 2,14p "$0"; exit 2; }
src=$(cd "$1" && pwd); shift
venv=/tmp/d2main-venv
if [ $# -ge 1 ] && [ "$1" != "--" ]; then venv=$1; shift; fi
[ "${1:-}" = "--" ] && shift
pytest_args=("$@")
[ ${#pytest_args[@]} -gt 0 ] || pytest_args=(-q tests)
torch_pkgs=${CASCADE_ZOO_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
python=${PYTHON:-python3}

log() { echo "[d2-main] $*"; }
[ -f "$src/setup.py" ] && [ -d "$src/detectron2" ] || { echo "$src: not a Detectron2 source tree" >&2; exit 2; }
[ -x "$venv/bin/python" ] || { log "creating $venv"; "$python" -m venv "$venv"; }
vpy=$venv/bin/python
pip_install() { "$vpy" -m pip install --disable-pip-version-check -q "$@"; }

if ! "$vpy" -c "import torch, torchvision" >/dev/null 2>&1; then
    log "installing $torch_pkgs"
    # shellcheck disable=SC2086
    pip_install $torch_pkgs
fi
log "installing dev/requirements.txt (no v0.6 pins)"
pip_install wheel -r "$root/dev/requirements.txt"

rev=$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo "no git")
log "installing Detectron2 from $src ($rev), Python-only"
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
cp -r "$src" "$build/detectron2"
"$vpy" "$root/dev/prepare_detectron2_sdist.py" "$build/detectron2"
pip_install --no-deps --no-build-isolation --force-reinstall "$build/detectron2"
log "installing cascade-zoo (editable)"
pip_install --no-deps --no-build-isolation -e "$root"

"$vpy" -c "import detectron2, numpy, PIL, torch; print('[d2-main] detectron2', detectron2.__version__, \
detectron2.__file__, '| torch', torch.__version__, '| numpy', numpy.__version__, '| Pillow', PIL.__version__)"
cd "$root"
log "running pytest ${pytest_args[*]}"
exec "$vpy" -m pytest "${pytest_args[@]}"
