"""FeatureStore (a Zarr v3 root on a local path or fsspec URL) and Version (one modality x fingerprint).

Layout:
    STORE/zarr.json                                  root group
    STORE/<modality>/<fingerprint id>/zarr.json      group, attrs {schema, fingerprint, created}: the definition
        parts/<part id>/{tokens,t_start,t_end,<extras>,offsets}   Zarr v3 sharded arrays written by one writer
        commits/<part id>.json                       commit record: what makes a part visible
        claims/<item key>/<generation>.json          item leases of concurrent writers
        removing/<gc run>.json                       a gc run is removing the version (FeatureStore._remove)

Readers build their index from commit records only, so a part whose writer died is never seen. If an item was
committed twice (a writer kept writing after its lease expired and another took over), the earliest commit wins,
unless a later commit record lists the item under "supersedes" (its source changed): from that record on, the item
is what that record says (its rows, or its failure).
A version directory without a readable definition is skipped by readers and reported by `damage()`.
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
from .cache import DEFAULT_BYTES, NodeCache
from .features import Features
from .files import Files
from .layout import SHARD_BYTES
from .reader import open_rows
from .schema import NAME, Fingerprint, FeatureError, TokenSchema
from .verify import verify_parts
from .writer import PartWriter

GROUP = {"zarr_format": 3, "node_type": "group"}  # Zarr v3 group metadata, less the attributes
REMOVING = "removing"


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


@dataclass(frozen=True)
class UncommittedPart:
    """A part without a commit record: a writer's part in progress, a dead writer's leftover, or a finished part
    whose record was lost. Readers never see it; gc removes it once `spared` is empty."""
    path: str
    items: list[str] | None  # the part's item list, written when its writer finished it; None before that
    unserved: list[str]  # its items that no commit record serves (a finished part's record lost means these)
    nbytes: int
    idle_s: float | None  # since its writer's last heartbeat; None while its metadata is unwritten or torn
    spared: str  # why gc keeps it: its writer may still be writing it ("" when gc may remove it)

    @property
    def state(self) -> str:
        held = "unfinished" if self.items is None else f"{len(self.items)} items"
        idle = "idle ?" if self.idle_s is None else f"idle {_duration(self.idle_s)}"
        return f"no commit record ({held}, {self.nbytes:,} bytes, {idle})"

    @property
    def lost(self) -> bool:
        """Finished, unserved items and past the grace period: its commit record was lost (or never written), so
        these items are not read, and gc will remove them. Anything else is a writer at work or its leftover."""
        return not self.spared and bool(self.unserved)


@dataclass
class GcReport:
    removed: dict[str, str]  # path (relative to the store) -> why it could go
    kept: dict[str, str]  # versions not in --keep and uncommitted parts that gc spared -> why


@dataclass
class _Index:
    records: list[dict]  # commit records, oldest first
    rows: dict[str, tuple[str, int, int]]  # item -> (part id, first row, end row)
    failed: dict[str, str]  # item -> latest reason, only items with no committed rows
    sources: dict[str, dict | None]  # committed item -> what its rows were made from (None: not recorded)


class _Cached:
    """Objects sent to Ray tasks: pickle the constructor state only, rebuild caches lazily on the other side."""

    _state: tuple[str, ...] = ()

    def __getstate__(self) -> dict:
        return {k: self.__dict__[k] for k in self._state}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)


class FeatureStore(_Cached):
    """A store at a local path or fsspec URL (`storage_options`: the filesystem's, e.g. s3fs's endpoint_url, key,
    secret). `cache_dir`: a node-local directory where reads from an object store keep the bytes they fetch, at most
    `cache_bytes` of them (cache.py; shared by the node's processes); ignored for local stores."""
    _state = ("url", "storage_options", "cache_dir", "cache_bytes")

    def __init__(self, url: str, storage_options: dict | None = None, cache_dir: str | None = None,
                 cache_bytes: int = DEFAULT_BYTES):
        self.url = os.fspath(url)
        self.storage_options = dict(storage_options or {})
        self.cache_dir = None if cache_dir is None else os.fspath(cache_dir)
        self.cache_bytes = cache_bytes

    @cached_property
    def files(self) -> Files:
        return Files(self.url, self.storage_options)

    @cached_property
    def cache(self) -> NodeCache | None:
        return NodeCache(self.cache_dir, self.cache_bytes) if self.cache_dir and not self.files.local else None

    @cached_property
    def zarr_store(self) -> zarr.abc.store.Store:
        if self.files.local:
            return zarr.storage.LocalStore(self.files.root)
        options = {**self.storage_options, "use_listings_cache": False}  # as Files: see files.py
        return zarr.storage.FsspecStore.from_url(self.url, storage_options=options)

    def check_root(self) -> None:
        """FeatureError unless the store's URL is a folder: a mistyped path, or a file, must not read as an empty,
        healthy store."""
        if not self.files.exists(""):
            raise FeatureError(f"{self.url}: no feature store there; check the path")
        if not self.files.fs.isdir(self.files.root):
            raise FeatureError(f"{self.url}: a file, not a feature store; give the store's folder")

    def versions(self, modality: str | None = None) -> list[VersionInfo]:
        """The readable versions (`damage()` says what is wrong with the others)."""
        out = []
        for version in self.scan(modality)[0]:
            try:
                index = version.index()
            except FeatureError:  # a commit record is torn (damage() reports it), or gc removed it since the scan
                continue
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

    def damage(self) -> list[str]:
        """What a cheap look (no values read; `Version.verify` reads them) finds wrong, one line each: version
        directories without a readable definition, torn commit records, committed parts whose arrays are gone."""
        versions, incomplete = self.scan()
        return list(incomplete.values()) + [problem for version in versions for problem in version.damage()]

    def create_version(self, schema: TokenSchema, fp: Fingerprint) -> "Version":
        """Create the version, or return it if it exists with the same schema and fingerprint spec."""
        if fp.spec.get("dtype") != schema.dtype:
            raise FeatureError(f"fingerprint dtype {fp.spec.get('dtype')!r} != schema dtype {schema.dtype!r}")
        path = f"{schema.modality}/{fp.id}"
        for group in ("", f"{schema.modality}/"):  # the Zarr groups above the version
            self.files.create_json(f"{group}zarr.json", {**GROUP, "attributes": {}})
        # The definition appears whole, in one exclusive create, before anything else of the version exists: racing
        # creators agree on one, and no reader or gc ever sees the version without it.
        definition = {**GROUP, "attributes": {"schema": schema.to_json(), "fingerprint": {"id": fp.id, "spec": fp.spec},
                                              "created": time.time()}}
        if not self.files.create_json(f"{path}/zarr.json", definition):
            try:
                self._read_version(path)
            except FeatureError:  # lost or torn, e.g. by a gc before this one: restore it, it is this definition
                self.files.put_json(f"{path}/zarr.json", definition)
        version = self._read_version(path)
        if version.schema != schema or version.fingerprint != fp:
            raise FeatureError(
                f"version {path} exists with a different definition: stored {version.schema}, "
                f"{version.fingerprint.spec}; requested {schema}, {fp.spec}. "
                "A fingerprint must change when what it describes changes."
            )
        version.check_alive()
        return version

    def version(self, modality: str, fingerprint_id: str | None = None) -> "Version":
        """The version of `modality` whose fingerprint id starts with `fingerprint_id` (the only one if None)."""
        versions, incomplete = self.scan(modality)
        candidates = [v for v in versions if v.fingerprint.id.startswith(fingerprint_id or "")]
        if len(candidates) != 1:
            known = [v.fingerprint.id for v in versions]
            if not known:
                have = sorted({v.schema.modality for v in self.scan()[0]})
                unreadable = f"; unreadable: {'; '.join(incomplete.values())}" if incomplete else ""
                raise FeatureError(f"{self.url} has no {modality!r} features (it has: {', '.join(have) or 'nothing'})"
                                   + unreadable)
            wanted = f"fingerprint {fingerprint_id!r}" if fingerprint_id else "a single version"
            raise FeatureError(f"{self.url}: {wanted} of {modality!r} not found unambiguously; versions: {known}")
        return candidates[0]

    def gc(self, keep: list[str], grace_s: float = 3600.0, dry_run: bool = False) -> GcReport:
        """Remove every version whose fingerprint id is not in `keep` (version directories without a readable
        definition too) unless a writer may still use it: anything of it is younger than `grace_s`, or a claim on
        one of its items is live. In kept versions, remove the parts nobody committed that are idle for `grace_s`
        and whose writer holds no live claim, leftover tmp files, claims no writer needs, and the marks of gc runs
        that stopped midway (older than `grace_s`). Returns what it removed and what it spared, each with why.
        Unknown ids in `keep` are an error: a typo must not delete everything. Safe beside writers and other gc
        runs (_remove)."""
        dirs = [f"{m}/{fp}" for m in self.files.children("", "directory") if NAME.match(m)
                for fp in self.files.children(m, "directory")]
        unknown = set(keep) - {path.rsplit("/", 1)[1] for path in dirs}
        if unknown:
            raise FeatureError(f"unknown fingerprint ids to keep: {sorted(unknown)}; nothing removed")
        report = GcReport({}, {})
        for path in dirs:
            if path.rsplit("/", 1)[1] not in keep:
                if not self._contents(path):  # nothing in it but tmp files: a version being created
                    continue
                if not self._in_use(path, grace_s) and (dry_run or self._remove(path, grace_s)):
                    report.removed[path] = "not in --keep, and idle"
                elif self.files.exists(path):  # (else another gc run removed it meanwhile)
                    report.kept[path] = (f"not in --keep, but a writer may use it (something of it is younger than "
                                         f"{_duration(grace_s)}, or a claim on it is live)")
                continue
            try:
                version = self._read_version(path)
            except FeatureError:  # kept but unreadable: left as it is, damage() reports it
                continue
            doomed, spared = version.garbage(grace_s)
            if not dry_run:
                for garbage in doomed:
                    self.files.remove(garbage)
            report.removed.update(doomed)
            report.kept.update(spared)
        return report

    def _remove(self, path: str, grace_s: float) -> bool:
        """Remove the version directory at `path` unless a writer turns out to use it; True if removed.

        gc marks the version, then looks for writers; a writer shows itself (a claim, a part), then looks for marks
        (Version.check_alive). So either gc sees the writer and backs off, or the writer sees the mark and stops;
        they cannot both miss each other. The definition goes first, so that readers stop seeing the version at
        once, the mark last. Another gc run may do the same at the same time: each decides for itself, and what
        the other removed already is fine. What a writer put back meanwhile stays: it saw the mark and stopped, and
        a later gc run removes what it left."""
        mark = f"{path}/{REMOVING}/{uuid.uuid4().hex}.json"
        try:
            self.files.put_json(mark, {"created": time.time()})
        except FileNotFoundError:  # another gc run removed the directory under the mark, every time: it is gone
            return False
        if self._in_use(path, grace_s):
            self.files.remove(mark)
            return False
        self.files.remove(f"{path}/zarr.json")
        for name in self._contents(path) - {REMOVING}:
            self.files.remove(f"{path}/{name}")
        self.files.remove(mark)
        for directory in (f"{path}/{REMOVING}", path):  # unless another gc run's mark, or a writer since, is there
            self.files.remove_empty_dir(directory)
        return True

    def _in_use(self, path: str, grace_s: float) -> bool:
        """Whether a writer may be using the version directory at `path`: its definition, a commit record or a part's
        heartbeat is younger than `grace_s`, or a claim on one of its items is live."""
        files, now = self.files, time.time()
        stamps = [_attrs(files, path).get("created")]
        stamps += [_attrs(files, f"{path}/parts/{part}").get("heartbeat")
                   for part in files.children(f"{path}/parts", "directory")]
        stamps += [_created(files, f"{path}/commits/{name}") for name in files.children(f"{path}/commits", "file")]
        young = any(isinstance(t, (int, float)) and now - t < grace_s for t in stamps)
        return young or bool(claims.live(files, f"{path}/claims"))

    def scan(self, modality: str | None = None) -> tuple[list["Version"], dict[str, str]]:
        """The versions, and the version directories that hold data but no readable definition (path -> what is
        wrong). Directories a gc run is removing, or that hold nothing but claims or tmp files (a version being
        created, a writer that lost a race with gc), are neither."""
        versions, incomplete = [], {}
        for m in [modality] if modality else self.files.children("", "directory"):
            for fp in self.files.children(m, "directory") if NAME.match(m) else []:
                path = f"{m}/{fp}"
                try:
                    versions.append(self._read_version(path))
                except FeatureError as e:
                    if self._contents(path) & {"zarr.json", "commits", "parts"} and not self._being_removed(path):
                        incomplete[path] = (f"{e}, so its items cannot be read: rerun the job that wrote it (same "
                                            "settings) to restore it, or `pave store gc` removes it")
        return versions, incomplete

    def _read_version(self, path: str) -> "Version":
        """The version defined at `path`; FeatureError saying what is wrong when its definition is missing or torn."""
        try:
            attrs = self.files.read_json(f"{path}/zarr.json")["attributes"]
            fp = Fingerprint(attrs["fingerprint"]["id"], attrs["fingerprint"]["spec"])
            version = Version(self, TokenSchema.from_json(attrs["schema"]), fp)
        except FileNotFoundError:
            raise FeatureError(f"{path}: the version's definition (zarr.json) is missing") from None
        except (ValueError, KeyError, TypeError) as e:
            raise FeatureError(f"{path}: the version's definition (zarr.json) is torn or incomplete ({e!r})") from None
        if version.path != path:
            raise FeatureError(f"{path}: its zarr.json defines {version.path}")
        return version

    def _contents(self, path: str) -> set[str]:
        return set(self.files.children(path, "file")) | set(self.files.children(path, "directory"))

    def _being_removed(self, path: str) -> bool:
        return bool(self.files.children(f"{path}/{REMOVING}", "file"))


def _created(files: Files, path: str) -> float:
    """The "created" time in the JSON file at `path` (a commit record, a gc mark); 0 when it is gone or torn."""
    try:
        return float(files.read_json(path)["created"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return 0.0


def _attrs(files: Files, group: str) -> dict:
    """The attributes of a Zarr group; {} while its metadata is not written yet, or when it is gone or torn."""
    try:
        attrs = files.read_json(f"{group}/zarr.json")["attributes"]
        return attrs if isinstance(attrs, dict) else {}
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return {}


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds} s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60} min"


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
        """The commit records, read once (or again with `fresh`); FeatureError naming a record that is torn."""
        if self._index is None or fresh:
            records = [self._commit_record(name) for name in self._commit_names()]
            records.sort(key=lambda r: (r["created"], r["id"]))
            rows, failed, sources = {}, {}, {}
            for record in records:
                for item in record.get("supersedes", ()):
                    rows.pop(item, None)
                for item, (r0, r1) in record["items"].items():
                    if item not in rows:
                        rows[item] = (record["id"], r0, r1)
                        sources[item] = record.get("sources", {}).get(item)
                failed.update(record["failed"])
            self._index = _Index(records, rows, {k: v for k, v in failed.items() if k not in rows},
                                 {k: sources[k] for k in rows})
        return self._index

    def _commit_record(self, name: str) -> dict:
        fields = {"id", "created", "items", "failed"}
        try:
            record = self.store.files.read_json(f"{self.path}/commits/{name}")
            if not isinstance(record, dict) or fields - set(record):
                raise ValueError(f"not a commit record with {sorted(fields)}")
        except (FileNotFoundError, ValueError) as e:  # FileNotFoundError: a gc run is removing the version
            raise FeatureError(f"{self.path}: commit record {name} is unreadable ({e}); run `pave store verify`") \
                from None
        return record

    def _commit_names(self) -> list[str]:
        return [n for n in self.store.files.children(f"{self.path}/commits", "file") if n.endswith(".json")]

    def committed_items(self) -> set[str]:
        return set(self.index().rows)

    def items(self) -> list[str]:
        return sorted(self.index().rows)

    def sources(self) -> dict[str, dict | None]:
        """Committed item -> the source identity its writer recorded (PartWriter.add), None when none was."""
        return dict(self.index().sources)

    def failures(self) -> dict[str, str]:
        return dict(self.index().failed)

    def get(self, video_id: str) -> Features:
        return self._read(video_id)

    def get_range(self, video_id: str, t0: float, t1: float) -> Features:
        """Rows of `video_id` whose [t_start, t_end] overlaps [t0, t1] (possibly none)."""
        return self._read(video_id, (t0, t1))

    def _locate(self, video_id: str) -> tuple[str, int, int]:
        index = self.index()
        if video_id in index.rows:
            return index.rows[video_id]
        why = f"failed: {index.failed[video_id]}" if video_id in index.failed else "not committed"
        raise ItemNotFound(f"{self.path}: item {video_id!r} {why}")

    def _read(self, video_id: str, window: tuple[float, float] | None = None) -> Features:
        """The item's rows (those overlapping `window`, if given): one slice per array over the span they cover,
        filtered only if the span has gaps (time ranges whose rows are not contiguous)."""
        part, r0, r1 = self._locate(video_id)
        try:
            opened = self._part(part)
            rows = np.arange(r0, r1)
            if window is not None:
                t_start, t_end = (t[r0:r1] for t in opened["times"])
                rows = rows[(t_start <= window[1]) & (t_end >= window[0])]
            span = slice(int(rows[0]), int(rows[-1]) + 1) if rows.size else slice(0, 0)
            arrays = {name: opened["arrays"][name](span) for name in ["tokens", *self.schema.extras]}
        except FeatureError as err:
            raise FeatureError(f"{self.path}: item {video_id!r}: {err}") from None
        if rows.size != span.stop - span.start:
            arrays = {name: values[rows - span.start] for name, values in arrays.items()}
        t_start, t_end = (t[rows] for t in opened["times"])
        extras = {name: arrays[name] for name in self.schema.extras}
        return Features(video_id, arrays["tokens"], t_start, t_end, extras, self.schema)

    def _part(self, part: str) -> dict:
        """Arrays of a part, opened once; its t_start/t_end (16 bytes a row) are read whole and kept, so that a
        fetch reads only the tokens and extras it returns. Every array is read through open_rows, whose reads fail
        on a missing chunk instead of returning zeros."""
        if part not in self._parts:
            path = f"{self.path}/parts/{part}"
            try:
                group = zarr.open_group(self.store.zarr_store, path=path, mode="r", zarr_format=3)  # no v2 probes
                arrays = {name: open_rows(self.store.files, f"{path}/{name}", group[name], self.store.cache)
                          for name in self.schema.row_arrays()}
            except (FileNotFoundError, KeyError) as e:  # the part's group or an array is gone
                raise FeatureError(f"{path}: committed, but its arrays are gone ({e!r}); run `pave store verify`") \
                    from None
            every_row = slice(0, group["t_start"].shape[0])
            self._parts[part] = {"arrays": arrays, "times": (arrays["t_start"](every_row), arrays["t_end"](every_row))}
        return self._parts[part]

    def verify(self) -> list[str]:
        try:
            records = self.index(fresh=True).records
        except FeatureError as e:  # an unreadable commit record; the message names it
            return [str(e)]
        return verify_parts(self.store.zarr_store, self.path, self.schema, records)

    def damage(self) -> list[str]:
        """What a cheap look finds wrong (verify also reads the values): a torn commit record, committed parts whose
        arrays are gone. [] when a gc run is removing the version or removed it."""
        try:
            records = self.index(fresh=True).records
            problems = []
        except FeatureError as e:
            records, problems = [], [str(e)]
        arrays = ["offsets", *self.schema.row_arrays()]
        for record in filter(lambda r: r["items"], records):  # a part of failures only has no arrays
            part = f"{self.path}/parts/{record['id']}"
            missing = [name for name in arrays if not self.store.files.exists(f"{part}/{name}/zarr.json")]
            if missing:
                problems.append(f"{part}: committed ({len(record['items'])} items), but its arrays {missing} are gone; "
                                "run `pave store verify`")
        if problems and (not self.store.files.exists(f"{self.path}/zarr.json") or self.store._being_removed(self.path)):
            return []  # a gc run removes the version: what it took already is not damage
        return problems

    def check_alive(self) -> None:
        """Raise FeatureError if a gc run is removing this version or removed it (even if a writer has put some of its
        files back since). Writers call it after they showed themselves to gc (a claim, a part) and before they
        publish: see FeatureStore._remove."""
        try:
            current = self.store._read_version(self.path)
            alive = (current.schema, current.fingerprint) == (self.schema, self.fingerprint)
        except FeatureError:
            alive = False
        if not alive or self.store._being_removed(self.path):
            raise FeatureError(f"{self.path} was removed, or is being removed, by `pave store gc` (not in its --keep, "
                               "and idle): run the job again to make it anew (if no gc runs, one stopped midway: a later "
                               "gc run clears its mark)")

    # ---- writing ----

    def claim(self, video_ids, owner: str, lease_s: float = 600, again=()) -> list[str]:
        """The ids `owner` may write now: not committed (or in `again`: committed, to be written again, e.g. from a
        changed source, or released after their commit), and not claimed by another owner whose lease is live."""
        self.check_alive()
        committed = self.index(fresh=True).rows
        todo = [v for v in video_ids if v not in committed or v in again]
        granted = claims.claim(self.store.files, f"{self.path}/claims", todo, owner, lease_s)
        if granted:
            self.check_alive()  # a gc run that marked the version meanwhile may not have seen these claims
        return granted

    def release(self, owner: str) -> list[str]:
        """End `owner`'s live claims at once, for a job that stops: other jobs need not wait for its leases."""
        return claims.release(self.store.files, f"{self.path}/claims", owner)

    def writer(self, owner: str | None = None, shard_bytes: int = SHARD_BYTES) -> PartWriter:
        return PartWriter(self, owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}", shard_bytes)

    def new_part_group(self, part_id: str, owner: str, now: float) -> zarr.Group:
        attrs = {"owner": owner, "created": now, "heartbeat": now}
        self.check_alive()  # zarr would make the version's directory again, with an empty definition
        return zarr.create_group(self.store.zarr_store, path=f"{self.path}/parts/{part_id}", attributes=attrs)

    def publish(self, record: dict) -> None:
        """Make a written part visible: one atomic write of its commit record."""
        self.check_alive()  # its part is on disk: a gc run that marked the version meanwhile may not have seen it
        self.store.files.put_json(f"{self.path}/commits/{record['id']}.json", record)
        self._index = None

    # ---- maintenance ----

    def uncommitted_parts(self, grace_s: float) -> list[UncommittedPart]:
        """The parts without a commit record; [] when a commit record is torn: no part is then known to be
        uncommitted. A part is spared while its writer may still be writing it: it showed life within `grace_s`,
        holds a live claim, or is still writing the part's metadata."""
        files = self.store.files
        try:
            index = self.index(fresh=True)
        except FeatureError:
            return []
        committed_parts = {r["id"] for r in index.records}
        holders = set(claims.live(files, f"{self.path}/claims").values())
        out = []
        for part in files.children(f"{self.path}/parts", "directory"):
            if part in committed_parts:
                continue
            path = f"{self.path}/parts/{part}"
            attrs = _attrs(files, path)
            items = attrs.get("items")  # written at commit, just before the record
            idle = time.time() - attrs["heartbeat"] if "heartbeat" in attrs else None
            if idle is None:
                spared = "its metadata is being written, or is torn"
            elif attrs.get("owner") in holders:
                spared = "its writer holds live claims"
            elif idle <= grace_s:
                spared = f"its writer showed life {_duration(idle)} ago, within the grace period ({_duration(grace_s)})"
            else:
                spared = ""
            unserved = [item for item in items or [] if item not in index.rows]
            out.append(UncommittedPart(path, items, unserved, files.size(path), idle, spared))
        return out

    def garbage(self, grace_s: float) -> tuple[dict[str, str], dict[str, str]]:
        """The paths gc may remove in this version (a kept one): uncommitted parts no writer may still write,
        stale tmp files, claims and gc marks; and the uncommitted parts it spares. Each path with why. Nothing
        when a commit record is torn."""
        files = self.store.files
        try:
            index = self.index(fresh=True)
        except FeatureError:
            return {}, {}
        parts = self.uncommitted_parts(grace_s)
        out = {part.path: f"{part.state}: its writer stopped" + (f"; items no commit serves: {part.unserved}"
                                                                  if part.unserved else "")
               for part in parts if not part.spared}
        spared = {part.path: f"{part.state}: {part.spared}" for part in parts if part.spared}
        out.update((tmp, "a temporary file of a killed writer") for tmp in files.stale_tmp_files(self.path, grace_s))
        out.update((claim, "a claim no writer needs") for claim in
                   claims.removable(files, f"{self.path}/claims", set(index.rows)))
        marks = f"{self.path}/{REMOVING}"
        for mark in files.children(marks, "file"):  # of a gc run that stopped midway: it keeps writers off
            if time.time() - _created(files, f"{marks}/{mark}") > grace_s:
                out[f"{marks}/{mark}"] = "the mark of a gc run that stopped midway"
        return out, spared
