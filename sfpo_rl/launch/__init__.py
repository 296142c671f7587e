"""Cluster launch helpers used by the scripts under docker/ (Slurm node lists, waiting for Ray nodes)."""
