#!/usr/bin/env bash
# Build environment for `cargo build --features cuda` from PyPI wheels only
# (no system CUDA, no GPU, no driver needed to build).
#
#   eval "$(bash tools/cuda-env.sh /var/tmp/ebv-cuda)"           # build env
#   cargo build --release --features cuda
#   eval "$(bash tools/cuda-env.sh --run /var/tmp/ebv-cuda)"     # on the GPU machine: LD_LIBRARY_PATH only
#
# stdout carries only `export` lines; progress goes to stderr. Idempotent.
# Env: CUDA_COMPUTE_CAP (default 90: Hopper, H100/H200), PYTHON (default python3).
#
# Facts this rests on (checked on this project's build machine):
# - CUDA 13.0 matches the R580 driver of our GPU machines; PTX from a newer
#   toolkit does not load there. Every wheel is pinned in ONE pip call:
#   nvcc's wheel depends on nvidia-nvvm without a version, and the newest
#   nvvm emits PTX that ptxas 13.0 rejects ("Unsupported .version").
# - cuDNN 9.21 and NCCL 2.30 are what cudarc 0.19.10 (candle 0.11.1's
#   `cudnn`/`nccl` features) binds to.
# - cudarc links with -lcuda -lcudart -lcublas -lcublasLt -lcurand -lnvrtc
#   -lcudnn -lnccl. The wheels ship only versioned sonames and no libcuda
#   (that comes with the driver), so we make a link folder with unversioned
#   symlinks and a link-only libcuda stub (soname libcuda.so.1, every entry
#   point returns CUDA_ERROR_STUB_LIBRARY). The stub is for the linker only:
#   never put it on LD_LIBRARY_PATH.
# - nvcc finds its include/, lib/ and nvvm/ relative to itself; there is no
#   nvidia-smi here, so CUDA_COMPUTE_CAP must be given.
set -euo pipefail

PINS=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88
      nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cuda-nvrtc==13.0.88
      nvidia-cublas==13.1.0.3 nvidia-curand==10.4.0.35 nvidia-cudnn-cu13==9.21.1.3
      nvidia-nccl-cu13==2.30.7)

say() { echo "cuda-env: $*" >&2; }
fail() { say "error: $*"; exit 2; }

mode=build
[ "${1:-}" = "--run" ] && { mode=run; shift; }
[ $# -eq 1 ] || fail "usage: $0 [--run] VENV"
VENV=$(realpath -m "$1")

if [ ! -x "$VENV/bin/python" ]; then
  [ $mode = build ] || fail "$VENV is not set up: run without --run first"
  say "creating $VENV"
  "${PYTHON:-python3}" -m venv "$VENV" >&2
fi
PY=$VENV/bin/python
need=$("$PY" - "${PINS[@]}" <<'PYEOF'
import sys
from importlib.metadata import version, PackageNotFoundError
out = []
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        ok = version(name) == want
    except PackageNotFoundError:
        ok = False
    if not ok:
        out.append(pin)
print(" ".join(out))
PYEOF
)
if [ -n "$need" ]; then
  [ $mode = build ] || fail "missing wheels in $VENV: $need"
  say "installing ${need}"
  "$PY" -m pip install -q --disable-pip-version-check --no-cache-dir "${PINS[@]}" >&2
fi

SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/nvidia
CU=$SITE/cu13
for f in bin/nvcc nvvm/bin/cicc include/cuda.h lib/libcudart.so.13 lib/libcublas.so.13 \
         lib/libcublasLt.so.13 lib/libcurand.so.10 lib/libnvrtc.so.13; do
  [ -e "$CU/$f" ] || fail "missing $CU/$f"
done
[ -e "$SITE/cudnn/lib/libcudnn.so.9" ] && [ -e "$SITE/nccl/lib/libnccl.so.2" ] || fail "missing cuDNN or NCCL"

if [ $mode = run ]; then
  ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1 ' \
    || say "warning: no libcuda.so.1 here (no NVIDIA driver): a cuda build will not start"
  echo "export LD_LIBRARY_PATH=$CU/lib:$SITE/cudnn/lib:$SITE/nccl/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
  exit 0
fi

LINK=$VENV/link
mkdir -p "$LINK/lib/stubs"
for l in cudart:$CU/lib/libcudart.so.13 cublas:$CU/lib/libcublas.so.13 \
         cublasLt:$CU/lib/libcublasLt.so.13 curand:$CU/lib/libcurand.so.10 \
         nvrtc:$CU/lib/libnvrtc.so.13 cudnn:$SITE/cudnn/lib/libcudnn.so.9 \
         nccl:$SITE/nccl/lib/libnccl.so.2; do
  ln -sfn "${l#*:}" "$LINK/lib/lib${l%%:*}.so"
done
STUB=$LINK/lib/stubs/libcuda.so
if [ ! -e "$STUB" ] || [ "$CU/include/cuda.h" -nt "$STUB" ]; then
  say "building the link-only libcuda stub"
  # Both default-stream ABIs declare different entry points (_ptsz/_ptds).
  for abi in "" -DCUDA_API_PER_THREAD_DEFAULT_STREAM; do
    echo '#include <cuda.h>' | "${CC:-cc}" -E -P $abi -I"$CU/include" -x c -
  done | grep -oE 'CUresult +cu[A-Za-z0-9_]+ *\(' | sed -E 's/CUresult +//; s/ *\(//' | sort -u \
    | awk '{ printf "int %s(void) { return 34; }\n", $1 }' > "$LINK/stub.c"
  [ "$(wc -l < "$LINK/stub.c")" -gt 300 ] || fail "could not list the driver entry points from cuda.h"
  "${CC:-cc}" -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$STUB" "$LINK/stub.c"
fi
"$CU/bin/nvcc" --version | grep -q 'release 13\.0' || fail "nvcc is not CUDA 13.0"

cat <<ENV
export PATH=$CU/bin:\$PATH
export NVCC=$CU/bin/nvcc
export CUDA_HOME=$CU
export CUDA_PATH=$CU
export CUDA_ROOT=$LINK
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export LIBRARY_PATH=$LINK/lib:$LINK/lib/stubs\${LIBRARY_PATH:+:\$LIBRARY_PATH}
ENV
