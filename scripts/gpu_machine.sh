#!/usr/bin/env bash
# moelab on a GPU machine that has no package registry: torch 2.11.0+cu130 under python3, nvcc,
# cmake and ninja, but no apt and no Boost, ICU, SQLite or httplib headers.
#
#   Here, on a Debian 12 machine after scripts/setup.sh (online; `cmake --build build` done):
#     bash scripts/gpu_machine.sh bundle
#       writes .gpu/ (git-ignored, about 45 MB): the Debian packages the build and the binaries need
#       (.gpu/debs), the GPT-2 ranks, the side-by-side GPT-2 data, and this machine's build of moelab,
#       bench_engine and test_cuda_path (.gpu/bin: the venv's torch is the same 2.11.0+cu130 wheel).
#     bash scripts/gpu_machine.sh before REV
#       builds moelab and bench_engine of the earlier commit REV (a git worktree, configured as
#       build/) into /tmp/moelab-before, for:
#     MOELAB_BEFORE=/tmp/moelab-before bash scripts/gpu_machine.sh bundle
#       the bundle plus those two binaries in .gpu/bin-before, which the stages before_after and
#       layer_before_after measure against this build in the same run.
#   There, in a copy of the checkout with .gpu/ in it:
#     bash scripts/gpu_machine.sh build
#       unpacks .gpu/debs into a prefix (/tmp/moelab-prefix) and builds build-gpu/ from source against
#       python3's torch: the Debian -dev packages stand in for the missing system ones.
#     bash scripts/gpu_machine.sh check [OUT] [SECONDS] [STAGE...]
#       the CUDA tests, the GPU benchmarks, a kernel profile of the MoE layer (experiments/) and the
#       side-by-side against PyTorch with the binaries of build-gpu/ (or, without it, .gpu/bin), then
#       the source build when time is left; logs in OUT, a summary last.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
BUNDLE=$ROOT/.gpu
PREFIX=${MOELAB_PREFIX:-/tmp/moelab-prefix}
LIBDIR=$PREFIX/usr/lib/x86_64-linux-gnu
log() { echo "[gpu_machine $(date +%T)] $*"; }
die() { log "error: $*"; exit 1; }

# Runtime libraries of the binaries, and what a source build needs besides (headers, CMake configs,
# static test libraries, pkg-config and the .pc files that cpp-httplib's .pc requires).
RUNTIME_DEBS=(libboost-program-options1.74.0 libicu72 libsqlite3-0 libcpp-httplib0.11 libssl3 zlib1g libbrotli1)
BUILD_DEBS=(libboost1.74-dev libboost-program-options1.74-dev libboost-program-options-dev libsqlite3-dev
  nlohmann-json3-dev libssl-dev libicu-dev libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian
  libgloo-dev libcpp-httplib-dev zlib1g-dev libbrotli-dev pkgconf pkgconf-bin libpkgconf3)

bundle() {
  [[ -x build/moelab ]] || die "build/moelab is missing: run scripts/setup.sh and cmake --build build first"
  cmake --build build --target moelab bench_engine test_cuda_path || die "build failed"
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE"/{debs,bin,assets}
  (cd "$BUNDLE/debs" && apt-get download "${RUNTIME_DEBS[@]}" "${BUILD_DEBS[@]}") || die "apt-get download failed"
  for b in build/moelab build/bench/bench_engine build/tests/test_cuda_path; do strip -o "$BUNDLE/bin/$(basename "$b")" "$b"; done
  if [[ -n ${MOELAB_BEFORE:-} ]]; then
    mkdir -p "$BUNDLE/bin-before"
    for b in moelab bench_engine; do strip -o "$BUNDLE/bin-before/$b" "$MOELAB_BEFORE/$b" || die "no $MOELAB_BEFORE/$b"; done
  fi
  cp .assets/gpt2.tiktoken "$BUNDLE/assets/"
  build/moelab data prepare --corpus austen --tokenizer gpt2 --out "$BUNDLE/side-by-side-data" >/dev/null || die "data prepare failed"
  log "wrote $(du -sh "$BUNDLE" | cut -f1) to $BUNDLE"
}

build_before() {
  local rev=${1:?"usage: gpu_machine.sh before REV"} out=/tmp/moelab-before src=/tmp/moelab-before-src
  git worktree remove --force "$src" 2>/dev/null
  git worktree add --detach "$src" "$rev" || die "no commit $rev"
  cmake -S "$src" -B "$out/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOELAB_ASSETS_DIR="$ROOT/.assets" \
    -DCMAKE_PREFIX_PATH="$(.venv/bin/python -c "import torch.utils; print(torch.utils.cmake_prefix_path)")" &&
    cmake --build "$out/build" --target moelab bench_engine || die "the build of $rev failed"
  cp "$out/build/moelab" "$out/build/bench/bench_engine" "$out/"
  git worktree remove --force "$src"
  log "built $rev into $out: now MOELAB_BEFORE=$out bash scripts/gpu_machine.sh bundle"
}

unpack_debs() {
  [[ -f $PREFIX/.unpacked ]] && return
  mkdir -p "$PREFIX"
  for deb in "$BUNDLE"/debs/*.deb; do dpkg-deb -x "$deb" "$PREFIX" || die "cannot unpack $deb"; done
  touch "$PREFIX/.unpacked"
}

torch_dir() { python3 -c "import os, torch; print(os.path.dirname(torch.__file__))"; }

# A script at $PREFIX/wrappers/NAME that runs PROGRAM with LIBRARY_PATH as its LD_LIBRARY_PATH.
write_wrapper() {
  local name=$1 program=$2 library_path=$3
  mkdir -p "$PREFIX/wrappers"
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$library_path" "$program" >"$PREFIX/wrappers/$name"
  chmod +x "$PREFIX/wrappers/$name"
}

build() {
  unpack_debs
  local torch; torch=$(torch_dir) || die "python3 has no torch"
  # The prefix's pkg-config (the machine may have none); the .pc files say prefix=/usr, so the
  # sysroot points their paths into the prefix.
  write_wrapper pkg-config "$PREFIX/usr/bin/pkgconf" "$LIBDIR"
  command -v nvcc >/dev/null || export PATH=$PATH:/usr/local/cuda/bin
  export PKG_CONFIG_LIBDIR=$LIBDIR/pkgconfig:$PREFIX/usr/share/pkgconfig PKG_CONFIG_SYSROOT_DIR=$PREFIX
  # The rpath (not runpath) reaches the prefix's libraries' own dependencies too.
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_POLICY_VERSION_MINIMUM=3.5 \
    -DCMAKE_PREFIX_PATH="$torch/share/cmake;$PREFIX/usr" -DPKG_CONFIG_EXECUTABLE="$PREFIX/wrappers/pkg-config" \
    -DMOELAB_ASSETS_DIR="$BUNDLE/assets" \
    -DCMAKE_EXE_LINKER_FLAGS="-Wl,--disable-new-dtags" -DCMAKE_BUILD_RPATH="$LIBDIR;$torch/lib" || die "configure failed"
  cmake --build build-gpu --target moelab bench_engine test_cuda_path || die "build failed"
  log "built build-gpu/moelab"
}

# Wrappers $PREFIX/wrappers/<name><suffix> for the bundled binaries in DIR, which find their
# libraries in the unpacked runtime packages and python3's torch (only they: python3's own modules
# keep the system's libraries).
wrap_bundled() {
  local dir=$1 suffix=$2 torch
  shift 2
  unpack_debs
  torch=$(torch_dir) || die "python3 has no torch"
  for b in "$@"; do write_wrapper "$b$suffix" "$dir/$b" "$LIBDIR:$torch/lib"; done
  if LD_LIBRARY_PATH=$LIBDIR:$torch/lib ldd "$dir/moelab" | grep "not found"; then die "unresolved libraries in $dir"; fi
}

# The binaries to check: the source build when there is one, else the bundle's; and the earlier
# build's when the bundle has one.
use_binaries() {
  if [[ -x build-gpu/moelab ]]; then
    BIN_MOELAB=$ROOT/build-gpu/moelab BIN_BENCH=$ROOT/build-gpu/bench/bench_engine BIN_TEST=$ROOT/build-gpu/tests/test_cuda_path
  else
    wrap_bundled "$BUNDLE/bin" "" moelab bench_engine test_cuda_path
    BIN_MOELAB=$PREFIX/wrappers/moelab BIN_BENCH=$PREFIX/wrappers/bench_engine BIN_TEST=$PREFIX/wrappers/test_cuda_path
  fi
  if [[ -d $BUNDLE/bin-before ]]; then
    wrap_bundled "$BUNDLE/bin-before" -before moelab bench_engine
    BIN_BEFORE_MOELAB=$PREFIX/wrappers/moelab-before BIN_BEFORE_BENCH=$PREFIX/wrappers/bench_engine-before
  fi
  export MOELAB_ASSETS=$BUNDLE/assets MOELAB_BIN=$BIN_MOELAB BIN_BENCH BIN_BEFORE_BENCH=${BIN_BEFORE_BENCH:-}
  log "binaries: $BIN_MOELAB"
}

# Runs a stage (a command, or one of this script's subcommands) under a time limit, its output in
# OUT/NAME.log and on the terminal.
stage() {
  local name=$1 limit=$2; shift 2
  local left=$((DEADLINE - SECONDS))
  ((left < 20)) && { log "skip $name: ${left}s left"; return 1; }
  ((limit > left)) && limit=$left
  log "$name (limit ${limit}s)"
  [[ $(type -t "$1") == function ]] && set -- bash "${BASH_SOURCE[0]}" "$@"
  timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  log "$name: exit $rc"
  return "$rc"
}

environment() {
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  grep PRETTY_NAME /etc/os-release
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  g++ --version | head -1; cmake --version | head -1; nvcc --version | tail -1
  nproc; command -v pkg-config || echo "no pkg-config"
}

side_by_side() {
  mkdir -p runs/side-by-side/data && cp "$BUNDLE"/side-by-side-data/* runs/side-by-side/data/
  PYTHONUNBUFFERED=1 python3 bench/side_by_side.py "$@"
}

# The paper's MoE layer and the two routers with the earlier build and this one, alternately.
layer_before_after() {
  for round in 1 2; do
    for bench in "$BIN_BEFORE_BENCH" "$BIN_BENCH"; do
      echo "round $round: $bench"
      "$bench" --benchmark_filter='MoeLayerForwardBackward/grouped_mm/cuda|RouterForwardBackward/(softmax|kern)/cuda' \
        --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
    done
  done
}

# The kernels whose CUDA tests failed in the log of test_cuda_path, as MOELAB_ATEN_ONLY's list (empty
# when none did): later stages then measure the other kernels, with training that stays correct.
failed_kernels() {
  local log=$1 kernels=() test kernel
  for test in FusedCrossEntropy:cross_entropy FusedGatedGelu:gated_gelu FusedKernGate:kern_gate SlotRowKernels:slot_rows; do
    kernel=${test#*:}
    grep -q "FAILED.*Cuda\.${test%%:*}" "$log" && kernels+=("$kernel")
  done
  (IFS=,; echo "${kernels[*]}")
}

# Stages, in order; `check OUT SECONDS STAGE...` runs the ones named.
ALL_STAGES=(cuda_tests router_bench profile before_after layer_before_after side_by_side variants step_profile
  engine_micro_batch_32 source_build)

check() {
  OUT=${1:-$ROOT/gpu-results} DEADLINE=$((SECONDS + ${2:-540}))
  shift $(($# < 2 ? $# : 2))
  local stages=("$@")
  ((${#stages[@]})) || stages=("${ALL_STAGES[@]}")
  mkdir -p "$OUT"
  stage environment 30 environment
  use_binaries || return 1
  # Bundled binaries that do not load against this machine's torch: build from source first.
  if ! "$BIN_MOELAB" --help >/dev/null 2>&1; then
    log "the bundle's moelab does not run here"
    stage source_build 400 build && use_binaries || return 1
  fi
  for name in "${stages[@]}"; do
    case $name in
      cuda_tests)
        stage cuda_tests 120 "$BIN_TEST"
        local off
        off=$(failed_kernels "$OUT/cuda_tests.log")
        if [[ -n $off ]]; then
          export MOELAB_ATEN_ONLY=$off
          log "the tests of kernels $off failed: the stages after run with MOELAB_ATEN_ONLY=$off"
        fi ;;
      router_bench)
        stage router_bench 180 "$BIN_BENCH" --benchmark_filter=cuda --benchmark_repetitions=3 \
          --benchmark_report_aggregates_only=true ;;
      profile) stage profile 90 python3 experiments/profile_moe_layer.py ;;
      before_after | layer_before_after)  # only with .gpu/bin-before (MOELAB_BEFORE at bundle time)
        if [[ -z ${BIN_BEFORE_MOELAB:-} ]]; then log "skip $name: no .gpu/bin-before"
        elif [[ $name == before_after ]]; then
          stage before_after 240 side_by_side --steps 40 --repeats 2 --batch-size 16 --micro-batch 16 \
            --sides engine,before --before-bin "$BIN_BEFORE_MOELAB"
        else stage layer_before_after 150 layer_before_after; fi ;;
      side_by_side) stage side_by_side 300 side_by_side --steps 40 --repeats 1 --batch-size 16 --micro-batch 16 ;;
      variants)  # the engine against itself with ATen's kernels only and with its step as a CUDA graph
        stage variants 240 side_by_side --steps 40 --repeats 2 --batch-size 16 --micro-batch 16 \
          --sides engine,aten,graph ;;
      step_profile)  # the engine's own training step, kernel by kernel (side_by_side wrote the 125M config)
        stage step_profile 120 "$BIN_MOELAB" train --config runs/side-by-side/config.json --db /tmp/step-profile.db \
          --run-dir /tmp/step-profile --profile-steps 5 &&
          cp /tmp/step-profile/profile/ops.csv /tmp/step-profile/profile/operators.csv "$OUT/" &&
          gzip -c /tmp/step-profile/profile/trace.json >"$OUT/step_profile_trace.json.gz" ;;
      engine_micro_batch_32)  # the engine alone at twice the micro-batch (side_by_side wrote the 125M config)
        stage engine_micro_batch_32 90 "$BIN_MOELAB" train --config runs/side-by-side/config.json --db /tmp/mb32.db \
          --run-dir /tmp/mb32 --set train.batch_size=32 --set train.micro_batch=32 --set train.steps=40 \
          --set train.log_every=10 --set train.eval_every=40 --set train.checkpoint_every=40 --set train.eval_batches=1 ;;
      source_build)  # the source build, then its own test binary, which must pass as the bundle's did
        [[ -x build-gpu/moelab ]] ||
          { stage source_build 400 build && stage cuda_tests_source_build 60 build-gpu/tests/test_cuda_path; } ;;
      *) die "unknown stage $name (stages: ${ALL_STAGES[*]})" ;;
    esac
  done
  summary
}

# The lines that matter from each stage's log, last, where a terminal or a log tail shows them.
summary() {
  echo "================ summary ($OUT)"
  for name in environment "${ALL_STAGES[@]}" cuda_tests_source_build; do
    [[ -f $OUT/$name.log ]] || continue
    echo "---- $name"
    if [[ $name == source_build ]]; then tail -3 "$OUT/$name.log"; continue; fi
    if [[ $name == profile ]]; then grep "GPU time" "$OUT/$name.log"; continue; fi  # one line per form; kernels in the log
    if [[ $name == step_profile ]]; then
      grep -E "^by kind|^model FLOPs|^  (over the busy|were matmuls)" "$OUT/$name.log"
      sed -n '/^profile of/,$p' "$OUT/$name.log" | head -60
      continue
    fi
    grep -E "PASSED|FAILED|^round|_median|tokens/s|x \(medians\)|MFU|step [0-9]+/|NVIDIA|^torch|Error|GPU time|^  " "$OUT/$name.log" | tail -40
  done
}

case ${1:-} in
  bundle) bundle ;;
  before) shift; build_before "$@" ;;
  build) build ;;
  check) shift; check "$@" ;;
  environment) environment ;;
  side_by_side) shift; side_by_side "$@" ;;
  layer_before_after) layer_before_after ;;
  summary) OUT=${2:-$ROOT/gpu-results} summary ;;
  *) sed -n '2,/^set /{/^set /d;p}' "${BASH_SOURCE[0]}"; exit 2 ;;
esac
