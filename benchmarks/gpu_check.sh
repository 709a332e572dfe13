#!/usr/bin/env bash
# GPU check (issue 14 item 7): ONE call that exercises every CUDA path of maskrcnn on a lent GPU
# (H100/H200, < 8 minutes) and prints one table; with $OUT set it also writes $OUT/gpu_check.json
# and $OUT/gpu_check.log.
#
# Stages (each under its own `timeout`; a failing stage never stops the others; status
# ok / fail / skipped, seconds and a key figure per stage in the final table):
#   setup      python3 found, carried wheels installed (pydantic etc., see below), `import maskrcnn`
#   env        GPU name, driver, CUDA, torch / torchvision / onnxruntime versions, ORT providers
#   train-fp16 `maskrcnn train --config shapes_demo --data shapes:N --set amp=fp16` for a short
#              time budget: steps/s and final loss (must be finite)
#   train-bf16 the same with amp=bf16
#   oom        the out-of-memory fallback: the process is capped at 1.5x a 1-image step's peak reserve
#              (torch.cuda.set_per_process_memory_fraction), a batch of 8 must OOM, split into
#              micro-batches and finish its steps (benchmarks/gpu_check.py oom)
#   plan       `maskrcnn plan --config shapes_demo --device cuda` (2 steps per measurement)
#   infer      benchmarks/infer.py --device cuda (R50-FPN random weights, exact and fast mode,
#              outputs checked EQUAL against torchvision; fails when they differ)
#   ort        ONNX Runtime CUDA / TensorRT providers on the exported shapes model; "skipped" when
#              only the CPU onnxruntime is installed (the device image's case)
#
# The device image (KINDS.md) has python3 3.12 with torch 2.11 / torchvision 0.26 / onnxruntime
# (CPU) but no pydantic, pycocotools or faster-coco-eval and no registry: nothing is pip-installed
# there except wheels carried in .whl/ (made here by `bash benchmarks/gpu_check.sh --prepare`, for
# the packages the image lacks); torch is never reinstalled. The code runs from src/ (PYTHONPATH),
# since `pip install -e .` would refuse python 3.12 and the torch pin.
#
# How a session runs it (see docs/performance.md, "GPU check"):
#   here, once:   bash benchmarks/gpu_check.sh --prepare          # wheels into .whl/ (ignored)
#   device tool:  run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=540)
#   (stage limits add up to 485 s; about 4-5 minutes expected)
# Dry run on a CPU (tiny settings, every stage's Python path, no GPU needed):
#   GPU_CHECK_DEVICE=cpu PYTHON=.venv/bin/python bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD

if [ "${1:-}" = "--prepare" ]; then
  WHL=${GPU_CHECK_WHEELS:-.whl}
  EXCLUDE=$(git rev-parse --git-common-dir)/info/exclude
  [ "$WHL" != .whl ] || grep -qx '/.whl/' "$EXCLUDE" 2>/dev/null || echo '/.whl/' >> "$EXCLUDE"
  mkdir -p "$WHL"
  # what the device image lacks (KINDS.md's package list): pydantic and its compiled core, the COCO tools
  # (the versions of the project's venv; typing-extensions only goes in when the image's is too old)
  for spec in pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
              typing-extensions==4.16.0 pycocotools==2.0.11 faster-coco-eval==1.8.0; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 -d "$WHL" "$spec" || echo "could not download $spec"
  done
  ls -la "$WHL"; du -sh "$WHL"
  exit 0
fi

DEVICE=${GPU_CHECK_DEVICE:-cuda}
PY=${PYTHON:-python3}
WORK=$(mktemp -d /tmp/gpu_check.XXXXXX)
RESULTS=$WORK/results.tsv
: > "$RESULTS"
LOG=${OUT:+$OUT/gpu_check.log}
LOG=${LOG:-$WORK/gpu_check.log}
export PYTHONUNBUFFERED=1 PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
if [ "$DEVICE" = cpu ]; then  # dry run: tiny settings
  AMPS="none bf16"; TRAIN_MIN=0.15; SHAPES=16; OOM_ARGS="--size 128 --batch 4 --steps 2 "
  INFER_ARGS="--sizes 128 --batches 1 --repeats 1 --warmup 0"; PLAN_ARGS="--steps 1 --levers amp"
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
else
  AMPS="fp16 bf16"; TRAIN_MIN=0.75; SHAPES=500; OOM_ARGS="--size 512 --batch 8 --steps 3"
  INFER_ARGS="--sizes 800 320 --batches 1 4 --repeats 2 --fast-dtypes auto fp16"; PLAN_ARGS="--steps 2"
fi
export DEVICE PY WORK TRAIN_MIN SHAPES INFER_ARGS
echo "gpu_check: device $DEVICE, python $PY, work dir $WORK, log $LOG" | tee -a "$LOG"

# stage NAME TIMEOUT_S COMMAND...: runs the command with its output in the log; the last JSON line
# it prints ({"status","figure"}) gives the table row, else its exit status does.
stage() {
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS rc status figure out=$WORK/$name.out
  echo "=== $name (limit ${limit}s): $*" | tee -a "$LOG"
  if declare -F "$1" >/dev/null; then  # a shell function: run it in a bash that knows it
    timeout --kill-after=10 "$limit" bash -c "$(declare -f "$1"); $(printf '%q ' "$@")" > "$out" 2>&1
  else
    timeout --kill-after=10 "$limit" "$@" > "$out" 2>&1
  fi
  rc=$?
  cat "$out" >> "$LOG"
  tail -n 3 "$out"
  local line
  line=$(grep '^{"status"' "$out" | tail -n 1)
  if [ -n "$line" ]; then
    echo "$line" > "$WORK/$name.json"
    status=$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["status"])' "$line" 2>/dev/null || echo fail)
    figure=$($PY -c 'import json,sys; print(json.loads(sys.argv[1])["figure"])' "$line" 2>/dev/null || echo "?")
  elif [ $rc -eq 0 ]; then status=ok; figure=${STAGE_FIGURE:-$(grep -v '^\s*$' "$out" | tail -n 1 | cut -c1-140)}
  else status=fail; figure="exit $rc$([ $rc -ge 124 ] && echo ' (timed out)'): $(grep -v '^\s*$' "$out" | tail -n 1 | cut -c1-140)"
  fi
  [ "$status" = ok ] && [ $rc -ne 0 ] && { status=fail; figure="exit $rc; $figure"; }
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$figure" >> "$RESULTS"
}

# ------------------------------------------------------------------ setup
setup() {
  set -e
  $PY -V
  local whl=${GPU_CHECK_WHEELS:-.whl} site=/tmp/gpu_check_site
  if ls "$whl"/*.whl >/dev/null 2>&1; then
    # only what the image lacks, into a folder of its own: torch and the image's packages stay as they are
    local missing wheels="" d
    missing=$($PY -c 'import importlib.util as u
for m in ["pydantic", "pydantic_core", "annotated_types", "typing_inspection", "pycocotools", "faster_coco_eval"]:
    u.find_spec(m) is None and print(m)')
    for d in $missing; do wheels="$wheels $(ls "$whl/$d"-*.whl 2>/dev/null | head -n 1)"; done
    if [ -n "${wheels// /}" ]; then
      echo "installing from $whl:$wheels"
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" $wheels
    fi
    if ! $PY -c 'import pydantic' 2>/dev/null && ls "$whl"/typing_extensions-*.whl >/dev/null 2>&1; then
      echo "pydantic needs a newer typing_extensions than the image's: installing $(ls "$whl"/typing_extensions-*.whl)"
      $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" --upgrade \
        "$whl"/typing_extensions-*.whl
    fi
  fi
  $PY -c 'import maskrcnn, maskrcnn.cli; print("maskrcnn from", maskrcnn.__file__)'
}
[ -d /tmp/gpu_check_site ] || mkdir -p /tmp/gpu_check_site
export PYTHONPATH=$PYTHONPATH:/tmp/gpu_check_site
STAGE_FIGURE="maskrcnn imports (wheels from .whl where missing)" stage setup 45 setup

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >> "$LOG" 2>&1 || true
stage env 30 $PY benchmarks/gpu_check.py env

# ------------------------------------------------------------------ AMP training on shapes
for amp in $AMPS; do  # the CPU dry run has no fp16: none instead
  train_amp() {
    local t0=$SECONDS
    $PY -m maskrcnn.cli train --config shapes_demo --data "shapes:$SHAPES" --device "$DEVICE" --set "amp=$1" \
      --minutes "$TRAIN_MIN" --out "$WORK/train_$1" --no-progress || return $?
    $PY benchmarks/gpu_check.py train-summary "$WORK/train_$1" --seconds $((SECONDS - t0))
  }
  stage "train-$amp" 80 train_amp "$amp"
done

stage oom 60 $PY benchmarks/gpu_check.py oom --device "$DEVICE" $OOM_ARGS
stage plan 60 $PY -m maskrcnn.cli plan --config shapes_demo --device "$DEVICE" $PLAN_ARGS
infer() {
  $PY benchmarks/infer.py --device "$DEVICE" $INFER_ARGS --json "$WORK/infer.json" > "$WORK/infer.stdout" || rc=$?
  grep -v '^{' "$WORK/infer.stdout"
  [ -f "$WORK/infer.json" ] || return "${rc:-1}"  # the table shows infer.py's last line (its error)
  $PY - "$WORK/infer.json" "${rc:-0}" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
rows = {(x["size"], x["batch"], x["model"]): x for x in r["rows"]}
parts = []
for (size, batch, model), x in rows.items():
    if model != "torchvision" and (size, batch) == max((s, b) for s, b, _ in rows):
        parts.append(f"{model} {x['latency_s'] * 1000:.0f} ms ({x['latency_ratio']:.2f}x tv)")
tv = [x for k, x in rows.items() if k[2] == "torchvision" and (k[0], k[1]) == max((s, b) for s, b, _ in rows)][0]
fig = f"outputs {'EQUAL' if r['outputs_equal'] else 'DIFFERENT'}; {tv['size']}px x{tv['batch']}: tv {tv['latency_s'] * 1000:.0f} ms, " + ", ".join(parts)
print(json.dumps({"status": "ok" if r["outputs_equal"] and sys.argv[2] == "0" else "fail", "figure": fig}))
EOF
}
stage infer 90 infer
stage ort 40 $PY benchmarks/gpu_check.py ort --device "$DEVICE"

# ------------------------------------------------------------------ the table
$PY benchmarks/gpu_check.py table "$RESULTS" --details "$WORK" ${OUT:+--json "$OUT/gpu_check.json"}
rc=$?
[ -n "${OUT:-}" ] && cp "$WORK/infer.json" "$OUT/infer.json" 2>/dev/null
echo "gpu_check: total ${SECONDS}s, log $LOG"
exit $rc
