#!/usr/bin/env bash
# GPU path check (about 5 minutes on one GPU; the product and CI never need a GPU). Proves, on a CUDA machine:
#   1. the synthetic default (params.yaml, data.source synthetic) trains on CUDA with AMP (train.amp auto),
#      then evaluates and exports;
#   2. the same training under torchrun, one process per GPU (NPROC, default: all GPUs). With one GPU this is a
#      one-process torchrun (no process group forms); with two or more, DistributedDataParallel over nccl;
#   3. the archive served by TorchServe with its worker on the GPU, answering a real request.
# Usage: bash scripts/gpu_check.sh [WORKDIR]   (PY=python of an environment with requirements.txt installed;
#        default .venv/bin/python, else python3). Everything is written under WORKDIR (default build/gpu-check);
#        the repo's data/, artifacts/ and mlflow.db are not touched. Exit 0 only when all three passed.
#        DEVICE=cpu rehearses the same steps without a GPU (its GPU assertions skipped), to check the script itself.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$(test -x .venv/bin/python && echo .venv/bin/python || echo python3)}
WORK=$(realpath -m "${1:-build/gpu-check}")
rm -rf "$WORK" && mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 MLFLOW_TRACKING_URI="sqlite:///$WORK/mlflow.db" PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() { echo; echo "=== $(date -u +%H:%M:%S) $*"; }

DEVICE=${DEVICE:-cuda}
gpu() { [ "$DEVICE" = cuda ]; }
step "GPU"
gpu || echo "DEVICE=$DEVICE: a rehearsal, the GPU assertions are skipped"
gpu && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
gpu && "$PY" -c 'import torch; assert torch.cuda.is_available(), "torch sees no CUDA device"; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())'

# params.yaml as committed, on CUDA, 300 images per class (the check's time, not the model's quality)
"$PY" - "$WORK" "$DEVICE" <<'EOF'
import sys, yaml
params = yaml.safe_load(open("params.yaml"))
params["synthetic"]["images_per_class"] = 300
params["train"].update(device=sys.argv[2], amp="auto")
params["evaluate"].update(min_accuracy=0.9, max_log_loss=0.5)
open(f"{sys.argv[1]}/params.yaml", "w").write(yaml.safe_dump(params, sort_keys=False))
EOF
P=(--params "$WORK/params.yaml")

step "1. train the synthetic default on $DEVICE with AMP, evaluate, export"
"$PY" -m training "${P[@]}" synthesize --out "$WORK/synthetic"
"$PY" -m training "${P[@]}" prepare --source "$WORK/synthetic" --out "$WORK/prepared"
"$PY" -m training "${P[@]}" train --prepared "$WORK/prepared" --out "$WORK/train" | tee "$WORK/train.log"
grep -q "device $DEVICE" "$WORK/train.log" || { echo "FAIL: training did not run on $DEVICE"; exit 1; }
! gpu || grep -Eq "amp (bfloat16|float16)" "$WORK/train.log" || { echo "FAIL: training did not use AMP"; exit 1; }
"$PY" -m training "${P[@]}" evaluate --prepared "$WORK/prepared" --train-dir "$WORK/train" --out "$WORK/eval"
"$PY" -m training "${P[@]}" export --prepared "$WORK/prepared" --train-dir "$WORK/train" --eval-dir "$WORK/eval" \
    --out "$WORK/model"

NPROC=${NPROC:-$(gpu && nvidia-smi -L | wc -l || echo 1)}
step "2. torchrun, $NPROC process(es)"
"$PY" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m training "${P[@]}" train \
    --prepared "$WORK/prepared" --out "$WORK/train-ddp" | tee "$WORK/train-ddp.log"
grep -q "device $DEVICE.* x $NPROC process" "$WORK/train-ddp.log" || { echo "FAIL: torchrun did not train on $DEVICE"; exit 1; }

step "3. serve the archive with a worker on $DEVICE"
"$PY" -m serving archive --model-dir "$WORK/model" --export-path "$WORK/store"
trap '"$PY" -m serving stop --run-dir "$WORK/run" || true' EXIT
"$PY" -m serving start --run-dir "$WORK/run" --log-dir "$WORK/logs" --model-store "$WORK/store" \
    --inference-port 18080 --management-port 18081 --metrics-port 18082 \
    --grpc-inference-port 17070 --grpc-management-port 17071 --timeout 300
TOKEN=$("$PY" -m serving token --run-dir "$WORK/run")
NAME=$("$PY" -c 'from catsdogs.contract import model_name; print(model_name())')
IMAGE=$(find "$WORK/synthetic" -name '*.jpg' -print -quit)
ANSWER=$(curl -sf -H "Authorization: Bearer $TOKEN" -T "$IMAGE" "http://127.0.0.1:18080/predictions/$NAME")
echo "answer: $ANSWER"
echo "$ANSWER" | grep -q '"label"' || { echo "FAIL: no prediction"; exit 1; }
if gpu; then
    nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv | tee "$WORK/gpu-apps.csv"
    grep -q "python" "$WORK/gpu-apps.csv" || { echo "FAIL: no TorchServe worker holds GPU memory"; exit 1; }
fi
grep -h "catsdogs handler ready" "$WORK/logs"/*.log | tail -1

step "PASS ($DEVICE): training with AMP, torchrun and a worker on the device all ran"
