"""Data: the reduced synthetic task, MSD acquisition, dataset validation."""
