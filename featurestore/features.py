"""One video's rows as read from a version, and the one home of the bfloat16 <-> uint16-bits convention."""
from dataclasses import dataclass

import numpy as np

from .schema import TokenSchema


@dataclass
class Features:
    video_id: str
    tokens: np.ndarray  # [N, tokens_per_step, dim] in the stored dtype (uint16 bit patterns for bfloat16)
    t_start: np.ndarray  # [N] float64 seconds
    t_end: np.ndarray  # [N] float64 seconds
    extras: dict[str, np.ndarray]
    schema: TokenSchema

    def to_torch(self):
        """Tokens as a torch tensor of the logical dtype, bit-exact (bfloat16 is a reinterpretation of the bits)."""
        import torch

        tokens = torch.from_numpy(np.ascontiguousarray(self.tokens))
        return tokens.view(torch.bfloat16) if self.schema.dtype == "bfloat16" else tokens


def as_numpy(value) -> tuple[np.ndarray, str]:
    """A numpy view of a numpy array, torch tensor or array-like, and its logical dtype name.
    bfloat16 (torch or ml_dtypes) comes back as its uint16 bit patterns with logical name "bfloat16"."""
    if hasattr(value, "detach"):  # a torch.Tensor, recognised without importing torch
        import torch

        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            return value.view(torch.uint16).numpy(), "bfloat16"
        return value.numpy(), str(value.dtype).removeprefix("torch.")
    array = np.asarray(value)
    if array.dtype.name == "bfloat16":
        return array.view(np.uint16), "bfloat16"
    return array, array.dtype.name


def nonfinite(stored: np.ndarray, logical_dtype: str) -> np.ndarray:
    """Boolean mask of NaN/inf elements of a stored array (bfloat16 bits: exponent all ones)."""
    if logical_dtype == "bfloat16":
        return (stored & 0x7F80) == 0x7F80
    return ~np.isfinite(stored)
