"""Full check of one version's committed parts (Version.verify): every part's arrays against its commit record
(shapes, dtypes, per-shard value checksums, the part's own offsets index), plus a NaN/inf scan of tokens and
timestamp sanity per item. Reads every committed shard once; returns human-readable problems, [] when clean."""
import numpy as np
import zarr

from .features import nonfinite
from .layout import digest, shard_slices
from .schema import TokenSchema


def verify_parts(zarr_store, path: str, schema: TokenSchema, records: list[dict]) -> list[str]:
    """The problems of the parts that `records` (commit records) commit under the version at `path`."""
    problems = []
    for record in records:
        if record["items"]:
            problems += [f"{path} part {record['id']}: {p}" for p in _verify_part(zarr_store, path, schema, record)]
    return problems


def _verify_part(zarr_store, path: str, schema: TokenSchema, record: dict) -> list[str]:
    rows, shard_rows = record["rows"], record["shard_rows"]
    try:
        group = zarr.open_group(zarr_store, path=f"{path}/parts/{record['id']}", mode="r", zarr_format=3)
        arrays = {name: group[name] for name in schema.row_arrays()}
        offsets, listed = group["offsets"][:], group.attrs["items"]
    except (FileNotFoundError, KeyError, ValueError) as e:
        return [f"arrays or index missing ({e!r})"]

    problems = _index_problems(record, offsets, listed)
    for name, (trailing, dtype) in schema.row_arrays().items():
        if arrays[name].shape != (rows, *trailing) or arrays[name].dtype != dtype:
            problems.append(f"{name} is {arrays[name].shape} {arrays[name].dtype}, expected {(rows, *trailing)} {dtype}")
    if problems:
        return problems

    starts = offsets[:-1]
    for name, array in arrays.items():
        for k, rows_k in enumerate(shard_slices(rows, shard_rows)):
            try:
                values = array[rows_k]
            except Exception as e:  # any codec/format error while decoding a damaged shard
                problems.append(f"{name} shard {k} (rows {rows_k.start}:{rows_k.stop}) does not decode: {e!r}")
                continue
            if digest(values) != record["checksums"][name][k]:
                problems.append(f"{name} shard {k} (rows {rows_k.start}:{rows_k.stop}) checksum mismatch")
            if name == "tokens":
                bad = rows_k.start + np.flatnonzero(nonfinite(values, schema.dtype).any(axis=(1, 2)))
                for row in bad[:10]:
                    problems.append(f"tokens row {row} (item {listed[np.searchsorted(starts, row, 'right') - 1]!r}) "
                                    "has NaN/inf")
    if not any("does not decode" in p for p in problems):
        problems += _time_problems(arrays["t_start"][:], arrays["t_end"][:], listed, offsets)
    return problems


def _index_problems(record: dict, offsets: np.ndarray, listed: list[str]) -> list[str]:
    """The commit record, the part's `offsets` and its item list must describe the same back-to-back row ranges."""
    spans = sorted((r0, r1, item) for item, (r0, r1) in record["items"].items())
    bounds = [0] + [r1 for _, r1, _ in spans]
    if [r0 for r0, _, _ in spans] != bounds[:-1] or bounds[-1] != record["rows"]:
        return [f"commit record row ranges do not tile rows 0:{record['rows']}"]
    if [item for _, _, item in spans] != listed or offsets.tolist() != bounds:
        return ["the part's offsets/items disagree with its commit record"]
    return []


def _time_problems(t_start: np.ndarray, t_end: np.ndarray, items: list[str], offsets: np.ndarray) -> list[str]:
    problems = []
    for item, r0, r1 in zip(items, offsets[:-1], offsets[1:]):
        t0, t1 = t_start[r0:r1], t_end[r0:r1]
        if not (np.isfinite(t0).all() and np.isfinite(t1).all()):
            problems.append(f"item {item!r}: non-finite timestamps")
        elif (np.diff(t0) < 0).any() or (t1 < t0).any():
            problems.append(f"item {item!r}: timestamps out of order")
    return problems
