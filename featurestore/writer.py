"""PartWriter: validates rows as they are added, streams them into a new part in whole shards, and makes the part
visible with one atomic commit record. A part nobody committed (crash, exception) is invisible to readers and
removed by `gc`."""
import time
import uuid
from typing import Protocol

import numpy as np
import zarr

from .features import as_numpy, nonfinite
from .ids import ID_RULE, id_problem
from .layout import create_part_arrays, digest, rows_per_shard, shard_slices, write_offsets, SHARD_BYTES
from .schema import FeatureError, TokenSchema

COMMIT_FORMAT = 1
# How often a writer refreshes its part's heartbeat, by which gc tells a live writer's part from a dead one's
# (gc's grace period must be well above it).
HEARTBEAT_S = 60.0


class PartTarget(Protocol):
    """What a PartWriter needs of the version it writes into (featurestore.store.Version), so that this module does
    not import the store, which imports it."""

    schema: TokenSchema

    def new_part_group(self, part_id: str, owner: str, now: float) -> zarr.Group: ...

    def publish(self, record: dict) -> None: ...


class PartWriter:
    """Use as a context manager: commits on clean exit; on an exception nothing becomes visible.
    The writer does not check what is already committed: take items with `Version.claim` first (it skips committed
    ones). An item committed twice is served from its earliest commit, unless the later commit `supersedes` it
    (its source changed: `Version.claim(..., again=...)` takes it back); `source` records what the item was
    made from (Version.sources).

    Input rules (checked in `add`, before anything is buffered, so a caller may catch the FeatureError, record it
    with `fail` and go on):
    - tokens: numpy array or torch tensor of exactly the schema dtype - no implicit casts (a float32 tensor for a
      float16 schema is refused). For a bfloat16 schema, torch/ml_dtypes bfloat16 or uint16 bit patterns (what
      `Features.tokens` holds) are accepted. Shape [N >= 1, tokens_per_step, dim], all finite.
    - t_start, t_end: N finite seconds, t_start non-decreasing (rows in time order; rows of several views at one
      time are ties), t_end >= t_start. Any real dtype that converts to float64 without loss.
    - extras: exactly the schema's extras, N rows of the declared trailing shape, in a dtype that numpy casts to
      the declared one safely (never lossy: int64 view ids for an int32 extra are refused).
    """

    def __init__(self, version: PartTarget, owner: str, shard_bytes: int = SHARD_BYTES):
        self.version = version
        self.owner = owner
        self.part_id = uuid.uuid4().hex
        self._schema = version.schema
        self._shard_rows = rows_per_shard(self._schema, shard_bytes)
        self._group = None  # the part's Zarr group and arrays, created at the first flush
        self._arrays: dict[str, zarr.Array] = {}
        self._pending: dict[str, list[np.ndarray]] = {name: [] for name in self._schema.row_arrays()}
        self._pending_rows = 0
        self._rows = 0  # rows added so far, flushed or pending
        self._items: dict[str, tuple[int, int]] = {}
        self._failed: dict[str, str] = {}
        self._sources: dict[str, dict] = {}
        self._supersedes: list[str] = []
        self._checksums: dict[str, list[str]] = {name: [] for name in self._schema.row_arrays()}
        self._committed = False
        self._heartbeat = 0.0

    def __enter__(self) -> "PartWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()

    def add(self, video_id: str, tokens, t_start, t_end, source: dict | None = None, supersedes: bool = False,
            **extras) -> None:
        self._check_new_id(video_id)
        rows = self._validated(video_id, tokens, t_start, t_end, extras)
        self._note(video_id, source, supersedes)
        n = len(rows["tokens"])
        for name, values in rows.items():
            self._pending[name].append(values)
        self._items[video_id] = (self._rows, self._rows + n)
        self._rows += n
        self._pending_rows += n
        if self._pending_rows >= self._shard_rows:
            self._flush(final=False)
        if self._group is not None and time.time() - self._heartbeat > HEARTBEAT_S:
            self._heartbeat = time.time()
            self._group.attrs["heartbeat"] = self._heartbeat

    def fail(self, video_id: str, reason: str, supersedes: bool = False) -> None:
        """A failure that `supersedes` an item also withdraws its earlier rows (they were made from another source)."""
        self._check_new_id(video_id)
        if not reason:
            raise FeatureError(f"item {video_id!r}: a failure needs a reason")
        self._failed[video_id] = str(reason)
        self._note(video_id, None, supersedes)

    def _note(self, video_id: str, source: dict | None, supersedes: bool) -> None:
        if source is not None:
            self._sources[video_id] = source
        if supersedes:
            self._supersedes.append(video_id)

    def commit(self) -> dict:
        """Write the remaining rows and the commit record; returns the record ({} when nothing was added)."""
        if self._committed:
            raise FeatureError(f"part {self.part_id} is already committed")
        self._committed = True
        if not self._items and not self._failed:
            return {}
        self._flush(final=True)
        if self._items:
            starts = [r0 for r0, _ in self._items.values()]
            write_offsets(self._group, list(self._items), np.array([*starts, self._rows]))
        record = {
            "format": COMMIT_FORMAT,
            "id": self.part_id,
            "owner": self.owner,
            "created": time.time(),
            "rows": self._rows,
            "shard_rows": self._shard_rows,
            "items": {video_id: list(span) for video_id, span in self._items.items()},
            "failed": self._failed,
            "checksums": self._checksums,
            "sources": self._sources,
            "supersedes": self._supersedes,
        }
        self.version.publish(record)
        return record

    def _check_new_id(self, video_id: str) -> None:
        if self._committed:
            raise FeatureError(f"part {self.part_id} is already committed; open a new writer")
        if problem := id_problem(video_id):
            raise FeatureError(f"item id {video_id!r} {problem}; an item id is {ID_RULE}")
        if video_id in self._items or video_id in self._failed:
            raise FeatureError(f"item {video_id!r} appears twice in part {self.part_id}")

    def _validated(self, video_id: str, tokens, t_start, t_end, extras: dict) -> dict[str, np.ndarray]:
        schema = self._schema

        def bad(reason: str) -> FeatureError:
            return FeatureError(f"{schema.modality} item {video_id!r}: {reason}")

        values, logical = as_numpy(tokens)
        if logical == "uint16" and schema.dtype == "bfloat16":
            logical = "bfloat16"  # bit patterns, as Features.tokens holds them
        if logical != schema.dtype:
            raise bad(f"tokens are {logical} but the schema stores {schema.dtype} (no implicit casts)")
        expected = (schema.tokens_per_step, schema.dim)
        if values.ndim != 3 or values.shape[1:] != expected or len(values) == 0:
            raise bad(f"tokens shape {tuple(values.shape)}, expected [N>=1, {expected[0]}, {expected[1]}]")
        bad_rows = np.flatnonzero(nonfinite(values, schema.dtype).any(axis=(1, 2)))
        if bad_rows.size:
            raise bad(f"tokens contain NaN/inf in rows {bad_rows[:10].tolist()}")
        n = len(values)
        if set(extras) != set(schema.extras):
            raise bad(f"extras {sorted(extras)} but the schema declares {sorted(schema.extras)}")
        rows = {"tokens": values}
        declared = schema.row_arrays()
        for name, value in {"t_start": t_start, "t_end": t_end, **extras}.items():
            trailing, dtype = declared[name]
            array, logical = as_numpy(value)
            if logical != array.dtype.name or not np.can_cast(array.dtype, dtype, "safe"):
                raise bad(f"{name} is {logical}, which does not convert to {dtype} without loss")
            if array.shape != (n, *trailing):
                raise bad(f"{name} shape {array.shape}, expected {(n, *trailing)} (one per token row)")
            rows[name] = array.astype(dtype, copy=False)
        t0, t1 = rows["t_start"], rows["t_end"]
        if not (np.isfinite(t0).all() and np.isfinite(t1).all()):
            raise bad("timestamps contain NaN/inf")
        if (np.diff(t0) < 0).any():
            raise bad(f"t_start must be non-decreasing; it drops after row {int(np.argmax(np.diff(t0) < 0))}")
        if (t1 < t0).any():
            raise bad(f"t_end < t_start in rows {np.flatnonzero(t1 < t0)[:10].tolist()}")
        return rows

    def _flush(self, final: bool) -> None:
        """Append pending rows to the part: only whole shards unless `final`, so every shard is written once, in
        one piece, by this writer alone."""
        n = self._pending_rows if final else self._pending_rows // self._shard_rows * self._shard_rows
        if n == 0:
            return
        if self._group is None:
            self._heartbeat = time.time()
            self._group = self.version.new_part_group(self.part_id, self.owner, self._heartbeat)
            self._arrays = create_part_arrays(self._group, self._schema, self._shard_rows)
        for name, pieces in self._pending.items():
            values = np.concatenate(pieces)
            self._arrays[name].append(values[:n])
            self._checksums[name] += [digest(values[s]) for s in shard_slices(n, self._shard_rows)]
            self._pending[name] = [values[n:]]
        self._pending_rows -= n
