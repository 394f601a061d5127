"""nnU-Net trainer classes, one per file. Only trainer files live here: nnU-Net's
``nnUNet_extTrainer`` lookup imports every module in this directory (``eval "$(pgps env)"``)."""
