"""The pipeline definition a workspace gets from the image: dvc.yaml, params.yaml, .dvcignore, profiles/*.

`sync`: copy each file where the workspace has none, and remember (``.pgps/pipeline.json``) the content each
copy had. A user's file is never overwritten: when a newer image ships a different file, one notice says so,
with the command that takes the image's version. `update`: that command (the workspace's version is kept as
``FILE.orig``); files the user edited are only replaced with ``--force``; ``--diff`` shows the differences.

Run by the image's entry point (docker/entrypoint.sh) as ``python pipeline_files.py sync|update SRC WORKSPACE``.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import sys
from pathlib import Path

from pgps import __version__, fileio
from pgps.errors import PGPSError

TOP_LEVEL = ("dvc.yaml", "params.yaml", ".dvcignore")
FOLDERS = ("profiles",)
MANIFEST = Path(".pgps") / "pipeline.json"
UPDATE = "docker run --rm -v WORKSPACE:/workspace IMAGE update-pipeline"


def image_files(src: Path) -> dict[str, Path]:
    """Relative name -> file, for every pipeline file the image ships."""
    files = {name: src / name for name in TOP_LEVEL if (src / name).is_file()}
    for folder in FOLDERS:
        for path in sorted((src / folder).rglob("*")):
            if path.is_file():
                files[str(path.relative_to(src))] = path
    return files


def digest(path: Path) -> str | None:
    """sha256 of a regular file's bytes, None for anything else (a folder, a broken link)."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def load_manifest(workspace: Path) -> dict[str, dict[str, str]]:
    """What each copy looked like when the entry point made it (empty for workspaces of older images)."""
    path = workspace / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = fileio.read_json(path, "the entry point's record of copied pipeline files")
    except PGPSError:
        return {}  # a damaged record only costs the 'untouched since copied' distinction
    files = data.get("files") if isinstance(data, dict) else None
    return {k: v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}


def save_manifest(workspace: Path, files: dict[str, dict[str, str]]) -> None:
    fileio.write_json(workspace / MANIFEST, {"written_by": f"pgps {__version__} image entry point", "files": files})


def classify(src: Path, workspace: Path) -> tuple[dict[str, list[str]], dict[str, dict[str, str]]]:
    """Each image file's state in the workspace: absent, same, outdated (an untouched copy of an older image's
    version), edited (changed by the user and changed in the image), unknown (differs; origin not recorded)."""
    manifest = load_manifest(workspace)
    states: dict[str, list[str]] = {k: [] for k in ("absent", "same", "outdated", "edited", "unknown")}
    for rel, path in image_files(src).items():
        target = workspace / rel
        ours = digest(path)
        if not target.exists() and not target.is_symlink():
            states["absent"].append(rel)
            continue
        theirs = digest(target)
        base = manifest.get(rel, {}).get("sha256")
        if theirs == ours:
            states["same"].append(rel)
        elif base is None or theirs is None:
            states["unknown"].append(rel)
        elif theirs == base:
            states["outdated"].append(rel)
        elif ours != base:
            states["edited"].append(rel)
        else:
            states["same"].append(rel)  # edited by the user; the image's version has not changed since
    return states, manifest


def _record(manifest: dict[str, dict[str, str]], rel: str, path: Path) -> None:
    manifest[rel] = {"sha256": digest(path) or "", "pgps": __version__}


def sync(src: Path, workspace: Path) -> int:
    """Copy what is absent; print one notice when the image ships versions the workspace does not have."""
    states, manifest = classify(src, workspace)
    before = dict(manifest)
    files = image_files(src)
    for rel in states["absent"]:
        fileio.write_bytes(workspace / rel, files[rel].read_bytes())
        _record(manifest, rel, files[rel])
    for rel in states["same"]:  # identical to the image's: that is the version to compare against next time
        ours = digest(files[rel])
        if digest(workspace / rel) == ours and manifest.get(rel, {}).get("sha256") != ours:
            _record(manifest, rel, files[rel])
    if manifest != before:
        save_manifest(workspace, manifest)
    notice = upgrade_notice(states)
    if notice:
        print(notice, file=sys.stderr, flush=True)
    return 0


def upgrade_notice(states: dict[str, list[str]]) -> str | None:
    """One notice for everything the image ships differently; None when the workspace is current."""
    parts = []
    if states["outdated"]:
        parts.append(
            f"this image (pgps {__version__}) ships newer {', '.join(states['outdated'])} than the workspace's "
            f"copies (left unchanged); take the image's with `{UPDATE}` (yours kept as *.orig)"
        )
    changed = states["edited"] + states["unknown"]
    if changed:
        parts.append(
            f"{', '.join(changed)} differ from this image's and were edited (or copied by an older image); "
            f"compare with `{UPDATE} --diff`, replace with `{UPDATE} --force` (yours kept as *.orig)"
        )
    return "pgps-entrypoint: notice: " + "; ".join(parts) if parts else None


def _backup_name(target: Path) -> Path:
    candidate = target.with_name(target.name + ".orig")
    n = 1
    while candidate.exists():
        candidate = target.with_name(f"{target.name}.orig.{n}")
        n += 1
    return candidate


def update(src: Path, workspace: Path, force: bool, show_diff: bool) -> int:
    """Take the image's version of outdated files (and, with ``force``, of edited ones); keep the old as .orig."""
    states, manifest = classify(src, workspace)
    files = image_files(src)
    changed = states["outdated"] + states["edited"] + states["unknown"]
    if show_diff:
        for rel in changed:
            mine = (workspace / rel).read_text(errors="replace").splitlines(keepends=True)
            theirs = files[rel].read_text(errors="replace").splitlines(keepends=True)
            sys.stdout.writelines(difflib.unified_diff(mine, theirs, f"workspace/{rel}", f"image/{rel}"))
        return 0
    replace = states["outdated"] + (states["edited"] + states["unknown"] if force else [])
    for rel in replace:
        target = workspace / rel
        if not target.is_file():
            print(f"{rel}: not a regular file in the workspace; left as it is", flush=True)
            continue
        backup = _backup_name(target)
        fileio.write_bytes(backup, target.read_bytes())
        fileio.write_bytes(target, files[rel].read_bytes())
        _record(manifest, rel, files[rel])
        print(f"{rel}: now the image's version (yours: {backup.name})", flush=True)
    for rel in states["absent"]:
        fileio.write_bytes(workspace / rel, files[rel].read_bytes())
        _record(manifest, rel, files[rel])
        print(f"{rel}: copied from the image", flush=True)
    kept = [rel for rel in changed if rel not in replace]
    if kept:
        print(f"kept (edited in the workspace; --force replaces them): {', '.join(kept)}", flush=True)
    if not replace and not states["absent"] and not kept:
        print("the workspace's pipeline files are this image's", flush=True)
    save_manifest(workspace, manifest)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pipeline_files.py", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("sync", "update"))
    parser.add_argument("src", type=Path, help="where the image keeps its pipeline files (/opt/pgps)")
    parser.add_argument("workspace", type=Path)
    parser.add_argument("--force", action="store_true", help="update: also replace files edited in the workspace")
    parser.add_argument("--diff", action="store_true", help="update: show the differences, change nothing")
    args = parser.parse_args(argv)
    try:
        if args.action == "sync":
            return sync(args.src, args.workspace)
        return update(args.src, args.workspace, args.force, args.diff)
    except (PGPSError, OSError) as exc:
        print(f"pgps-entrypoint: error: {args.workspace}: pipeline files: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
