"""How one part is laid out in Zarr v3: one sharded array per per-row array (tokens, t_start, t_end, extras) plus a
CSR `offsets` array, and the per-shard value digests that commit records and `verify` compare."""
import hashlib

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from .schema import TokenSchema

# Token arrays are stored raw: a whole-video fetch is then one copy from the shard file into the result (reader.py),
# 1.6-1.9x torch.load of a .pt; compressed with the codec below, decoding alone (~2 GB/s per core) kept fetches at
# 0.35x (BENCHMARKS.md). The price is disk: bitshuffle + zstd saved 11% on f16 tokens, 30% on bf16.
# Every other array (times, extras, offsets) is small and compressed: bit-shuffling groups the predictable
# sign/exponent bits, and decodes twice as fast as plain zstd.
COMPRESSOR = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
# Shards are the unit of writing and of files on disk / objects in a bucket: large, so there are few of them.
# Inner chunks are the unit of reading: ~1 MiB, i.e. 2 SigLIP frames or 512 audio steps. zarr-python pays ~0.3 ms
# per chunk read, so 1-row chunks made whole-video fetches 1.5x slower (BENCHMARKS.md) for no gain on local disks,
# and object stores want range requests of a MiB or more anyway.
SHARD_BYTES = 64 << 20
CHUNK_BYTES = 1 << 20
# Array attribute: every chunk was written, so a missing one is damage, not the fill value (parts written before
# this attribute existed skipped all-zero chunks, as zarr does by default; they are read with zeros for those).
COMPLETE_CHUNKS = "complete_chunks"


def _pow2_at_most(n: float) -> int:
    return 1 << max(0, int(n).bit_length() - 1) if n >= 1 else 1


def rows_per_shard(schema: TokenSchema, shard_bytes: int = SHARD_BYTES) -> int:
    """Rows per shard, the same for every array of a part so that a writer flushes whole shards of all of them.
    A power of two, so that every array's inner chunk (also a power of two) divides it."""
    token_row_bytes = schema.tokens_per_step * schema.dim * schema.stored_dtype.itemsize
    return _pow2_at_most(shard_bytes / token_row_bytes)


def create_part_arrays(group: zarr.Group, schema: TokenSchema, shard_rows: int) -> dict[str, zarr.Array]:
    """Empty (0-row) arrays of a new part; writers grow them by appending whole shards."""
    arrays = {}
    for name, (trailing, dtype) in schema.row_arrays().items():
        row_bytes = max(1, dtype.itemsize * int(np.prod(trailing)))
        chunk_rows = min(shard_rows, _pow2_at_most(CHUNK_BYTES / row_bytes))
        arrays[name] = group.create_array(
            name,
            shape=(0, *trailing),
            dtype=dtype,
            chunks=(chunk_rows, *trailing),
            shards=(shard_rows, *trailing),
            compressors=None if name == "tokens" else COMPRESSOR,
            fill_value=0,
            attributes={**_array_attrs(name, schema), COMPLETE_CHUNKS: True},
            config={"write_empty_chunks": True},  # else an all-zero chunk is not written and looks like a lost one
        )
    return arrays


def _array_attrs(name: str, schema: TokenSchema) -> dict:
    if name == "tokens":
        return {"logical_dtype": schema.dtype, "tokens_per_step": schema.tokens_per_step, "dim": schema.dim}
    if name in ("t_start", "t_end"):
        return {"units": "s"}
    return {}


def write_offsets(group: zarr.Group, items: list[str], offsets: np.ndarray) -> None:
    """The part's own per-video index: item k is rows offsets[k]:offsets[k+1] (the commit record repeats it;
    `verify` checks that they agree)."""
    group.create_array("offsets", data=offsets.astype(np.int64), compressors=COMPRESSOR)
    group.attrs["items"] = items


def shard_slices(n_rows: int, shard_rows: int) -> list[slice]:
    return [slice(lo, min(lo + shard_rows, n_rows)) for lo in range(0, n_rows, shard_rows)]


def digest(values: np.ndarray) -> str:
    """sha256 of the values in C order: independent of the codec, so it checks what readers get."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()
