"""Data: image I/O, readers and the synthetic smear generator."""
