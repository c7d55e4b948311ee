#!/usr/bin/env bash
# Prepares the one-shot check on a machine with a real GPU (no Rust toolchain there): builds
# stripped binaries of fewshot and of every GPU test here, packs them with the PyTorch reference
# script into .device/ (ignored by git; pass `.device` and `.gl` as carried paths), and fetches
# the Vulkan loader packages into .gl/ once. Then run scripts/device-check.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
gpu_tests="gather conv2d batch_norm max_pool distance prototypes softmax_xent pair_loss adam clip matmul conv4"
rm -rf .device && mkdir -p .device/bin
args=(); for t in $gpu_tests; do args+=(--test "$t"); done
cargo build --profile device --bin fewshot
cp target/device/fewshot .device/bin/
cargo test --profile device --no-run "${args[@]}" --message-format=json \
  | python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        shutil.copy(m["executable"], ".device/bin/test-" + m["target"]["name"])
'
peer=../shared/peers/fewshot_torch.py
[ -f "$peer" ] && cp "$peer" .device/
tar -C .device -cJf .device/bundle.tar.xz bin && rm -rf .device/bin
grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
if ! ls .gl/*.deb >/dev/null 2>&1; then
  grep -qx '/.gl/' .git/info/exclude 2>/dev/null || echo '/.gl/' >> .git/info/exclude
  mkdir -p .gl /tmp/amd64/partial
  o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
  apt-get $o update -qq
  (cd .gl && apt-get $o download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
fi
du -sh .device .gl
