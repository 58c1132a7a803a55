"""Where a run's outputs live (`pave train --out`, `pave eval --out`, `pave report --out`): a local directory, or an
fsspec URL on an object store (s3://bucket/runs/x), reached through featurestore's Files.

Libraries write and read local files (safetensors, torch, TensorBoard, matplotlib), so every process works in
`RunDir.path`: the directory itself when it is local, else a node-local working mirror (a temp dir per process).
Files are pushed from the mirror at the run's sync points (every metrics report, every checkpoint, the end), and
what a process reads is pulled into it first. On a local directory push and pull do nothing: a local run directory
is written in place, as it always was. Ray Train persists its checkpoints itself (`ray_storage`)."""
import contextlib
import hashlib
import shutil
import tempfile
from pathlib import Path

from featurestore.files import Files


class RunDir:
    def __init__(self, url: str, storage_options: dict | None = None):
        self.remote = "://" in url and not url.startswith("file://")
        self.url = url.rstrip("/") if self.remote else str(Path(url.removeprefix("file://")).resolve())
        self.files = Files(self.url, storage_options or {})
        self.path = Path(tempfile.mkdtemp(prefix="pave-run-")) if self.remote else Path(self.url)

    @classmethod
    def of(cls, where: "RunDir | str | Path") -> "RunDir":
        return where if isinstance(where, RunDir) else cls(str(where))

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        if self.remote:
            shutil.rmtree(self.path, ignore_errors=True)

    def __str__(self) -> str:
        return self.url

    def location(self, name: str) -> str:
        """`name` inside the run, as its users name it (a path, or a URL)."""
        return f"{self.url}/{name}"

    def exists(self, name: str) -> bool:
        return self.files.exists(name)

    def directories(self, name: str) -> list[str]:
        return self.files.children(name, "directory")

    def pull(self, name: str) -> Path:
        """`name` (a file or a directory; "" the whole run) at `path / name`, downloaded into the mirror first. What
        does not exist is not there either."""
        if self.remote:
            found = self.files.fs.find(self.files.abs(name))
            root = len(self.files.root.rstrip("/")) + 1
            for remote in found:
                (self.path / remote[root:]).parent.mkdir(parents=True, exist_ok=True)
            if found:
                self.files.fs.get(found, [str(self.path / remote[root:]) for remote in found])
        return self.path / name

    def push(self, *names: str) -> None:
        """Upload the files under each of `names` (files or directories of the mirror; absent ones are skipped)."""
        if not self.remote:
            return
        for name in names:
            local = self.path / name
            files = [local] if local.is_file() else sorted(p for p in local.rglob("*") if p.is_file())
            if files:
                self.files.fs.put([str(p) for p in files],
                                  [self.files.abs(p.relative_to(self.path).as_posix()) for p in files])

    def ray_storage(self) -> dict:
        """ray.train.RunConfig's storage arguments for OUT/ray: the fsspec filesystem, with its storage options,
        wrapped for pyarrow (Ray Train's filesystem interface)."""
        if not self.remote:
            return {"storage_path": str(self.path / "ray")}
        import pyarrow.fs

        return {"storage_path": self.files.abs("ray"),
                "storage_filesystem": pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(self.files.fs))}


def local_copy(url: str, storage_options: dict | None = None) -> str:
    """A node-local directory holding what is at `url` (a base model, an exported adapter), for libraries that read
    local files only; `url` itself when it is local. Copies are kept per node under the temp dir, named by the URL
    and its objects' sizes and ETags: a second process reuses one, and a re-exported final/ is copied afresh."""
    if "://" not in url or url.startswith("file://"):
        return url
    with RunDir(url, storage_options) as source:
        listing = source.files.fs.find(source.files.root, detail=True)
        if not listing:
            raise FileNotFoundError(f"{url}: nothing there")
        identity = sorted((name, info.get("size"), str(info.get("ETag", info.get("mtime"))))
                          for name, info in listing.items())
        target = Path(tempfile.gettempdir()) / "pave-copies" / hashlib.sha256(
            repr((url, identity)).encode()).hexdigest()[:24]
        if not target.is_dir():
            source.pull("")
            target.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):  # another process of this node placed the same copy first
                source.path.rename(target)
    return str(target)
