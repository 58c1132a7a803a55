"""The torch frame transform (pipelines/frames.py), decode plans and the encoders' compute dtype, on the CPU; NVDEC
itself is tested on a GPU (test_nvdec.py)."""
import json
from functools import partial

import numpy as np
import pytest
import torch

from pipelines.encoders import Encode, vision_encoder, weights_digest
from pipelines.frames import MATRICES, Colour, nv12_to_input
from pipelines.materialize import MODALITIES, Resources, Settings, decode_on_gpus, prepare_video
from pipelines.media import read_frames, uniform_frames
from pipelines import nvdec
from pipelines.nvdec import GpuFrames
from tests.reliability.media_cases import Media

IDS = [f"v{i:04d}" for i in range(8)]
TORCH = "torch-bicubic"
CPU = torch.device("cpu")


def encode_standard(rgb: np.ndarray, matrix: str, full_range: bool) -> np.ndarray:
    """Uniform RGB frames [n, 3] -> NV12 [n, 6, 8] uint8, quantised by the standard's own forward equations."""
    kr, kb = MATRICES[matrix]
    r, g, b = (rgb / 255.0).T
    y = kr * r + (1 - kr - kb) * g + kb * b
    cb, cr = (b - y) / (2 * (1 - kb)), (r - y) / (2 * (1 - kr))
    y8, c8 = (255 * y, 255) if full_range else (16 + 219 * y, 224)
    planes = [np.round(v).clip(0, 255).astype(np.uint8) for v in (y8, 128 + c8 * cb, 128 + c8 * cr)]
    nv12 = np.empty((len(rgb), 6, 8), np.uint8)
    nv12[:, :4] = planes[0][:, None, None]
    nv12[:, 4:, 0::2], nv12[:, 4:, 1::2] = planes[1][:, None, None], planes[2][:, None, None]
    return nv12


@pytest.mark.parametrize("matrix", sorted(MATRICES))
@pytest.mark.parametrize("full_range", [False, True])
def test_nv12_to_rgb_inverts_each_standards_encoding(matrix, full_range):
    rgb = np.random.default_rng(0).integers(0, 256, (200, 3)).astype(np.float64)
    decoded = nv12_to_input(torch.from_numpy(encode_standard(rgb, matrix, full_range)), Colour(matrix, full_range),
                            None).numpy()
    assert decoded.shape == (200, 4, 8, 3) and (decoded == decoded[:, :1, :1]).all()  # uniform frames stay uniform
    error = np.abs(decoded[:, 0, 0].astype(int) - rgb)
    assert error.max() <= 3  # 8-bit quantisation of Y, Cb, Cr (limited range: 219 / 224 levels)
    other = next(m for m in MATRICES if m != matrix)  # the wrong matrix is visibly wrong
    wrong = nv12_to_input(torch.from_numpy(encode_standard(rgb, matrix, full_range)), Colour(other, full_range),
                          None).numpy()
    assert np.abs(wrong[:, 0, 0].astype(int) - rgb).max() > 10


@pytest.mark.parametrize("video_id", IDS)
def test_torch_frames_show_the_scene_as_swscale_does(corpus, video_id):
    """The corpus's background colour (its truth) comes out of either transform, and the two agree."""
    truth = json.loads((corpus / "truth" / f"{video_id}.json").read_text())
    path, pick = str(corpus / truth["video"]["path"]), partial(uniform_frames, n=6)
    torch_frames, times = read_frames(path, pick, 48, resize=TORCH)
    swscale_frames, swscale_times = read_frames(path, pick, 48)
    np.testing.assert_array_equal(times, swscale_times)
    assert torch_frames.shape == swscale_frames.shape == (6, 48, 48, 3)
    background = np.median(torch_frames.reshape(-1, 3), axis=0)
    assert np.abs(background - truth["scene"]["background"]).max() <= 4
    assert np.abs(torch_frames.astype(int) - swscale_frames).mean() < 4


def test_a_turned_video_is_upright_after_the_torch_transform(tmp_path):
    Media(rotation=90).write(tmp_path / "turned.mp4")
    Media().write(tmp_path / "upright.mp4")
    turned, upright = (read_frames(str(tmp_path / name), partial(uniform_frames, n=3), 32, resize=TORCH)[0]
                       .astype(float) for name in ("turned.mp4", "upright.mp4"))
    assert np.abs(turned - upright).mean() < 3  # coding noise
    assert np.abs(np.rot90(turned, 1, axes=(1, 2)) - upright).mean() > 30  # a quarter turn off is far off


@pytest.fixture(scope="module")
def video_encoder():
    build = partial(vision_encoder, None, "full", None, 0)
    return build, weights_digest(build())


def item(corpus, video_id: str) -> dict:
    return {"id": video_id, "video": str(corpus / "videos" / f"{video_id}.mp4"), "video_bytes": None}


def test_a_decode_plan_gives_the_frames_the_cpu_path_reads(corpus, video_encoder, tmp_path):
    """A plan carries the true times from the packets; the actor's decode (here PyAV: no NVDEC on this machine)
    gives exactly the frames a CPU prepare task reads, so the tokens are the same; a file gone since it was planned
    fails its row with the reason, the others go on."""
    build, digest = video_encoder
    settings, inputs = Settings(frames=8, resize=TORCH), build().inputs
    gone = tmp_path / "gone.mp4"
    gone.write_bytes((corpus / "videos" / "v0001.mp4").read_bytes())
    planned = [prepare_video(item(corpus, video_id), settings, inputs, gpu_decode=True) for video_id in IDS[:3]]
    planned.append(prepare_video({"id": "gone", "video": str(gone), "video_bytes": None}, settings, inputs,
                                 gpu_decode=True))
    gone.unlink()
    read = [prepare_video(item(corpus, video_id), settings, inputs) for video_id in IDS[:3]]
    for plan, direct in zip(planned, read):
        assert plan.plan and len(plan.inputs) == 0
        np.testing.assert_array_equal(plan.t_start, direct.t_start)
        np.testing.assert_array_equal(GpuFrames(CPU)(plan.plan).numpy(), direct.inputs)
    for prepared in planned:
        prepared.plan["item"] = f"video of {prepared.plan['source']}"
    rows = planned + read
    batch = {"status": np.array(["todo"] * len(rows)), "reason": np.array([""] * len(rows)),
             "decode_s": np.zeros(len(rows)), "inputs": [p.inputs for p in rows],
             "plan": [json.dumps(p.plan) if p.plan else "" for p in rows]}
    out = Encode(build, digest, "float32", rows_per_forward=16)(batch)
    assert list(out["status"]) == ["todo"] * 3 + ["failed"] + ["todo"] * 3  # write_part turns "todo" into "ok"
    assert out["reason"][3].startswith(f"video of {gone}: ") and "No such file" in out["reason"][3]
    for k in range(3):
        np.testing.assert_array_equal(out["tokens"][k], out["tokens"][4 + k])
    assert out["tokens"][3].shape[0] == 0


def test_video_bytes_are_read_by_the_cpu_task_not_planned(corpus, video_encoder):
    build, _ = video_encoder
    settings, inputs = Settings(frames=4, resize=TORCH), build().inputs
    as_bytes = {"id": "b", "video": "", "video_bytes": (corpus / "videos" / "v0000.mp4").read_bytes()}
    prepared = prepare_video(as_bytes, settings, inputs, gpu_decode=True)
    assert prepared.plan is None and prepared.inputs.shape == (4, *inputs.shape)


def test_forward_passes_that_cross_rows_give_the_same_tokens(corpus, video_encoder):
    build, digest = video_encoder
    frames = [read_frames(str(corpus / "videos" / f"{video_id}.mp4"), partial(uniform_frames, n=n), build().size)[0]
              for video_id, n in (("v0000", 4), ("v0001", 7))]
    batch = lambda: {"status": np.array(["todo"] * 2), "reason": np.array([""] * 2),  # noqa: E731
                     "decode_s": np.zeros(2), "inputs": frames, "plan": ["", ""]}
    whole, pieces = (Encode(build, digest, "float32", rows)(batch())["tokens"] for rows in (64, 3))
    for a, b in zip(whole, pieces):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert [len(t) for t in pieces] == [4, 7]


def test_bfloat16_encoders_are_another_version_with_nearby_tokens(corpus, video_encoder):
    build, digest = video_encoder
    frames, _ = read_frames(str(corpus / "videos" / "v0000.mp4"), partial(uniform_frames, n=4), build().size)
    batch = lambda: {"status": np.array(["todo"]), "reason": np.array([""]), "decode_s": np.zeros(1),  # noqa: E731
                     "inputs": [frames], "plan": [""]}
    tokens = {dtype: Encode(build, digest, "float32", 16, compute_dtype=dtype)(batch())["tokens"][0]
              for dtype in ("float32", "bfloat16")}
    relative = np.linalg.norm(tokens["bfloat16"] - tokens["float32"]) / np.linalg.norm(tokens["float32"])
    assert 0 < relative < 0.03
    video = MODALITIES["video"]
    ids = {video.schema_and_fingerprint(s, build())[1].id
           for s in (Settings(), Settings(encoder_dtype="bfloat16"), Settings(resize=TORCH))}
    assert len(ids) == 3


def test_gpu_decoding_needs_the_torch_transform_and_gpus():
    torch_settings = Settings(resize=TORCH)
    with pytest.raises(ValueError, match="needs resize 'torch-bicubic'"):
        decode_on_gpus(Settings(), Resources(decoder="nvdec"), 1)
    with pytest.raises(ValueError, match="no GPUs"):
        decode_on_gpus(torch_settings, Resources(decoder="nvdec"), 0)
    if nvdec.installed():
        assert decode_on_gpus(torch_settings, Resources(decoder="nvdec"), 0.5)
    else:
        with pytest.raises(ValueError, match=r"needs PyNvVideoCodec \(pip install 'pave-engine\[gpu\]'\)"):
            decode_on_gpus(torch_settings, Resources(decoder="nvdec"), 0.5)
    assert not decode_on_gpus(torch_settings, Resources(decoder="pyav"), 1)
    assert not decode_on_gpus(torch_settings, Resources(decoder="auto"), 0)
