"""Decoding on the GPU: the encoder actors decode the frames that a CPU task planned (media.gpu_decode_plan: which
frames, their true times, colour and turns, all read by PyAV) with the GPU's hardware decoder, NVDEC, through
PyNvVideoCodec, and turn them into the encoder's input there (frames.py), so that frames never cross to the CPU.

NVDEC's frame k is the k-th frame in presentation order, the frame at PyAV's k-th sorted pts, and its NV12 output
is bit-equal to PyAV's for H.264 (tests/pipelines/test_nvdec.py, run on a GPU). A file that NVDEC cannot open or
decode, a frame count that differs from PyAV's (a frame NVDEC would count that PyAV's index leaves out), or a
machine without PyNvVideoCodec falls back to PyAV for that file, with the same transform: the same frames come out
either way, and the fallback is logged (a warning). Unlike PyAV, which refuses a frame that does not decode, NVDEC
conceals errors in a damaged stream: such a file's frames are stored as NVDEC shows them."""
import importlib.util
import logging

import numpy as np
import torch

from .frames import Colour, nv12_to_input
from .media import DECODE_ERRORS, ItemError, read_frames

log = logging.getLogger(__name__)


def installed() -> bool:
    return importlib.util.find_spec("PyNvVideoCodec") is not None


def nvdec_nv12(path: str, positions: list[int], frames: int, device: torch.device) -> torch.Tensor:
    """NV12 frames [len(positions), 3H/2, W] uint8 on `device`, decoded by NVDEC (each distinct frame once)."""
    import PyNvVideoCodec as nvc

    decoder = nvc.SimpleDecoder(path, gpu_id=device.index or 0, use_device_memory=True,
                                output_color_type=nvc.OutputColorType.NATIVE)
    if len(decoder) != frames:
        raise RuntimeError(f"NVDEC counts {len(decoder)} frames, PyAV's index {frames}")
    distinct = sorted(set(positions))
    decoded = decoder.get_batch_frames_by_index(distinct)
    torch.cuda.synchronize(device)  # the decoder's stream has written the frames
    # copy out of the decoder's surfaces, which it reuses
    planes = {k: torch.from_dlpack(frame).clone() for k, frame in zip(distinct, decoded)}
    return torch.stack([planes[k] for k in positions])


class GpuFrames:
    """The encoder input of a decode plan, on `device`: NVDEC when it can, else PyAV (see the module doc). A file
    that PyAV cannot read either raises ItemError."""

    def __init__(self, device: torch.device):
        self.device, self.nvdec = device, installed() and device.type == "cuda"
        if device.type == "cuda" and not self.nvdec:
            log.warning("PyNvVideoCodec is not installed on this node: its encoder actors decode with PyAV")

    def __call__(self, plan: dict) -> torch.Tensor:
        if self.nvdec:
            try:
                nv12 = nvdec_nv12(plan["source"], plan["positions"], plan["frames"], self.device)
            except Exception as e:  # noqa: BLE001 - anything NVDEC refuses: PyAV decodes the same frames below
                log.warning("NVDEC could not decode %s (%s): decoding it with PyAV", plan["source"], e)
            else:
                return nv12_to_input(nv12, Colour(plan["matrix"], plan["full_range"]), plan["size"], plan["turns"])
        try:
            frames, _ = read_frames(plan["source"], lambda times: self.positions(plan, times), plan["size"],
                                    resize="torch-bicubic")
        except DECODE_ERRORS as e:
            raise ItemError(str(e)) from e
        return torch.from_numpy(frames).to(self.device)

    @staticmethod
    def positions(plan: dict, times: np.ndarray) -> np.ndarray:
        if len(times) != plan["frames"]:  # the file changed since it was planned
            raise ItemError(f"the file holds {len(times)} frames now, {plan['frames']} when its decoding was planned")
        return np.array(plan["positions"], np.int64)
