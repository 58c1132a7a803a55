"""What a materialize job is asked for, without importing what runs it (torch, Ray, PyAV): `pave materialize --help`
builds its flags from these. Settings say what the tokens are (the fingerprint), Resources how the job runs."""
from dataclasses import dataclass

from .audio import AudioWindows

# How sampled frames become the encoder's size x size RGB input (a fingerprinted setting): "swscale-bicubic" is
# PyAV's swscale (convert and resize in one pass, on the CPU); "torch-bicubic" is pipelines/frames.py (the same
# pixels from PyAV on the CPU and from NVDEC on the GPU).
RESIZES = ("swscale-bicubic", "torch-bicubic")
DECODERS = ("auto", "nvdec", "pyav")
ENCODER_DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Settings:
    """What the tokens are: every field is part of the fingerprint of the versions it produces."""

    frames: int = 32  # video and per exo view
    video_tokens: str = "full"  # main video: "full" patch grid (the model projects, then pools, like HF) | "pooled"
    hfr_fps: float = 2.0
    grid_3d: int = 8  # 3d patches per side
    dtype: str = "float16"  # stored token dtype: float16 | bfloat16 | float32
    encoder_dtype: str = "float32"  # what the encoders compute in: float32 | bfloat16
    resize: str = RESIZES[0]  # frames to the vision encoder's input (RESIZES); GPU decoding needs "torch-bicubic"
    vision_layer: int | None = None  # None: the LLaVA config's vision_feature_layer, else -1
    seed: int = 0  # of the untrained encoders built when no directory is given
    audio: AudioWindows = AudioWindows()


@dataclass(frozen=True)
class Resources:
    """How the job runs; never part of a fingerprint."""

    batch_size: int = 8  # items per encoder call
    rows_per_forward: int = 128  # time steps (frames, windows, views) per encoder forward pass
    concurrency: int | tuple[int, int] = 1  # encoder actors
    # concurrent encoder calls per actor: threads sharing the actor's one encoder and GPU context, so that a GPU's
    # decoding overlaps its encoding without loading the encoder once per actor (the start-up of many actors)
    calls_per_actor: int = 1
    num_gpus: float | None = None  # per encoder actor; None: 1 when the cluster has GPUs, else 0
    encoder_cpus: float = 1.0
    prepare_batch: int = 2  # items per prepare task
    prepare_concurrency: int | None = None  # None: as many tasks as Ray can schedule
    part_items: int = 64  # items per written part
    lease_s: float = 1800.0  # how long a claim keeps other jobs off an item; > the time an item spends in flight
    # main video frames: "nvdec" = decoded by the encoder actors' GPUs (pipelines/nvdec.py; needs resize
    # "torch-bicubic"), "pyav" = by the CPU prepare tasks, "auto" = nvdec when it can run
    decoder: str = "auto"
