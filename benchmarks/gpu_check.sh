#!/usr/bin/env bash
# The checks that need an accelerator, on whatever this machine has: the adapter
# conformance suite, the precision and multi-process tests, `transferkit bench --quick`
# and the compiled-step benchmark. Results go to benchmarks/results/device/<device>/,
# tagged with the device's name.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]
#
# Run it from the repository root in the environment the README sets up (with a CUDA
# build of PyTorch, and jax[cuda] for Flax, where the machine has a GPU).
set -u
if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then
  DEVICE=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  GPUS=$(nvidia-smi -L | wc -l)
else
  DEVICE="cpu $(python -c 'import platform; print(platform.processor() or platform.machine())')"
  GPUS=0
fi
TAG=$(echo "$DEVICE" | tr -c 'A-Za-z0-9\n' '-' | tr -s '-')
OUT=${1:-benchmarks/results/device/$TAG}
mkdir -p "$OUT"
echo "device: $DEVICE ($GPUS GPU(s)) -> $OUT"
python - "$OUT" "$DEVICE" <<'PY'
import json, platform, sys
from importlib.metadata import version, PackageNotFoundError
def v(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return None
info = {"device": sys.argv[2], "python": platform.python_version()}
info.update({p: v(p) for p in ("torch", "jax", "jaxlib", "flax", "keras", "transformers")})
try:
    import torch
    info["torch_cuda"] = torch.cuda.is_available()
except ImportError:
    pass
try:
    import jax
    info["jax_devices"] = [str(d) for d in jax.devices()]
except ImportError:
    pass
open(f"{sys.argv[1]}/device.json", "w").write(json.dumps(info, indent=2))
print(json.dumps(info))
PY
status=0
run() {  # name, command...
  local name=$1; shift
  echo "== $name"
  local t0=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - t0))s" | tee -a "$OUT/summary.txt"
  tail -3 "$OUT/$name.log"
  [ $rc -eq 0 ] || status=1
}
run conformance python -m pytest -q tests/test_adapters.py
run precision python -m pytest -q tests/test_scaling.py -k "precision or compiled or float16"
if [ "$GPUS" -ge 2 ]; then
  run ddp python -m pytest -q tests/test_scaling.py -k "ddp or nproc or failing"
else  # NCCL takes one GPU per process: with fewer than 2, the processes use gloo on the CPU
  run ddp env CUDA_VISIBLE_DEVICES= python -m pytest -q tests/test_scaling.py -k "ddp or nproc or failing"
fi
run bench transferkit bench --quick --out "$OUT/bench"
run compile python benchmarks/scaling.py --part compile --rounds 5 --steps 10 --out "$OUT"
exit $status
