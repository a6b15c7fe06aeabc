#!/bin/sh
# Install the project into a fresh virtual environment and strip what the runtime never loads.
# The Dockerfile's build stage runs exactly this; tests/deploy/test_image_install.py runs it too,
# so "the image installs and starts" is tested without a Docker engine.
#
# usage: image-install.sh SOURCE_DIR VENV_DIR [EXTRAS]
#   no EXTRAS: the worker's runtime only (the base distribution); "train": the trainer's too.
set -eu
usage="usage: image-install.sh SOURCE_DIR VENV_DIR [EXTRAS]"
src=${1:?$usage}
venv=${2:?$usage}
extras=${3:-}
python=${PYTHON:-python3}

"$python" -m venv "$venv"
# The project's own dependency list (pyproject.toml) is the only source of versions.
if [ -n "$extras" ]; then
    "$venv/bin/python" -m pip install --no-warn-script-location "$src[$extras]"
else
    "$venv/bin/python" -m pip install --no-warn-script-location "$src"
fi

site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# C/C++ headers for building TensorFlow custom ops (~290 MB) and the packages' own test suites
# are never imported at run time.
rm -rf "$site/tensorflow/include"
for pkg in pandas numpy scipy sklearn matplotlib pyarrow; do
    find "$site/$pkg" -type d \( -name tests -o -name testing_data \) -prune \
        -exec rm -rf {} + 2>/dev/null || true
done
rm -rf "$site/pyarrow/include"
# libclang (62 MB) is a TensorFlow requirement that only its source-generation tools use.
# The runtime installs nothing: drop the installer itself last.
if "$venv/bin/python" -m pip show --quiet libclang 2>/dev/null; then
    "$venv/bin/python" -m pip uninstall --yes --quiet libclang
fi
"$venv/bin/python" -m pip uninstall --yes --quiet pip
