"""Guard for the code we adapted from nnU-Net 2.8.1: the source of each original is pinned by its
sha256, so an nnU-Net upgrade that changes one fails here, loudly, naming our copy to re-check
(merge the upstream change into it, then update the pin) instead of silently training with a stale
copy. Also pinned: nnU-Net methods whose exact behaviour a copy relies on."""

from __future__ import annotations

import hashlib
import importlib
import inspect

import pytest

# (nnU-Net object, sha256 of inspect.getsource in nnunetv2 2.8.1, our copy / what relies on it)
PINNED = [
    (
        "nnunetv2.training.nnUNetTrainer.nnUNetTrainer:nnUNetTrainer.run_training",
        "135206abd4ea62ece28914200818fe132f4d339092d3542db229c18e4cf7c43d",
        "src/pgps/nnunet/base.py PGPSTrainerBase.run_training (adapted copy: while-loop, phase timing, codecarbon)",
    ),
    (
        "nnunetv2.training.nnUNetTrainer.nnUNetTrainer:nnUNetTrainer.save_checkpoint",
        "de4f196c42e6bcf522641d62c8e30af2c4c094f8c541943e07bbb39b965c3307",
        "src/pgps/nnunet/checkpoint.py save (adapted copy: same dict plus 'pgps', atomic write)",
    ),
    (
        "nnunetv2.training.nnUNetTrainer.nnUNetTrainer:nnUNetTrainer.load_checkpoint",
        "a386bed4eafaa4fab674a479d98323059d26764938ad7fd8ecac35b6db85ee36",
        "src/pgps/nnunet/checkpoint.py restore (adapted copy of what follows its torch.load; loaded weights_only)",
    ),
    (
        "nnunetv2.training.nnUNetTrainer.nnUNetTrainer:nnUNetTrainer.get_dataloaders",
        "5f59e2b907cfa2d1eb1e77ab2a5b8893161e7af8567fc5669c62a4810334899e",
        "src/pgps/nnunet/loaders.py build_train_loader (adapted copy of the training half, for a stage patch)",
    ),
    (
        "nnunetv2.training.dataloading.data_loader:nnUNetDataLoader.generate_train_batch",
        "0a430703c66ec9b862e13de0d4cbe3163c00dab40e375100c98575e0b1fddaac",
        "src/pgps/nnunet/loaders.py MultiCropDataLoader.generate_train_batch (adapted copy: several crops per case)",
    ),
    (
        "nnunetv2.training.nnUNetTrainer.nnUNetTrainer:nnUNetTrainer._set_batch_size_and_oversample",
        "830f5205b6f05e0f9c7c7d748977c71a178cee91fca8c9e511ecde69e49d4e28",
        "src/pgps/nnunet/geometry.py rank_batch_sizes / rank_oversample (the DDP split, re-implemented per stage)",
    ),
    (
        "nnunetv2.training.nnUNetTrainer.nnUNetTrainer:nnUNetTrainer.on_epoch_end",
        "988deef2bd79d339a745eec8828c6a7b66330a029ceaef601af23c2a5270cfe7",
        "src/pgps/nnunet/base.py PGPSTrainerBase.on_epoch_end (relies on: checkpoints and plot here, epoch counter "
        "incremented last; the record is written before and the epoch's end taken after)",
    ),
]


def _source(path: str) -> str:
    module, _, qualname = path.partition(":")
    obj = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return inspect.getsource(obj)


@pytest.mark.parametrize(("original", "sha256", "ours"), PINNED, ids=[p[0].rpartition(":")[2] for p in PINNED])
def test_adapted_nnunet_code_is_unchanged_upstream(original: str, sha256: str, ours: str) -> None:
    import nnunetv2

    got = hashlib.sha256(_source(original).encode()).hexdigest()
    assert got == sha256, (
        f"nnU-Net's {original} changed (nnunetv2 {getattr(nnunetv2, '__version__', '?')}; sha256 {got}, pinned "
        f"{sha256} from 2.8.1). Re-check our copy in {ours}: merge the upstream change, then update the pin in "
        "tests/test_nnunet_copies.py."
    )


def test_a_changed_original_is_reported_with_our_copy_named() -> None:
    """The guard can fail: a pin that does not match names the original and our copy."""
    original, _, ours = PINNED[0]
    with pytest.raises(AssertionError, match=r"changed .* Re-check our copy in src/pgps/nnunet/base\.py"):
        test_adapted_nnunet_code_is_unchanged_upstream(original, "0" * 64, ours)
