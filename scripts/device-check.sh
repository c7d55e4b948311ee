#!/usr/bin/env bash
# The one prepared check for a machine with a real GPU (run after scripts/device-prepare.sh, with
# `.device` and `.gl` carried): correctness of every GPU kernel on the real adapter, then
# the PyTorch reference on CUDA on the same GPU, then `fewshot bench --device gpu --reference` (its
# step rows carry the ratio to PyTorch). Everything it
# prints also lands in $OUT (default ./device-out). Each stage has its own time limit so one slow
# stage cannot eat the whole lease.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-device-out}; mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
if ls .gl/*.deb >/dev/null 2>&1 && ! ldconfig -p | grep libvulkan.so.1 >/dev/null; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
bin=/tmp/fewshot-device; rm -rf "$bin"; mkdir -p "$bin"
tar -C "$bin" -xJf .device/bundle.tar.xz
F=$bin/bin/fewshot
echo "== adapters"; timeout 60 "$F" info --json | tee "$OUT/info.json"
echo "== GPU tests (fail = a kernel disagrees with the CPU reference on this adapter)"
status=0
for t in "$bin"/bin/test-*; do
  echo "-- $(basename "$t")"
  # (the one test that runs the fewshot binary by its build path cannot run from the bundle)
  timeout 120 "$t" --test-threads 2 --skip clip_grad_flag_logs_the_norm_and_rejects_bad_values 2>&1 \
    | grep -E "test result|FAILED|panicked|error" || status=1
done
echo "== PyTorch reference on CUDA"
if [ -f .device/fewshot_torch.py ] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  timeout 200 python3 .device/fewshot_torch.py --mode speed --suite --no-84 --device cuda --out "$OUT/torch-cuda.json" | tail -20
else
  echo "skipped: no CUDA PyTorch here"
fi
ref=(); [ -s "$OUT/torch-cuda.json" ] && ref=(--reference "$OUT/torch-cuda.json")
echo "== fewshot bench on the GPU (step and inference rows with the ratio to PyTorch CUDA)"
# BENCH_ARGS=--quick for a dry run on a software adapter (the full bench takes many minutes there).
timeout 240 "$F" bench --device gpu --json "${ref[@]}" ${BENCH_ARGS:-} > "$OUT/bench-gpu.json"; echo "bench exit $?"
timeout 120 "$F" bench --device gpu --only kernels ${BENCH_ARGS:-} 2>&1 | tail -40
exit $status
