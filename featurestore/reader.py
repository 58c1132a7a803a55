"""Reading rows of a part's arrays. Reads never invent data: a chunk that is missing fails the fetch, naming it,
instead of reading as the fill value (zeros), which would train on zeros (docs/DESIGN.md, Pitfalls).

A part's row arrays are sharded along rows; each shard file (object) ends with the index of its inner chunks (Zarr v3
sharding). ShardRows reads that index itself, once per shard and checked against its crc32c, so a missing chunk is
an error, and turns a fetch into a few large reads: the chunks of a row span that lie back to back in a shard are one
byte range. Where the bytes come from:
- LocalShards, for the uncompressed arrays (every part's `tokens`, layout.py) of local stores: `preadv` straight into
  the result (parallel pieces when cached). This is the training loader's hot path: a whole-video fetch is one copy
  into the result, 1.6-1.9x `torch.load` of a `.pt` and 4-6x tensorstore on the same files (BENCHMARKS.md); the
  libraries decode each chunk into a buffer and copy again.
- RemoteShards, for every array of other fsspec URLs (e.g. s3://): the byte ranges, in pieces of at most
  REMOTE_PIECE_BYTES, fetched concurrently with fsspec's `cat_ranges` (one ranged GET each on S3), through a
  node-local cache (cache.py) if the store has one. Compressed chunks (blosc) are decoded one by one.
- Other arrays of local stores (compressed tokens of older parts, extras, times): tensorstore's zarr3 driver (C++, 2-7x
  zarr-python), with `fill_missing_data_reads` off where every chunk was written.
- Arrays of parts written before every chunk was stored (no `complete_chunks`), on object stores: zarr-python (their
  all-zero chunks were skipped, so a missing chunk reads as zeros by design)."""
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import zarr
from numcodecs import CRC32C, Blosc
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation

from .layout import COMPLETE_CHUNKS
from .schema import FeatureError

RowReader = Callable[[slice], np.ndarray]
Range = tuple[str, int, int, int]  # (shard key, offset in the shard, offset in the target buffer, bytes)

# A fetch whose bytes are in the page cache is cut into one piece per core, read in parallel: the copy is bound by
# one core's memcpy (2 pieces: 2.5x one on the 2-core VM). From disk, one sequential read per range is faster
# (parallel pieces were 1.4x slower on the VM's disk); the loader's prefetch threads keep the disk busy.
READ_THREADS = min(8, os.cpu_count() or 1)
MIN_PIECE_BYTES = 1 << 20
# Object stores serve one GET at about one connection's throughput: a whole video (tens of MiB) is fetched as
# concurrent GETs of at most this many bytes each.
REMOTE_PIECE_BYTES = 8 << 20
_READ_POOL = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="store-read")
_MISSING = np.uint64(2**64 - 1)  # a shard index entry (offset, nbytes) of an absent chunk (Zarr v3 sharding spec)
_INDEX_CRC = CRC32C(location="end")  # the shard index's codec after its bytes (_inner_codec checks it is)


def open_rows(files, path: str, array: zarr.Array, cache=None) -> RowReader:
    """rows(span) -> the values of rows `span` of the array at `path` (store-relative; `array`: zarr's handle);
    `cache`: a NodeCache for reads from an object store, or None."""
    complete, inner = array.attrs.get(COMPLETE_CHUNKS, False), _inner_codec(array)
    if not files.local:
        if not complete:
            return lambda span: array[span]
        if inner is None:
            raise FeatureError(f"{path}: a chunk layout this reader does not know ({array.metadata.codecs}); "
                               "rewrite the version with this release's `pave materialize`")
        return ShardRows(RemoteShards(files, path, cache), path, array, inner)
    if complete and inner == "raw":
        return ShardRows(LocalShards(files.abs(path)), path, array, inner)
    import tensorstore as ts

    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": files.abs(path)},
            "fill_missing_data_reads": not complete, "context": {"cache_pool": {"total_bytes_limit": 0}}}
    opened = ts.open(spec, read=True).result()

    def rows(span: slice) -> np.ndarray:
        try:
            return opened[span].read().result()
        except ValueError as err:  # NOT_FOUND: a chunk or shard file is gone
            raise FeatureError(f"{path} rows {span.start}:{span.stop}: {err}; run `pave store verify`") from None

    return rows


def _inner_codec(array: zarr.Array) -> str | None:
    """How ShardRows decodes the array's inner chunks: "raw" (plain little-endian bytes) or "blosc"; None unless it is
    sharded along rows only, with the index at the end of each shard followed by its crc32c."""
    codecs = array.metadata.codecs
    if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
        return None
    shard = codecs[0]
    little = lambda c: isinstance(c, BytesCodec) and (c.endian is None or c.endian.value == "little")  # noqa: E731
    if not (len(shard.index_codecs) == 2 and little(shard.index_codecs[0])
            and isinstance(shard.index_codecs[1], Crc32cCodec)
            and shard.index_location == ShardingCodecIndexLocation.end
            and tuple(shard.chunk_shape[1:]) == tuple(array.shape[1:]) == tuple(array.shards[1:])
            and array.metadata.chunk_key_encoding.separator == "/" and little(shard.codecs[0])):
        return None
    if len(shard.codecs) == 1:
        return "raw"
    return "blosc" if len(shard.codecs) == 2 and isinstance(shard.codecs[1], BloscCodec) else None


class ShardRows:
    """Rows of a sharded array, read from `shards` (LocalShards or RemoteShards) by its shard indexes (see the
    module docstring)."""

    def __init__(self, shards, path: str, array: zarr.Array, inner: str):
        self.shards, self.path, self.compressed = shards, path, inner == "blosc"
        self.shard_rows, self.chunk_rows = array.shards[0], array.metadata.codecs[0].chunk_shape[0]
        self.trailing, self.dtype = array.shape[1:], array.dtype.newbyteorder("<")
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.trailing))
        self.shard_key_tail = "/0" * (array.ndim - 1)
        self._indexes: dict[int, np.ndarray] = {}  # committed shards never change

    def __call__(self, span: slice) -> np.ndarray:
        out = np.empty((max(0, span.stop - span.start), *self.trailing), self.dtype)
        if not out.size:
            return out
        try:
            chunks = self._chunks(span)
            if self.compressed:
                self._decode(chunks, span, out)
            else:
                self.shards.read_into(self._raw_ranges(chunks, span), memoryview(out.reshape(-1).view(np.uint8)))
        except FileNotFoundError as err:
            raise FeatureError(f"{self._where(span)}: shard file {err.filename} is gone; run `pave store verify`") \
                from None
        except EOFError:
            raise FeatureError(f"{self._where(span)}: shard file cut short; run `pave store verify`") from None
        return out

    def _chunks(self, span: slice) -> list[tuple[int, int, int, int]]:
        """(shard, offset in the shard, bytes, first row) of each inner chunk that holds rows of `span`."""
        shards = range(span.start // self.shard_rows, (span.stop - 1) // self.shard_rows + 1)
        self._read_indexes([shard for shard in shards if shard not in self._indexes], span)
        chunks = []
        for row in range(span.start - span.start % self.chunk_rows, span.stop, self.chunk_rows):
            shard, within = divmod(row, self.shard_rows)
            offset, nbytes = self._indexes[shard][within // self.chunk_rows]
            if offset == _MISSING:
                raise FeatureError(f"{self._where(span)}: chunk of rows {row}:{row + self.chunk_rows} is missing; "
                                   "run `pave store verify`")
            if not self.compressed and nbytes != self.chunk_rows * self.row_bytes:
                raise FeatureError(f"{self._where(span)}: chunk of rows {row}:{row + self.chunk_rows} holds {nbytes}"
                                   f" bytes, not {self.chunk_rows * self.row_bytes}; run `pave store verify`")
            chunks.append((shard, int(offset), int(nbytes), row))
        return chunks

    def _read_indexes(self, shards: list[int], span: slice) -> None:
        """Read the shards' indexes (offset, nbytes per inner chunk), checked against their crc32c."""
        n_chunks = self.shard_rows // self.chunk_rows
        size = n_chunks * 16 + 4
        for shard, raw in zip(shards, self.shards.tails([self._key(shard) for shard in shards], size)):
            try:
                if len(raw) != size:
                    raise ValueError(f"{len(raw)} bytes, not {size}")
                self._indexes[shard] = np.frombuffer(_INDEX_CRC.decode(raw), "<u8").reshape(n_chunks, 2)
            except (ValueError, RuntimeError) as err:  # shorter than an index, or the crc32c differs
                raise FeatureError(f"{self._where(span)}: shard {shard} index unreadable ({err}); "
                                   "run `pave store verify`") from None

    def _raw_ranges(self, chunks, span: slice) -> list[Range]:
        """The rows of `span` in the chunks, as ranges into the result."""
        ranges = []
        for shard, offset, _, row in chunks:
            r0, r1 = max(row, span.start), min(row + self.chunk_rows, span.stop)
            ranges.append((self._key(shard), offset + (r0 - row) * self.row_bytes, (r0 - span.start) * self.row_bytes,
                           (r1 - r0) * self.row_bytes))
        return _merged(ranges)

    def _decode(self, chunks, span: slice, out: np.ndarray) -> None:
        """Read the compressed chunks back to back into one buffer, then decode each into its rows of `out`."""
        ranges, at = [], 0
        for shard, offset, nbytes, _ in chunks:
            ranges.append((self._key(shard), offset, at, nbytes))
            at += nbytes
        buffer = bytearray(at)
        self.shards.read_into(_merged(ranges), memoryview(buffer))
        for (shard, _, nbytes, row), (_, _, at, _) in zip(chunks, ranges):
            try:
                values = np.frombuffer(Blosc().decode(buffer[at : at + nbytes]), self.dtype)
                values = values.reshape(self.chunk_rows, *self.trailing)
            except (RuntimeError, ValueError) as err:  # damaged bytes, or a chunk of the wrong size
                raise FeatureError(f"{self._where(span)}: chunk of rows {row}:{row + self.chunk_rows} does not "
                                   f"decode ({err}); run `pave store verify`") from None
            r0, r1 = max(row, span.start), min(row + self.chunk_rows, span.stop)
            out[r0 - span.start : r1 - span.start] = values[r0 - row : r1 - row]

    def _key(self, shard: int) -> str:
        return f"c/{shard}{self.shard_key_tail}"

    def _where(self, span: slice) -> str:
        return f"{self.path} rows {span.start}:{span.stop}"


def _merged(ranges: list[Range]) -> list[Range]:
    """The ranges, each joined with the next where both lie back to back in the shard and in the target."""
    merged: list[list] = []
    for key, at, out_at, n in ranges:
        last = merged[-1] if merged else None
        if last and last[0] == key and last[1] + last[3] == at and last[2] + last[3] == out_at:
            last[3] += n
        else:
            merged.append([key, at, out_at, n])
    return [tuple(r) for r in merged]


def _split(ranges: list[Range], piece: int) -> list[Range]:
    """The ranges cut into pieces of at most `piece` bytes."""
    return [(key, at + k, out_at + k, min(piece, n - k)) for key, at, out_at, n in ranges for k in range(0, n, piece)]


class LocalShards:
    """The shard files of an array in a local store, read with preadv into the target."""

    def __init__(self, abs_path: str):
        self.abs_path = abs_path

    def tails(self, keys: list[str], n: int) -> list[bytes]:
        """The last `n` bytes of each shard (fewer if it is shorter)."""
        out = []
        for key in keys:
            with open(self._file(key), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                out.append(os.pread(f.fileno(), min(n, size), max(0, size - n)))
        return out

    def read_into(self, ranges: list[Range], target: memoryview) -> None:
        fds = {}
        try:
            for key in {key for key, _, _, _ in ranges}:
                fds[key] = os.open(self._file(key), os.O_RDONLY)
            if ranges and _in_page_cache(fds[ranges[0][0]], ranges[0][1]):
                ranges = _split(ranges, max(MIN_PIECE_BYTES, -(-sum(n for *_, n in ranges) // READ_THREADS)))
            reads = [(fds[key], at, target[out_at : out_at + n]) for key, at, out_at, n in ranges]
            for (_, _, view), got in zip(reads, _READ_POOL.map(lambda r: os.preadv(r[0], [r[2]], r[1]), reads)):
                if got != len(view):
                    raise EOFError
        finally:
            for fd in fds.values():
                os.close(fd)

    def _file(self, key: str) -> str:
        return f"{self.abs_path}/{key}"


class RemoteShards:
    """The shard objects of an array in an fsspec store (e.g. S3): byte ranges fetched concurrently with
    `cat_ranges`, through `cache` (a NodeCache) if given."""

    def __init__(self, files, path: str, cache=None):
        self.fs, self.abs_path, self.cache = files.fs, files.abs(path), cache

    def tails(self, keys: list[str], n: int) -> list[bytes]:
        """The last `n` bytes of each shard (fewer if it is shorter)."""
        return self._fetch([(key, -n, None) for key in keys])

    def read_into(self, ranges: list[Range], target: memoryview) -> None:
        pieces = _split(ranges, REMOTE_PIECE_BYTES)
        for (_, _, out_at, n), data in zip(pieces, self._fetch([(key, at, at + n) for key, at, _, n in pieces])):
            if len(data) != n:
                raise EOFError
            target[out_at : out_at + n] = data

    def _fetch(self, requests: list[tuple[str, int, int | None]]) -> list[bytes]:
        """The bytes of each (shard key, start, end) (fsspec's cat_file limits), from the cache where it has them."""
        urls = [f"{self.abs_path}/{key}" for key, _, _ in requests]
        names = [f"{self.fs.unstrip_protocol(url)} {start}:{end}" for url, (_, start, end) in zip(urls, requests)]
        out = [self.cache.get(name) if self.cache else None for name in names]
        todo = [k for k, data in enumerate(out) if data is None]
        fetched = self.fs.cat_ranges([urls[k] for k in todo], [requests[k][1] for k in todo],
                                     [requests[k][2] for k in todo]) if todo else []
        for k, data in zip(todo, fetched):
            if isinstance(data, FileNotFoundError):
                raise FileNotFoundError(2, "gone", urls[k])
            if isinstance(data, Exception):
                raise data
            out[k] = data
            _, start, end = requests[k]
            if self.cache and len(data) == (-start if end is None else end - start):  # never a cut-short piece
                self.cache.put(names[k], data)
        return out


def _in_page_cache(fd: int, offset: int) -> bool:
    """Whether the byte at `offset` is in the page cache: a read that may not wait for the disk (Linux RWF_NOWAIT)."""
    try:
        return os.preadv(fd, [bytearray(1)], offset, os.RWF_NOWAIT) == 1
    except (AttributeError, OSError):  # no RWF_NOWAIT here, or EAGAIN: on disk
        return False
