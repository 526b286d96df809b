#!/usr/bin/env bash
# The paper's pipeline on one dataset, printing Tables 1, 2 (leave-one-out) or 3 (zero-shot), 5 and 6:
#   prepare -> fuse-train -> align-train -> embed -> eval (all baselines) -> ablate.
#
#   bash recipes/paper.sh synthetic [RUN]                        # built-in data, quick: --preset small,
#                                                                # recipes/synthetic-small.yaml
#   PRESET=default bash recipes/paper.sh synthetic [RUN]         # full scale, recipes/synthetic.yaml
#   SOURCE=../shared/data/ml-100k bash recipes/paper.sh ml-100k [RUN]
#   SOURCE=../shared/data/microlens-50k bash recipes/paper.sh microlens [RUN]
#   SOURCE=path/to/ml-1m bash recipes/paper.sh ml-1m [RUN]           # GroupLens ml-1m/*.dat
#
# Environment: PRESET (synthetic preset, default `small`), RECIPE (a recipe file instead of
# the dataset's), MODEL_RECIPE (a recipe layered over it, e.g. recipes/paper-faithful.yaml for
# the paper's model exactly; its align section wins), COMPARE (baselines, default all five), HISTORY_LEN (Table 6 lengths, default 30,full),
# SPLIT (loo, the default, or global-time: the leakage-free global temporal split), JOBS (trainings
# run side by side by eval and ablate, default 2: one per core on a 2-core machine).
set -euo pipefail
dataset=${1:?usage: recipes/paper.sh synthetic|ml-100k|ml-1m|microlens [RUN]}
here=$(cd "$(dirname "$0")" && pwd)
compare=${COMPARE:-lightgcn,sasrec,dssm,youtube,mmgcn}
case "$dataset" in
  synthetic)
    run=${2:-runs/paper-synthetic}
    preset=${PRESET:-small}
    if [[ $preset == small ]]; then default_recipe=$here/synthetic-small.yaml; else default_recipe=$here/synthetic.yaml; fi
    recipe=${RECIPE:-$default_recipe}
    prepare=(synthetic --preset "$preset")
    protocols=(loo zero-shot) ;;
  ml-100k)
    run=${2:-runs/paper-ml-100k}
    recipe=${RECIPE:-$here/ml-100k.yaml}
    prepare=(recbole --source "${SOURCE:?set SOURCE to the ml-100k folder}")
    protocols=(loo) ;;
  ml-1m)
    run=${2:-runs/paper-ml-1m}
    recipe=${RECIPE:-$here/ml-1m.yaml}
    prepare=(movielens --source "${SOURCE:?set SOURCE to the ml-1m folder}")
    protocols=(loo) ;;
  microlens)
    run=${2:-runs/paper-microlens}
    recipe=${RECIPE:-$here/microlens.yaml}
    prepare=(microlens --source "${SOURCE:?set SOURCE to the MicroLens folder}")
    protocols=(loo) ;;
  *) echo "recipes/paper.sh: unknown dataset '$dataset' (synthetic, ml-100k, ml-1m, microlens)" >&2; exit 2 ;;
esac
recipes=(--recipe "$recipe")
if [[ -n ${MODEL_RECIPE:-} ]]; then recipes+=(--recipe "$MODEL_RECIPE"); fi
ablations=()
for part in mfl sal window block selective title cf cons fuscl; do ablations+=(--without "$part"); done

mufasa prepare "${prepare[@]}" --split "${SPLIT:-loo}" --out "$run" --force              # Table 1
mufasa fuse-train "$run" "${recipes[@]}" --force
mufasa align-train "$run" "${recipes[@]}" --force
mufasa embed "$run" --force
for protocol in "${protocols[@]}"; do                               # Table 2 (loo), Table 3 (zero-shot)
  mufasa eval "$run" --protocol "$protocol" --compare "$compare" "${recipes[@]}" --jobs "${JOBS:-2}" --force
done
mufasa ablate "$run" "${recipes[@]}" --protocol "${protocols[-1]}" --jobs "${JOBS:-2}" "${ablations[@]}" --force \
  --history-len "${HISTORY_LEN:-30,full}" --attention sparse,full   # Tables 5 and 6
mufasa report "$run" --format none                                  # every table (md, csv, tex) and plot, listed
