#!/usr/bin/env bash
# Set-up for a fresh Debian/Ubuntu or macOS machine, safe to run again (it only adds what is missing):
#   the clang compiler (tinygrad's CPU backend compiles kernels with it), a virtual environment in .venv,
#   and the Python packages. With --test also pytest, Ray (the --ray extra), torch 2.13.0 (the reference of the optimizer tests; never imported
#   by the product) and, on Debian/Ubuntu, the Fashion-MNIST package. For torch pip takes the highest 2.13.0 build it is
#   offered: a CPU build (2.13.0+cpu) from a wheel folder or extra index (PIP_FIND_LINKS, PIP_EXTRA_INDEX_URL) where one
#   is set up, otherwise PyPI's, which on Linux x86_64 is a CUDA build with about 3 GB of nvidia-* packages.
set -euo pipefail
cd "$(dirname "$0")"
want_tests=0; [ "${1:-}" = "--test" ] && want_tests=1
sudo_cmd=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null && sudo_cmd="sudo"
apt_packages=()
if [ "$(uname -s)" = "Linux" ]; then
  command -v clang >/dev/null || apt_packages+=(clang)
  python3 -c "import venv, ensurepip" 2>/dev/null || apt_packages+=(python3-venv)
  [ $want_tests = 1 ] && [ ! -d /usr/share/datasets/fashion-mnist ] && apt_packages+=(dataset-fashion-mnist)
  if [ ${#apt_packages[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null; then
      echo "setup: installing ${apt_packages[*]} with apt-get"
      $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${apt_packages[@]}" >/dev/null
    else
      echo "setup: please install ${apt_packages[*]} with your package manager" >&2; exit 1
    fi
  fi
elif [ "$(uname -s)" = "Darwin" ] && ! command -v clang >/dev/null; then
  echo "setup: clang is missing: run 'xcode-select --install', then this script again" >&2; exit 1
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
extra=""; [ $want_tests = 1 ] && extra="[test,ray]"  # the tests start a local Ray cluster
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".${extra}"
report='from importlib.metadata import version; print("tinygrad", version("tinygrad"))'
[ $want_tests = 1 ] && report="$report; print(', torch', version('torch'), 'for the tests', end='')"
echo "setup: ready (.venv/bin/python, $(.venv/bin/python -c "$report" | tr -d '\n'))"
