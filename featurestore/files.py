"""The store's small JSON side files (version definitions, commit records, claims, gc marks), through fsspec so
that local disks and object stores behave the same. Two primitives carry all the concurrency guarantees:
- `put_json`: a reader sees the old file or the whole new one, never a torn one (local: tmp + rename; object
  stores: a single PUT is atomic);
- `create_json`: exactly one of several racing creators succeeds, and the winner's content is complete when the
  file appears (local: hard link of a finished tmp file, which fails if the name exists; object stores: open with
  mode "xb", a conditional PUT (If-None-Match: *) - needs a filesystem that implements it, e.g. s3fs, or the local
  and memory ones, and a server that honours it: the first create_json of a Files object checks that it does).
Object stores are listed afresh every time (fsspec's listings cache is off): claims and commit records that other
processes write must be seen."""
import contextlib
import errno
import json
import os
import time
import uuid

import fsspec
from fsspec.implementations.local import LocalFileSystem

from .schema import FeatureError

# Where the conditional-PUT check creates its objects: hidden, so that no listing of the store sees them.
PROBE_DIR = ".exclusive-create-probe"


class Files:
    def __init__(self, url: str, storage_options: dict):
        self.url = url
        self.fs, self.root = fsspec.core.url_to_fs(url, **{**storage_options, "use_listings_cache": False})
        self.local = isinstance(self.fs, LocalFileSystem)
        self._exclusive_checked = self.local

    def abs(self, path: str) -> str:
        return f"{self.root}/{path}" if path else self.root

    def read_json(self, path: str) -> dict:
        return json.loads(self.fs.cat_file(self.abs(path)))

    def put_json(self, path: str, obj) -> None:
        data = json.dumps(obj).encode()
        if not self.local:
            self.fs.pipe_file(self.abs(path), data)
            return
        self._write_local(self.abs(path), data, os.replace)

    def create_json(self, path: str, obj) -> bool:
        """Create `path` holding `obj` unless it exists; True if this call created it."""
        data = json.dumps(obj).encode()
        target = self.abs(path)
        try:
            if not self.local:
                self._check_exclusive_create()
                with self.fs.open(target, "xb") as f:
                    f.write(data)
                return True
            self._write_local(target, data, os.link)
            return True
        except FileExistsError:
            return False

    def _check_exclusive_create(self) -> None:
        """FeatureError unless a second exclusive create of one object fails: a server that ignores If-None-Match
        (or a filesystem without mode "xb") would let racing writers all win, silently. Checked once."""
        if self._exclusive_checked:
            return
        probe = self.abs(f"{PROBE_DIR}/{uuid.uuid4().hex}")
        try:
            for _ in range(2):
                with self.fs.open(probe, "xb") as f:
                    f.write(b"probe")  # not empty: s3fs writes an empty file with a plain PUT
            problem = "a second exclusive create (conditional PUT, If-None-Match: *) of one object succeeded"
        except FileExistsError:
            problem = ""
        except (ValueError, NotImplementedError) as e:  # no mode "xb" in this filesystem
            problem = f"{type(self.fs).__name__} cannot create a file exclusively ({e})"
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(probe)
        if problem:
            raise FeatureError(f"{self.url}: {problem}, so concurrent writers' item claims and version definitions "
                               "would race. Write the store to a server that honours If-None-Match on PUT (AWS S3 "
                               "does) or to a shared filesystem path")
        self._exclusive_checked = True

    @staticmethod
    def _write_local(target: str, data: bytes, place) -> None:
        """Write `data` to a tmp file next to `target`, then `place` it there (os.replace, or os.link: fails if
        `target` exists). A gc run that removes the directory meanwhile takes the tmp file with it: write again
        (the caller then finds out from the store that gc removed what it writes into)."""
        directory, name = os.path.split(target)
        for attempt in range(3):
            tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")  # dot-prefixed: listings skip it
            try:
                with contextlib.suppress(FileExistsError):  # made, then removed by gc at once: open() fails then
                    os.makedirs(directory, exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(data)
                place(tmp, target)
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise
            finally:
                with contextlib.suppress(FileNotFoundError):  # placed by os.replace, or taken by gc
                    os.unlink(tmp)

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
        now, out = time.time(), []
        for p in self.fs.find(self.abs(path)):
            try:
                if os.path.basename(p).startswith(".") and now - os.path.getmtime(p) > max_age_s:
                    out.append(os.path.relpath(p, self.root))
            except FileNotFoundError:  # renamed into place, or removed by another gc, since the listing
                pass
        return out

    def remove(self, path: str) -> None:
        """Remove `path` and everything under it. Another gc run may be removing it at the same time: what is gone
        already is fine. A directory that holds a new entry once its listed ones are gone is left as it is: someone
        writes there now (a writer that recreated a version gc removes; it will find out, see store.py)."""
        target = self.abs(path)
        if not self.local:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(target, recursive=True)
            return
        if not os.path.isdir(target):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            return
        for directory, _, names in os.walk(target, topdown=False):  # a directory after everything in it
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
            _remove_empty_dir(directory)

    def remove_empty_dir(self, path: str) -> None:
        """Remove the directory `path` if it is empty (object stores have no directories)."""
        if self.local:
            _remove_empty_dir(self.abs(path))

    def size(self, path: str) -> int:
        """Bytes of the files under `path` now. Locally, files that vanish while counted (a writer's temporary
        files, a version gc is removing) are not counted, instead of failing the count."""
        if not self.local:
            return self.fs.du(self.abs(path))
        total = 0
        for root, _, names in os.walk(self.abs(path)):
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(root, name)).st_size
        return total

    def exists(self, path: str) -> bool:
        return self.fs.exists(self.abs(path))


def _remove_empty_dir(directory: str) -> None:
    try:
        os.rmdir(directory)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTEMPTY):
            raise
