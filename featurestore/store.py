"""FeatureStore (a Zarr v3 root on a local path or fsspec URL) and Version (one modality x fingerprint).

Layout:
    STORE/zarr.json                                  root group
    STORE/<modality>/<fingerprint id>/zarr.json      group, attrs {schema, fingerprint}
        parts/<part id>/{tokens,t_start,t_end,<extras>,offsets}   Zarr v3 sharded arrays written by one writer
        commits/<part id>.json                       commit record: what makes a part visible
        claims/<item key>/<generation>.json          item leases of concurrent writers

Readers build their index from commit records only, so a part whose writer died is never seen. If an item was
committed twice (a writer kept writing after its lease expired and another took over), the earliest commit wins.
Objects hold only the URL/options and lazily built caches that are not pickled: safe to ship to Ray tasks."""
import os
import socket
import time
import uuid
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import zarr

from . import claims
from .features import Features
from .files import Files
from .layout import SHARD_BYTES
from .reader import open_rows
from .schema import NAME, Fingerprint, FeatureError, TokenSchema
from .writer import PartWriter


class ItemNotFound(KeyError):
    """The item has no committed rows in this version (missing, or every attempt failed: the message says why)."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0])


@dataclass(frozen=True)
class VersionInfo:
    modality: str
    fingerprint_id: str
    spec: dict
    schema: TokenSchema
    n_ok: int
    n_failed: int


@dataclass
class _Index:
    records: list[dict]  # commit records, oldest first
    rows: dict[str, tuple[str, int, int]]  # item -> (part id, first row, end row)
    failed: dict[str, str]  # item -> latest reason, only items with no committed rows


class _Cached:
    """Objects sent to Ray tasks: pickle the constructor state only, rebuild caches lazily on the other side."""

    _state: tuple[str, ...] = ()

    def __getstate__(self) -> dict:
        return {k: self.__dict__[k] for k in self._state}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


class FeatureStore(_Cached):
    _state = ("url", "storage_options")

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = os.fspath(url)
        self.storage_options = dict(storage_options or {})

    @cached_property
    def files(self) -> Files:
        return Files(self.url, self.storage_options)

    @cached_property
    def zarr_store(self) -> zarr.abc.store.Store:
        if self.files.local:
            return zarr.storage.LocalStore(self.files.root)
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=self.storage_options)

    def versions(self, modality: str | None = None) -> list[VersionInfo]:
        out = []
        for version in self._all_versions(modality):
            index = version.index()
            out.append(
                VersionInfo(
                    modality=version.schema.modality,
                    fingerprint_id=version.fingerprint.id,
                    spec=version.fingerprint.spec,
                    schema=version.schema,
                    n_ok=len(index.rows),
                    n_failed=len(index.failed),
                )
            )
        return out

    def _ensure_group(self, path: str, attributes: dict | None = None) -> None:
        """Create the group unless it exists. Jobs that start together race to create it: zarr's mode "a" checks,
        then refuses to create over a group that appeared in between; that group is the one wanted (its definition
        is checked by the caller)."""
        try:
            zarr.open_group(self.zarr_store, path=path, mode="a", attributes=attributes)
        except zarr.errors.ContainsGroupError:
            pass

    def create_version(self, schema: TokenSchema, fp: Fingerprint) -> "Version":
        """Create the version, or return it if it exists with the same schema and fingerprint spec."""
        if fp.spec.get("dtype") != schema.dtype:
            raise FeatureError(f"fingerprint dtype {fp.spec.get('dtype')!r} != schema dtype {schema.dtype!r}")
        attrs = {"schema": schema.to_json(), "fingerprint": {"id": fp.id, "spec": fp.spec}}
        path = f"{schema.modality}/{fp.id}"
        self._ensure_group(path, attrs)
        self._ensure_group(f"{path}/parts")
        version = self._open_version(path)
        if version.schema != schema or version.fingerprint != fp:
            raise FeatureError(
                f"version {path} exists with a different definition: stored {version.schema}, "
                f"{version.fingerprint.spec}; requested {schema}, {fp.spec}. "
                "A fingerprint must change when what it describes changes."
            )
        return version

    def version(self, modality: str, fingerprint_id: str | None = None) -> "Version":
        """The version of `modality` whose fingerprint id starts with `fingerprint_id` (the only one if None)."""
        candidates = [
            v for v in self._all_versions(modality) if v.fingerprint.id.startswith(fingerprint_id or "")
        ]
        if len(candidates) != 1:
            known = [v.fingerprint.id for v in self._all_versions(modality)]
            if not known:
                have = sorted({v.schema.modality for v in self._all_versions(None)})
                raise FeatureError(f"{self.url} has no {modality!r} features (it has: {', '.join(have) or 'nothing'})")
            wanted = f"fingerprint {fingerprint_id!r}" if fingerprint_id else "a single version"
            raise FeatureError(f"{self.url}: {wanted} of {modality!r} not found unambiguously; versions: {known}")
        return candidates[0]

    def gc(self, keep: list[str], grace_s: float = 3600.0, dry_run: bool = False) -> list[str]:
        """Remove every version whose fingerprint id is not in `keep`, and in kept versions the parts nobody
        committed whose writer has not shown life for `grace_s`, leftover tmp files, and claims no writer needs.
        Returns the removed paths (relative to the store). Unknown ids in `keep` are an error: a typo must not
        delete everything."""
        versions = self._all_versions(None)
        unknown = set(keep) - {v.fingerprint.id for v in versions}
        if unknown:
            raise FeatureError(f"unknown fingerprint ids to keep: {sorted(unknown)}; nothing removed")
        doomed = []
        for version in versions:
            if version.fingerprint.id in keep:
                doomed += version.garbage(grace_s)
            else:
                doomed.append(version.path)
        if not dry_run:
            for path in doomed:
                self.files.remove(path)
        return doomed

    def _all_versions(self, modality: str | None) -> list["Version"]:
        modalities = [modality] if modality else self.files.children("", "directory")
        return [
            self._open_version(f"{m}/{fp}")
            for m in modalities
            if NAME.match(m)
            for fp in self.files.children(m, "directory")
            if self.files.exists(f"{m}/{fp}/zarr.json")
        ]

    def _open_version(self, path: str) -> "Version":
        attrs = zarr.open_group(self.zarr_store, path=path, mode="r").attrs
        fp = attrs["fingerprint"]
        return Version(self, TokenSchema.from_json(attrs["schema"]), Fingerprint(fp["id"], fp["spec"]))


class Version(_Cached):
    _state = ("store", "schema", "fingerprint")

    def __init__(self, store: FeatureStore, schema: TokenSchema, fingerprint: Fingerprint):
        self.store = store
        self.schema = schema
        self.fingerprint = fingerprint
        self.path = f"{schema.modality}/{fingerprint.id}"
        self._index: _Index | None = None  # snapshot of the commit records, built on first use
        self._parts: dict[str, dict] = {}  # part id -> opened arrays and cached row times

    def __repr__(self) -> str:
        return f"Version({self.store.url!r}, {self.path!r})"

    # ---- reading ----

    def index(self, fresh: bool = False) -> _Index:
        if self._index is None or fresh:
            records = [self.store.files.read_json(f"{self.path}/commits/{n}") for n in self._commit_names()]
            records.sort(key=lambda r: (r["created"], r["id"]))
            rows, failed = {}, {}
            for record in records:
                for item, (r0, r1) in record["items"].items():
                    rows.setdefault(item, (record["id"], r0, r1))
                failed.update(record["failed"])
            self._index = _Index(records, rows, {k: v for k, v in failed.items() if k not in rows})
        return self._index

    def _commit_names(self) -> list[str]:
        return [n for n in self.store.files.children(f"{self.path}/commits", "file") if n.endswith(".json")]

    def committed_items(self) -> set[str]:
        return set(self.index().rows)

    def items(self) -> list[str]:
        return sorted(self.index().rows)

    def failures(self) -> dict[str, str]:
        return dict(self.index().failed)

    def get(self, video_id: str) -> Features:
        part, r0, r1 = self._locate(video_id)
        return self._read(video_id, part, np.arange(r0, r1))

    def get_range(self, video_id: str, t0: float, t1: float) -> Features:
        """Rows of `video_id` whose [t_start, t_end] overlaps [t0, t1] (possibly none)."""
        part, r0, r1 = self._locate(video_id)
        t_start, t_end = self._part(part)["times"]
        hit = r0 + np.flatnonzero((t_start[r0:r1] <= t1) & (t_end[r0:r1] >= t0))
        return self._read(video_id, part, hit)

    def _locate(self, video_id: str) -> tuple[str, int, int]:
        index = self.index()
        if video_id in index.rows:
            return index.rows[video_id]
        why = f"failed: {index.failed[video_id]}" if video_id in index.failed else "not committed"
        raise ItemNotFound(f"{self.path}: item {video_id!r} {why}")

    def _read(self, video_id: str, part: str, rows: np.ndarray) -> Features:
        """Read `rows` (sorted) of a part: one slice per array over the span they cover, filtered only if the span
        has gaps (time ranges whose rows are not contiguous)."""
        opened = self._part(part)
        span = slice(int(rows[0]), int(rows[-1]) + 1) if rows.size else slice(0, 0)
        keep = None if rows.size == span.stop - span.start else rows - span.start
        try:
            arrays = {name: rows(span) for name, rows in opened["arrays"].items()}
        except FeatureError as err:
            raise FeatureError(f"{self.path}: item {video_id!r}: {err}") from None
        if keep is not None:
            arrays = {name: values[keep] for name, values in arrays.items()}
        t_start, t_end = (t[rows] for t in opened["times"])
        extras = {name: arrays[name] for name in self.schema.extras}
        return Features(video_id, arrays["tokens"], t_start, t_end, extras, self.schema)

    def _part(self, part: str) -> dict:
        """Arrays of a part, opened once; its t_start/t_end (16 bytes a row) are read whole and kept, so that a
        fetch reads only the tokens and extras it returns."""
        if part not in self._parts:
            path = f"{self.path}/parts/{part}"
            group = zarr.open_group(self.store.zarr_store, path=path, mode="r")
            names = ["tokens", *self.schema.extras]
            self._parts[part] = {
                "arrays": {name: open_rows(self.store.files, f"{path}/{name}", group[name]) for name in names},
                "times": (group["t_start"][:], group["t_end"][:]),
            }
        return self._parts[part]

    def verify(self) -> list[str]:
        from .verify import verify_version

        return verify_version(self)

    # ---- writing ----

    def claim(self, video_ids, owner: str, lease_s: float = 600) -> list[str]:
        """The ids `owner` may write now: not committed, and not claimed by another owner whose lease is live."""
        committed = self.index(fresh=True).rows
        todo = [v for v in video_ids if v not in committed]
        return claims.claim(self.store.files, f"{self.path}/claims", todo, owner, lease_s)

    def writer(self, owner: str | None = None, shard_bytes: int = SHARD_BYTES) -> PartWriter:
        return PartWriter(self, owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}", shard_bytes)

    def new_part_group(self, part_id: str, owner: str, now: float) -> zarr.Group:
        attrs = {"owner": owner, "created": now, "heartbeat": now}
        return zarr.create_group(self.store.zarr_store, path=f"{self.path}/parts/{part_id}", attributes=attrs)

    def publish(self, record: dict) -> None:
        """Make a written part visible: one atomic write of its commit record."""
        self.store.files.put_json(f"{self.path}/commits/{record['id']}.json", record)
        self._index = None

    # ---- maintenance ----

    def garbage(self, grace_s: float) -> list[str]:
        """Paths gc may remove in this version: uncommitted parts idle for `grace_s`, stale tmp files and claims."""
        files = self.store.files
        committed_parts = {r["id"] for r in self.index(fresh=True).records}
        out = []
        for part in files.children(f"{self.path}/parts", "directory"):
            if part not in committed_parts and self._idle_for(part) > grace_s:
                out.append(f"{self.path}/parts/{part}")
        out += files.stale_tmp_files(self.path, grace_s)
        out += claims.removable(files, f"{self.path}/claims", set(self.index().rows))
        return out

    def _idle_for(self, part: str) -> float:
        try:
            attrs = zarr.open_group(self.store.zarr_store, path=f"{self.path}/parts/{part}", mode="r").attrs
            return time.time() - attrs["heartbeat"]
        except (FileNotFoundError, KeyError, ValueError):  # metadata not there yet or torn: treat it as alive
            return 0.0
