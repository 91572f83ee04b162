#!/usr/bin/env bash
# Installs what `make demo` / `make test` need and is missing, via apt-get (Debian).
#   scripts/prereqs.sh build   protobuf-compiler (etcd-client's gRPC code), a C compiler (ring, mimalloc)
#   scripts/prereqs.sh test    the above + etcd-server (end-to-end tests), nghttp2-client (h2load),
#                              python3-venv (the tests' Python clients, grpcio, websockets and
#                              selenium, go into target/pyenv on first use), chromium and
#                              chromium-driver (the dashboard's browser test), linux-perf (the
#                              bench smoke run's profile)
# Fails with a clear message where it cannot install.
set -euo pipefail

want=${1:-build}
missing=()
need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing+=("$2")
}

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo not found. Install Rust (https://rustup.rs) and run this again." >&2
  exit 1
fi
need protoc protobuf-compiler
need cc gcc
if [ "$want" = test ]; then
  need etcd etcd-server
  need etcdctl etcd-client
  need h2load nghttp2-client
  need chromium chromium
  need chromedriver chromium-driver
  need perf linux-perf
  need python3 python3
  if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    missing+=(python3-venv)
  fi
fi

# A first `make test` writes about 2.2 GB under target/ and etcd's data (~250 MB at peak) to
# /dev/shm (measured from a clean clone); say so up front rather than fail mid-build.
if [ "$want" = test ]; then
  target=${CARGO_TARGET_DIR:-target}
  probe=$target; [ -d "$probe" ] || probe=.
  free_kb=$(df -Pk "$probe" | awk 'NR==2 {print $4}')
  if [ -n "$free_kb" ] && [ ! -d "$target/debug" ] && [ "$free_kb" -lt 2621440 ]; then
    echo "error: a first \`make test\` needs about 2.5 GB free for $target/; only $((free_kb / 1024)) MB free on $(df -P "$probe" | awk 'NR==2 {print $6}')" >&2
    exit 1
  fi
fi

[ ${#missing[@]} -eq 0 ] && exit 0

echo "installing missing prerequisites: ${missing[*]}" >&2
if ! command -v apt-get >/dev/null 2>&1; then
  echo "error: missing ${missing[*]} and apt-get is not available; install them with your package manager." >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    echo "error: missing ${missing[*]}; run as root or with password-less sudo, or: sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get update -qq || ! $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; then
  echo "error: apt-get could not install ${missing[*]} (is a Debian package mirror reachable?)" >&2
  exit 1
fi
echo "installed: ${missing[*]}" >&2
