#!/usr/bin/env bash
# The GPU figures in one go, most important first: the CUDA tests, the inference batch-size curve in
# each precision, an ensemble of two networks, decoder attention on the GPU, several processes
# sharing the GPU, a 1M-item bucket roll, and what bf16/fp16 cost in accuracy. Each table is
# printed and kept under OUT_DIR.
#
#   bash bench/gpu.sh [OUT_DIR]          (default: runs/gpu)
#
# DEVICE=cpu ITEMS=4096 BATCHES=1024 PROCESSES=1,2 ROLL_ITEMS=20000 MINUTES=0.2 runs the same steps
# small, on a CPU. STEPS=tests,inference,processes runs only those steps (default: all of them,
# which took over eight minutes on an H100 machine with MINUTES=0.5), for a device lent for less.
set -uo pipefail
out=${1:-runs/gpu}
device=${DEVICE:-cuda}
items=${ITEMS:-131072}
batches=${BATCHES:-1024,4096,16384,65536}
roll_items=${ROLL_ITEMS:-1000000}
minutes=${MINUTES:-1}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
failed=0

steps=${STEPS:-tests,inference,ensemble,attention,processes,scale,precision}

step() {
    local name=$1
    shift
    case ",$steps," in
    *",$name,"*) ;;
    *) echo "== $name: skipped (STEPS=$steps)"; return 0 ;;
    esac
    echo "== $name: $*"
    "$@" 2>&1 | tee "$out/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $name failed (exit $rc)"; failed=1; }
}

# The publishing hot path's C extensions (setup.py) are built at install, and a copy of the
# checkout may lack them: build them in place if so, and say which path the figures are of.
if ! "$py" -c "import stream._messages, stream._records" 2>/dev/null; then
    "$py" setup.py -q build_ext --inplace >/dev/null 2>&1 || echo "== the C extensions could not be built"
fi
"$py" -c "import stream.bulk_send as b, stream.publish as p
print('messages written in', 'C' if p.NATIVE_MESSAGES else 'Python', '/ records framed in', 'C' if b.NATIVE_RECORDS else 'Python')" |
    tee "$out/extensions.txt"

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee "$out/gpu.txt"
fi
# Every test that needs a GPU has cuda or gpu in its name (tests/unit/test_gpu_script.py checks it).
step tests "$py" -m pytest -q -p no:cacheprovider tests/unit -k "cuda or gpu or precision"
step inference "$py" -m bench inference --device "$device" --items "$items" --batch-sizes "$batches" \
    --precisions fp32,bf16,fp16 --seconds 1 --compare-past-covariates
step ensemble "$py" -m bench inference --device "$device" --items "$items" --batch-sizes "${batches##*,}" \
    --precisions fp32,bf16 --ensemble 2 --seconds 1
step attention "$py" -m bench inference --device "$device" --items "$items" --batch-sizes "${batches##*,}" \
    --precisions fp32,bf16 --feedback-window 14 --seconds 1
step processes "$py" -m bench processes --device "$device" --items "$((items * 2))" --batch "${batches##*,}" \
    --processes "${PROCESSES:-1,2,4,8}"
step scale "$py" -m bench scale --device "$device" --items "$roll_items" --batch "${batches##*,}"
step precision "$py" -m bench precision --device "$device" --minutes "$minutes"
exit $failed
