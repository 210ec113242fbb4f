"""Hyperparameter sweeps: search-space files (space.py) and trial objectives (objectives.py). Pure code."""
