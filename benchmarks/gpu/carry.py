"""What the GPU check carries to the device machine, assembled and checked here.

The device image (Python 3.12, torch 2.11/CUDA 13; see the device notes) has torch, torchvision,
timm, numpy, scipy, scikit-image, scikit-learn, pandas, matplotlib, seaborn, einops, tifffile,
requests, threadpoolctl, msgpack, httpx, rich ... but no nnU-Net and no SimpleITK, and a call
carries at most 64 MiB. So the carry is:

- the wheels nnU-Net's training, final validation and ``nnUNetv2_predict`` IMPORT that the image
  lacks (measured with ``import_trace/``: ``python benchmarks/gpu/device_check.py --dry ...
  --trace-imports``), cp312 manylinux x86_64 or pure Python, downloaded with
  ``python3.12 -m pip download`` (``acvl_utils`` has no wheel on PyPI: built here with
  ``pip wheel``); names, sizes and sha256 in ``carry_manifest.json`` (committed);
- NOT SimpleITK (53 MB) nor imagecodecs (26 MB): nnU-Net imports SimpleITK at module level in
  modules training and prediction import, but the dataset is planned with ``NibabelIO``
  (dataset.json ``overwrite_image_reader_writer``), so no SimpleITK function is ever called;
  ``sitk_stub/`` stands in for the import and raises on any use (the dry run here puts it in
  front of the real SimpleITK to prove it). imagecodecs is only TRIED by tifffile (in a
  try/except; it works without it), like the other ``ABSENT_ON_DEVICE`` modules, which the dry
  run blocks; nnU-Net's declared graphviz and yacs are never imported;
- one small dataset (``Dataset905_PGPSGPU``: 128^3 synthetic cases, 1 mm, quantised to integers
  so nnU-Net's blosc2 files compress), planned and preprocessed HERE by nnU-Net's own tools
  (nnU-Net plans a 128^3 patch with 5/5/5 poolings, batch 2: the benchmark's plan), packed as
  one tar of nnUNet_preprocessed/<dataset> + the raw test images.

``python benchmarks/gpu/carry.py build`` writes ``.gpu_carry/`` (git-ignored) and the manifest
(``wheels``: the wheels only); ``check`` re-hashes it against the manifest and sums the sizes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "src") not in sys.path:
    sys.path.insert(0, str(REPO / "src"))

from pgps import fileio  # noqa: E402
from pgps.errors import PGPSError  # noqa: E402

CARRY = REPO / ".gpu_carry"  # git-ignored; named in the device call's `carry`
WHEELS_DIR = CARRY / "wheels"
DATA_TAR = CARRY / "data" / "dataset.tar"
MANIFEST = Path(__file__).with_name("carry_manifest.json")
LIMIT_BYTES = 64 * 2**20  # what one device call may carry: working tree + carried paths
PYTHON312 = Path.home() / ".pyenv/versions/3.12.1/bin/python3.12"

# measured (import trace of train + final validation + predict, workers included) minus the image's packages
WHEELS: dict[str, str] = {
    "nnunetv2": "2.8.1",
    "acvl_utils": "0.2.6",
    "dynamic_network_architectures": "0.4.4",
    "batchgenerators": "0.25.5",
    "batchgeneratorsv2": "0.3.6",
    "blosc2": "4.14.1",
    "ndindex": "1.10.1",
    "numexpr": "2.14.2",
    "nibabel": "5.4.2",
    "connected-components-3d": "4.1.1",
}
BUILT_HERE = {"acvl_utils"}  # sdist only on PyPI: `pip wheel` (pure Python)
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]

# the device image's Python packages, as the device notes list them (read 2026-11-17), normalised names
DEVICE_IMAGE = set(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
    certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
    cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
    flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
    huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
    joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
    markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
    mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti
    nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
    nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
    nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
    orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache
    protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
    pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex
    requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece
    sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate
    tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
    torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
    typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
    zipp""".split()
)
STUBBED = {"simpleitk"}
# modules the dry run's processes TRY to import that the device image lacks, all optional (imported
# inside try/except by tifffile, tabulate, httpx/httpcore, networkx, pip): the dry run blocks them
# (import_trace/sitecustomize.py, PGPS_IMPORT_BLOCK) so it runs with what the device will have
ABSENT_ON_DEVICE = ("imagecodecs", "pydot", "h2", "hpack", "hyperframe", "truststore", "wcwidth")


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def imported_distributions(trace_dir: Path) -> dict[str, list[str]]:
    """What an import trace (import_trace/sitecustomize.py) shows: the top-level modules every
    traced process imported or tried to import, by where the device gets them -- the image, the
    carry, the stub, blocked in the dry run (absent on the device, optional) -- and ``missing``:
    modules none of whose distributions the device has (must be empty). ``via_image``: a dependency
    that an image package has here (huggingface_hub's httpx2): the image brings its own."""
    import re
    from importlib.metadata import PackageNotFoundError, packages_distributions, requires

    image_deps: set[str] = set()  # what the image's packages need, transitively, as installed here
    todo = list(DEVICE_IMAGE)
    while todo:
        try:
            reqs = requires(todo.pop()) or []
        except PackageNotFoundError:
            continue
        for r in reqs:
            dep = _norm(re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0])
            if "extra ==" not in r and dep not in image_deps and dep not in DEVICE_IMAGE:
                image_deps.add(dep)
                todo.append(dep)

    names = {ln.strip() for f in trace_dir.glob("*.txt") for ln in f.read_text().splitlines() if ln.strip()}
    owners = packages_distributions()
    carried = {_norm(n) for n in WHEELS}
    kinds = ("in_image", "carried", "stubbed", "blocked", "via_image", "missing")
    out: dict[str, set[str]] = {k: set() for k in kinds}
    for name in sorted(names - set(sys.stdlib_module_names) - {"pgps", "benchmarks"}):
        dists = {_norm(d) for d in owners.get(name, [])}
        if not dists:
            continue  # not from an installed distribution (a script's own module)
        if name in ABSENT_ON_DEVICE:
            out["blocked"].add(name)
        elif dists & STUBBED:
            out["stubbed"] |= dists & STUBBED
        elif dists & carried:
            out["carried"] |= dists & carried
        elif dists & DEVICE_IMAGE:
            out["in_image"] |= dists & DEVICE_IMAGE
        elif dists & image_deps:
            out["via_image"] |= dists & image_deps
        else:
            out["missing"].add(name)
    result = {k: sorted(v) for k, v in out.items()}
    result["carried_not_imported"] = sorted(carried - out["carried"])
    return result


DATASET_ID = 905
DATASET = "Dataset905_PGPSGPU"
SHAPE = (128, 128, 128)
NUM_TRAIN, NUM_TEST = 6, 1


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download_wheels(dest: Path = WHEELS_DIR, python: Path = PYTHON312) -> list[Path]:
    """cp312 manylinux x86_64 (or pure) wheels of ``WHEELS``, one version each."""
    dest.mkdir(parents=True, exist_ok=True)
    for name, version in WHEELS.items():
        spec = f"{name}=={version}"
        if name in BUILT_HERE:
            cmd = [str(python), "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), spec]
        else:
            cmd = [str(python), "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
            cmd += ["--python-version", "3.12", "--implementation", "cp", "-d", str(dest), spec]
            for p in PLATFORMS:
                cmd += ["--platform", p]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise PGPSError(f"{spec}: pip could not fetch a cp312 x86_64 wheel ({proc.stderr.strip()[-300:]})")
    return sorted(dest.glob("*.whl"))


def raw_dataset(
    raw: Path, seed: int, shape: tuple[int, int, int] = SHAPE, num_train: int = NUM_TRAIN, num_test: int = NUM_TEST
) -> Path:
    """nnU-Net v2 raw layout, read by NibabelIO; images quantised to integers (int16 NIfTI)."""
    import numpy as np

    from pgps.data.catalog import Variant
    from pgps.data.phantom import make_case, nifti_bytes

    spec = Variant("Task905_PGPSGPU", shape, (1.0, 1.0, 1.0))
    folder = raw / DATASET
    if folder.exists():
        shutil.rmtree(folder)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True)
    rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(num_train + num_test)]
    for i, rng in enumerate(rngs):
        image, label = make_case(rng, spec)
        split = "Tr" if i < num_train else "Ts"
        (folder / f"images{split}" / f"gpu_{i:03d}_0000.nii.gz").write_bytes(
            nifti_bytes(np.round(image).astype(np.int16), spec.spacing)
        )
        (folder / f"labels{split}" / f"gpu_{i:03d}.nii.gz").write_bytes(nifti_bytes(label, spec.spacing))
    dataset = {
        "name": "PGPSGPU",
        "description": "PGPS GPU check: 128^3 synthetic cases (pgps.data.synthetic.make_case), integer intensities",
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": num_train,
        "file_ending": ".nii.gz",
        "overwrite_image_reader_writer": "NibabelIO",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return folder


def build_dataset(
    work: Path,
    seed: int = 0,
    shape: tuple[int, int, int] = SHAPE,
    num_train: int = NUM_TRAIN,
    num_test: int = NUM_TEST,
    tar_path: Path = DATA_TAR,
    processes: int = 2,
) -> dict:
    """Generate, plan and preprocess with this venv's nnU-Net (``processes`` workers in each of its pools, every
    one importing torch); pack into ``tar_path``."""
    bin_dir = Path(sys.executable).parent
    dirs = {k: work / k for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    raw_dataset(dirs["nnUNet_raw"], seed, shape, num_train, num_test)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("nnUNet_", "PGPS_"))}
    env.update({k: str(v) for k, v in dirs.items()}, nnUNet_n_proc_DA="1", nnUNet_def_n_proc=str(processes))
    cmd = [str(bin_dir / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres"]
    cmd += ["-np", str(processes), "-npfp", str(processes)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PGPSError(f"{DATASET}: nnUNetv2_plan_and_preprocess failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
    pre = dirs["nnUNet_preprocessed"] / DATASET
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    conf = plans["configurations"]["3d_fullres"]
    tar_path.parent.mkdir(parents=True, exist_ok=True)

    def pack(tmp: Path) -> None:
        with tarfile.open(tmp, "w") as tar:
            tar.add(pre, arcname=f"nnUNet_preprocessed/{DATASET}")
            tar.add(dirs["nnUNet_raw"] / DATASET / "imagesTs", arcname=f"nnUNet_raw/{DATASET}/imagesTs")
            tar.add(dirs["nnUNet_raw"] / DATASET / "labelsTs", arcname=f"nnUNet_raw/{DATASET}/labelsTs")

    fileio.write_with(tar_path, pack)
    return {
        "dataset": DATASET,
        "cases": {"train": num_train, "test": num_test},
        "shape": list(shape),
        "patch_size": conf["patch_size"],
        "batch_size": conf["batch_size"],
        "strides": conf["architecture"]["arch_kwargs"]["strides"],
        "image_reader_writer": plans.get("image_reader_writer"),
    }


def entries() -> list[dict]:
    files = sorted(WHEELS_DIR.glob("*.whl")) + ([DATA_TAR] if DATA_TAR.is_file() else [])
    return [{"path": str(f.relative_to(REPO)), "bytes": f.stat().st_size, "sha256": sha256(f)} for f in files]


def tree_bytes() -> int:
    """What travels besides the carry: tracked + untracked-not-ignored files."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout
    return sum((REPO / p).stat().st_size for p in out.decode().split("\0") if p and (REPO / p).is_file())


def check(manifest_path: Path = MANIFEST) -> dict:
    """The carry on disk equals the manifest, and tree + carry fit one call."""
    manifest = fileio.read_json(manifest_path, "the GPU check's carry manifest")
    have = {e["path"]: e for e in entries()}
    for want in manifest["files"]:
        got = have.get(want["path"])
        if got is None:
            raise PGPSError(f"{manifest_path}: {want['path']} is missing; run `python benchmarks/gpu/carry.py build`")
        if got["sha256"] != want["sha256"]:
            raise PGPSError(f"{manifest_path}: {want['path']} differs from the manifest (sha256)")
    carry = sum(e["bytes"] for e in manifest["files"])
    tree = tree_bytes()
    if carry + tree > LIMIT_BYTES:
        raise PGPSError(f"{manifest_path}: carry {carry} + tree {tree} bytes exceed the 64 MiB of one device call")
    return {"carry_bytes": carry, "tree_bytes": tree, "total_mib": (carry + tree) / 2**20}


def write_manifest(dataset: dict | None = None) -> dict:
    """The manifest of what ``.gpu_carry/`` holds now (the dataset's description kept if not given)."""
    if dataset is None:
        dataset = fileio.read_json(MANIFEST, "the GPU check's carry manifest")["dataset"]
    files = entries()
    manifest = {
        "about": "what benchmarks/gpu/device_check.py carries to the device machine (see carry.py)",
        "python": "cp312 manylinux x86_64 / pure Python wheels, installed with pip --no-deps --target",
        "not_carried": {
            "SimpleITK": "53 MB wheel; imported but never called with a NibabelIO dataset: sitk_stub/ stands in",
            "imagecodecs": "26 MB wheel; only tried by tifffile (optional); the dry run blocks it and passes",
        },
        "dataset": dataset,
        "files": files,
        "carry_mib": sum(e["bytes"] for e in files) / 2**20,
    }
    fileio.write_json(MANIFEST, manifest)
    return manifest


def build(work: Path) -> dict:
    download_wheels()
    return write_manifest(build_dataset(work))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["build", "wheels", "check"], help="wheels: re-fetch wheels, keep the dataset")
    p.add_argument("--work", type=Path, default=REPO / ".gpu_carry" / "work", help="planning work folder")
    args = p.parse_args(argv)
    try:
        if args.what == "wheels":
            for old in WHEELS_DIR.glob("*.whl"):
                old.unlink()
            download_wheels()
            out = write_manifest()
        else:
            out = build(args.work) if args.what == "build" else check()
    except PGPSError as exc:
        print(f"carry: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out if args.what == "check" else {k: out[k] for k in ("files", "carry_mib")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
