#!/usr/bin/env bash
# The fine-tuning comparison of benchmarks/bench_finetune.py on a GPU machine, under JAX.
# Needs only python3 with jax (CUDA), keras 3, numpy, Pillow, h5py, scipy, scikit-learn and this
# repository's code: no TensorFlow (the run refuses to import it, so nothing slips in).
#
#   benchmarks/gpu_finetune.sh DATA WEIGHTS OUT [bench_finetune.py run options...]
#
#   DATA     a dataset folder (images/, labels.csv, bboxes.csv), e.g. made here with
#            python benchmarks/bench_finetune.py subset ../shared/datasets/nih-cxr-1000 DATA
#            (all boxed patients + 300 other images as 224-px lossless PNGs, ~8 MB)
#   WEIGHTS  the VGG16 no-top weights: the Keras .h5, or its lossless pack (~50 MB) made with
#            python benchmarks/bench_finetune.py pack-weights vgg16-imagenet.h5 WEIGHTS.npz
#   OUT      results (bench-finetune.jsonl, report.txt, run.log), JAX's compile cache
# Default options: 3 configurations x 3 seeds, up to 30 epochs, patience 8, batch 32, 8 loader
# threads, label gpu; any option given after OUT is passed on and wins.
set -euo pipefail
[ $# -ge 3 ] || { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
DATA="$1" WEIGHTS="$2" OUT="$3"; shift 3
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
export KERAS_BACKEND=jax
export XLA_PYTHON_CLIENT_PREALLOCATE=false         # the memory column is what runs need
export JAX_COMPILATION_CACHE_DIR="$OUT/jax-cache"  # seeds 1 and 2 reuse seed 0's programs
export PYTHONUNBUFFERED=1
# Any "import tensorflow" fails: the run proves it needs none.
BLOCK_TF="$OUT/no-tensorflow"
mkdir -p "$BLOCK_TF/tensorflow"
echo 'raise ImportError("TensorFlow is blocked in this run: the GPU benchmark must not need it")' \
  > "$BLOCK_TF/tensorflow/__init__.py"
export PYTHONPATH="$BLOCK_TF${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)"
python3 benchmarks/bench_finetune.py run "$DATA" "$WEIGHTS" "$OUT" --configs default,ft5,ft45 \
  --seeds 0,1,2 --epochs 30 --patience 8 --batch-size 32 --workers 8 --label gpu "$@" \
  2>&1 | tee "$OUT/run.log"
python3 benchmarks/bench_finetune.py report "$OUT" | tee "$OUT/report.txt"
