"""`pave materialize` into a store on an S3 server (moto over HTTP), reached through the storage flags alone: the
driver's environment has credentials (as a node has) but no endpoint, so the endpoint must travel with the store to
every task and actor. Then `pave store verify` and `pave store gc` on it, through the same flags."""
import numpy as np

from featurestore import FeatureStore
from jobs.cli import main as pave


def test_materialize_verify_and_gc_on_s3_give_the_local_store_values(corpus, ray_local, s3_bucket, tmp_path, capsys):
    storage = ["--storage.endpoint-url", s3_bucket.storage_options["endpoint_url"]]
    flags = ["--input", str(corpus / "videos"), "--modalities", "video,audio", "--frames", "4", "--part-items", "3"]
    remote_url, local_url = f"{s3_bucket.url}/store", str(tmp_path / "store")
    assert pave(["materialize", *flags, "--store", remote_url, *storage]) == 0
    assert pave(["materialize", *flags, "--store", local_url]) == 0
    remote, local = FeatureStore(remote_url, s3_bucket.storage_options), FeatureStore(local_url)
    for modality in ("video", "audio"):
        stored, reference = remote.version(modality), local.version(modality)
        assert stored.fingerprint.id == reference.fingerprint.id
        assert stored.items() == reference.items() and len(stored.items()) == 8
        for item in reference.items():
            np.testing.assert_array_equal(stored.get(item).tokens, reference.get(item).tokens)
            np.testing.assert_array_equal(stored.get(item).t_start, reference.get(item).t_start)
    capsys.readouterr()
    assert pave(["store", "verify", remote_url, *storage]) == 0
    verified = capsys.readouterr().out
    assert "OK  video/" in verified and "OK  audio/" in verified and "0 problem(s)" in verified
    keep = remote.version("video").fingerprint.id
    assert pave(["store", "gc", remote_url, "--keep", keep, "--grace-s", "0", *storage]) == 0
    assert [v.modality for v in remote.versions()] == ["video"]  # audio's version removed, video's served
    np.testing.assert_array_equal(remote.version("video").get("v0000").tokens,
                                  local.version("video").get("v0000").tokens)
