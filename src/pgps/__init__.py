"""Progressive Growing of Patch Size (PGPS) for nnU-Net v2 -- reference implementation."""

__version__ = "0.1.0"
