#!/usr/bin/env bash
# The test command: makes sure a Vulkan driver exists (installing Mesa's software driver,
# lavapipe, when there is none and we may), checks that wgpu will hand the tests a Vulkan
# adapter (not the silent GL fallback), then runs the whole test suite.
#
#   scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

icd_dirs="/usr/share/vulkan/icd.d /etc/vulkan/icd.d /usr/local/share/vulkan/icd.d"
have_vulkan_driver() {
    [ -n "${VK_ICD_FILENAMES:-}${VK_DRIVER_FILES:-}" ] && return 0
    for d in $icd_dirs; do
        ls "$d"/*.json >/dev/null 2>&1 && return 0
    done
    return 1
}

# (The loader check reads ldconfig's whole output: `grep -q` would stop at the first match and,
# under pipefail, turn ldconfig's SIGPIPE into a false "not found".)
have_vulkan_loader() {
    ldconfig -p 2>/dev/null | grep 'libvulkan\.so\.1' >/dev/null
}

if [ "$(uname -s)" = Linux ] && { ! have_vulkan_driver || ! have_vulkan_loader; }; then
    echo "test.sh: no Vulkan driver found; fewshot's GPU tests need one (lavapipe works without a GPU)."
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "test.sh: installing Mesa's software Vulkan driver (apt-get install mesa-vulkan-drivers)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
    else
        echo "test.sh: install it as root: apt-get install mesa-vulkan-drivers (Debian/Ubuntu)," >&2
        echo "         dnf install mesa-vulkan-drivers (Fedora), then run this script again." >&2
        exit 1
    fi
fi

# The same build the tests use (the test profile is optimised), so this costs no extra compile.
fewshot() { cargo run --quiet --profile test --bin fewshot -- "$@"; }
backend=$(fewshot info --chosen-backend)
echo "test.sh: the GPU tests will run on: $(fewshot info --chosen)"
case "$backend" in
    Vulkan|Metal|Dx12) ;;
    *)
        echo "test.sh: wgpu chose a '$backend' adapter: the Vulkan driver is missing or broken" >&2
        echo "         (wgpu falls back to GL silently). Install mesa-vulkan-drivers and retry." >&2
        exit 1
        ;;
esac

cargo test "$@"
