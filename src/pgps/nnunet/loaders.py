"""Training loaders for one curriculum stage, built from nnU-Net's own pieces (augmentation
parameters, transforms, ``nnUNetDataLoader``, augmenters) for a patch that is NOT the plan's.

The plan itself is never changed for longer than the call that derives the patch-dependent
augmentation parameters, so ``plans.json``, checkpoints, per-epoch validation and the final
sliding-window inference always see the planned patch."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from acvl_utils.cropping_and_padding.bounding_boxes import crop_and_pad_nd
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA
from threadpoolctl import threadpool_limits

from pgps.nnunet.augmentation import MODES, trainer_stage_augmentation


class MultiCropDataLoader(nnUNetDataLoader):
    """Journal performance mode: a batch of ``batch_size`` crops from only ``cases_per_batch``
    loaded cases, ``ceil(batch/cases)`` crops each, alternating random and foreground-forced
    crops -- so loading cost stays that of the planned batch while the batch grows."""

    def __init__(self, *args: Any, cases_per_batch: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cases_per_batch = max(1, min(int(cases_per_batch), self.batch_size))
        self.cases_loaded = 0  # how many load_case calls (measured by tests and benchmarks)

    def _one_sample(self, data: Any, seg: Any, seg_prev: Any, props: dict, force_fg: bool) -> tuple[Any, Any]:
        bbox_lbs, bbox_ubs = self.get_bbox(data.shape[1:], force_fg, props["class_locations"])
        bbox = [[lo, hi] for lo, hi in zip(bbox_lbs, bbox_ubs)]
        img = torch.from_numpy(crop_and_pad_nd(data, bbox, 0)).float()
        lab = torch.from_numpy(crop_and_pad_nd(seg, bbox, -1, cast_cropped_to=np.int16)).to(torch.int16)
        if seg_prev is not None:
            prev = torch.from_numpy(crop_and_pad_nd(seg_prev, bbox, -1, cast_cropped_to=np.int16)).to(torch.int16)
            lab = torch.cat((lab, prev[None]), dim=0)
        if self.patch_size_was_2d:
            img, lab = img[:, 0], lab[:, 0]
        if self.transforms is None:
            return img, lab
        out = self.transforms(image=img, segmentation=lab)
        return out["image"], out["segmentation"]

    def generate_train_batch(self) -> dict:
        crops = math.ceil(self.batch_size / self.cases_per_batch)
        keys = np.random.choice(self.indices, self.cases_per_batch, replace=True)
        data_all: torch.Tensor | None = None
        seg_all: Any = None
        sample_keys: list = []
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for c, key in enumerate(keys):
                data, seg, seg_prev, props = self._data.load_case(key)
                self.cases_loaded += 1
                for k in range(crops):
                    j = c * crops + k
                    if j >= self.batch_size:
                        break
                    force_fg = (k % 2 == 1) if crops > 1 else self.get_do_oversample(j)
                    img, lab = self._one_sample(data, seg, seg_prev, props, force_fg)
                    if data_all is None:
                        data_all = torch.empty((self.batch_size, *img.shape), dtype=torch.float32)
                    data_all[j] = img
                    if isinstance(lab, list):
                        if seg_all is None:
                            seg_all = [torch.empty((self.batch_size, *s.shape), dtype=s.dtype) for s in lab]
                        for level, s in enumerate(lab):
                            seg_all[level][j] = s
                    else:
                        if seg_all is None:
                            seg_all = torch.empty((self.batch_size, *lab.shape), dtype=lab.dtype)
                        seg_all[j] = lab
                    sample_keys.append(key)
        return {"data": data_all, "target": seg_all, "keys": sample_keys}


def build_train_loader(
    trainer: Any,
    patch: Sequence[int],
    batch: int,
    oversample: float,
    cases_per_batch: int | None = None,
    num_processes: int | None = None,
    augmentation: str = "stage",
) -> Any:
    """nnU-Net's training pipeline for ``patch`` x ``batch`` (this rank's share), augmented as
    ``augmentation`` says (``stage``: nnU-Net's rule on this patch; ``planned``: the planned
    patch's regime; see pgps.nnunet.augmentation)."""
    if augmentation not in MODES:
        raise ValueError(f"augmentation {augmentation!r}: use one of {', '.join(MODES)}")
    patch = [int(x) for x in patch]
    aug = trainer_stage_augmentation(trainer, patch, augmentation)
    initial_patch = list(aug.initial_patch_size)
    lm = trainer.label_manager
    transforms = trainer.get_training_transforms(
        patch,
        aug.regime.rotation,
        trainer._get_deep_supervision_scales(),
        aug.regime.mirror_axes,
        aug.regime.dummy_2d,
        use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm,
        is_cascaded=trainer.is_cascaded,
        foreground_labels=lm.foreground_labels,
        regions=lm.foreground_regions if lm.has_regions else None,
        ignore_label=lm.ignore_label,
    )
    dataset_tr, _ = trainer.get_tr_and_val_datasets()
    common = dict(
        oversample_foreground_percent=oversample,
        sampling_probabilities=None,
        pad_sides=None,
        transforms=transforms,
        probabilistic_oversampling=trainer.probabilistic_oversampling,
    )
    if cases_per_batch is not None and cases_per_batch < batch:
        loader = MultiCropDataLoader(
            dataset_tr, batch, initial_patch, patch, lm, cases_per_batch=cases_per_batch, **common
        )
    else:
        loader = nnUNetDataLoader(dataset_tr, batch, initial_patch, patch, lm, **common)
    n = get_allowed_n_proc_DA() if num_processes is None else num_processes
    if n == 0:
        return SingleThreadedAugmenter(loader, None)
    aug = NonDetMultiThreadedAugmenter(
        data_loader=loader,
        transform=None,
        num_processes=n,
        num_cached=max(6, n // 2),
        seeds=None,
        pin_memory=trainer.device.type == "cuda",
        wait_time=0.002,
    )
    next(aug)  # start the workers now, not inside the first timed iteration
    return aug


def finish_loader(loader: Any) -> None:
    """Shut down a loader's worker processes (the official code leaks them at every stage)."""
    if isinstance(loader, PatchSwitch):
        for sub in loader.loaders.values():
            finish_loader(sub)
    elif hasattr(loader, "_finish"):
        loader._finish()


class PatchSwitch:
    """RPSS: iteration ``i`` of the epoch is served by the loader of ``pick(i)``'s patch, one
    in-process loader per candidate, so the network really receives the drawn patch and the draw
    stays a pure function of (seed, epoch, iteration) -- resume-safe."""

    def __init__(self, loaders: dict[tuple[int, ...], Any], pick: Callable[[int], tuple[int, ...]]) -> None:
        self.loaders = loaders
        self.pick = pick
        self.iteration = 0

    def restart(self, pick: Callable[[int], tuple[int, ...]]) -> None:
        self.pick, self.iteration = pick, 0

    def __iter__(self) -> PatchSwitch:
        return self

    def __next__(self) -> dict:
        patch = self.pick(self.iteration)
        self.iteration += 1
        return next(self.loaders[tuple(patch)])
