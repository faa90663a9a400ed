#!/usr/bin/env bash
# One command that measures a lent GPU (repository and data present, no internet; under 8 minutes):
#
#   bash scripts/gpu_check.sh            # on a CUDA machine
#   bash scripts/gpu_check.sh --smoke    # CPU smoke run (make test, tests/test_gpu_check.py): CUDA parts skipped
#
# 1. every chapter in smoke mode with DEVICE=cuda (scripts/run_chapters.py --smoke);
# 2. scripts/bench_dynamics.py for PVGG16 and PEfficientNetB0 at batch 64 in fp32, bf16 and fp16: the cost of one
#    timestep relative to the backbone and the top-1 agreement with fp32 (smoke: the shallow network, batch 8);
# 3. chapter 7's SCALE="paper" path on a synthetic ImageFolder at 224 px with the automatic batch sizes and
#    precision, its peak memory beside the memory model's prediction (scripts/gpu_check_paper.py);
# then one summary table. Results go to $GPU_CHECK_OUT (default _build/gpu_check). Exit status: the number of
# failed steps.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT="${GPU_CHECK_OUT:-_build/gpu_check}"
SMOKE=0
for arg in "$@"; do
  case "$arg" in
    --smoke) SMOKE=1 ;;
    *) echo "usage: bash scripts/gpu_check.sh [--smoke]" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
rm -f "$OUT"/*.json "$OUT"/*.status
CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))") || { echo "cannot import torch with $PY" >&2; exit 2; }
if [ "$CUDA" = 1 ]; then DEVICE=cuda; else DEVICE=cpu; fi
if [ "$CUDA" = 0 ] && [ "$SMOKE" = 0 ]; then
  echo "no CUDA GPU here (torch.cuda.is_available() is False): run with --smoke for the CPU check" >&2
  exit 2
fi
echo "gpu_check: device $DEVICE, smoke $SMOKE, results in $OUT"

step() {  # step NAME TIMEOUT_S COMMAND...: runs it, records ok/failed/skipped and the seconds
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  echo "== $name"
  if timeout "$limit" "$@"; then echo "ok $((SECONDS - start))" > "$OUT/$name.status"
  else echo "failed $((SECONDS - start))" > "$OUT/$name.status"; fi
}

if [ "$CUDA" = 1 ]; then
  step chapters 240 "$PY" scripts/run_chapters.py --smoke -p DEVICE=cuda --out "$OUT/chapters"
else
  echo "== chapters: skipped (no CUDA GPU; make test runs every chapter in smoke mode on the CPU)"
  echo "skipped 0" > "$OUT/chapters.status"
fi

if [ "$CUDA" = 1 ]; then
  step bench 90 "$PY" scripts/bench_dynamics.py --device cuda --which vgg16 effnetb0 --batch 64 \
    --precision fp32 bf16 fp16 --repeats 5 --json "$OUT/bench.json"
else
  echo "(bench: CUDA skipped; the shallow network on the CPU instead)"
  step bench 120 "$PY" scripts/bench_dynamics.py --device cpu --which shallow --batch 8 --timesteps 1 \
    --precision fp32 bf16 fp16 --repeats 1 --json "$OUT/bench.json"
fi

if [ "$CUDA" = 1 ]; then
  step paper 150 "$PY" scripts/gpu_check_paper.py --device cuda --out "$OUT/paper.json"
else
  step paper 300 "$PY" scripts/gpu_check_paper.py --device cpu --smoke --out "$OUT/paper.json"
fi

"$PY" - "$OUT" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
rows = []
for name in ("chapters", "bench", "paper"):
    status, seconds = (out / f"{name}.status").read_text().split()
    rows.append((name, status, f"{seconds} s", ""))
if (out / "bench.json").exists():
    bench = json.loads((out / "bench.json").read_text())
    for net, per in bench["results"].items():
        for precision, r in per.items():
            rows.append((f"bench {net}", precision, f"{r['rel']:.2f}x backbone per step",
                         f"batch {r['batch']}, {r['per_step_ms']:.1f} ms/step, top-1 agreement {r['agreement']:.3f}"))
if (out / "paper.json").exists():
    for r in json.loads((out / "paper.json").read_text()):
        rows.append((f"paper {r['preset']}", r["precision"], f"BATCH {r['batch_size']}, ATTACK_BATCH {r['attack_batch']}",
                     f"{r['image_size']} px, T={r['timesteps']}, peak {r['peak_mib']:.0f} MiB ({r['peak_source']}), "
                     f"attack predicted {r['predicted_attack_mib']:.0f} MiB, {r['corruptions']} corruptions, "
                     f"{r['seconds']:.0f} s"))
widths = [max(len(r[i]) for r in rows + [("step", "status", "result", "details")]) for i in range(4)]
line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
print("\n" + line(("step", "status", "result", "details")))
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for r in rows:
    print(line(r))
EOF
failed=$(grep -l '^failed' "$OUT"/*.status 2>/dev/null | wc -l)
exit "$failed"
