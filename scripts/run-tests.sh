#!/usr/bin/env bash
# `make test`: the whole suite as two pytest processes side by side, because CI's 2 cores spend much of the Docker
# and SLURM stages waiting (image build: network and disk; SLURM: queue polls, a time limit running out) while the
# rest is CPU-bound. Both always run to the end; the exit status fails if either failed. The daemon stages' output
# goes to logs/test-daemons.log and is printed after the main run. Each prints its slowest tests (--durations).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
# One math thread per process: the two halves, the Docker container's and the SLURM jobs' trainings share 2 cores,
# and OpenMP threads that spin on a core another process needs made each training several times slower (measured:
# 6-9x for two 2-thread trainings side by side). PGPS trainers follow OMP_NUM_THREADS on the CPU
# (pgps.nnunet.cpu_threads); pipeline runs take their threads from params.yaml whatever this says.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
# One worker in each of nnU-Net's spawn pools (validation export, metrics, preprocessing): each worker imports torch
# (~3.5 CPU-s); with 2 a training's final validation cost 32 CPU-s, with 1 23 s (tests/test_trainer_fixtures.CPU_ENV).
export nnUNet_def_n_proc=1
mkdir -p logs
daemons_log=logs/test-daemons.log
# A folder both processes see: the smoke pipeline run is made once, by whichever asks first, and shared by the DVC
# tests, the Docker stage and the SLURM stage (tests/smoke_run.py).
PGPS_TEST_SHARED=$(mktemp -d "${TMPDIR:-/tmp}/pgps-make-test.XXXXXX")
export PGPS_TEST_SHARED
start=$(date +%s)
# The Docker stage's image (~10 GB while it builds), the core-install venv (~6 GB) and .venv (~7 GB) share this disk:
# a run that ends in "No space left on device" shows here what it started with.
free_space() { df -h --output=avail "${TMPDIR:-/tmp}" | tail -1 | tr -d ' '; }
free_at_start=$(free_space)

# The second process: the Docker and SLURM stages, then the tests marked beside_daemons (self-contained, CPU-bound:
# measured, the main run otherwise went on alone on one core for its last 20 minutes).
# One pytest session (one collection: ~10 CPU-s); tests/conftest.py runs the Docker and SLURM stages first.
"$PY" -m pytest -q --timeout=1500 --durations=20 -m "(docker or slurm or beside_daemons) and not exact" "$@" \
  >"$daemons_log" 2>&1 &
daemons=$!
# stopping make test stops the second process's pytest too
trap 'pkill -TERM -P "$daemons" 2>/dev/null; kill "$daemons" 2>/dev/null; wait "$daemons" 2>/dev/null; rm -rf "$PGPS_TEST_SHARED"' INT TERM

"$PY" -m pytest -q --timeout=1500 --durations=25 -m "not docker and not slurm and not beside_daemons and not exact" "$@"
main_rc=$?
wait "$daemons"
daemons_rc=$?
rm -rf "$PGPS_TEST_SHARED"

echo
echo "=================== Docker and SLURM stages, then the beside_daemons tests (ran alongside; $daemons_log) ==================="
cat "$daemons_log"
echo
echo "make test: main run exit $main_rc, Docker/SLURM run exit $daemons_rc, $(($(date +%s) - start)) s in all;" \
  "free under ${TMPDIR:-/tmp}: $free_at_start at the start, $(free_space) now"
# pytest exit 5 = nothing collected for that half (e.g. a -k that selects only the other half): not a failure
[ "$main_rc" -eq 0 ] || [ "$main_rc" -eq 5 ] || exit "$main_rc"
[ "$daemons_rc" -eq 0 ] || [ "$daemons_rc" -eq 5 ] || exit "$daemons_rc"
