"""The store's small JSON side files (commit records, claims), through fsspec so that local disks and object stores
behave the same. Two primitives carry all the concurrency guarantees:
- `put_json`: a reader sees the old file or the whole new one, never a torn one (local: tmp + rename; object
  stores: a single PUT is atomic);
- `create_json`: exactly one of several racing creators succeeds, and the winner's content is complete when the
  file appears (local: hard link of a finished tmp file, which fails if the name exists; object stores: open with
  mode "xb", a conditional PUT - needs a filesystem that implements it, e.g. s3fs, or the local and memory ones)."""
import json
import os
import time
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem


class Files:
    def __init__(self, url: str, storage_options: dict):
        self.fs, self.root = fsspec.core.url_to_fs(url, **storage_options)
        self.local = isinstance(self.fs, LocalFileSystem)

    def abs(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def read_json(self, path: str) -> dict:
        return json.loads(self.fs.cat_file(self.abs(path)))

    def put_json(self, path: str, obj) -> None:
        data = json.dumps(obj).encode()
        if not self.local:
            self.fs.pipe_file(self.abs(path), data)
            return
        target = self.abs(path)
        tmp = self._write_tmp(target, data)
        os.replace(tmp, target)

    def create_json(self, path: str, obj) -> bool:
        """Create `path` holding `obj` unless it exists; True if this call created it."""
        data = json.dumps(obj).encode()
        target = self.abs(path)
        try:
            if not self.local:
                with self.fs.open(target, "xb") as f:
                    f.write(data)
                return True
            tmp = self._write_tmp(target, data)
            try:
                os.link(tmp, target)
            finally:
                os.unlink(tmp)
            return True
        except FileExistsError:
            return False

    @staticmethod
    def _write_tmp(target: str, data: bytes) -> str:
        directory, name = os.path.split(target)
        os.makedirs(directory, exist_ok=True)
        tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")  # dot-prefixed: listings skip it
        with open(tmp, "wb") as f:
            f.write(data)
        return tmp

    def children(self, path: str, kind: str) -> list[str]:
        """Sorted names of the entries of `path` of `kind` ("file" | "directory"), hidden ones excluded;
        [] when `path` does not exist."""
        try:
            entries = self.fs.ls(self.abs(path), detail=True)
        except FileNotFoundError:
            return []
        names = (e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == kind)
        return sorted(n for n in names if not n.startswith("."))

    def stale_tmp_files(self, path: str, max_age_s: float) -> list[str]:
        """Tmp files under `path` left by a process killed between writing and renaming them, older than
        `max_age_s`, as paths relative to the root (only local stores make tmp files)."""
        if not self.local:
            return []
        now = time.time()
        return [
            os.path.relpath(p, self.root)
            for p in self.fs.find(self.abs(path))
            if os.path.basename(p).startswith(".") and now - os.path.getmtime(p) > max_age_s
        ]

    def remove(self, path: str) -> None:
        self.fs.rm(self.abs(path), recursive=True)

    def exists(self, path: str) -> bool:
        return self.fs.exists(self.abs(path))
