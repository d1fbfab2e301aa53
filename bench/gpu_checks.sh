#!/usr/bin/env bash
# Every GPU measurement the issues ask for, in one run (at most 585 s; run it with
# timeout_s=600):
#   CUDA tests (pytest -m gpu), fused merge vs sequential (issue 3: >= 10x), model speed vs
#   torchvision Mask R-CNN at 800x1216 (issue 3), PQAccumulator per 800x1216 image (issue 4:
#   < 1 ms), engine training speed at 800x1333 with bf16 AMP (issue 5), a short tools/train.py
#   run on CUDA, the PQ bench on the machine's cores, and tools/merge.py's merge on CUDA (issue 15;
#   panopticapi is not on the machine, so only our side is timed there).
#
# The machine has torch/torchvision but not hydra-core, omegaconf, antlr4, pycocotools, pyspng
# or hotcoco: `make device-wheels` puts their wheels (and scipy's, for Mask2Former) in ./.whl (git-ignored, ~40 MB); run this
# script there with `.whl` carried. Results land in $OUT, one file per step.
set -uo pipefail
OUT=${OUT:-/tmp/panfpn_gpu_checks}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)" | tee -a "$OUT/gpu.txt"

BUDGET=${BUDGET:-585}  # seconds of the one 600 s device call, wheel install included
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep going on failure; skip a step
    local name=$1 limit=$2  # whose limit no longer fits in what is left of $BUDGET (it says so)
    shift 2
    if (( SECONDS + limit > BUDGET )); then
        echo "== $name: skipped, ${limit} s limit but $((BUDGET - SECONDS)) s of the ${BUDGET} s budget left" \
            | tee "$OUT/$name.txt"
        return
    fi
    echo "== $name ($(date +%T)): $*"
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    echo "   exit $? after $SECONDS s total"
    tail -n 12 "$OUT/$name.txt"
}

# Most important first; the limits add up to 630 s: a step runs only while its limit fits in the
# budget, so the last ones are skipped (and say so) when the earlier ones run long.
step tests 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests
step merge 45 python3 bench/merge.py --device cuda
step accumulator 45 python3 bench/pq.py --accumulator-only
step model 120 python3 bench/model.py --device cuda --size 800 1216 --iters 10 --warmup 3
step train_speed 90 python3 bench/train_speed.py --device cuda --size 800 1333 --amp --iters 20
step roi_align 30 python3 bench/roi_align.py --device cuda --size 800 1344
step train_cuda 60 python3 tools/train.py device=cuda solver.max_iter=100 \
    output_dir="$OUT/run" train.progress_bar=false
step pq 40 python3 bench/pq.py --repeat 2
step merge_tool 20 python3 bench/merge_tool.py --device cuda --workers 8 --threads 2 --images 100 --rounds 2
# issue 22: the exported whole pipeline vs eager CUDA, R50 800x1216; onnxruntime's CUDA/TensorRT
# providers are timed where onnxruntime-gpu is installed. The device image's onnxruntime is the CPU
# build and .whl does not carry onnxruntime-gpu: the step then says so, skips the export and times
# eager CUDA only.
step export_pipeline 55 python3 bench/export.py --scope pipeline --model panoptic_fpn_r50 \
    --data coco_panoptic --size 800 1216 --threads 8 --reps 3 --device cuda
# issue 24: Mask2Former R50 vs Panoptic FPN R50 step and inference time on CUDA (needs scipy: the
# step fails naming it where the image lacks it)
step mask2former 35 python3 bench/mask2former.py --device cuda --size 1024 1024 --batch 2 --iters 10
rm -rf "$OUT/run"  # only the logs come back
