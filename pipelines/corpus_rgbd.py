"""The 3D part of the synthetic corpus: a posed RGB-D sequence of a small scene, ray cast analytically with numpy.

World frame: metres, z up, a square grey ground plane at z = 0 centred on the origin, two spheres and one
axis-aligned box resting on it. Cameras orbit the scene and look at LOOK_AT. Conventions match what a real RGB-D
capture gives a 3D encoder:
- poses are camera-to-world in the OpenCV camera frame (x right, y down, z forward);
- pixel (u, v) (integer column, row) looks along K^-1 [u, v, 1];
- depth is the camera-frame z of the hit (not the ray length), 0 where the ray hits nothing; colours are flat
  per surface, black where nothing is hit.
So back-projecting pixel (u, v): X_world = pose @ [depth * K^-1 [u, v, 1], 1].
"""
import numpy as np

WIDTH, HEIGHT, FOCAL = 64, 48, 56.0
N_VIEWS = 8
ORBIT_RADIUS, ORBIT_HEIGHT = 3.0, 1.6
LOOK_AT = (0.0, 0.0, 0.3)
# The ground is a box of zero height, so one intersection routine serves it and the box object.
GROUND = {"kind": "box", "colour": "grey", "rgb": [128, 128, 128], "centre": [0.0, 0.0, 0.0],
          "half_size": [2.0, 2.0, 0.0]}
UP = np.array([0.0, 0.0, 1.0])


def plan_scene(rng: np.random.Generator, palette: dict[str, list[int]], times: list[float], path: str) -> dict:
    """The scene and cameras as JSON-ready truth; `render` turns it into arrays."""
    colours = rng.choice(list(palette), size=3, replace=False)
    # Objects sit 120 degrees apart at 0.6-0.9 m from the origin, which keeps them from touching.
    base = rng.uniform(0, 2 * np.pi)
    objects = []
    for j, (kind, colour) in enumerate(zip(("sphere", "sphere", "box"), colours)):
        angle = base + 2 * np.pi * j / 3 + rng.uniform(-0.15, 0.15)
        x, y = rng.uniform(0.6, 0.9) * np.array([np.cos(angle), np.sin(angle)])
        obj = {"kind": kind, "colour": str(colour), "rgb": palette[colour]}
        if kind == "sphere":
            radius = round(float(rng.uniform(0.2, 0.35)), 3)
            obj.update(centre=_rounded([x, y, radius]), radius=radius)
        else:
            half = _rounded(rng.uniform(0.15, 0.3, size=3))
            obj.update(centre=_rounded([x, y, half[2]]), half_size=half)
        objects.append(obj)
    angles = 2 * np.pi * np.arange(N_VIEWS) / N_VIEWS + rng.uniform(-0.2, 0.2, size=N_VIEWS)
    positions = [_rounded([ORBIT_RADIUS * np.cos(a), ORBIT_RADIUS * np.sin(a), ORBIT_HEIGHT]) for a in angles]
    intrinsics = [[FOCAL, 0.0, (WIDTH - 1) / 2], [0.0, FOCAL, (HEIGHT - 1) / 2], [0.0, 0.0, 1.0]]
    return {
        "path": path, "n_views": N_VIEWS, "width": WIDTH, "height": HEIGHT, "intrinsics": intrinsics,
        "times": times, "objects": objects, "ground": GROUND,
        "cameras": {"positions": positions, "look_at": list(LOOK_AT)},
    }


def render(scene: dict) -> dict[str, np.ndarray]:
    """The .npz arrays: color [V,H,W,3] u8, depth [V,H,W] f32, intrinsics [3,3] f32, poses [V,4,4] f32,
    times [V] f64."""
    intrinsics = np.array(scene["intrinsics"])
    u, v = np.meshgrid(np.arange(scene["width"]), np.arange(scene["height"]))
    # Camera-frame rays with z = 1, so the hit distance along a ray is the depth.
    rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(intrinsics).T
    poses = np.stack([look_at_pose(p, scene["cameras"]["look_at"]) for p in scene["cameras"]["positions"]])
    surfaces = [scene["ground"], *scene["objects"]]
    colors, depths = [], []
    for pose in poses:
        origin, directions = pose[:3, 3], rays @ pose[:3, :3].T
        depth = np.full(rays.shape[:2], np.inf)
        color = np.zeros(rays.shape, np.uint8)
        for surface in surfaces:
            hit = _intersect(surface, origin, directions)
            nearer = hit < depth
            depth[nearer], color[nearer] = hit[nearer], surface["rgb"]
        depth[np.isinf(depth)] = 0.0
        colors.append(color)
        depths.append(depth)
    return {
        "color": np.stack(colors), "depth": np.stack(depths).astype(np.float32),
        "intrinsics": intrinsics.astype(np.float32), "poses": poses.astype(np.float32),
        "times": np.array(scene["times"], np.float64),
    }


def look_at_pose(position, target) -> np.ndarray:
    """Camera-to-world [4,4] of a camera at `position` looking at `target`, OpenCV axes, no roll (z is up)."""
    position = np.asarray(position, float)
    forward = np.asarray(target, float) - position
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, UP)
    right /= np.linalg.norm(right)
    pose = np.eye(4)
    pose[:3, :3] = np.column_stack([right, np.cross(forward, right), forward])
    pose[:3, 3] = position
    return pose


def _intersect(surface: dict, origin: np.ndarray, directions: np.ndarray) -> np.ndarray:
    """Ray parameter of the first hit in front of the camera for every ray, inf where the ray misses."""
    centre = np.asarray(surface["centre"])
    if surface["kind"] == "sphere":
        offset = origin - centre
        a = (directions * directions).sum(-1)
        b = 2 * directions @ offset
        disc = b * b - 4 * a * (offset @ offset - surface["radius"] ** 2)
        near = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        return np.where((disc >= 0) & (near > 0), near, np.inf)
    # Axis-aligned box by the slab method.
    half = np.asarray(surface["half_size"])
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (centre - half - origin) / directions, (centre + half - origin) / directions
    near, far = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
    return np.where((far >= near) & (near > 0), near, np.inf)


def _rounded(values) -> list[float]:
    # Truth is written to JSON and rendered from the same rounded numbers, so the two never disagree.
    return [round(float(x), 3) for x in values]
