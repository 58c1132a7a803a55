"""`pave store verify|ls|inspect|gc`, run as the CLI really runs (python -m jobs.cli), on healthy and damaged stores."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import zarr

import fsdata
from featurestore import FeatureStore

REPO = Path(__file__).resolve().parents[2]
IDS = [f"v{i}" for i in range(6)]


def pave(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs.cli", "store", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _store(tmp_path):
    version = fsdata.version(tmp_path / "store")
    fsdata.write(version, IDS)
    (record,) = version.index().records
    return version, tmp_path / "store" / version.path / "parts" / record["id"]


def test_verify_clean_store_exits_zero(tmp_path):
    _store(tmp_path)
    result = pave("verify", tmp_path / "store")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problem(s)" in result.stdout


def test_verify_catches_flipped_bytes_in_a_shard(tmp_path):
    version, part = _store(tmp_path)
    shard = part / "tokens" / "c" / "1" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[len(data) // 3] ^= 0xFF
    shard.write_bytes(bytes(data))
    result = pave("verify", tmp_path / "store")
    assert result.returncode == 1
    assert "tokens shard 1 (rows 4:8)" in result.stdout
    assert FeatureStore(tmp_path / "store").version("video").verify()  # the API agrees


def test_verify_reports_shards_that_do_not_decode(tmp_path):
    version, part = _store(tmp_path)
    (part / "t_start" / "c" / "0").write_bytes(b"not a shard" * 8)
    (problem,) = FeatureStore(tmp_path / "store").version("video").verify()
    assert "t_start shard 0 (rows 0:4) does not decode" in problem
    assert pave("verify", tmp_path / "store").returncode == 1


def test_verify_finds_nan_written_behind_the_writers_back(tmp_path):
    version, part = _store(tmp_path)
    tokens = zarr.open_array(str(part / "tokens"), mode="r+")
    row = fsdata.rows(version.schema, IDS[0])["t_start"].size + 1  # the second row of the second item
    values = tokens[row]
    values[0, 0] = np.nan
    tokens[row] = values
    problems = FeatureStore(tmp_path / "store").version("video").verify()
    assert f"tokens row {row} (item 'v1') has NaN/inf" in "\n".join(problems)
    assert pave("verify", tmp_path / "store").returncode == 1


def test_verify_reports_a_committed_part_whose_arrays_are_gone(tmp_path):
    version, part = _store(tmp_path)
    for f in (part / "t_end").rglob("*"):
        if f.is_file():
            f.unlink()
    (problem,) = FeatureStore(tmp_path / "store").version("video").verify()
    assert "missing" in problem
    assert pave("verify", tmp_path / "store").returncode == 1


def test_ls_inspect_gc(tmp_path):
    version, _ = _store(tmp_path)
    other = fsdata.version(tmp_path / "store", weights="w1")
    result = pave("ls", "--store", tmp_path / "store")
    assert result.returncode == 0
    assert f"video    {version.fingerprint.id}  [N,4,8] float16 +view[]:int32  ok=6 failed=0" in result.stdout
    assert other.fingerprint.id in result.stdout
    on_disk = sum(f.stat().st_size for f in (tmp_path / "store" / version.path).rglob("*") if f.is_file())
    assert f"ok=6 failed=0  {on_disk / 2**20:,.1f} MiB" in result.stdout  # every part and side file of it

    result = pave("inspect", "--store", tmp_path / "store", "--item", "v2", "--fingerprint", version.fingerprint.id[:5])
    n = fsdata.rows(version.schema, "v2")["t_start"].size
    assert result.returncode == 0 and f"tokens ({n}, 4, 8) float16" in result.stdout
    assert pave("inspect", "--store", tmp_path / "store", "--item", "nope").returncode == 1

    result = pave("gc", tmp_path / "store", "--keep", version.fingerprint.id, "--grace-s", "0")
    assert result.returncode == 0 and f"removed {other.path}" in result.stdout
    assert [v.fingerprint_id for v in FeatureStore(tmp_path / "store").versions()] == [version.fingerprint.id]
    assert pave("gc", tmp_path / "store", "--keep", "typo").returncode == 2
