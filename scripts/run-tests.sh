#!/usr/bin/env bash
# `make test`: the whole suite as two pytest processes side by side (three while the SLURM stage runs), because CI's
# 2 cores spend much of the Docker and SLURM stages waiting (image build: network and disk; SLURM: the scheduler,
# a requeue, a time limit running out) while the rest is CPU-bound. All run to the end; the exit status fails if any
# failed. The daemon stages' output goes to logs/test-daemons.log and is printed after the main run. Each prints its
# slowest tests (--durations).
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

# The second process: the Docker stage, then the SLURM stage and the tests marked beside_daemons (self-contained,
# CPU-bound) side by side: a SLURM job waits for the scheduler, a requeue or a time limit for much of the stage, and
# with only the main run beside it one core sat idle for ~2 minutes (measured, /proc/stat every 5 s). The core-install
# test (beside_daemons) still starts after the Docker stage's ~10 GB are gone (disk).
slurm_log=logs/test-slurm.log
(
  "$PY" -m pytest -q --timeout=1500 --durations=15 -m "docker and not exact" "$@"
  docker_rc=$?
  "$PY" -m pytest -q --timeout=1500 --durations=15 -m "slurm and not docker and not exact" "$@" >"$slurm_log" 2>&1 &
  slurm=$!
  "$PY" -m pytest -q --timeout=1500 --durations=10 -m "beside_daemons and not docker and not slurm and not exact" "$@"
  beside_rc=$?
  wait "$slurm"
  slurm_rc=$?
  echo
  echo "------------------- SLURM stage (ran beside the beside_daemons tests; $slurm_log) -------------------"
  cat "$slurm_log"
  for rc in "$docker_rc" "$slurm_rc" "$beside_rc"; do  # pytest exit 5 = nothing collected (e.g. a -k for other tests)
    [ "$rc" -eq 0 ] || [ "$rc" -eq 5 ] || exit "$rc"
  done
  [ "$docker_rc" -eq 5 ] && [ "$slurm_rc" -eq 5 ] && [ "$beside_rc" -eq 5 ] && exit 5
  exit 0
) >"$daemons_log" 2>&1 &
daemons=$!
# stopping make test stops the second process's pytest too (the subshell's children first, then the subshell)
trap 'pkill -TERM -P "$daemons" 2>/dev/null; kill "$daemons" 2>/dev/null; wait "$daemons" 2>/dev/null; rm -rf "$PGPS_TEST_SHARED"' INT TERM

"$PY" -m pytest -q --timeout=1500 --durations=25 -m "not docker and not slurm and not beside_daemons and not exact" "$@"
main_rc=$?
wait "$daemons"
daemons_rc=$?
rm -rf "$PGPS_TEST_SHARED"

echo
echo "=================== Docker stage, then the beside_daemons tests and the SLURM stage (ran alongside; $daemons_log) ==================="
cat "$daemons_log"
echo
echo "make test: main run exit $main_rc, Docker/SLURM run exit $daemons_rc, $(($(date +%s) - start)) s in all;" \
  "free under ${TMPDIR:-/tmp}: $free_at_start at the start, $(free_space) now"
# pytest exit 5 = nothing collected for that half (e.g. a -k that selects only the other half): not a failure
[ "$main_rc" -eq 0 ] || [ "$main_rc" -eq 5 ] || exit "$main_rc"
[ "$daemons_rc" -eq 0 ] || [ "$daemons_rc" -eq 5 ] || exit "$daemons_rc"
