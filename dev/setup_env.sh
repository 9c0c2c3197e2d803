#!/usr/bin/env bash
# The one set-up step of cascade-zoo. Idempotent: a second run with nothing changed returns at once.
#
# Builds a virtualenv inside the clone (.venv, or $CASCADE_ZOO_VENV) holding:
#   - torch + torchvision and Detectron2: if $PYTHON (default python3) can import all three, the
#     venv uses that interpreter's packages instead of installing its own. A venv made by a venv's
#     interpreter sees only the *base* interpreter's site-packages, so when $PYTHON is itself a
#     virtualenv, the project venv gets a .pth file (cascade-zoo-python-env.pth) that adds that
#     virtualenv's site-packages (with its own .pth files, e.g. an editable Detectron2) to sys.path.
#     Nothing is installed into $PYTHON's environment; what dev/requirements.txt asks for and it
#     lacks goes into the project venv. Conda environments and system Pythons are seen through
#     --system-site-packages.
#   - otherwise torch + torchvision ($CASCADE_ZOO_TORCH, default the pair verified on our CPU
#     machines; set it, and PIP_INDEX_URL / PIP_EXTRA_INDEX_URL, to get your CUDA build) and
#     PyPI's pb1-detectron2==0.6, Python-only, with the pins v0.6 needs
#     (dev/requirements-detectron2-v0.6.txt);
#   - dev/requirements.txt and this project, editable.
# The venv records its mode (.cascade-zoo-mode: "fallback", or "python-env <interpreter>") and
# keeps it: a later run without $PYTHON set uses the recorded interpreter (or the fallback) again,
# instead of deciding anew from python3. Switching modes rebuilds the venv, and happens only when
# asked: $PYTHON set (the mode follows from what it imports, as on the first run) or
# CASCADE_ZOO_SETUP_MODE=auto (decide from $PYTHON, default python3), fallback or python-env
# (which needs $PYTHON, or the recorded interpreter, to import torch, torchvision and detectron2).
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
mode_file=$venv/.cascade-zoo-mode

log() { echo "[setup] $*"; }
fail() {
    echo "[setup] error: $*" >&2
    exit 1
}

# The mode asked for: CASCADE_ZOO_SETUP_MODE, else "auto" when $PYTHON is set or the venv records
# no mode, else "keep" (the recorded one, with its interpreter).
recorded=""
if [ -x "$venv/bin/python" ] && [ -f "$mode_file" ]; then
    recorded=$(cat "$mode_file")
fi
request=${CASCADE_ZOO_SETUP_MODE:-}
if [ -z "$request" ]; then
    if [ -n "${PYTHON:-}" ] || [ -z "$recorded" ]; then request=auto; else request=keep; fi
fi
case "$request" in
keep)
    case "$recorded" in
    "python-env "*) python=${recorded#python-env } ;;
    fallback) ;;
    *) fail "$mode_file holds '$recorded', not a mode; set CASCADE_ZOO_SETUP_MODE" ;;
    esac
    ;;
auto | fallback | python-env) ;;
*) fail "CASCADE_ZOO_SETUP_MODE=$request: expected auto, fallback or python-env" ;;
esac

# What $PYTHON offers, cheaply (find_spec does not import): part of the fingerprint, so another
# $PYTHON, or Detectron2 appearing in it, makes the set-up run again.
python_env=$("$python" -c 'import importlib.util as u, sys
print(sys.executable, all(u.find_spec(m) for m in ("torch", "torchvision", "detectron2")))' \
    2>/dev/null || echo "$python missing")
# The mode this run means to set up, as cheaply (a mode asked for that differs from the recorded
# one must not pass for up to date).
case "$request:$python_env" in
keep:*) target=$recorded ;;
fallback:*) target=fallback ;;
*" True") target="python-env ${python_env% True}" ;;
*) target=fallback ;;
esac
fingerprint=$({
    cat dev/setup_env.sh dev/requirements.txt dev/requirements-detectron2-v0.6.txt \
        dev/detectron2_C_stub.py setup.py
    echo "$torch_pkgs $python_env $target"
} | sha256sum | cut -c1-16)
if [ "$request" = keep ]; then
    log "keeping the mode $venv was made in: $recorded (set PYTHON=... or" \
        "CASCADE_ZOO_SETUP_MODE=auto|fallback|python-env to change it)"
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$fingerprint" ] &&
    "$venv/bin/python" -c "import detectron2, cascade_zoo" >/dev/null 2>&1; then
    log "$venv is up to date"
    exit 0
fi

# The mode to set up: "python-env <interpreter>" if $python provides torch and Detectron2 and
# the fallback is not asked for (or kept), else "fallback"; python-env asked for (or kept) with an
# interpreter that does not provide them is an error, not a silent switch to the fallback.
want_env=1
case "$request" in
fallback) want_env=0 ;;
keep) [ "$recorded" = fallback ] && want_env=0 ;;
esac
env_d2=0
if [ "$want_env" = 1 ] && "$python" -c "import torch, torchvision, detectron2" >/dev/null 2>&1; then
    env_d2=1
    log "using the Detectron2 and torch importable from $python: $("$python" -c \
        'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
    mode="python-env $("$python" -c 'import sys; print(sys.executable)')"
elif [ "$want_env" = 1 ] && [ "$request" = keep ]; then
    fail "$venv was made from the torch and Detectron2 of $python, which does not import them" \
        "now (or is gone). Give the environment's interpreter as PYTHON=..., or rebuild $venv" \
        "with the Python-only Detectron2: CASCADE_ZOO_SETUP_MODE=fallback"
elif [ "$want_env" = 1 ] && [ "$request" = python-env ]; then
    fail "CASCADE_ZOO_SETUP_MODE=python-env, but $python does not import torch, torchvision" \
        "and detectron2; give an interpreter that does as PYTHON=..."
else
    mode="fallback"
fi

# The venv is rebuilt when it was made for the other mode (or another $PYTHON): only when asked,
# since without $PYTHON or CASCADE_ZOO_SETUP_MODE the recorded mode is kept. Venvs made before
# this mode file existed were fallback ones.
if [ -x "$venv/bin/python" ] && [ "$(cat "$mode_file" 2>/dev/null || echo fallback)" != "$mode" ]; then
    if [ ! -f "$stamp" ] && [ ! -f "$mode_file" ]; then
        echo "[setup] $venv exists but was not made by dev/setup_env.sh; remove it or set" \
            "CASCADE_ZOO_VENV" >&2
        exit 1
    fi
    log "rebuilding $venv (it was made for: $(cat "$mode_file" 2>/dev/null || echo fallback))"
    rm -rf "$venv"
fi

if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    if [ "$env_d2" = 1 ]; then
        # --without-pip: a pip (and setuptools) of the venv's own would shadow the environment's.
        "$python" -m venv --system-site-packages --without-pip "$venv"
        # A venv's venv sees only the base interpreter's packages: add $PYTHON's own site dirs
        # (site.addsitedir also runs their .pth files, e.g. editable installs).
        "$python" - "$venv" <<'PY'
import site, subprocess, sys
if sys.prefix != sys.base_prefix:
    dirs = [d for d in site.getsitepackages() if d.startswith(sys.prefix)]
    venv_site = subprocess.check_output(
        [sys.argv[1] + "/bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        text=True,
    ).strip()
    with open(venv_site + "/cascade-zoo-python-env.pth", "w") as f:
        f.writelines(f"import site; site.addsitedir({d!r})\n" for d in dirs)
    print("[setup] the venv sees", ", ".join(dirs))
PY
    else
        "$python" -m venv "$venv"
    fi
    if [ "$env_d2" = 1 ] && ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
        "$venv/bin/python" -m ensurepip --default-pip
    fi
fi
echo "$mode" >"$mode_file"
vpy="$venv/bin/python"
pip_install() { "$vpy" -m pip install --disable-pip-version-check "$@"; }

if [ "$env_d2" = 1 ]; then
    log "installing what dev/requirements.txt asks for and $python's environment lacks"
    pip_install wheel -r dev/requirements.txt
    if ! "$vpy" -c "import torch, torchvision, detectron2" >/dev/null 2>&1; then
        echo "[setup] $vpy does not see the torch/Detectron2 of $python" >&2
        exit 1
    fi
else
    log "installing $torch_pkgs"
    # shellcheck disable=SC2086
    pip_install $torch_pkgs
    log "installing dev/requirements.txt with the pins of Detectron2 v0.6"
    pip_install wheel -r dev/requirements.txt -r dev/requirements-detectron2-v0.6.txt

    # The Python-only fallback is (re)installed when there is no Detectron2, or when the
    # installed fallback was prepared by other versions of our helper files.
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
fi

log "installing cascade-zoo (editable)"
pip_install --no-deps --no-build-isolation -e .
"$vpy" -c "import detectron2, cascade_zoo; from detectron2 import model_zoo; \
model_zoo.get_config_file('COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml')"
echo "$fingerprint" >"$stamp"
log "done: $venv"
