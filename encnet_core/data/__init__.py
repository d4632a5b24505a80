"""Datasets: per-dataset sources, conversion, the HDF5 format, the torch Dataset and the synthetic set."""
