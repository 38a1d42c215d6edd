"""Whole-slide images to HDF5 patch files with count labels: reading, tissue detection, annotations, tiling."""
