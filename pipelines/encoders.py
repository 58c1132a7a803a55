"""Encoders: torch modules from prepared inputs to tokens [B, tokens_per_step, dim] float32, and `Encode`, the Ray
Data callable class that runs one of them per actor.

Each encoder comes from a local HF directory (`from_pretrained(DIR)`) or, without one, is a tiny model of the same
class initialised from a fixed seed; its `name` then says "untrained". Its identity in a fingerprint is the sha256
of its state dict, so the same weights give the same fingerprint wherever they were loaded from.

3D: LLaVA-3D publishes no feature extraction code, so the 3D encoder is ours: Fourier features of each patch's
mean world xyz, concatenated with its mean rgb and depth coverage, through a 2-layer MLP initialised from a seed
and never trained (`PointTokens`). It carries geometry and colour into a token a PAVE patch can learn to read;
swap in a trained point encoder by giving it the same interface."""
import ctypes
import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import (ASTConfig, ASTModel, AutoModel, LlavaOnevisionForConditionalGeneration, SiglipVisionConfig,
                          SiglipVisionModel)

from .media import ItemError
from .nvdec import GpuFrames

# Tiny default configs: a few ms per batch on one CPU core, shapes exercised like the real ones.
TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=64,
                   patch_size=8)
TINY_AUDIO = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
SIGLIP_MEAN_STD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])  # SiglipImageProcessor defaults


@dataclass(frozen=True)
class InputSpec:
    """What an encoder consumes per time step; all that the CPU prepare tasks need to know of it."""

    shape: tuple[int, ...]
    dtype: str
    size: int | None = None  # frame side in pixels, for vision encoders

    def empty(self):
        return np.zeros((0, *self.shape), self.dtype)


def weights_digest(module: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


_SEEDED = threading.Lock()


def seeded(build, seed: int):
    """`build()` under a fixed torch seed, without touching the caller's RNG state. Initialisers draw from the
    process-wide RNG, so two threads building at once would interleave their draws: one at a time."""
    with _SEEDED, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


class VisionTokens(nn.Module):
    """uint8 RGB frames [B, S, S, 3] -> patch features of one hidden layer of a vision tower, before any projector,
    on the patch grid: "full" = every patch (27x27 = 729 at 384 px: what LLaVA-OneVision's projector reads; the
    model pools after projecting, as HF does), "half" = bilinear to ceil(g/2) per side (LLaVA-OneVision's 2x2
    pooling, 27x27 -> 14x14, done here before any projector), "2x2" = average to a 2x2 grid (4 tokens per frame,
    PAVE's high-frame-rate tokens)."""

    def __init__(self, tower: nn.Module, name: str, layer: int, select: str, pool: str, mean, std):
        super().__init__()
        self.tower, self.name, self.layer, self.select, self.pool = tower, name, layer, select, pool
        config = tower.config
        self.size, self.grid = config.image_size, config.image_size // config.patch_size
        self.out_grid = {"full": self.grid, "half": math.ceil(self.grid / 2), "2x2": 2}[pool]
        self.tokens_per_step, self.dim = self.out_grid**2, config.hidden_size
        self.inputs = InputSpec((self.size, self.size, 3), "uint8", self.size)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def compute_in(self, dtype: torch.dtype) -> None:
        """Run the tower in `dtype` (bfloat16: as a bf16 LLaVA-OneVision runs it); inputs are normalised in float32."""
        self.tower.to(dtype)

    def params(self) -> dict:
        return {"size": self.size, "mean": self.mean.flatten().tolist(),
                "std": self.std.flatten().tolist(), "layer": self.layer, "select": self.select, "pool": self.pool,
                "grid": [self.out_grid, self.out_grid]}

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        pixels = ((frames.permute(0, 3, 1, 2).float() / 255.0 - self.mean) / self.std).to(self.tower.dtype)
        hidden = self.tower(pixel_values=pixels, output_hidden_states=True).hidden_states[self.layer]
        if self.select == "default":  # LLaVA's "default" drops the first (CLS) token
            hidden = hidden[:, 1:]
        if self.pool == "full":
            return hidden
        b, _, d = hidden.shape
        grid = hidden.transpose(1, 2).reshape(b, d, self.grid, self.grid)
        if self.pool == "half":
            pooled = nn.functional.interpolate(grid, size=(self.out_grid, self.out_grid), mode="bilinear")
        else:
            pooled = nn.functional.adaptive_avg_pool2d(grid, 2)
        return pooled.flatten(2).transpose(1, 2)


class AudioTokens(nn.Module):
    """Normalised fbank windows [B, T, F] -> one token per window: the model's pooled output (AST: the mean of
    its CLS and distillation tokens)."""

    def __init__(self, model: nn.Module, name: str):
        super().__init__()
        self.model, self.name = model, name
        self.tokens_per_step, self.dim = 1, model.config.hidden_size
        self.inputs = InputSpec((model.config.max_length, model.config.num_mel_bins), "float32")

    def compute_in(self, dtype: torch.dtype) -> None:
        self.model.to(dtype)

    def params(self) -> dict:
        return {}

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.model(input_values=fbank.to(self.model.dtype)).pooler_output[:, None]


class PointTokens(nn.Module):
    """Patch summaries [B, P, 7] = (xyz, rgb, coverage) -> tokens [B, P, dim]: Fourier features of xyz (zeroed
    where the patch has no depth) + rgb + coverage -> Linear -> GELU -> Linear. Untrained (see module doc)."""

    def __init__(self, grid: int, dim: int = 32, num_freqs: int = 6, seed: int = 0):
        super().__init__()
        self.name, self.num_freqs = f"PointTokens(untrained, seed={seed})", num_freqs
        self.tokens_per_step, self.dim = grid * grid, dim
        self.inputs = InputSpec((grid * grid, 7), "float32")
        self.register_buffer("freqs", 2.0 ** torch.arange(num_freqs) * math.pi, persistent=False)
        self.mlp = seeded(lambda: nn.Sequential(nn.Linear(6 * num_freqs + 4, dim), nn.GELU(), nn.Linear(dim, dim)),
                          seed)

    def compute_in(self, dtype: torch.dtype) -> None:
        self.mlp.to(dtype)  # the Fourier features stay float32

    def params(self) -> dict:
        return {"num_freqs": self.num_freqs}

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        xyz, rest = patches[..., :3], patches[..., 3:]
        angles = (xyz[..., None] * self.freqs).flatten(-2)
        fourier = torch.cat([angles.sin(), angles.cos()], -1) * (rest[..., 3:] > 0)
        return self.mlp(torch.cat([fourier, rest], -1).to(self.mlp[0].weight.dtype))


def _config(path: str) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


def vision_encoder(path: str | None, pool: str, layer: int | None = None, seed: int = 0) -> VisionTokens:
    """The vision tower of `path`: a LlavaOnevisionForConditionalGeneration dir (its `.model.vision_tower`, and
    its config's vision_feature_layer / select strategy, so that tokens match what the LLM was built with) or a
    vision model dir (AutoModel, e.g. SiglipVisionModel; layer -1 unless given). None: tiny untrained SigLIP."""
    mean, std = SIGLIP_MEAN_STD
    if path is None:
        tower = seeded(lambda: SiglipVisionModel(SiglipVisionConfig(**TINY_VISION)), seed)
        name, select, default_layer = f"SiglipVisionModel(untrained, seed={seed})", "full", -1
    elif _config(path).get("model_type") == "llava_onevision":
        llava = LlavaOnevisionForConditionalGeneration.from_pretrained(path, dtype=torch.float32)
        tower, config = llava.model.vision_tower, llava.config
        name = f"LlavaOnevisionForConditionalGeneration.vision_tower({type(tower).__name__})"
        select, default_layer = config.vision_feature_select_strategy, config.vision_feature_layer
        del llava  # keep only the tower alive in the actor
    else:
        tower = AutoModel.from_pretrained(path, dtype=torch.float32)
        name, select, default_layer = type(tower).__name__, "full", -1
    processor = Path(path or "") / "preprocessor_config.json"
    if path is not None and processor.exists():
        stats = json.loads(processor.read_text())
        mean, std = stats.get("image_mean", mean), stats.get("image_std", std)
    layer = default_layer if layer is None else layer
    if not isinstance(layer, int):
        raise ValueError(f"{path}: vision feature layer {layer!r}: only a single layer is supported")
    return VisionTokens(tower.eval(), name, layer, select, pool, mean, std)


def audio_encoder(path: str | None, windows, seed: int = 0) -> AudioTokens:
    """An audio transformer taking input_values [B, time, mel bins] (ASTModel and alike) from `path`; None: a tiny
    untrained ASTModel sized for `windows` (an AudioWindows)."""
    if path is None:
        config = ASTConfig(**TINY_AUDIO, num_mel_bins=windows.num_mel_bins, max_length=windows.target_length)
        return AudioTokens(seeded(lambda: ASTModel(config), seed).eval(), f"ASTModel(untrained, seed={seed})")
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    config = model.config
    if (getattr(config, "num_mel_bins", None), getattr(config, "max_length", None)) != (
        windows.num_mel_bins, windows.target_length
    ):
        raise ValueError(
            f"{path}: audio encoder expects {getattr(config, 'num_mel_bins', '?')} mel bins x "
            f"{getattr(config, 'max_length', '?')} frames, the windows are {windows.num_mel_bins} x "
            f"{windows.target_length}"
        )
    return AudioTokens(model, type(model).__name__)


def point_encoder(path: str | None, grid: int, seed: int = 0) -> PointTokens:
    if path is not None:
        raise ValueError(f"3d: no pretrained point encoder can be loaded ({path}); the 3D encoder is built in")
    return PointTokens(grid, seed=seed)


def sleep_while_waiting_for_the_gpu(index: int = 0) -> None:
    """Make this process's waits for GPU work sleep instead of spin (CU_CTX_SCHED_BLOCKING_SYNC on the device's
    primary context, before torch creates it): encoder actors that share a GPU wait most of the time, and a spinning
    wait burns a CPU core that decoding needs. A driver that refuses leaves CUDA's default."""
    cuda = ctypes.CDLL("libcuda.so.1")
    device = ctypes.c_int()
    if cuda.cuInit(0) == 0 and cuda.cuDeviceGet(ctypes.byref(device), index) == 0:
        cuda.cuDevicePrimaryCtxSetFlags_v2(device, 4)  # 4: CU_CTX_SCHED_BLOCKING_SYNC


class Encode:
    """Ray Data callable class: each actor builds its encoder with `build()` (from_pretrained, or the seeded tiny
    model), checks that its weights are the ones the fingerprint names, and runs it in `compute_dtype` on its GPU
    when Ray gave it one. Rows whose status is "todo" carry `inputs` [n_i, ...] or a decode `plan`; the steps of
    all of them are encoded together, in forward passes of at most `rows_per_forward` steps, and split back per row
    as `tokens` [n_i, tokens_per_step, dim] in the store's dtype (bfloat16 as its uint16 bit patterns: numpy has no
    bfloat16). Other rows get empty tokens."""

    def __init__(self, build, digest: str, dtype: str, rows_per_forward: int, compute_dtype: str = "float32"):
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if self.device.type == "cuda":
            sleep_while_waiting_for_the_gpu()
        encoder = build()
        if weights_digest(encoder) != digest:  # e.g. another node holds other files under the same path
            raise RuntimeError(f"{encoder.name}: the weights on this worker are not the ones fingerprinted")
        encoder.compute_in(getattr(torch, compute_dtype))
        self.encoder = encoder.to(self.device).eval()
        self.dtype, self.rows_per_forward = getattr(torch, dtype), rows_per_forward
        stored = "uint16" if dtype == "bfloat16" else dtype
        self.empty = np.zeros((0, encoder.tokens_per_step, encoder.dim), stored)
        self.gpu_frames = GpuFrames(self.device)

    def __call__(self, batch: dict) -> dict:
        """Rows with a decode `plan` (JSON; pipelines/nvdec.py) get their inputs decoded here; one that cannot be
        decoded fails with the reason."""
        inputs, plans = batch.pop("inputs"), batch.pop("plan")
        status, reason, decode_s = list(batch["status"]), list(batch["reason"]), list(batch["decode_s"])
        steps = {}
        for i in (i for i, s in enumerate(status) if s == "todo"):
            if not plans[i]:
                steps[i] = torch.from_numpy(inputs[i])
                continue
            started, plan = time.perf_counter(), json.loads(plans[i])
            try:
                steps[i] = self.gpu_frames(plan)
            except ItemError as e:
                status[i], reason[i] = "failed", f"{plan['item']}: {e}"
            decode_s[i] += time.perf_counter() - started
        started = time.perf_counter()
        tokens = self.encode(list(steps.values())) if steps else self.empty
        per_step_s = (time.perf_counter() - started) / max(len(tokens), 1)  # each row's share of the forwards
        pieces = dict(zip(steps, np.split(tokens, np.cumsum([len(s) for s in steps.values()])[:-1])))
        batch["tokens"] = [pieces.get(i, self.empty) for i in range(len(status))]
        batch["encode_s"] = np.array([per_step_s * len(t) for t in batch["tokens"]])
        batch["status"], batch["reason"], batch["decode_s"] = np.array(status), np.array(reason), np.array(decode_s)
        return batch

    @torch.inference_mode()
    def encode(self, steps: list[torch.Tensor]) -> np.ndarray:
        """Tokens of the rows' steps in order, in forward passes of at most rows_per_forward steps; each pass's steps
        go to the device on their own, so a batch's inputs never sit on it whole (hfr of long videos)."""
        bounds = np.cumsum([0] + [len(s) for s in steps]).tolist()
        out = []
        for start in range(0, bounds[-1], self.rows_per_forward):
            stop = min(start + self.rows_per_forward, bounds[-1])
            chunk = [s[max(start - first, 0) : stop - first].to(self.device)
                     for s, first, end in zip(steps, bounds, bounds[1:]) if first < stop and end > start]
            out.append(self.encoder(torch.cat(chunk)).to(self.dtype).cpu())
        tokens = torch.cat(out)
        return (tokens.view(torch.uint16) if self.dtype == torch.bfloat16 else tokens).numpy()
