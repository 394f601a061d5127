"""Stand-in for SimpleITK on the GPU check's machine (benchmarks/gpu/carry.py says why).

nnU-Net 2.8 imports SimpleITK at module level in modules that training, final validation and
``nnUNetv2_predict`` import (imageio registry, nibabel and simpleitk reader/writers, evaluation,
preprocessing), but a dataset planned with ``NibabelIO`` never calls it. Any use fails loudly,
naming what was used, so a path that does need SimpleITK cannot pass unnoticed."""

__version__ = "0+pgps-stub"
STUB = True


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(f"SimpleITK.{name}: SimpleITK is a stub on this machine (benchmarks/gpu/sitk_stub)")
