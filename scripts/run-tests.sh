#!/usr/bin/env bash
# `make test`: the whole suite as three pytest processes side by side, because CI's 2 cores spend much of the Docker
# and SLURM stages waiting (image build: network and disk; SLURM: queue polls, a time limit running out) and one
# math thread per process leaves a core idle when only one process is left. Groups:
#   daemons  -- the Docker and SLURM stages (logs/test-daemons.log)
#   pipeline -- the longest end-to-end files: the DVC pipeline runs, the GPU-check dry run, the hostile-shell run
#               (logs/test-pipeline.log)
#   main     -- everything else, in the foreground (tests/test_core_install.py's venv builds in its background)
# All run to the end; the exit status fails if any failed. The background groups' output is printed after the main
# run; each prints its slowest tests (--durations).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# One math thread per process: the groups, the Docker container's and the SLURM jobs' trainings share 2 cores, and
# OpenMP threads that spin on a core another process needs made each training several times slower (measured:
# 6-9x for two 2-thread trainings side by side). PGPS trainers follow OMP_NUM_THREADS on the CPU
# (pgps.nnunet.cpu_threads); pipeline runs take their threads from params.yaml whatever this says.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
PIPELINE_FILES=(tests/test_pipeline_dvc.py tests/test_cuda_graphs.py tests/test_hermetic_runs.py)
NOT_DAEMONS="not docker and not slurm and not exact"
mkdir -p logs
start=$(date +%s)

"$PY" -m pytest -q --timeout=1500 --durations=15 -m "(docker or slurm) and not exact" "$@" \
    >logs/test-daemons.log 2>&1 &
daemons=$!
"$PY" -m pytest -q --timeout=1500 --durations=10 -m "$NOT_DAEMONS" "${PIPELINE_FILES[@]}" "$@" \
    >logs/test-pipeline.log 2>&1 &
pipeline=$!
trap 'kill "$daemons" "$pipeline" 2>/dev/null; wait "$daemons" "$pipeline" 2>/dev/null' INT TERM

ignore=()
for f in "${PIPELINE_FILES[@]}"; do ignore+=("--ignore=$f"); done
"$PY" -m pytest -q --timeout=1500 --durations=25 -m "$NOT_DAEMONS" "${ignore[@]}" "$@"
main_rc=$?
wait "$pipeline"
pipeline_rc=$?
wait "$daemons"
daemons_rc=$?

for group in pipeline daemons; do
    echo
    echo "=================== $group group (ran alongside; logs/test-$group.log) ==================="
    cat "logs/test-$group.log"
done
echo
echo "make test: main exit $main_rc, pipeline exit $pipeline_rc, Docker/SLURM exit $daemons_rc," \
    "$(($(date +%s) - start)) s in all"
# pytest exit 5 = nothing collected for that group (e.g. a -k that selects only another group): not a failure
for rc in "$main_rc" "$pipeline_rc" "$daemons_rc"; do
    [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || exit "$rc"
done
