#!/usr/bin/env bash
# Set up everything the project needs on a fresh Debian machine: system packages (Java, Maven,
# Prometheus), a Python virtual environment with the project installed, and the Kafka broker jars.
# Idempotent: re-running only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
command -v promtool >/dev/null || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "bootstrap: installing Debian packages: ${need_apt[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # Debian starts the prometheus service on install; the project runs its own instances.
    $SUDO systemctl disable --now prometheus prometheus-node-exporter >/dev/null 2>&1 || true
    pkill -x prometheus-node-exporter >/dev/null 2>&1 || true
fi

stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
    echo "bootstrap: creating virtual environment in $VENV"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e ".[train,dev]"
    touch "$stamp"
fi

deploy/local/kafka.sh fetch
[ -x deploy/tools/install-kustomize.sh ] && deploy/tools/install-kustomize.sh
echo "bootstrap: ready"
