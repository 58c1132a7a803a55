"""What a stored item was made from: the identity of its source files, recorded with its rows, so that a rerun can
tell a video that changed under the same id from one that did not (pipelines/materialize.py re-encodes the first).

An identity is {"path", "size", "mtime", "digest"} per input (a list: exo views are several files). The digest is
sha256 of the size and of the first and last MiB: cheap on any file size, and different for any re-encode or
replacement. A frame folder counts as one input: its image files' names, sizes and digests. WebDataset bytes have no
path or mtime. A source is unchanged when its path, size and mtime are the recorded ones (the quick check rsync
makes), or else when its size and digest are: a copy or a `touch` is not a change."""
import hashlib
import os

SPAN = 1 << 20  # bytes digested at each end


def identity(source: str | bytes) -> dict:
    if isinstance(source, bytes):
        return {"path": "", "size": len(source), "mtime": None, "digest": _digest(source, len(source))}
    if os.path.isdir(source):
        files = sorted(n for n in os.listdir(source) if os.path.isfile(os.path.join(source, n)))
        parts = [(n, identity(os.path.join(source, n))) for n in files]
        digest = hashlib.sha256("".join(f"{n}\0{p['size']}\0{p['digest']}\n" for n, p in parts).encode())
        size, mtime = _size_and_mtime(source)
        return {"path": os.fspath(source), "size": size, "mtime": mtime, "digest": digest.hexdigest()}
    stat = os.stat(source)
    with open(source, "rb") as f:
        head = f.read(SPAN)
        f.seek(max(stat.st_size - SPAN, len(head)))
        tail = f.read(SPAN)
    return {"path": os.fspath(source), "size": stat.st_size, "mtime": stat.st_mtime,
            "digest": _digest(head + tail, stat.st_size)}


def _size_and_mtime(path: str) -> tuple[int, float]:
    """What identity() records as size and mtime, from stat alone."""
    if not os.path.isdir(path):
        stat = os.stat(path)
        return stat.st_size, stat.st_mtime
    files = [os.stat(os.path.join(path, n)) for n in os.listdir(path) if os.path.isfile(os.path.join(path, n))]
    return sum(f.st_size for f in files), max([os.stat(path).st_mtime] + [f.st_mtime for f in files])


def _digest(ends: bytes, size: int) -> str:
    if len(ends) > 2 * SPAN:  # bytes held whole (WebDataset): the same ends as a file of them would give
        ends = ends[:SPAN] + ends[-SPAN:]
    return hashlib.sha256(f"{size}\0".encode() + ends).hexdigest()


def unchanged(recorded: list[dict], sources: list) -> bool:
    """Whether `sources` are still what `recorded` (their identities when the item was stored) describes."""
    if len(recorded) != len(sources):
        return False
    for old, source in zip(recorded, sources):
        if not isinstance(source, bytes) and old["path"] == os.fspath(source) \
                and _size_and_mtime(source) == (old["size"], old["mtime"]):
            continue
        new = identity(source)
        if (new["size"], new["digest"]) != (old["size"], old["digest"]):
            return False
    return True
