#!/usr/bin/env bash
# Entry point of the PGPS image (run under tini, so signals reach the pipeline and zombies are reaped).
#   reproduce [--profile NAME] [ARGS]  the DVC pipeline on the mounted workspace (default: reduced task, CPU)
#   update-pipeline [--diff|--force]   take this image's dvc.yaml/params.yaml/profiles into the workspace
#   <pgps verb> [ARGS] | pgps ...      the pgps CLI (schedule, make-task, train, report, ...)
#   nnUNetv2_* ... | any program       run as is (nnU-Net's own CLI finds the PGPS trainers via nnUNet_extTrainer)
set -euo pipefail

workspace=${PGPS_WORKSPACE:-/workspace}
pipeline_src=${PGPS_PIPELINE_SRC:-/opt/pgps}
# copies the pipeline definition into a workspace where absent, and says when the image ships a newer one
pipeline_files=(python "$pipeline_src/docker/pipeline_files.py")

usage() {
  cat <<USAGE
PGPS image (pgps $(python -c 'import pgps; print(pgps.__version__)'), torch CUDA build, nnU-Net 2.8)
usage: docker run [--gpus all --shm-size=16g] -v DIR:/workspace IMAGE COMMAND [ARGS]
  reproduce [--profile full]   run the DVC pipeline in /workspace (default: reduced synthetic task on CPU)
  update-pipeline [--diff]     take this image's dvc.yaml, params.yaml, profiles/ (yours kept as *.orig)
  VERB [ARGS]                  a pgps verb: $(python -c 'from pgps.cli import COMMANDS; print(*COMMANDS)')
  nnUNetv2_* [ARGS]            nnU-Net's own commands (PGPS trainers: -tr nnUNetTrainerPGPS, ...)
  help                         this text
USAGE
}

# Exit 0: a pgps verb; 3: not one; anything else: python itself failed. No pipe: under pipefail, a reader
# that stops at the first match (grep -q) kills the writer with SIGPIPE and turns a hit into a failure.
is_pgps_verb() {
  python -c 'import sys; from pgps.cli import COMMANDS; sys.exit(0 if sys.argv[1] in COMMANDS else 3)' "$1"
}

die() { echo "pgps-entrypoint: error: $*" >&2; exit 2; }

# A container run as the caller's uid:gid has no passwd entry and no writable HOME; matplotlib, DVC and
# codecarbon keep config and caches there.
if [ ! -w "${HOME:-/nonexistent}" ]; then
  export HOME=/tmp/pgps-home
  mkdir -p "$HOME"
fi
# ...nor a user name: getpass.getuser() (DVC's site cache, torch's compile cache) then raises unless USER is set
if ! id -un >/dev/null 2>&1; then
  export USER="uid$(id -u)" LOGNAME="uid$(id -u)"
fi

# nnU-Net's defaults are for GPUs. Without one: no torch.compile, augmentation in-process, one process per core.
# Values passed with `docker run -e` win.
if [ ! -e /dev/nvidiactl ]; then
  export nnUNet_compile="${nnUNet_compile:-f}"
  export nnUNet_n_proc_DA="${nnUNet_n_proc_DA:-0}"
fi
export nnUNet_def_n_proc="${nnUNet_def_n_proc:-$(nproc)}"

enter_workspace() {
  [ -d "$workspace" ] || die "$workspace: no such directory (mount one: -v DIR:$workspace)"
  [ -w "$workspace" ] || die "$workspace: not writable by uid $(id -u):$(id -g) (mount a directory this user owns, or pass --user)"
  cd "$workspace"
  # a git work tree owned by another uid (a group-writable mount): git refuses it unless it is marked safe
  if [ -e .git ] && ! git rev-parse --git-dir >/dev/null 2>&1; then
    git config --global --add safe.directory "$workspace" || true
  fi
}

prepare_workspace() {
  enter_workspace
  "${pipeline_files[@]}" sync "$pipeline_src" "$workspace" || die "$workspace: could not copy the pipeline files (see above)"
  [ -f dvc.yaml ] || die "$workspace/dvc.yaml: missing, and the image has no pipeline definition to copy"
  # dvc.yaml tracks the code each stage runs (src/pgps/...): point it at the code installed in this image, so a
  # new image re-runs exactly the stages whose code changed
  [ -e src ] || [ -L src ] || ln -s "$pipeline_src/src" src
  # DVC cache and state live in the workspace (on the volume). A workspace that is a git repository gets DVC
  # with git (dvc exp, params/metrics diff against commits); any other runs DVC without one.
  if [ ! -d .dvc ]; then
    if [ "$(git rev-parse --show-toplevel 2>/dev/null)" = "$(pwd -P)" ]; then
      dvc init --quiet || die "$workspace: dvc init failed in this git repository (see above)"
    else
      dvc init --no-scm --quiet || die "$workspace: dvc init --no-scm failed (see above)"
    fi
  fi
}

cmd=${1:-help}
case "$cmd" in
  reproduce)
    shift
    prepare_workspace
    exec pgps reproduce "$@"
    ;;
  update-pipeline)
    shift
    enter_workspace
    exec "${pipeline_files[@]}" update "$pipeline_src" "$workspace" "$@"
    ;;
  help | -h | --help)
    usage
    ;;
  pgps)
    shift
    exec pgps "$@"
    ;;
  *)
    verb=0
    is_pgps_verb "$cmd" || verb=$?
    case $verb in
      0) exec pgps "$@" ;;
      3) ;;
      *) die "cannot list the pgps verbs (python exited $verb; see above)" ;;
    esac
    command -v -- "$cmd" >/dev/null || die "$cmd: not a pgps verb or a program in the image (try: help)"
    exec "$@"
    ;;
esac
