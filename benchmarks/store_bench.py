"""Random per-video fetches: the feature store vs the reference layout (one torch.save .pt per video, loaded whole
with torch.load - the only way that layout can be read), on the same data, in one run.

Cases: whole video (all frames), and a time range (--range-frames consecutive frames of --frames), each with a warm
page cache and cold (the files evicted with posix_fadvise(DONTNEED) before every fetch; needs no root).
Layouts: pt (reference), store (the featurestore API: raw token shards of local stores read with preadv), and
"store/zarr": the same store files read by zarr-python. Prints a table and each layout's throughput ratio to pt.
Default video: 32 frames x 729 x 1152 (every SigLIP patch, as `pave materialize` stores it).

--s3 adds the same store copied into a bucket of moto's S3 server on loopback (tests/s3server.py; pip install
'.[dev]'), read through s3fs: "s3" (ranged GETs), and "s3+cache" (a node cache, featurestore/cache.py, filled by one
pass over every video first: the epochs after the first). moto runs in this process and shares its cores: the s3
rates say what the client costs, not what a real S3 would serve. Then a second table: GET requests and bytes per
fetch, counted at a logging proxy over the same plans (exact, machine-independent).

    .venv/bin/python benchmarks/store_bench.py --videos 24 --fetches 48
    .venv/bin/python benchmarks/store_bench.py --tokens 196 --videos 48 --fetches 64   # --video-tokens pooled
    .venv/bin/python benchmarks/store_bench.py --s3 --videos 8 --frames 16 --fetches 16
"""
import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from featurestore import FeatureStore, TokenSchema, fingerprint


def video(args, k: int) -> tuple[torch.Tensor, np.ndarray]:
    """Tokens [frames, tokens, dim] float16 and frame times (seconds) of video k, deterministic."""
    g = torch.Generator().manual_seed(k)
    tokens = (torch.randn(args.frames, args.tokens, args.dim, generator=g) * 0.5).to(torch.float16)
    return tokens, np.arange(args.frames) / args.fps


def write_both(args, root: Path) -> tuple[FeatureStore, Path, dict]:
    ref_dir, store_dir = root / "pt", root / "store"
    ref_dir.mkdir(parents=True)
    schema = TokenSchema("video", args.tokens, args.dim, "float16", {}, {"fps": args.fps})
    version = FeatureStore(store_dir).create_version(schema, fingerprint("bench", "-", {}, "float16", "1"))
    seconds = {"pt": 0.0, "store": 0.0}
    with version.writer() as writer:
        for k in range(args.videos):
            tokens, t = video(args, k)
            start = time.perf_counter()
            torch.save({"tokens": tokens, "t": torch.from_numpy(t)}, ref_dir / f"v{k:05d}.pt")
            seconds["pt"] += time.perf_counter() - start
            start = time.perf_counter()
            writer.add(f"v{k:05d}", tokens, t, t)
            seconds["store"] += time.perf_counter() - start
        start = time.perf_counter()
    seconds["store"] += time.perf_counter() - start  # leaving the block wrote the last shard and the commit
    os.sync()  # written pages must be clean for fadvise to evict them
    return FeatureStore(store_dir), ref_dir, seconds


def zarr_fetch(version):
    """fetch(k, f0, f1) reading the store's files with zarr-python (row ranges from the store's index)."""
    import zarr

    def fetch(k, f0, f1):
        part, r0, _ = version.index().rows[f"v{k:05d}"]
        array = zarr.open_array(f"{version.store.files.root}/{version.path}/parts/{part}/tokens", mode="r")
        return torch.from_numpy(array[r0 + f0 : r0 + f1])

    return fetch


def evict(directory: Path | None) -> None:
    """Drop the files under `directory` from the page cache (None: nothing local to drop)."""
    for path in directory.rglob("*") if directory else ():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def measure(layouts, plan, cold: bool) -> dict[str, tuple[float, float, int]]:
    """name -> (total seconds, median ms, bytes returned) over the plan. Layouts take turns on each fetch, so that
    load from other processes on a shared machine hits them alike."""
    times = {name: [] for name, _, _ in layouts}
    nbytes = dict.fromkeys(times, 0)
    for item in plan:
        for name, fetch, directory in layouts:
            if cold:
                evict(directory)
            start = time.perf_counter()
            tokens = fetch(*item)
            times[name].append(time.perf_counter() - start)
            nbytes[name] += tokens.numel() * tokens.element_size()
    return {name: (sum(t), 1e3 * float(np.median(t)), nbytes[name]) for name, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=int, default=24)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--tokens", type=int, default=729)
    p.add_argument("--dim", type=int, default=1152)
    p.add_argument("--fps", type=float, default=1.0)
    p.add_argument("--fetches", type=int, default=48)
    p.add_argument("--range-frames", type=int, default=4)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/pave_store_bench"))
    p.add_argument("--s3", action="store_true", help="also read the store from moto's S3 server on loopback")
    args = p.parse_args()

    shutil.rmtree(args.workdir, ignore_errors=True)
    store, ref_dir, write_s = write_both(args, args.workdir)
    version = store.version("video")
    mb = args.videos * args.frames * args.tokens * args.dim * 2 / 2**20
    print(f"{args.videos} videos x {args.frames} frames x {args.tokens} x {args.dim} float16 = {mb:.0f} MiB per layout;"
          f" write: pt {write_s['pt']:.1f} s, store {write_s['store']:.1f} s (checksums)")

    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.videos, args.fetches)
    first = rng.integers(0, args.frames - args.range_frames + 1, args.fetches)
    whole_plan = [(int(k), 0, args.frames) for k in ids]
    range_plan = [(int(k), int(f), int(f) + args.range_frames) for k, f in zip(ids, first)]

    def ref_fetch(k, f0, f1):  # the reference layout has to load the whole file, then slice
        return torch.load(ref_dir / f"v{k:05d}.pt")["tokens"][f0:f1]

    layouts = [("pt", ref_fetch, ref_dir), ("store", store_fetch(args, version), Path(store.files.root)),
               ("store/zarr", zarr_fetch(version), Path(store.files.root))]
    if args.s3:
        s3 = S3Copy(args, store)
        layouts += s3.layouts()
    for item in (whole_plan[0], range_plan[0]):  # the same data every way; also opens the index, as a reader would
        for _, fetch, _ in layouts[1:]:
            assert torch.equal(ref_fetch(*item), fetch(*item))
    print(f"{'case':28s} {'layout':10s} {'fetch/s':>8s} {'MiB/s':>8s} {'median ms':>10s}  vs pt")
    cases = [("whole video", whole_plan), (f"range {args.range_frames}/{args.frames} frames", range_plan)]
    for case, plan in cases:
        for cache in ("warm", "cold"):
            results = measure(layouts, plan, cold=cache == "cold")
            pt_rate = len(plan) / results["pt"][0]
            for name, (total, median_ms, nbytes) in results.items():
                rate = len(plan) / total
                ratio = f"{rate / pt_rate:.2f}x" if name != "pt" else ""
                print(f"{case + ', ' + cache:28s} {name:10s} {rate:8.1f} {nbytes / 2**20 / total:8.0f} "
                      f"{median_ms:10.2f}  {ratio}")
    if args.s3:
        print(f"\n{'case':28s} {'layout':10s} {'GET/fetch':>10s} {'KiB/fetch':>10s}  (GETs of the plan / fetches)")
        for case, plan in cases:
            for name, requests, nbytes in s3.counts(plan):
                print(f"{case:28s} {name:10s} {requests / len(plan):10.2f} {nbytes / len(plan) / 2**10:10.1f}")
        s3.stop()


def store_fetch(args, version):
    """fetch(k, f0, f1) through the featurestore API: a whole video, or the rows of frames f0:f1 by their times."""

    def fetch(k, f0, f1):
        if (f0, f1) == (0, args.frames):
            return version.get(f"v{k:05d}").to_torch()
        return version.get_range(f"v{k:05d}", f0 / args.fps, (f1 - 1) / args.fps).to_torch()

    return fetch


class S3Copy:
    """The local store copied into a bucket of moto's S3 server (its objects are the store's files, as `aws s3 sync`
    would copy them), and the ways to read it."""

    def __init__(self, args, store: FeatureStore):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from s3server import Proxy, S3Server

        self.args, self.server = args, S3Server()
        self.bucket = self.server.bucket()
        self.proxy = Proxy(self.server.endpoint)
        self.counted = self.server.reach(self.bucket.url, self.proxy.endpoint)
        remote = FeatureStore(self.bucket.url, self.bucket.storage_options)
        remote.files.fs.put(f"{store.files.root}/", f"{remote.files.root}/", recursive=True)

    def version(self, bucket, cache: str | None = None):
        return FeatureStore(bucket.url, bucket.storage_options, cache_dir=cache).version("video")

    def warm_cache(self, bucket, directory: Path):
        """A version reading through a node cache in `directory` that holds every video (one pass over them)."""
        shutil.rmtree(directory, ignore_errors=True)
        version = self.version(bucket, str(directory))
        for k in range(self.args.videos):
            version.get(f"v{k:05d}")
        return version

    def layouts(self):
        cache = self.args.workdir / "cache"
        return [("s3", store_fetch(self.args, self.version(self.bucket)), None),
                ("s3+cache", store_fetch(self.args, self.warm_cache(self.bucket, cache)), cache)]

    def counts(self, plan) -> list[tuple[str, int, int]]:
        """(layout, GET requests, response bytes) of `plan` through the logging proxy, after a first fetch that
        opens the version (commit records, part metadata), as a reader does once."""
        out = []
        for name, version in [("s3", self.version(self.counted)),
                              ("s3+cache", self.warm_cache(self.counted, self.args.workdir / "cache-counted"))]:
            fetch = store_fetch(self.args, version)
            fetch(*plan[0])
            self.proxy.log.clear()
            for item in plan:
                fetch(*item)
            gets = [r for r in self.proxy.log if r.method == "GET"]
            assert len(gets) == len(self.proxy.log), self.proxy.log  # reads only
            out.append((name, len(gets), sum(r.nbytes for r in gets)))
        return out

    def stop(self) -> None:
        self.proxy.stop()
        self.server.stop()


if __name__ == "__main__":
    main()
