"""Back-project the corpus fixture's RGB-D views and recover the known 3D scene."""
import numpy as np
import pytest

from pipelines.corpus import load_manifest, load_truth

IDS = [f"v{i:04d}" for i in range(8)]


def world_points(rgbd, view: int) -> tuple[np.ndarray, np.ndarray]:
    """World points and colours of the pixels of one view that hit something."""
    depth, pose = rgbd["depth"][view].astype(np.float64), rgbd["poses"][view].astype(np.float64)
    v, u = np.nonzero(depth > 0)
    rays = np.stack([u, v, np.ones_like(u)], axis=-1) @ np.linalg.inv(rgbd["intrinsics"].astype(np.float64)).T
    camera = rays * depth[v, u, None]
    return camera @ pose[:3, :3].T + pose[:3, 3], rgbd["color"][view][v, u]


@pytest.fixture(scope="module", params=IDS)
def take(request, corpus):
    truth = load_truth(corpus, request.param)
    row = next(r for r in load_manifest(corpus) if r["id"] == request.param)
    assert row["rgbd"] == truth["rgbd"]["path"]
    with np.load(corpus / row["rgbd"]) as npz:
        rgbd = dict(npz)
    points, colours = zip(*(world_points(rgbd, k) for k in range(len(rgbd["poses"]))))
    return truth, rgbd, np.concatenate(points), np.concatenate(colours)


def test_arrays_have_the_documented_layout(take):
    truth, rgbd, _, _ = take
    scene = truth["rgbd"]
    n, h, w = scene["n_views"], scene["height"], scene["width"]
    expected = {"color": ((n, h, w, 3), np.uint8), "depth": ((n, h, w), np.float32), "intrinsics": ((3, 3), np.float32),
                "poses": ((n, 4, 4), np.float32), "times": ((n,), np.float64)}
    assert {k: (v.shape, v.dtype) for k, v in rgbd.items()} == expected
    np.testing.assert_allclose(rgbd["intrinsics"], scene["intrinsics"])
    np.testing.assert_array_equal(rgbd["times"], scene["times"])
    video = truth["video"]
    assert np.all(np.diff(rgbd["times"]) > 0)
    assert video["start_time"] <= rgbd["times"][0] and rgbd["times"][-1] <= video["start_time"] + video["duration"]
    # Black exactly where nothing is hit (some rays pass over the edge of the ground).
    assert 0 < (rgbd["depth"] == 0).sum() < rgbd["depth"].size / 2
    np.testing.assert_array_equal(rgbd["depth"] == 0, (rgbd["color"] == 0).all(-1))


def test_poses_are_rigid_cameras_looking_at_the_scene(take):
    truth, rgbd, _, _ = take
    cameras = truth["rgbd"]["cameras"]
    for pose, position in zip(rgbd["poses"].astype(np.float64), cameras["positions"]):
        rotation = pose[:3, :3]
        np.testing.assert_allclose(rotation @ rotation.T, np.eye(3), atol=1e-6)
        assert np.linalg.det(rotation) == pytest.approx(1, abs=1e-6)
        np.testing.assert_allclose(pose[:3, 3], position, atol=1e-6)
        np.testing.assert_allclose(pose[3], [0, 0, 0, 1])
        to_target = np.asarray(cameras["look_at"]) - position
        np.testing.assert_allclose(rotation[:, 2], to_target / np.linalg.norm(to_target), atol=1e-6)  # z forward
        assert rotation[2, 1] < 0  # image y (down) points down in the z-up world


def test_back_projection_recovers_the_objects(take):
    truth, _, points, colours = take
    for obj in truth["rgbd"]["objects"]:
        mine = points[(colours == obj["rgb"]).all(-1)]
        assert len(mine) > 50, obj
        centre = np.asarray(obj["centre"])
        if obj["kind"] == "sphere":
            # Algebraic least-squares sphere fit: |p|^2 = 2 c.p + (r^2 - |c|^2).
            a = np.column_stack([2 * mine, np.ones(len(mine))])
            solution, *_ = np.linalg.lstsq(a, (mine**2).sum(-1), rcond=None)
            fitted_radius = np.sqrt(solution[3] + solution[:3] @ solution[:3])
            np.testing.assert_allclose(solution[:3], centre, atol=1e-3)
            assert fitted_radius == pytest.approx(obj["radius"], abs=1e-3)
        else:
            # Every point lies inside the box and the extremes reach its faces (the top and all four sides are seen).
            half = np.asarray(obj["half_size"])
            assert np.all(np.abs(mine - centre) <= half + 1e-4)
            np.testing.assert_allclose(mine.max(0), centre + half, atol=1e-4)
            np.testing.assert_allclose(mine.min(0)[:2], (centre - half)[:2], atol=1e-4)


def test_ground_points_lie_on_the_ground_plane(take):
    truth, _, points, colours = take
    ground = truth["rgbd"]["ground"]
    on_ground = points[(colours == ground["rgb"]).all(-1)]
    assert len(on_ground) > 1000
    np.testing.assert_allclose(on_ground[:, 2], 0, atol=1e-4)
    assert np.all(np.abs(on_ground[:, :2]) <= np.asarray(ground["half_size"][:2]) + 1e-4)
