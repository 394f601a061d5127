"""What the PGPS trainers share (kept out of ``pgps/trainers/`` because nnU-Net's
``nnUNet_extTrainer`` scan imports every file there): budget knobs, the run record, atomic
writes, stage geometry, stage loaders, the memory dry run and the codecarbon hook."""
