#!/usr/bin/env bash
# Installs what `make bench` measures besides cutover, via apt-get (Debian): nginx and haproxy
# to compare with, etcd-server for the propagation scenario (etcd put -> traffic follows), and
# linux-perf for the report's profiles (where the CPU goes).
# The build's own prerequisites are scripts/prereqs.sh build, which `make bench` runs first;
# this script then runs while the release build compiles, so a fresh machine downloads and
# installs these packages in the build's time rather than before it. Without root or
# password-less sudo, or without a package mirror, it says so and exits 0: the benchmark then
# runs without what is missing and its report names it as not run.
set -euo pipefail

missing=()
have() { # have PROGRAM: on PATH or in the sbin directories Debian installs daemons to
  command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]
}
have nginx || missing+=(nginx)
have haproxy || missing+=(haproxy)
have etcd || missing+=(etcd-server)
have perf || missing+=(linux-perf)
[ ${#missing[@]} -eq 0 ] && exit 0

skip() {
  echo "warning: $1; the benchmark runs without ${missing[*]} and says so in its report." >&2
  exit 0
}
echo "installing for the benchmark: ${missing[*]}" >&2
command -v apt-get >/dev/null 2>&1 || skip "apt-get is not available to install ${missing[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
  else
    skip "installing ${missing[*]} needs root or password-less sudo (sudo apt-get install -y ${missing[*]})"
  fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get update -qq || ! $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; then
  skip "apt-get could not install ${missing[*]} (is a Debian package mirror reachable?)"
fi
echo "installed: ${missing[*]}" >&2
