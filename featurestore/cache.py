"""NodeCache: a node-local, size-bounded directory of the byte ranges that reads fetch from an object store
(reader.RemoteShards), so that the epochs after the first read local files. The worker processes of a node share it:
- a piece appears whole: written to a tmp file, then hard-linked to its name (a reader never sees a torn file; of two
  processes that fetched the same piece, the first to link it wins and the other drops its copy);
- every piece carries its crc32c (the codec shard indexes end with), checked on every load: a damaged file is removed
  and the piece fetched again, never served;
- the least recently used pieces go first (a load refreshes the file's mtime). The lock file `.used` holds the bytes
  in use (updated under flock); when they pass `max_bytes`, the process that notices evicts down to LOW_WATER of it,
  so that the directory is scanned once per tenth of the cache written, not on every piece.
A piece's name is its URL and byte range: committed shards never change, and their paths hold the part's unique id."""
import contextlib
import fcntl
import hashlib
import os
import uuid

from numcodecs import CRC32C

DEFAULT_BYTES = 32 << 30
LOW_WATER = 0.9
_CRC = CRC32C(location="end")


class NodeCache:
    def __init__(self, directory: str, max_bytes: int = DEFAULT_BYTES):
        self.directory, self.max_bytes = os.fspath(directory), int(max_bytes)
        os.makedirs(self.directory, exist_ok=True)
        self._lock = os.path.join(self.directory, ".used")

    def get(self, name: str) -> memoryview | None:
        """The piece called `name`; None when it is not cached, or its file is damaged (then removed)."""
        path = self._file(name)
        try:
            with open(path, "rb") as f:
                blob = f.read()
            os.utime(path)
        except FileNotFoundError:  # not cached, or evicted just now
            return None
        try:
            return memoryview(_CRC.decode(blob))  # a view of the file's bytes, less the crc32c
        except (RuntimeError, ValueError):  # the crc32c differs, or the file is shorter than one
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return None

    def put(self, name: str, data: bytes) -> None:
        path = self._file(name)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(_CRC.encode(data))
            os.link(tmp, path)
        except (FileExistsError, FileNotFoundError):  # cached by another process meanwhile; or evicted mid-write
            return
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._count(len(data) + 4)

    def _file(self, name: str) -> str:
        return os.path.join(self.directory, hashlib.sha256(name.encode()).hexdigest())

    def _count(self, added: int) -> None:
        fd = os.open(self._lock, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # released with the close
            used = int(os.pread(fd, 32, 0) or 0) + added
            if used > self.max_bytes:
                used = self._evict(int(self.max_bytes * LOW_WATER))
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(used).encode(), 0)
        finally:
            os.close(fd)

    def _evict(self, target: int) -> int:
        """Remove the least recently used files until at most `target` bytes remain; the bytes that remain. Counts
        what is there (also what processes killed mid-write left), so that the count in `.used` is exact again."""
        entries = []
        for entry in os.scandir(self.directory):
            if not entry.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):  # removed by another process since the listing
                    stat = entry.stat()
                    entries.append((stat.st_mtime, stat.st_size, entry.path))
        used = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if used <= target:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            used -= size
        return used
