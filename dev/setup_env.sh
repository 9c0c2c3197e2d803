#!/usr/bin/env bash
# The one set-up step of cascade-zoo. Idempotent: a second run with nothing changed returns at once.
#
# Builds a virtualenv inside the clone (.venv, or $CASCADE_ZOO_VENV) holding:
#   - torch + torchvision ($CASCADE_ZOO_TORCH, default the pair verified on our CPU machines;
#     set it, and PIP_INDEX_URL / PIP_EXTRA_INDEX_URL, to get your CUDA build);
#   - Detectron2: the one importable from $PYTHON if there is one (the venv then sees that
#     interpreter's site-packages), otherwise PyPI's pb1-detectron2==0.6, Python-only;
#   - dev/requirements.txt and this project, editable.
# Only package registries are contacted (pip's configured indexes); no git URLs.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
venv=${CASCADE_ZOO_VENV:-$root/.venv}
python=${PYTHON:-python3}
torch_pkgs=${CASCADE_ZOO_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
d2_fallback="pb1-detectron2==0.6"
cache=$root/.cache/setup
stamp=$venv/.cascade-zoo-setup

log() { echo "[setup] $*"; }

fingerprint=$({
    cat dev/setup_env.sh dev/requirements.txt dev/detectron2_C_stub.py setup.py
    echo "$torch_pkgs"
} | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ] &&
    "$venv/bin/python" -c "import detectron2, cascade_zoo" >/dev/null 2>&1; then
    log "$venv is up to date"
    exit 0
fi

env_d2=0
if "$python" -c "import torch, torchvision, detectron2" >/dev/null 2>&1; then
    env_d2=1
    log "using the Detectron2 and torch importable from $python: $("$python" -c \
        'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
fi

if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    if [ "$env_d2" = 1 ]; then
        "$python" -m venv --system-site-packages "$venv"
    else
        "$python" -m venv "$venv"
    fi
fi
vpy="$venv/bin/python"
pip_install() { "$vpy" -m pip install --disable-pip-version-check "$@"; }

if [ "$env_d2" = 0 ]; then
    log "installing $torch_pkgs"
    # shellcheck disable=SC2086
    pip_install $torch_pkgs
fi
log "installing dev/requirements.txt"
pip_install wheel -r dev/requirements.txt

# The Python-only fallback is (re)installed when there is no Detectron2, or when the installed
# fallback was prepared by other versions of our helper files.
fallback_fp=$(cat dev/detectron2_C_stub.py dev/prepare_detectron2_sdist.py | sha256sum | cut -c1-16)
fallback_stamp=$venv/.cascade-zoo-detectron2-fallback
stale_fallback=0
if "$vpy" -m pip show --disable-pip-version-check pb1-detectron2 >/dev/null 2>&1 &&
    [ "$(cat "$fallback_stamp" 2>/dev/null)" != "$fallback_fp" ]; then
    stale_fallback=1
fi
if [ "$stale_fallback" = 1 ] || ! "$vpy" -c "import detectron2" >/dev/null 2>&1; then
    log "installing $d2_fallback (Python-only, no compiled ops)"
    mkdir -p "$cache"
    sdist=$(find "$cache" -maxdepth 1 -name 'pb1-detectron2-0.6.tar.gz' | head -n 1)
    if [ -z "$sdist" ]; then
        # Preparing its metadata imports torch, hence --no-build-isolation.
        "$vpy" -m pip download --disable-pip-version-check --no-deps --no-build-isolation \
            -d "$cache" "$d2_fallback"
        sdist=$cache/pb1-detectron2-0.6.tar.gz
    fi
    rm -rf "$cache/src" && mkdir -p "$cache/src"
    tar -xzf "$sdist" -C "$cache/src"
    "$vpy" dev/prepare_detectron2_sdist.py "$cache/src/pb1-detectron2-0.6"
    pip_install --no-deps --no-build-isolation --force-reinstall "$cache/src/pb1-detectron2-0.6"
    echo "$fallback_fp" >"$fallback_stamp"
fi

log "installing cascade-zoo (editable)"
pip_install --no-deps --no-build-isolation -e .
"$vpy" -c "import detectron2, cascade_zoo; from detectron2 import model_zoo; \
model_zoo.get_config_file('COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml')"
echo "$fingerprint" >"$stamp"
log "done: $venv"
