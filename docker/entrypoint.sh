#!/usr/bin/env bash
# Entry point of the PGPS image (run under tini, so signals reach the pipeline and zombies are reaped).
#   reproduce [--profile NAME] [ARGS]  the DVC pipeline on the mounted workspace (default: reduced task, CPU)
#   <pgps verb> [ARGS] | pgps ...      the pgps CLI (schedule, make-task, train, report, ...)
#   nnUNetv2_* ... | any program       run as is (nnU-Net's own CLI finds the PGPS trainers via nnUNet_extTrainer)
set -euo pipefail

workspace=${PGPS_WORKSPACE:-/workspace}
pipeline_src=${PGPS_PIPELINE_SRC:-/opt/pgps}
# the pipeline definition a workspace needs; copied only where absent, so a user's edits are kept
pipeline_files=(dvc.yaml params.yaml profiles .dvcignore)

usage() {
  cat <<USAGE
PGPS image (pgps $(python -c 'import pgps; print(pgps.__version__)'), torch CUDA build, nnU-Net 2.8)
usage: docker run [--gpus all --shm-size=16g] -v DIR:/workspace IMAGE COMMAND [ARGS]
  reproduce [--profile full]   run the DVC pipeline in /workspace (default: reduced synthetic task on CPU)
  VERB [ARGS]                  a pgps verb: $(pgps_verbs | tr '\n' ' ')
  nnUNetv2_* [ARGS]            nnU-Net's own commands (PGPS trainers: -tr nnUNetTrainerPGPS, ...)
  help                         this text
USAGE
}

pgps_verbs() { python -c 'from pgps.cli import COMMANDS; print(*COMMANDS, sep="\n")'; }

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

prepare_workspace() {
  [ -d "$workspace" ] || die "$workspace: no such directory (mount one: -v DIR:$workspace)"
  [ -w "$workspace" ] || die "$workspace: not writable by uid $(id -u):$(id -g) (mount a directory this user owns, or pass --user)"
  cd "$workspace"
  local f tmp
  for f in "${pipeline_files[@]}"; do
    if [ -e "$pipeline_src/$f" ] && [ ! -e "$f" ]; then
      tmp=".$f.tmp.$$"
      cp -R "$pipeline_src/$f" "$tmp"
      mv -T "$tmp" "$f"
    fi
  done
  [ -f dvc.yaml ] || die "$workspace/dvc.yaml: missing, and the image has no pipeline definition to copy"
  # dvc.yaml tracks the code each stage runs (src/pgps/...): point it at the code installed in this image, so a
  # new image re-runs exactly the stages whose code changed
  [ -e src ] || [ -L src ] || ln -s "$pipeline_src/src" src
  # DVC cache and state live in the workspace (on the volume); no git needed inside the container
  [ -d .dvc ] || dvc init --no-scm --quiet || die "$workspace: dvc init --no-scm failed (see above)"
}

cmd=${1:-help}
case "$cmd" in
  reproduce)
    shift
    prepare_workspace
    exec pgps reproduce "$@"
    ;;
  help | -h | --help)
    usage
    ;;
  pgps)
    shift
    exec pgps "$@"
    ;;
  *)
    if pgps_verbs | grep -qxF -- "$cmd"; then
      exec pgps "$@"
    fi
    command -v -- "$cmd" >/dev/null || die "$cmd: not a pgps verb or a program in the image (try: help)"
    exec "$@"
    ;;
esac
