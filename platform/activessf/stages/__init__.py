"""Distributed stages: thin Ray and MLflow wrappers around the pure algorithms."""
