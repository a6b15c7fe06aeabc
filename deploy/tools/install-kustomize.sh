#!/usr/bin/env bash
# Install a pinned kustomize into the project (.tools/bin) with `go install`; the deploy tests
# render deploy/k8s with it. Idempotent: does nothing when the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/../.."
KUSTOMIZE_VERSION=${KUSTOMIZE_VERSION:-v5.8.0}
BIN_DIR=${TOOLS_BIN:-$(pwd)/.tools/bin}
target="$BIN_DIR/kustomize"

if [ -x "$target" ] && "$target" version 2>/dev/null | grep -q "${KUSTOMIZE_VERSION}"; then
    exit 0
fi
command -v go >/dev/null || { echo "install-kustomize: Go is required (apt-get install golang-go)" >&2; exit 1; }
echo "install-kustomize: installing kustomize ${KUSTOMIZE_VERSION} into ${BIN_DIR}"
mkdir -p "$BIN_DIR"
# GOTOOLCHAIN=local: build with the Go that is installed rather than fetching another toolchain.
GOBIN="$BIN_DIR" GOTOOLCHAIN=local GOFLAGS=-mod=mod \
    go install "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}"
"$target" version
