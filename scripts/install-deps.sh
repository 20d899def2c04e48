#!/usr/bin/env bash
# Installs everything Tessera needs to build and test, from Debian's packages only.
# Run as root (or with sudo available). Safe to re-run.
set -euo pipefail

packages=(
    build-essential pkg-config      # gcc, make
    libjansson-dev                  # config.json and the HTTP API's JSON
    libmicrohttpd-dev libuv1-dev    # the HTTP server and its event loop
    curl                            # health checks in scripts and the Dockerfile
    libpng-dev zlib1g-dev           # PNG output
    libopenblas-dev                 # BLAS for the CPU backend (pulls libopenblas0-pthread)
    check libsubunit-dev            # unit tests
    clang libclang-rt-14-dev        # the libFuzzer targets (tests/fuzz/, make fuzz); the runtime is only a Recommends
    python3 python3-numpy python3-torch   # converter, PyTorch reference, fixtures
    python3-regex                   # CLIP tokenizer reference (\p{L} classes)
    python3-sentencepiece           # T5 tokenizer reference (tests/reference/test_spm.py)
    python3-bs4                     # caption-cleaning reference (tests/reference/t5_clean_ref.py)
    python3-torchvision             # ImageNet class names for converted models
    python3-pil                     # images in tools/ and the default model's tests
    python3-yaml                    # Kubernetes and compose files (tests/test_deploy.py)
    fonts-noto-color-emoji unicode-data   # the default model's dataset (tools/make_emoji_dataset.py)
    time                            # /usr/bin/time for peak memory in bench/
    chromium                        # the web page's test in a real browser (tests/web/)
    nginx                           # load-balancer test (tests/test_lb.py runs its own on free ports)
)

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: run as root or install sudo" >&2; exit 1; }
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q "${packages[@]}"

# The browser and OpenAI-SDK tests (tests/web/) run on the machine's Node.js (20 or newer;
# playwright-core needs it) with packages pinned by tests/web/package-lock.json.
if command -v npm >/dev/null; then
    (cd "$(dirname "$0")/../tests/web" && npm ci --no-audit --no-fund)
else
    echo "install-deps: npm not found: tests/web (browser + OpenAI SDK) will fail" >&2
fi
