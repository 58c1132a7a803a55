"""NVDEC (pipelines/nvdec.py) against PyAV, on a GPU: the same frames, bit for bit in NV12, at the same true times,
and through the job the same times and near-equal tokens. Skipped without a GPU and PyNvVideoCodec (run on the
device: benchmarks/gpu_tests.sh)."""
from functools import partial

import av
import numpy as np
import pytest
import torch

from pipelines import nvdec
from pipelines.media import gpu_decode_plan, read_frames, uniform_frames

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and nvdec.installed()),
                                reason="needs a GPU and PyNvVideoCodec")
IDS = [f"v{i:04d}" for i in range(8)]  # CFR at 4 rates, a VFR take, a take starting at 1 s (edit list)
GPU = torch.device("cuda", 0)


def pyav_nv12(path) -> list[np.ndarray]:
    """Every frame as NV12, in presentation order, decoded the plain way."""
    with av.open(str(path)) as container:
        frames = sorted(container.decode(video=0), key=lambda frame: frame.pts)
        return [frame.to_ndarray(format="nv12") for frame in frames]


@pytest.mark.parametrize("video_id", IDS)
def test_nvdec_decodes_the_frames_pyav_decodes(corpus, video_id):
    path = str(corpus / "videos" / f"{video_id}.mp4")
    pick = partial(uniform_frames, n=16)
    plan, times = gpu_decode_plan(path, pick, 64)
    assert plan is not None
    nv12 = nvdec.nvdec_nv12(path, plan["positions"], plan["frames"], GPU).cpu().numpy()
    reference = pyav_nv12(path)
    assert len(reference) == plan["frames"]
    for k, position in enumerate(plan["positions"]):
        np.testing.assert_array_equal(nv12[k], reference[position])
    # the encoder input: the GPU's transform of NVDEC's frames vs the CPU's of PyAV's, at the same times
    on_gpu = nvdec.GpuFrames(GPU)(plan).cpu().numpy().astype(int)
    on_cpu, cpu_times = read_frames(path, pick, 64, resize="torch-bicubic")
    np.testing.assert_array_equal(times, cpu_times)
    assert np.abs(on_gpu - on_cpu).max() <= 1


def test_the_job_stores_the_same_times_and_tokens_either_way(corpus, ray_local, tmp_path):
    from featurestore import FeatureStore
    from pipelines.materialize import Resources, Settings, materialize
    from pipelines.sources import read_items

    settings = Settings(resize="torch-bicubic", frames=8)
    stores = {}
    for decoder in ("nvdec", "pyav"):
        stores[decoder] = str(tmp_path / decoder)
        summary = materialize(read_items(str(corpus / "manifest.jsonl")), stores[decoder], ["video"],
                              settings=settings, resources=Resources(decoder=decoder, num_gpus=0.5, concurrency=2))
        assert summary.counts["video"] == {"ok": len(IDS), "failed": 0, "skipped": 0}, summary.failures
    nvdec_version, pyav_version = (FeatureStore(stores[d]).version("video") for d in ("nvdec", "pyav"))
    assert nvdec_version.fingerprint.id == pyav_version.fingerprint.id  # the decoder is not part of what tokens are
    for video_id in IDS:
        a, b = nvdec_version.get(video_id), pyav_version.get(video_id)
        np.testing.assert_array_equal(a.t_start, b.t_start)
        tokens_a, tokens_b = (np.asarray(x.tokens, np.float32) for x in (a, b))
        assert np.abs(tokens_a - tokens_b).max() <= 0.02 * np.abs(tokens_b).max()
