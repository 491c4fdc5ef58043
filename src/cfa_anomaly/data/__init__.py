"""Data: the sample index, image and mask reading, datasets, and the synthetic generator."""
