"""The literal, slow reading of Sec. II-B, kept as the reference the fast filter is checked against.

Every pixel goes through scikit-learn's K-means, the image is replaced by its
cluster colours (G'), converted to HSV and thresholded with ``cv2.inRange``.
About 0.3-0.7 s per 640x480 image: for tests and benchmarks, not for jobs.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..config import FilterConfig
from .filter import FilterResult, find_regions, normalise
from .kmeans import merge_closest


def denoise_literal(blurred: np.ndarray, cfg: FilterConfig, init: np.ndarray | None = None) -> np.ndarray:
    """G': every pixel replaced by its merged cluster colour (H, W, 3) uint8.

    ``init`` (k, 3) starts Lloyd from given centres (exact comparisons); otherwise
    scikit-learn's own k-means++ with ``cfg.seed``.
    """
    from sklearn.cluster import KMeans

    pixels = blurred.reshape(-1, 3).astype(np.float64)
    if init is None:
        km = KMeans(cfg.kmeans_clusters, n_init=1, random_state=cfg.seed, max_iter=cfg.kmeans_max_iter)
    else:
        km = KMeans(len(init), init=init, n_init=1, max_iter=cfg.kmeans_max_iter, tol=0.0, algorithm="lloyd")
    labels = km.fit_predict(pixels)
    mass = np.bincount(labels, minlength=km.n_clusters).astype(np.float64)
    merged, _, mapping = merge_closest(km.cluster_centers_, mass, cfg.merged_clusters)
    palette = np.clip(np.rint(merged), 0, 255).astype(np.uint8)
    return palette[mapping[labels]].reshape(blurred.shape)


def hsv_mask_literal(denoised: np.ndarray, cfg: FilterConfig) -> np.ndarray:
    hsv = cv2.cvtColor(denoised, cv2.COLOR_RGB2HSV)
    mask = np.zeros(denoised.shape[:2], np.uint8)
    for lo, hi in list(cfg.purple) + list(cfg.deep_blue):
        mask |= cv2.inRange(hsv, np.array(lo, np.uint8), np.array(hi, np.uint8))
    return (mask > 0).astype(np.uint8)


def filter_image_literal(rgb: np.ndarray, cfg: FilterConfig, init: np.ndarray | None = None) -> FilterResult:
    blurred = cv2.GaussianBlur(normalise(rgb, cfg.normalize), (cfg.blur_kernel, cfg.blur_kernel), cfg.blur_sigma)
    mask = hsv_mask_literal(denoise_literal(blurred, cfg, init), cfg)
    kept, low_fill, too_small = find_regions(mask, cfg)
    rejected = {"too_small": too_small, "low_fill": len(low_fill)}
    return FilterResult(kept, low_fill, rejected, np.zeros((0, 3), np.uint8), np.zeros(0, bool), mask)
