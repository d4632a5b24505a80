"""Datasets: download, archives, per-dataset sources, the HDF5 format, the torch Dataset and the synthetic set."""
