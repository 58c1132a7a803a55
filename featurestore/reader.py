"""Reading rows of a part's arrays. Reads never invent data: a chunk that is missing fails the fetch, naming it,
instead of reading as the fill value (zeros), which would train on zeros (DESIGN pitfalls).

- Uncompressed sharded arrays (every part's `tokens`, layout.py) in local stores: a fetch reads the
  shard index, then the rows' bytes straight into the result with `preadv` (parallel pieces when cached). This is the
  training loader's hot path: a whole-video fetch is one copy into the result, 1.6-1.9x `torch.load` of a `.pt`
  and 4-6x tensorstore on the same files (BENCHMARKS.md); the libraries decode each chunk into a buffer and copy again.
- Other arrays of local stores (compressed tokens of older parts, extras): tensorstore's zarr3 driver (C++, 2-7x
  zarr-python), with `fill_missing_data_reads` off where every chunk was written.
- Other fsspec URLs: zarr-python; `pave store verify` finds missing chunks there."""
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zarr
from numcodecs import CRC32C
from zarr.codecs import BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation

from .layout import COMPLETE_CHUNKS
from .schema import FeatureError

RowReader = Callable[[slice], np.ndarray]

# A fetch whose bytes are in the page cache is cut into one piece per core, read in parallel: the copy is bound by
# one core's memcpy (2 pieces: 2.5x one on the 2-core VM). From disk, one sequential read per range is faster
# (parallel pieces were 1.4x slower on the VM's disk); the loader's prefetch threads keep the disk busy.
READ_THREADS = min(8, os.cpu_count() or 1)
MIN_PIECE_BYTES = 1 << 20
_READ_POOL = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="store-read")
_MISSING = np.uint64(2**64 - 1)  # a shard index entry (offset, nbytes) of an absent chunk (Zarr v3 sharding spec)


def open_rows(files, path: str, array: zarr.Array) -> RowReader:
    """rows(span) -> the values of rows `span` of the array at `path` (store-relative; `array`: zarr's handle)."""
    if not files.local:
        return lambda span: array[span]
    if _raw_shards(array):
        return RawShardRows(files.abs(path), path, array)
    import tensorstore as ts

    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": files.abs(path)},
            "fill_missing_data_reads": not array.attrs.get(COMPLETE_CHUNKS, False),
            "context": {"cache_pool": {"total_bytes_limit": 0}}}
    opened = ts.open(spec, read=True).result()

    def rows(span: slice) -> np.ndarray:
        try:
            return opened[span].read().result()
        except ValueError as err:  # NOT_FOUND: a chunk or shard file is gone
            raise FeatureError(f"{path} rows {span.start}:{span.stop}: {err}; run `pave store verify`") from None

    return rows


def _raw_shards(array: zarr.Array) -> bool:
    """Sharded along rows only, inner chunks stored as plain little-endian bytes, index at the end with its crc32c,
    every chunk written: the layout RawShardRows reads."""
    codecs = array.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec) or not array.attrs.get(COMPLETE_CHUNKS, False):
        return False
    shard = codecs[0]
    little = lambda c: isinstance(c, BytesCodec) and (c.endian is None or c.endian.value == "little")  # noqa: E731
    return (len(shard.codecs) == 1 and little(shard.codecs[0])
            and len(shard.index_codecs) == 2 and little(shard.index_codecs[0])
            and isinstance(shard.index_codecs[1], Crc32cCodec)
            and shard.index_location == ShardingCodecIndexLocation.end
            and tuple(shard.chunk_shape[1:]) == tuple(array.shape[1:]) == tuple(array.shards[1:])
            and array.metadata.chunk_key_encoding.separator == "/")


class RawShardRows:
    """Rows of an uncompressed sharded array, read with preadv into the result (see the module docstring)."""

    def __init__(self, abs_path: str, path: str, array: zarr.Array):
        self.abs_path, self.path = abs_path, path
        self.shard_rows, self.chunk_rows = array.shards[0], array.metadata.codecs[0].chunk_shape[0]
        self.trailing, self.dtype = array.shape[1:], array.dtype.newbyteorder("<")
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.trailing))
        self.shard_key_tail = "/0" * (array.ndim - 1)
        self._indexes: dict[int, np.ndarray] = {}  # committed shards never change

    def __call__(self, span: slice) -> np.ndarray:
        out = np.empty((span.stop - span.start, *self.trailing), self.dtype)
        pieces = self._ranges(span)
        target = memoryview(out.reshape(-1).view(np.uint8)) if out.size else None
        fds = {}
        try:
            for shard in {shard for shard, _, _, _ in pieces}:
                fds[shard] = os.open(self._shard_file(shard), os.O_RDONLY)
            if pieces and _in_page_cache(fds[pieces[0][0]], pieces[0][1]):
                pieces = _cut(pieces, READ_THREADS)
            reads = [(fds[shard], file_at, target[out_at : out_at + n]) for shard, file_at, out_at, n in pieces]
            for (fd, file_at, view), got in zip(reads, _READ_POOL.map(lambda r: os.preadv(r[0], [r[2]], r[1]), reads)):
                if got != len(view):
                    raise FeatureError(f"{self._where(span)}: shard file cut short; run `pave store verify`")
        except FileNotFoundError as err:
            raise FeatureError(f"{self._where(span)}: {err.filename} is gone; run `pave store verify`") from None
        finally:
            for fd in fds.values():
                os.close(fd)
        return out

    def _ranges(self, span: slice) -> list[tuple[int, int, int, int]]:
        """(shard, file offset, offset in the result, bytes) covering the span; consecutive chunks that lie back to
        back in their shard file are one range."""
        merged: list[list[int]] = []
        for row in range(span.start - span.start % self.chunk_rows, span.stop, self.chunk_rows):
            shard, chunk = divmod(row, self.shard_rows)
            offset, nbytes = self._index(shard, span)[chunk // self.chunk_rows]
            if offset == _MISSING:
                raise FeatureError(f"{self._where(span)}: chunk of rows {row}:{row + self.chunk_rows} is missing; "
                                   "run `pave store verify`")
            if nbytes != self.chunk_rows * self.row_bytes:
                raise FeatureError(f"{self._where(span)}: chunk of rows {row}:{row + self.chunk_rows} holds {nbytes}"
                                   f" bytes, not {self.chunk_rows * self.row_bytes}; run `pave store verify`")
            r0, r1 = max(row, span.start), min(row + self.chunk_rows, span.stop)
            file_at, out_at, n = int(offset) + (r0 - row) * self.row_bytes, (r0 - span.start) * self.row_bytes, \
                (r1 - r0) * self.row_bytes
            last = merged[-1] if merged else None
            if last and last[0] == shard and last[1] + last[3] == file_at and last[2] + last[3] == out_at:
                last[3] += n
            else:
                merged.append([shard, file_at, out_at, n])
        return [tuple(r) for r in merged]

    def _index(self, shard: int, span: slice) -> np.ndarray:
        """The shard's (offset, nbytes) per inner chunk, checked against its crc32c."""
        if shard not in self._indexes:
            n_chunks = self.shard_rows // self.chunk_rows
            size = n_chunks * 16 + 4
            try:
                with open(self._shard_file(shard), "rb") as f:
                    f.seek(-size, os.SEEK_END)
                    raw = CRC32C(location="end").decode(f.read(size))
            except FileNotFoundError:
                raise FeatureError(f"{self._where(span)}: shard file {self._shard_file(shard)} is gone; "
                                   "run `pave store verify`") from None
            except (OSError, RuntimeError) as err:  # shorter than an index, or the crc32c differs
                raise FeatureError(f"{self._where(span)}: shard {shard} index unreadable ({err}); "
                                   "run `pave store verify`") from None
            self._indexes[shard] = np.frombuffer(raw, "<u8").reshape(n_chunks, 2)
        return self._indexes[shard]

    def _shard_file(self, shard: int) -> str:
        return f"{self.abs_path}/c/{shard}{self.shard_key_tail}"

    def _where(self, span: slice) -> str:
        return f"{self.path} rows {span.start}:{span.stop}"


def _cut(ranges: list[tuple[int, int, int, int]], parts: int) -> list[tuple[int, int, int, int]]:
    """The ranges cut into about `parts` pieces of at least MIN_PIECE_BYTES."""
    piece = max(MIN_PIECE_BYTES, -(-sum(n for *_, n in ranges) // parts))
    return [(shard, file_at + k, out_at + k, min(piece, n - k))
            for shard, file_at, out_at, n in ranges for k in range(0, n, piece)]


def _in_page_cache(fd: int, offset: int) -> bool:
    """Whether the byte at `offset` is in the page cache: a read that may not wait for the disk (Linux RWF_NOWAIT)."""
    try:
        return os.preadv(fd, [bytearray(1)], offset, os.RWF_NOWAIT) == 1
    except (AttributeError, OSError):  # no RWF_NOWAIT here, or EAGAIN: on disk
        return False
