"""`pave store gc` beside writers, and every `pave store` command on a damaged store.

- gc races a process that creates versions and writes parts in a loop (store_race.py), with a --keep that lists
  none of them: gc spares what is younger than its grace period or held by a live claim, two gc runs at once (one
  in a thread, one `pave store gc` process after another) do not trip over each other, readers never crash, and
  afterwards every committed item reads back with its values, `verify` is clean and `ls` reports nothing wrong.
- On a store whose version lost or tore its metadata, or lost a part's arrays, or a commit record, `ls`, `verify`,
  `gc` and `inspect` name the damage and exit non-zero, without a traceback and without saying OK."""
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import store_race

from featurestore import FeatureStore

REPO = Path(__file__).resolve().parents[2]
WRITER = Path(__file__).with_name("store_race.py")


def pave_store(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", "store", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def write(version, ids) -> None:
    with version.writer("test") as writer:
        for video_id in ids:
            writer.add(video_id, **store_race.rows(video_id))


def assert_values(store: FeatureStore, fingerprint_id: str, ids) -> None:
    version = store.version("video", fingerprint_id)
    for video_id in ids:
        got, want = version.get(video_id), store_race.rows(video_id)
        np.testing.assert_array_equal(got.tokens, want["tokens"])
        np.testing.assert_array_equal(got.t_start, want["t_start"])


@pytest.mark.timeout(180)
@pytest.mark.parametrize("grace_s, lease_s", [(60, 0.2), (0, 120)], ids=["young-versions", "live-claims"])
def test_gc_racing_a_writer_never_breaks_the_store(tmp_path, grace_s, lease_s):
    """young-versions: the writer's claims expire at once, its versions are spared for their age. live-claims: no
    grace at all, its versions are spared for the claims it holds (gc and the writer race on every new version)."""
    url = str(tmp_path / "store")
    base = store_race.create(url, "base")
    write(base, ["kept/0", "kept/1"])
    keep = base.fingerprint.id
    writer = subprocess.Popen([sys.executable, str(WRITER), url, "6", str(lease_s)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    stop, errors, gc_runs = threading.Event(), [], []

    def loop(step):
        try:
            while not stop.is_set():
                step()
        except Exception as e:  # surfaced below: a thread's exception would otherwise only be printed
            errors.append(e)

    def gc_in_process():
        FeatureStore(url).gc([keep], grace_s=grace_s)

    def gc_cli():
        result = pave_store("gc", url, "--keep", keep, "--grace-s", grace_s)
        gc_runs.append(result)
        assert result.returncode == 0 and "Traceback" not in result.stderr, result.stdout + result.stderr

    def read():  # a reader never sees a half-made or half-removed version (a version gc removed is just gone)
        store = FeatureStore(url)
        store.versions()
        assert store.damage() == []

    threads = [threading.Thread(target=loop, args=(step,)) for step in (gc_in_process, gc_cli, read)]
    for thread in threads:
        thread.start()
    try:
        out, err = writer.communicate(timeout=120)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert writer.returncode == 0, err
    assert not errors, errors
    assert len(gc_runs) >= 2

    committed, retries = {}, 0
    for line in map(json.loads, out.splitlines()):
        if "items" in line:
            committed.setdefault(line["fingerprint"], []).extend(line["items"])
        retries += "retry" in line
    assert len(committed) >= 3, out  # the writer made several versions while gc ran
    if grace_s == 0:  # gc did remove new versions, before the writer's first claim (and the writer noticed)
        assert retries > 0, out
    store = FeatureStore(url)
    assert_values(store, keep, ["kept/0", "kept/1"])
    for fingerprint_id, ids in committed.items():
        assert_values(store, fingerprint_id, ids)
    assert sorted(info.fingerprint_id for info in store.versions()) == sorted([keep, *committed])
    for info in store.versions():
        assert store.version("video", info.fingerprint_id).verify() == []
    for command in ("ls", "verify"):
        result = pave_store(command, url)
        assert result.returncode == 0 and "DAMAGED" not in result.stdout, result.stdout + result.stderr


def _tear_metadata(version_dir: Path) -> None:
    meta = version_dir / "zarr.json"
    meta.write_text(meta.read_text()[:40])


def _lose_metadata(version_dir: Path) -> None:
    (version_dir / "zarr.json").unlink()


def _lose_part_arrays(version_dir: Path) -> None:
    part = next(p for p in (version_dir / "parts").iterdir() if p.is_dir())
    for name in ("tokens", "t_end"):
        for f in sorted((part / name).rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        (part / name).rmdir()


def _tear_commit_record(version_dir: Path) -> None:
    record = next((version_dir / "commits").glob("*.json"))
    record.write_text(record.read_text()[:30])


DAMAGE = {"metadata gone": _lose_metadata, "metadata torn": _tear_metadata, "part arrays gone": _lose_part_arrays,
          "commit record torn": _tear_commit_record}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_every_store_command_reports_damage_and_exits_non_zero(tmp_path, damage):
    url = tmp_path / "store"
    healthy, damaged = store_race.create(str(url), "healthy"), store_race.create(str(url), "damaged")
    write(healthy, ["a", "b"])
    write(damaged, ["a", "b"])
    DAMAGE[damage](url / damaged.path)

    results = {
        "ls": pave_store("ls", url),
        "verify": pave_store("verify", url),
        "gc": pave_store("gc", url, "--keep", healthy.fingerprint.id, damaged.fingerprint.id),
        "inspect": pave_store("inspect", url, "--item", "a", "--fingerprint", damaged.fingerprint.id),
    }
    for command, result in results.items():
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"{command}: {output}"
        assert "Traceback" not in output, f"{command}: {output}"
        assert damaged.path in output, f"{command} does not name the damaged version: {output}"
        assert f"OK  {damaged.path}" not in output and "0 problem(s)" not in output, f"{command}: {output}"
    assert (url / damaged.path).exists()  # kept: gc reports damage, it does not remove what --keep names
    assert_values(FeatureStore(url), healthy.fingerprint.id, ["a", "b"])  # the rest of the store still serves
