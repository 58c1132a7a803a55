"""The "torch-bicubic" frame transform: decoded frames -> the vision encoder's uint8 RGB input [n, S, S, 3], in torch,
on whatever device holds the frames (the CPU after a PyAV decode, the GPU after an NVDEC decode), so that both
decoders give the same pixels, and GPU-decoded frames never leave the GPU.

YUV 4:2:0 frames come as NV12 ([n, 3H/2, W] uint8: the luma plane, then the chroma planes interleaved at half
size), exactly as NVDEC returns them and as PyAV lays them out (`to_ndarray(format="nv12")`; the two are bit-equal
for H.264, tests/pipelines/test_nvdec.py). The luma plane and the chroma planes are each resized to S x S (bicubic
with antialiasing, as PIL resizes for SigLIP's image processor; chroma taken as centre-sited), then converted to
RGB with the stream's colour matrix (BT.601, BT.709 or BT.2020) and range (limited or full), rounded, clamped, and
turned upright by quarter turns. Resizing before converting is exact up to the clamp: the conversion is affine and
the resize weights sum to one. Other frames (RGB images, 4:4:4 or 10-bit video) come as RGB and are resized alike."""
from dataclasses import dataclass

import torch
from torch.nn import functional as F

# (Kr, Kb) of each colour matrix; Kg = 1 - Kr - Kb
MATRICES = {"bt601": (0.299, 0.114), "bt709": (0.2126, 0.0722), "bt2020": (0.2627, 0.0593)}
# FFmpeg's AVColorSpace values -> matrix; unspecified is read as BT.601, as swscale does
COLORSPACES = {1: "bt709", 2: "bt601", 5: "bt601", 6: "bt601", 9: "bt2020"}


@dataclass(frozen=True)
class Colour:
    matrix: str = "bt601"
    full_range: bool = False


def resize(planes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """float [n, c, h, w] -> [n, c, *size], bicubic with antialiasing (a no-op at the same size)."""
    if tuple(planes.shape[-2:]) == size:
        return planes
    return F.interpolate(planes, size=size, mode="bicubic", antialias=True, align_corners=False)


def to_uint8(rgb: torch.Tensor, turns: int) -> torch.Tensor:
    """float RGB [n, 3, h, w] in 0..255 -> uint8 [n, h, w, 3], turned counter-clockwise by `turns` quarter turns."""
    image = rgb.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
    return torch.rot90(image, turns, dims=(1, 2)).contiguous() if turns % 4 else image.contiguous()


def nv12_to_input(nv12: torch.Tensor, colour: Colour, size: int | None, turns: int = 0) -> torch.Tensor:
    """NV12 frames [n, 3H/2, W] uint8 -> RGB [n, S, S, 3] uint8 (S = size; None: the frame's own H x W)."""
    n, rows, width = nv12.shape
    height = rows * 2 // 3
    target = (size, size) if size else (height, width)
    luma = nv12[:, :height].unsqueeze(1).float()
    chroma = nv12[:, height:].reshape(n, height // 2, width // 2, 2).permute(0, 3, 1, 2).float()
    luma, chroma = resize(luma, target), resize(chroma, target)
    kr, kb = MATRICES[colour.matrix]
    kg = 1.0 - kr - kb
    if colour.full_range:
        y, cb, cr = luma, chroma[:, :1] - 128.0, chroma[:, 1:] - 128.0
    else:  # limited ("MPEG") range: luma 16..235, chroma 16..240
        y, cb, cr = (luma - 16.0) * (255 / 219), (chroma[:, :1] - 128.0) * (255 / 224), (chroma[:, 1:] - 128.0) * (
            255 / 224)
    rgb = torch.cat([y + 2 * (1 - kr) * cr,
                     y - (2 * kb * (1 - kb) / kg) * cb - (2 * kr * (1 - kr) / kg) * cr,
                     y + 2 * (1 - kb) * cb], dim=1)
    return to_uint8(rgb, turns)


def rgb_to_input(rgb: torch.Tensor, size: int | None, turns: int = 0) -> torch.Tensor:
    """RGB frames [n, H, W, 3] uint8 -> [n, S, S, 3] uint8, resized as nv12_to_input resizes."""
    planes = rgb.permute(0, 3, 1, 2).float()
    return to_uint8(resize(planes, (size, size) if size else tuple(planes.shape[-2:])), turns)
