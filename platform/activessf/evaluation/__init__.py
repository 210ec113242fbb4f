"""Evaluation (paper Sec. III): folds, metrics, statistics, reports. Pure code."""
