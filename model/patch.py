"""The PAVE patch (arXiv 2503.19794): a small cross-attention adapter that lets a frozen video LLM read a side
channel (audio, high-frame-rate video, 3D, exo views, ...).

For every video frame, its Q pre-projector SigLIP tokens are the queries; the keys/values are the side-channel
tokens of the frame's neighbourhood (below). N decoder layers
(x = CrossAttn(x, side) + x; x = FFN(x) + x) and an output MLP map the result to the LLM width; it is ADDED to the
projected video tokens. The final LayerNorm starts at zero weight and bias, so a fresh patch is exactly a no-op.

Parameter structure follows the reference PAVEModuleV5 (dragonlzm/PAVE): q/k/v Linears with bias and no output
projection, bias-free FFN Linears after a LayerNorm, output dropout before the zero-init LayerNorm, no positional
embedding. The whole batch runs in one SDPA call (the reference loops over B=1). V has its own projection unless
`tie_v_to_k` (the reference computes V with the K projection, leaving its v_linear unused).

Neighbourhoods, two rules (PatchConfig.neighbourhood):
- "time": frame k attends to the side steps whose time spans meet its window [t_k - w, t_k + w]. Timestamps are the
  truth: this holds for variable frame rates, late side streams and any step count.
- "official": the reference's rule, which checkpoints imported from it were trained with. A sample's S steps are split
  by index into one chunk per frame (F frames), sizes differing by at most one, the larger chunks first, and frame k
  attends to chunk k; a sample with fewer steps than frames first has its steps linearly interpolated up to F (the
  reference's trilinear, align_corners up-sampling along time). The two rules agree only when each frame has the
  same number of steps centred on it (one 3D view per frame); for 2 s audio windows or 2 fps video they differ.

Batched neighbourhoods: the side tokens of a batch are packed (no padding) with CSR offsets. For each frame we find
the contiguous range of its sample's steps that holds its neighbourhood (for "time" a single range because steps
are sorted by time, which `SideBatch.pack` guarantees), gather K/V for that range padded to the longest range in the
batch, and mask the keys outside the neighbourhood. Each query block is one frame: batch = B*F, queries = Q tokens.
A frame with no side step gets an exactly-zero output (no evidence -> no change to the LLM input).
"""
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn


@dataclass
class PatchConfig:
    side_dim: int = 1024  # width of the side-channel tokens (ImageBind audio, LanguageBind, LLaVA-3D: 1024)
    query_dim: int = 1152  # width of the pre-projector SigLIP tokens used as queries
    llm_dim: int = 3584  # LLM hidden size: 896 for Qwen2-0.5B, 3584 for Qwen2-7B
    d_model: int = 512
    num_heads: int = 4
    num_layers: int = 2  # the reference uses 3 for Music-AVQA
    ffn_dim: int = 1024
    out_hidden: int = 1024
    dropout: float = 0.0  # on the output MLP, before the zero-init LayerNorm; every shipped official PAVE config
    # trains with use_dropout=False (dragonlzm/PAVE scripts/*_train.sh), though its module's default is 0.1
    window: float | None = None  # "time" rule: half-width w in seconds; None: half the median frame spacing
    neighbourhood: str = "time"  # one of NEIGHBOURHOODS (module docstring)
    tie_v_to_k: bool = False  # values from the key projection (the reference's forward); no v projection

    def __post_init__(self):
        if self.neighbourhood not in NEIGHBOURHOODS:
            raise ValueError(f"patch neighbourhood {self.neighbourhood!r}: expected one of {', '.join(NEIGHBOURHOODS)}")


NEIGHBOURHOODS = ("time", "official")


PRESETS = {"0.5b": PatchConfig(llm_dim=896), "7b": PatchConfig(llm_dim=3584)}


@dataclass
class VideoBatch:
    """Queries for a batch: stored pre-projector SigLIP tokens of the sampled frames and their times."""

    features: torch.Tensor  # [B, F, Q, query_dim]
    times: torch.Tensor  # [B, F] seconds
    mask: torch.Tensor | None = None  # [B, F] bool, valid frames first; None: all valid

    def to(self, device) -> "VideoBatch":
        return VideoBatch(self.features.to(device), self.times.to(device), None if self.mask is None else self.mask.to(device))


@dataclass
class SideBatch:
    """One side channel for a batch, packed without padding: sample b owns steps offsets[b]:offsets[b+1]."""

    tokens: torch.Tensor  # [S, tokens_per_step, side_dim]
    t_start: torch.Tensor  # [S] seconds
    t_end: torch.Tensor  # [S] seconds (== t_start for point-in-time steps such as 3D views)
    offsets: torch.Tensor  # [B+1] int64

    @classmethod
    def pack(cls, samples: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> "SideBatch":
        """Pack per-sample (tokens [S_b, T, D], t_start [S_b], t_end [S_b]), each sorted by time so that every
        frame's neighbourhood is one short contiguous range."""
        orders = [torch.sort(t0, stable=True).indices for _, t0, _ in samples]
        lengths = torch.tensor([len(t0) for _, t0, _ in samples])
        return cls(
            tokens=torch.cat([tok[o] for (tok, _, _), o in zip(samples, orders)]),
            t_start=torch.cat([t0[o] for (_, t0, _), o in zip(samples, orders)]),
            t_end=torch.cat([t1[o] for (_, _, t1), o in zip(samples, orders)]),
            offsets=F.pad(lengths.cumsum(0), (1, 0)),
        )

    def to(self, device) -> "SideBatch":
        return SideBatch(*(getattr(self, f).to(device) for f in ("tokens", "t_start", "t_end", "offsets")))

    def upsampled(self, counts: torch.Tensor) -> "SideBatch":
        """Each sample with fewer steps than counts[b] (and at least one) linearly interpolated to counts[b] steps,
        the first and last kept (align_corners), tokens and times alike; the other samples as they are."""
        lengths = self.offsets.diff()
        if not ((lengths > 0) & (lengths < counts)).any():
            return self
        new_lengths = torch.where((lengths > 0) & (lengths < counts), counts, lengths)
        sample = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), new_lengths)
        offsets = F.pad(new_lengths.cumsum(0), (1, 0))
        j = torch.arange(len(sample), device=lengths.device) - offsets[sample]  # position within its sample
        # the source position of each new step: j * (S - 1) / (n - 1); identity for samples kept as they are
        source = j.double() * (lengths[sample] - 1) / (new_lengths[sample] - 1).clamp(min=1)
        low = source.floor().long()
        frac = source - low
        low_at, high_at = self.offsets[sample] + low, self.offsets[sample] + (low + 1).clamp(max=lengths[sample] - 1)

        def lerp(values):
            weight = frac.to(values.dtype).view(-1, *[1] * (values.dim() - 1))
            return values[low_at] * (1 - weight) + values[high_at] * weight

        return SideBatch(lerp(self.tokens), lerp(self.t_start), lerp(self.t_end), offsets)


def neighbourhoods(video: VideoBatch, side: SideBatch, config: "PatchConfig"):
    """For each frame (flattened to B*F): indices [B*F, L] of its gathered side steps, a key mask [B*F, L] that keeps
    exactly its neighbourhood's steps (module docstring), and whether the frame has any step [B*F]."""
    valid = torch.ones_like(video.times, dtype=torch.bool) if video.mask is None else video.mask.bool()
    if config.neighbourhood == "official":
        first, length = index_chunks(valid, side.offsets)
        hit = None
    else:
        first, length, hit = time_windows(video.times.float(), valid, side, config.window)
    L = max(int(length.max()), 1)  # one host sync: SDPA needs a static key length
    steps = torch.arange(L, device=first.device)
    idx = (first[..., None] + steps).clamp(max=max(side.tokens.shape[0] - 1, 0))  # [B, F, L]
    key_mask = steps < length[..., None]
    if hit is not None:
        key_mask &= hit.gather(-1, idx)
    has_keys = length > 0
    key_mask[..., 0] |= ~has_keys  # keep SDPA finite for empty windows; those outputs are zeroed afterwards
    return idx.flatten(0, 1), key_mask.flatten(0, 1), has_keys.flatten()


def index_chunks(valid: torch.Tensor, offsets: torch.Tensor):
    """The "official" rule: (first step [B, F], steps [B, F]) of each frame's chunk when each sample's steps are split
    by index into one chunk per valid frame, the larger chunks first."""
    frames = valid.sum(1, keepdim=True)  # valid frames come first
    steps = offsets.diff()[:, None]
    size, larger = steps // frames.clamp(min=1), steps % frames.clamp(min=1)
    k = torch.arange(valid.shape[1], device=valid.device)[None]
    first = offsets[:-1, None] + k * size + torch.minimum(k, larger)
    return first, torch.where(valid, size + (k < larger).long(), 0)


def time_windows(times: torch.Tensor, valid: torch.Tensor, side: SideBatch, window: float | None):
    """The "time" rule: (first step [B, F], length of the range [B, F], hit [B, F, S]: whether each step overlaps the
    frame's window [t - w, t + w]) of each frame's smallest range holding every overlapping step."""
    B, n_frames = times.shape
    S = side.tokens.shape[0]
    device = times.device
    if window is not None:
        w = torch.full((B, 1), float(window), device=device)
    elif n_frames > 1:
        gaps = times.diff(dim=1).masked_fill(~(valid[:, 1:] & valid[:, :-1]), math.nan)
        w = 0.5 * gaps.nanmedian(dim=1, keepdim=True).values.nan_to_num(nan=math.inf)  # one frame: whole channel
    else:
        w = torch.full((B, 1), math.inf, device=device)

    sample_of_step = torch.repeat_interleave(torch.arange(B, device=device), side.offsets.diff(), output_size=S)
    hit = (
        (side.t_start.float() <= (times + w)[..., None])
        & (side.t_end.float() >= (times - w)[..., None])
        & (sample_of_step == torch.arange(B, device=device)[:, None, None])
        & valid[..., None]
    )  # [B, F, S]
    pos = torch.arange(S, device=device)
    first = torch.where(hit, pos, S).amin(-1)
    length = (torch.where(hit, pos + 1, 0).amax(-1) - first).clamp(min=0)
    return first, length, hit


class CrossAttention(nn.Module):
    def __init__(self, cfg: PatchConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.k = nn.Linear(cfg.d_model, cfg.d_model)
        self.v = None if cfg.tie_v_to_k else nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x, memory, idx, key_mask):
        # x [N, Q, d] (N = B*F frames); memory [S, T, d] packed side tokens; idx/key_mask [N, L]
        N, Q, d = x.shape
        T, H = memory.shape[1], self.num_heads
        # project the packed tokens once, then gather each frame's range (frames share steps at window edges)
        keys = self.k(memory)
        k = keys[idx].view(N, -1, H, d // H).transpose(1, 2)  # [N, H, L*T, hd]
        values = keys if self.v is None else self.v(memory)
        v = values[idx].view(N, -1, H, d // H).transpose(1, 2)
        q = self.q(x).view(N, Q, H, d // H).transpose(1, 2)
        mask = key_mask.repeat_interleave(T, dim=1)[:, None, None, :]  # all T tokens of a step share its fate
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(N, Q, d)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: PatchConfig):
        super().__init__()
        self.attn = CrossAttention(cfg)
        self.ffn = nn.Sequential(
            nn.LayerNorm(cfg.d_model),
            nn.Linear(cfg.d_model, cfg.ffn_dim, bias=False),
            nn.GELU(),
            nn.Linear(cfg.ffn_dim, cfg.d_model, bias=False),
        )

    def forward(self, x, memory, idx, key_mask):
        x = self.attn(x, memory, idx, key_mask) + x
        return self.ffn(x) + x


class PavePatch(nn.Module):
    def __init__(self, config: PatchConfig):
        super().__init__()
        self.config = config
        self.side_in = nn.Linear(config.side_dim, config.d_model)
        self.query_in = nn.Linear(config.query_dim, config.d_model)
        self.layers = nn.ModuleList(DecoderLayer(config) for _ in range(config.num_layers))
        self.out = nn.Sequential(
            nn.Linear(config.d_model, config.out_hidden),
            nn.GELU(),
            nn.Linear(config.out_hidden, config.llm_dim),
            nn.Dropout(config.dropout),
            nn.LayerNorm(config.llm_dim),
        )
        for m in self.modules():  # zero biases, as the reference
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.out[-1].weight)  # zero-init output norm: the patch starts as an exact no-op
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, video: VideoBatch, side: SideBatch) -> torch.Tensor:
        """Returns the additive update for the projected video tokens, [B, F, Q, llm_dim], in the patch dtype."""
        B, n_frames, Q, _ = video.features.shape
        dtype = self.query_in.weight.dtype
        if side.tokens.shape[0] == 0:  # no sample of the batch has this side channel
            return video.features.new_zeros(B, n_frames, Q, self.config.llm_dim, dtype=dtype)
        if self.config.neighbourhood == "official":
            frames = torch.full((B,), n_frames) if video.mask is None else video.mask.sum(1)
            side = side.upsampled(frames.to(side.offsets.device))
        idx, key_mask, has_keys = neighbourhoods(video, side, self.config)
        x = self.query_in(video.features.to(dtype)).flatten(0, 1)  # [B*F, Q, d]
        memory = self.side_in(side.tokens.to(dtype))  # [S, T, d]
        for layer in self.layers:
            x = layer(x, memory, idx, key_mask)
        out = torch.where(has_keys[:, None, None], self.out(x), 0.0)
        return out.view(B, n_frames, Q, -1)

    def save_pretrained(self, directory) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps(asdict(self.config), indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "model.safetensors")

    @classmethod
    def from_pretrained(cls, directory, device=None, dtype=None) -> "PavePatch":
        directory = Path(directory)
        patch = cls(PatchConfig(**json.loads((directory / "config.json").read_text())))
        patch.load_state_dict(load_file(directory / "model.safetensors"))
        return patch.to(device=device, dtype=dtype)
