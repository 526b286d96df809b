#!/usr/bin/env bash
# Wall time and peak memory of each stage of the pipeline, measured with /usr/bin/time -v:
#   prepare -> fuse-train -> align-train -> embed -> eval (MUFASA alone, loo).
#
#   bash benchmarks/pipeline.sh synthetic [RUN]                                # --preset default
#   SOURCE=../shared/data/ml-100k bash benchmarks/pipeline.sh ml-100k [RUN]
#   SOURCE=../shared/data/microlens-50k bash benchmarks/pipeline.sh microlens [RUN]
#
# Environment: PRESET (synthetic preset, default `default`), RECIPE (instead of the dataset's),
# EXTRA_FUSE / EXTRA_ALIGN (extra flags for those stages, e.g. "--epochs 1" for a smoke run),
# RESULTS (folder of the dated results file, default benchmarks/results).
# Prints one table: stage, wall seconds, peak RSS in MB, user + system CPU seconds; and the total.
# Writes the same table with the command to RESULTS/<date>-pipeline-<dataset>.md.
set -euo pipefail
dataset=${1:?usage: benchmarks/pipeline.sh synthetic|ml-100k|microlens [RUN]}
here=$(cd "$(dirname "$0")/.." && pwd)
case "$dataset" in
  synthetic)
    prepare=(synthetic --preset "${PRESET:-default}")
    recipe=${RECIPE:-$here/recipes/synthetic.yaml} ;;
  ml-100k)
    prepare=(recbole --source "${SOURCE:?set SOURCE to the ml-100k folder}")
    recipe=${RECIPE:-$here/recipes/ml-100k.yaml} ;;
  microlens)
    prepare=(microlens --source "${SOURCE:?set SOURCE to the MicroLens folder}")
    recipe=${RECIPE:-$here/recipes/microlens.yaml} ;;
  *) echo "benchmarks/pipeline.sh: unknown dataset '$dataset' (synthetic, ml-100k, microlens)" >&2; exit 2 ;;
esac
run=${2:-runs/pipeline-$dataset}
timer=/usr/bin/time
[[ -x $timer ]] || { echo "benchmarks/pipeline.sh: needs GNU time at /usr/bin/time" >&2; exit 2; }
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

stage() {  # stage NAME mufasa ARGS...: run it under /usr/bin/time -v, its output kept in the log folder
  local name=$1; shift
  if ! "$timer" -v -o "$logs/$name.time" "$@" >"$logs/$name.out" 2>"$logs/$name.err"; then
    echo "benchmarks/pipeline.sh: $name failed:" >&2; tail -n 5 "$logs/$name.err" >&2; exit 1
  fi
}

# shellcheck disable=SC2086  # EXTRA_* are flag lists
{
  stage prepare mufasa prepare "${prepare[@]}" --out "$run" --force
  stage fuse-train mufasa fuse-train "$run" --recipe "$recipe" --force ${EXTRA_FUSE:-}
  stage align-train mufasa align-train "$run" --recipe "$recipe" --force ${EXTRA_ALIGN:-}
  stage embed mufasa embed "$run" --force
  stage eval mufasa eval "$run" --protocol loo --force
}

{
  echo "pipeline on $dataset ($run), $(nproc) CPU cores, $(date -u +%Y-%m-%d)"
  printf '%-12s %10s %12s %10s\n' stage wall_s peak_rss_mb cpu_s
  total_wall=0; total_cpu=0; peak=0
  for name in prepare fuse-train align-train embed eval; do
    read -r wall rss cpu < <(awk -F': ' '
      /Elapsed \(wall clock\)/ { n = split($2, t, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + t[i]; wall = s }
      /Maximum resident set size/ { rss = $2 / 1024 }
      /User time \(seconds\)/ { cpu += $2 }
      /System time \(seconds\)/ { cpu += $2 }
      END { printf "%.1f %.0f %.1f\n", wall, rss, cpu }' "$logs/$name.time")
    printf '%-12s %10s %12s %10s\n' "$name" "$wall" "$rss" "$cpu"
    total_wall=$(awk -v a="$total_wall" -v b="$wall" 'BEGIN { print a + b }')
    total_cpu=$(awk -v a="$total_cpu" -v b="$cpu" 'BEGIN { print a + b }')
    peak=$(awk -v a="$peak" -v b="$rss" 'BEGIN { print (b > a) ? b : a }')
  done
  printf '%-12s %10s %12s %10s\n' total "$total_wall" "$peak" "$total_cpu"
} | tee "$logs/table"

results=${RESULTS:-$here/benchmarks/results}
mkdir -p "$results"
out="$results/$(date -u +%Y-%m-%d)-pipeline-$dataset.md"
{
  echo "# The $dataset pipeline, stage by stage"
  echo
  echo '```'
  printf 'SOURCE=%s PRESET=%s RECIPE=%s EXTRA_FUSE="%s" EXTRA_ALIGN="%s" bash benchmarks/pipeline.sh %s\n' \
    "${SOURCE:-}" "${PRESET:-}" "${recipe#"$here"/}" "${EXTRA_FUSE:-}" "${EXTRA_ALIGN:-}" "$dataset"
  echo '```'
  echo
  echo '```'
  cat "$logs/table"
  echo '```'
} >"$out"
echo "wrote $out"
