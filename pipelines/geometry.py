"""Posed RGB-D views -> world-space points -> per-patch summaries, the input of the 3D encoder.

Camera model: OpenCV pinhole, pixel (u, v) = (column, row) with pixel centres at integer coordinates, camera
x right / y down / z forward, depth = z in metres (0 = no hit), pose = camera-to-world [4, 4]."""
import numpy as np


def back_project(depth: np.ndarray, intrinsics: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World xyz [H, W, 3] of every pixel of one view (meaningless where depth is 0)."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    fx, fy, cx, cy = intrinsics[0, 0], intrinsics[1, 1], intrinsics[0, 2], intrinsics[1, 2]
    camera = np.stack([(u - cx) * depth / fx, (v - cy) * depth / fy, depth], axis=-1)
    return camera @ pose[:3, :3].T + pose[:3, 3]


def patch_means(values: np.ndarray, weights: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Weighted means [grid*grid, C] of `values` [H, W, C] over a grid x grid patch grid (row-major; patches of
    images whose size is not a multiple of `grid` differ by one pixel), and each patch's total weight."""
    h, w, c = values.shape
    rows = np.arange(h) * grid // h
    cols = np.arange(w) * grid // w
    patch = (rows[:, None] * grid + cols[None, :]).ravel()
    weights = weights.ravel().astype(np.float64)
    total = np.bincount(patch, weights, minlength=grid * grid)
    sums = np.stack([np.bincount(patch, weights * values[..., k].ravel(), grid * grid) for k in range(c)], -1)
    return sums / np.maximum(total, 1e-12)[:, None], total


def view_patches(color: np.ndarray, depth: np.ndarray, intrinsics: np.ndarray, pose: np.ndarray, grid: int):
    """Per patch of one view: (mean world xyz of the pixels with depth [P, 3] (0 where none), mean rgb in [0, 1]
    [P, 3], fraction of pixels with depth [P])."""
    hit = depth > 0
    xyz, hits = patch_means(back_project(depth, intrinsics, pose), hit, grid)
    rgb, pixels = patch_means(color.astype(np.float64) / 255.0, np.ones_like(hit), grid)
    return xyz, rgb, hits / pixels
