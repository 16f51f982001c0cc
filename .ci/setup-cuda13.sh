#!/usr/bin/env bash
# Build-time CUDA 13.0 toolkit from pip wheels + a link-time libcuda stub (see ../shared/gpu-build.md).
# Only for building `--features cuda` on a machine without a GPU; never put the stub on a GPU machine's paths.
# Usage: .ci/setup-cuda13.sh [PREFIX]   (default /opt/cuda13-wheels); run `cargo fetch` first.
set -euo pipefail
PREFIX=${1:-/opt/cuda13-wheels}
python3 -m venv "$PREFIX"
"$PREFIX/bin/pip" install -q --no-cache-dir "cuda-toolkit[nvcc,cudart,cublas,curand,nvrtc,crt,nvvm,cccl]==13.0.2"
CU=$("$PREFIX/bin/python" -c 'import nvidia.cu13; print(list(nvidia.cu13.__path__)[0])')
( cd "$CU/lib" && for l in cudart cublas cublasLt curand nvrtc; do
    f=$(ls lib$l.so.[0-9]* | head -1); ln -sf "$f" "lib$l.so"; done )
SYS=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 | head -1)/src/driver/sys/mod.rs
[ -f "$SYS" ] || { echo "cudarc 0.19.10 source not found: run 'cargo fetch' first" >&2; exit 1; }
mkdir -p "$CU/lib/stubs"
grep -oE '^\s+fn cu[A-Za-z0-9_]+\(' "$SYS" | sed -E 's/^\s+fn //; s/\($//' | sort -u \
  | awk '{print "int " $1 "(void) { return 34; /* CUDA_ERROR_STUB_LIBRARY */ }"}' > "$CU/lib/stubs/cuda_stub.c"
gcc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$CU/lib/stubs/libcuda.so" "$CU/lib/stubs/cuda_stub.c"
# the runtime name, so that a cuda binary can be started here to see it refuse cleanly (LD_LIBRARY_PATH=$CU/lib:$CU/lib/stubs);
# never on the GPU machine, where the stub would shadow the real driver
ln -sf libcuda.so "$CU/lib/stubs/libcuda.so.1"
cat > "$PREFIX/cuda-env.sh" <<ENV
export CU=$CU
export PATH=\$CU/bin:\$PATH
export CUDA_HOME=\$CU
export CUDA_COMPUTE_CAP=90
export CUDARC_CUDA_VERSION=13000
ENV
echo "ok: source $PREFIX/cuda-env.sh"; "$CU/bin/nvcc" --version | tail -2
