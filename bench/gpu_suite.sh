#!/usr/bin/env bash
# The project's GPU figures in one command (issue 23): (a) the packed-attention kernels against masked sdpa,
# (b) training throughput and MFU of packed vs padded batches, (c) RLCS throughput, (d) a packed video batch.
#
#   bench/gpu_suite.sh OUTDIR              # on one CUDA GPU: about 8 minutes on an H100 (the part budgets below)
#   bench/gpu_suite.sh --cpu-smoke OUTDIR  # the same steps end to end on CPU with tiny sizes (tests/test_gpu_suite.py)
#   bench/gpu_suite.sh --fetch-wheels      # here, with a package index: the wheels the device image lacks -> .whl/
#
# On this workplace's device machine (image: Python 3.12, torch 2.11 + CUDA 13, transformers 5.17, no DeepSpeed,
# no flash-attn, no network) a session with a device does exactly this:
#   1. here, in the checkout the device tool sends:   bench/gpu_suite.sh --fetch-wheels
#      (.whl/ is git-ignored: DeepSpeed built as a pure-Python wheel from its sdist, plus transformers,
#      huggingface-hub, accelerate, regex, pydantic, math-verify, PyAV and the other packages they import that the
#      image lacks or may have too old, each at the version this checkout's Python has, i.e. the one the CPU tests
#      pass with; ~58 MiB: it prints what the call will carry, which must stay under 64 MiB)
#   2. one call of the device tool's `run` with  carry: [".whl"],  timeout_s: 600  and the command
#        set -o pipefail; bash bench/gpu_suite.sh $OUT 2>&1 | tee $OUT/suite.log
#   The script installs .whl/*.whl into a --target folder put first on PYTHONPATH (the carried versions shadow the
#   image's) and imports vlmloom from this working tree (pyproject's package-dir mapping, linked), then runs.
#   flash_attention_2 is measured only where the flash_attn package imports: PyPI has no binary wheel of it, and
#   building one takes far longer than a device call; without it the rows say skipped.
#
# Results in OUTDIR (6 files with suite.log; the device tool brings back at most 8): gpu_suite.json (every figure,
# each part's status, exit code, seconds and budget, on failure its log tail; versions) and one Markdown table per
# part: a_attention.md, b_train.md, c_rlcs.md, d_video.md. The tables are printed at the end too.
# Each part runs in its own process under its own time budget (GPU: a 60 s, b 210 s, c 100 s, d 80 s); a part that
# fails or runs out of time is recorded as such (figures it wrote so far are kept) and the next part runs.
# Exit status: 0 when every part is ok or skipped (d skips, with a printed line, where PyAV is missing).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"; else PY=python3; fi
fi
# packages the device image lacks (or has at versions transformers/DeepSpeed refuse); DeepSpeed is built below
# (with the lower bounds of those in METADATA that the image's versions may not meet: typing-extensions, anyio, ...)
# PyAV (av, 34 MB with its FFmpeg) decodes the clips of part d. The image's tokenizers (0.23.2) already meets
# transformers' bound and is left out: the call carries 64 MiB at most, tree included.
WHEELS=(transformers huggingface-hub httpx2 httpcore2 truststore kernels tomlkit accelerate regex hjson
        pydantic pydantic-core annotated-types typing-inspection typing-extensions anyio idna click h11
        math-verify latex2sympy2-extended antlr4-python3-runtime av)

fetch_wheels() {
    local dest="$ROOT/.whl" tmp pins
    mkdir -p "$dest" && rm -f "$dest"/*.whl
    pins=$("$PY" -c 'import sys; from importlib.metadata import version
print(" ".join(f"{n}=={version(n)}" for n in sys.argv[1:]))' "${WHEELS[@]}" deepspeed) || return 1
    echo "pins: $pins"
    # the device's Python and platform (its README's pip download flags)
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" ${pins% deepspeed==*} || return 1
    # DeepSpeed publishes only an sdist: a pure-Python wheel for the CUDA accelerator, no ops compiled (the trainer
    # uses torch's AdamW; an op DeepSpeed wanted would JIT-build there with nvcc)
    tmp=$(mktemp -d)
    "$PY" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "deepspeed==${pins##*deepspeed==}" &&
        DS_ACCELERATOR=cuda DS_BUILD_OPS=0 "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-cache-dir \
            -w "$dest" "$tmp"/deepspeed-*.tar.gz || return 1
    rm -rf "$tmp"
    ls -1 "$dest"
    # what one device call carries: the tracked tree, untracked files git does not ignore, and .whl
    "$PY" - "$ROOT" <<'EOF'
import os, subprocess, sys
root = sys.argv[1]
listed = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                        capture_output=True, text=True, check=True).stdout.split("\0")
tree = sum(os.path.getsize(os.path.join(root, f)) for f in listed if f and os.path.isfile(os.path.join(root, f)))
wheels = sum(e.stat().st_size for e in os.scandir(os.path.join(root, ".whl")))
total = (tree + wheels) / 2**20
print(f"a device call carries {total:.1f} MiB (tree {tree / 2**20:.1f} + .whl {wheels / 2**20:.1f}) of its 64 MiB")
sys.exit(0 if total < 63 else 1)
EOF
}

usage() { sed -n '2,8p' "$0" >&2; exit 2; }
MODE=gpu
case "${1:-}" in
    --fetch-wheels) fetch_wheels; exit $? ;;
    --cpu-smoke) MODE=cpu-smoke; shift ;;
    -h|--help|"") usage ;;
esac
[[ $# -eq 1 ]] || usage
OUTDIR="$1"
mkdir -p "$OUTDIR" || exit 2
OUTDIR="$(cd "$OUTDIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_suite.XXXXXX")"
START=$SECONDS
cd "$ROOT" || exit 2
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

if [[ $MODE == cpu-smoke ]]; then
    # CPU even where a GPU exists; one intra-op thread: the tiny model gains nothing from more, and spinning
    # OpenMP threads on a shared 2-core machine made each step ~10x slower
    export CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
    BUDGET_A=120 BUDGET_B=120 BUDGET_C=120 BUDGET_D=60
    ARGS_A=(-k "test_packed_attention_matches_masked_sdpa and cpu")
    ARGS_B=(--seq-len 256 --samples 12 --warmup 1 --peak-tflops 1)
    ARGS_C=(--iterations 2 --group-size 4 --batch-prompts 2 --max-new-tokens 8 --attn vlmloom_varlen)
    ARGS_D=(--seq-len 256 --samples 4 --warmup 1 --peak-tflops 1)
else
    export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
    BUDGET_A=60 BUDGET_B=210 BUDGET_C=100 BUDGET_D=80
    ARGS_A=() ARGS_B=() ARGS_C=() ARGS_D=(--samples 16)
    if compgen -G "$ROOT/.whl/*.whl" >/dev/null; then
        echo "# installing the carried wheels: $(cd "$ROOT/.whl" && echo *.whl)"
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
                "$ROOT"/.whl/*.whl; then
            export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
            export GPU_SUITE_WHEELS="$(cd "$ROOT/.whl" && echo *.whl)"
        else
            echo "# WARNING: installing .whl/*.whl failed; the parts run with the image's packages"
        fi
    else
        echo "# WARNING: no .whl/*.whl: the parts run with the image's packages (on the device machine DeepSpeed is" \
             "missing: run bench/gpu_suite.sh --fetch-wheels where pip reaches an index, and carry .whl)"
    fi
fi

# vlmloom from this working tree: an install of it (editable here, in CI) or links by pyproject's package-dir
if ! "$PY" -c 'import importlib.util, os, sys
spec = importlib.util.find_spec("vlmloom.trainer")
found = spec and os.path.realpath(spec.submodule_search_locations[0]) == os.path.join(sys.argv[1], "trainer")
sys.exit(0 if found else 1)' \
        "$(realpath "$ROOT")" 2>/dev/null; then
    "$PY" - "$ROOT" "$WORK/src" <<'EOF' || exit 2
import os, sys, tomllib
root, dest = sys.argv[1:]
with open(os.path.join(root, "pyproject.toml"), "rb") as fh:
    package_dirs = tomllib.load(fh)["tool"]["setuptools"]["package-dir"]
os.makedirs(os.path.join(dest, "vlmloom"))
for package, folder in package_dirs.items():
    os.symlink(os.path.join(root, folder), os.path.join(dest, *package.split(".")))
EOF
    export PYTHONPATH="$WORK/src${PYTHONPATH:+:$PYTHONPATH}"
    echo "# vlmloom imported from $ROOT through links in $WORK/src"
fi

echo "# vlmloom GPU suite ($MODE), output in $OUTDIR"
"$PY" - "$WORK/versions.json" <<'EOF'
import json, os, platform, subprocess, sys
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(), "carried_wheels": os.environ.get("GPU_SUITE_WHEELS", "").split()}
if torch.cuda.is_available():
    info["device"] = torch.cuda.get_device_name()
    try:
        info["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                        capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["driver"] = None
else:
    info["device"] = f"cpu ({platform.machine()}, {os.cpu_count()} cores)"
os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
for name in ("transformers", "deepspeed", "flash_attn", "triton"):
    try:
        info[name] = __import__(name).__version__
    except Exception as exc:  # a missing or broken package is a figure of the run, not a reason to stop it
        info[name] = None
        info[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
for key in ("device", "driver", "cuda", "torch", "deepspeed", "transformers", "flash_attn", "triton", "python"):
    if key in info:
        print(f"# {key}: {info[key]}" + (f" ({info[key + '_error']})" if info.get(key + "_error") else ""))
with open(sys.argv[1], "w") as fh:
    json.dump(info, fh, indent=2)
EOF

run_part() {  # KEY BUDGET_S COMMAND...: one part in its own process group, killed at its budget
    local key=$1 budget=$2 t0=$SECONDS rc
    shift 2
    echo "# part $key (budget ${budget} s): $*"
    timeout --kill-after=15 "$budget" "$@" 2>&1 | tee "$WORK/$key.log"
    rc=${PIPESTATUS[0]}
    echo "$rc $((SECONDS - t0))" >"$WORK/$key.status"
    echo "# part $key: exit $rc after $((SECONDS - t0)) s"
}

export VLMLOOM_ATTENTION_FIGURES="$WORK/a_figures.jsonl"
run_part a "$BUDGET_A" \
    "$PY" -m pytest -q -rA -p no:cacheprovider tests/test_train_attention.py --junitxml="$WORK/a_junit.xml" \
    "${ARGS_A[@]}"
run_part b "$BUDGET_B" "$PY" bench/train_throughput.py --json "$WORK/b.json" "${ARGS_B[@]}"
run_part c "$BUDGET_C" "$PY" bench/rlcs_throughput.py --json "$WORK/c.json" "${ARGS_C[@]}"
run_part d "$BUDGET_D" "$PY" bench/train_throughput.py --video --json "$WORK/d.json" "${ARGS_D[@]}"

"$PY" bench/gpu_suite_report.py --work "$WORK" --out "$OUTDIR" --mode "$MODE" \
    --command "bench/gpu_suite.sh $([[ $MODE == cpu-smoke ]] && echo '--cpu-smoke ')OUTDIR" \
    --budgets "a=$BUDGET_A,b=$BUDGET_B,c=$BUDGET_C,d=$BUDGET_D" --total-seconds "$((SECONDS - START))"
rc=$?
echo "# gpu suite ($MODE) done in $((SECONDS - START)) s; figures in $OUTDIR"
rm -rf "$WORK"
exit $rc
