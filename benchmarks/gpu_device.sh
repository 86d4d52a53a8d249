#!/usr/bin/env bash
# `python -m benchmarks.gpu` on a lent GPU machine, in one call that ends within 9 minutes:
#
#   run(command="bash benchmarks/gpu_device.sh", carry=["benchmarks/results/wheels"], timeout_s=590)
#
# The GPU machine has JAX (CUDA), flax, optax, orbax-checkpoint, pandas, scikit-learn, tqdm, matplotlib,
# torch and timm, and reaches no package registry. What else lumbar_jax and the peer need comes as wheels
# downloaded beforehand on the dev machine into benchmarks/results/wheels (git-ignored; carried by `run`,
# 64 MiB at most: about 20 MB). For the GPU machine's Python (this script prints it; 3.11 below):
#
#   W=benchmarks/results/wheels; P="--python-version 3.11 --platform manylinux2014_x86_64 \
#     --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --platform any"
#   pip download --no-deps --only-binary=:all: -d $W $P pydicom==3.0.2 tensorflow-datasets==4.9.10 \
#     grain==0.2.18 array-record==0.8.6 ml-collections==1.1.0 pylibjpeg pylibjpeg-libjpeg \
#     pylibjpeg-openjpeg pylibjpeg-rle monai==1.6.1 einops tensorboardX importlib_resources zipp \
#     dm-tree immutabledict tensorflow-metadata googleapis-common-protos termcolor toml wrapt \
#     cloudpickle portpicker attrs psutil six
#   pip download --no-deps --no-binary=:all: -d $W promise      # tensorflow-datasets imports it; no wheel
#
# (tensorflow-datasets' pyarrow, 55 MB, and simple_parsing are left out: lumbar_jax's path does not import
# them.) Each of these is installed only where its distribution is missing, without dependencies, so the
# machine's own JAX / numpy / torch / protobuf stay as they are. Then the repo (`pip install --no-deps -e .`)
# and the benchmark, under `timeout`, with a time budget that leaves room for the row running at its end;
# gpu.json / gpu.md are written after every finished row, so even a run cut short brings them back.
# Results: $OUT/gpu/{gpu.json,gpu.md,run.log}.
set -uo pipefail

OUT=${OUT:-benchmarks/results}
WHEELS=${WHEELS:-benchmarks/results/wheels}
LIMIT_S=${LIMIT_S:-530}  # the whole script, install included
mkdir -p "$OUT/gpu"
python -V
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

if [ -d "$WHEELS" ]; then
  wheels=()
  for file in "$WHEELS"/*; do
    name=$(basename "$file" | sed -E 's/^([A-Za-z0-9_.]+)-[0-9].*$/\1/')
    python -c 'import importlib.metadata as m, sys; m.version(sys.argv[1])' "$name" 2>/dev/null && continue
    case "$file" in
      *.whl) wheels+=("$file") ;;
      *) python -m pip install --no-index --no-deps --no-build-isolation -q "$file" || echo "did not install: $file" ;;
    esac
  done
  if [ ${#wheels[@]} -gt 0 ]; then
    python -m pip install --no-index --no-deps -q "${wheels[@]}" || echo "some wheels did not install"
  fi
else
  echo "no wheel folder $WHEELS: using what is installed (the peer and the train section may be missing)"
fi
python -m pip install --no-deps --no-build-isolation -q -e . || echo "editable install failed: importing from the work tree"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX's persistent compilation cache (empty on a fresh machine): the train section's checkpoint evaluation then
# reuses the eval program its training compiled; every program the steps and peer rows time is compiled once.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/lumbar_jax_jax_cache}
python -c 'import jax; print("jax", jax.__version__, jax.devices())'

left=$((LIMIT_S - SECONDS))
budget=$(( left > 200 ? left - 100 : left / 2 ))
# No row starts after --budget-s; the one running then may take up to ~100 s more (a compile and its timing).
timeout -k 10 "$left" python -m benchmarks.gpu --out "$OUT/gpu" --cache /tmp/lumbar_jax_gpu_cache \
  --budget-s "$budget" 2>&1 | tee "$OUT/gpu/run.log"
status=${PIPESTATUS[0]}
echo "benchmarks.gpu exit status $status after $SECONDS s (124: stopped by timeout; its finished rows are in gpu.json)"
exit "$status"
