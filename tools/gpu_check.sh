#!/usr/bin/env bash
# GPU check, one short script (a few minutes; every stage has a time limit: 450 s in all at most) for a CUDA
# machine that has torch, timm, h5py, scikit-learn, typer, rich, scipy and tifffile but no package index:
#
#   0. installs what the machine lacks from a wheel folder carried with the repository (tools/fill_gpu_wheels.py
#      fills it here, with pip download);
#   1. UCC training of configs/mnist-smoke.yaml with bf16 (train.amp);
#   2. `pathoucc features` of a tile file of MNIST digits at 224 px with a timm encoder (resnet50, seeded random
#      weights saved as a local file: the real encoder's cost, no download);
#   3. the UCC head on those features (data.source: features; HEAD_CONFIG below);
#   4. the training of step 1 under `torchrun --nproc_per_node 1` (GPU_CHECK_NPROC): with one process pathoucc
#      trains without a process group, so the stage joins one itself (NCCL on CUDA) and all-reduces a tensor;
#
# and prints each stage's throughput and peak GPU memory (tools/gpu_check.py measures them), then a table.
#
#   tools/gpu_check.sh [WORK_DIR]
#
# Environment: PYTHON (python3), WHEELS (tools/gpu-wheels), DATA (folder holding mnist/, default data),
# HEAD_CONFIG (configs/features-smoke.yaml), GPU_CHECK_STEPS (250), GPU_CHECK_PATCHES (4096),
# GPU_CHECK_SIZE (224), GPU_CHECK_ENCODER (resnet50), GPU_CHECK_ALLOW_CPU=1 (run without CUDA: for testing the
# script itself; the throughput is then a CPU's), GPU_CHECK_LIMIT_SCALE (1: multiplies every stage's time limit). Exit status: the number of stages that failed.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")}"
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-$ROOT/tools/gpu-wheels}"
DATA="$(cd "${DATA:-$ROOT/data}" 2>/dev/null && pwd || echo "${DATA:-$ROOT/data}")"
HEAD_CONFIG="${HEAD_CONFIG:-$ROOT/configs/features-smoke.yaml}"
STEPS="${GPU_CHECK_STEPS:-250}"
PATCHES="${GPU_CHECK_PATCHES:-4096}"
SIZE="${GPU_CHECK_SIZE:-224}"
ENCODER="${GPU_CHECK_ENCODER:-resnet50}"
mkdir -p "$WORK"
RESULTS="$WORK/results.jsonl"
: > "$RESULTS"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT" || exit 1

CHECK=("$PY" "$ROOT/tools/gpu_check.py" --results "$RESULTS")
[[ "${GPU_CHECK_ALLOW_CPU:-0}" == 1 ]] || CHECK+=(--require-cuda)
FAILED=()

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, note a failure and go on
    local name=$1 limit=$(( $2 * ${GPU_CHECK_LIMIT_SCALE:-1} )) start=$SECONDS code
    shift 2
    echo "== $name (at most ${limit} s)"
    timeout --kill-after=10 "$limit" "$@"
    code=$?
    if (( code != 0 )); then
        echo "!! $name failed (exit $code$( (( code == 124 )) && echo ': time limit'))"
        FAILED+=("$name")
    fi
    echo "   $name: $(( SECONDS - start )) s"
}

# 0. what the machine lacks, from the wheel folder (never the network)
if ! "$PY" -c "import pydantic, yaml, shapely, openslide, matplotlib" 2>/dev/null; then
    if [[ ! -f "$WHEELS/requirements.txt" ]]; then
        echo "!! missing packages and no wheel folder at $WHEELS (fill it with tools/fill_gpu_wheels.py)"
        exit 100
    fi
    stage install 60 "$PY" -m pip install --no-index --find-links "$WHEELS" -r "$WHEELS/requirements.txt"
fi
"$PY" -c "import torch; c = torch.cuda.is_available(); print('torch', torch.__version__, '| CUDA', c,
          '|', torch.cuda.get_device_name(0) if c else 'no GPU', '| bf16', c and torch.cuda.is_bf16_supported())"

MNIST=(--set "data.root=$DATA" --set "train.steps=$STEPS" --set train.amp=true --set train.val_every=100000
       --set train.checkpoint_every=100000)

# 1. UCC training with bf16
stage train 90 "${CHECK[@]}" train configs/mnist-smoke.yaml "$WORK/mnist" "${MNIST[@]}"

# 2. features with a timm encoder
stage tiles 30 "${CHECK[@]}" tiles "$WORK/tiles/digits.h5" --patches "$PATCHES" --size "$SIZE" --data-dir "$DATA"
stage weights 30 "${CHECK[@]}" weights "$ENCODER" "$WORK/$ENCODER.pt"
stage features 60 "${CHECK[@]}" features "$WORK/tiles/digits.h5" --out "$WORK/features" --model "$ENCODER" \
    --weights "$WORK/$ENCODER.pt" --batch-size 256

# 3. the UCC head on those features (data.source: features)
if [[ -f "$HEAD_CONFIG" ]]; then
    stage head 90 "${CHECK[@]}" train "$HEAD_CONFIG" "$WORK/head" --name head \
        --set "data.features=[$WORK/features/features_$ENCODER/digits.h5]" \
        --set "data.test_features=[$WORK/features/features_$ENCODER/digits.h5]" \
        --set "data.annotations=$WORK/tiles/digits_regions.csv" --set train.amp=true
else
    echo "!! head skipped: $HEAD_CONFIG not found (the UCC head on features, data.source: features)"
    FAILED+=("head")
fi

# 4. torchrun, one process, NCCL on CUDA
stage torchrun 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node "${GPU_CHECK_NPROC:-1}" \
    "$ROOT/tools/gpu_check.py" --results "$RESULTS" $([[ "${GPU_CHECK_ALLOW_CPU:-0}" == 1 ]] || echo --require-cuda) \
    train configs/mnist-smoke.yaml "$WORK/ddp" --name torchrun "${MNIST[@]}"

echo
"$PY" "$ROOT/tools/gpu_check.py" summary "$RESULTS"
echo "results: $RESULTS"
if (( ${#FAILED[@]} )); then
    echo "failed: ${FAILED[*]}"
fi
exit "${#FAILED[@]}"
