"""A materialization job that stops on an error hands back the claims it holds on items it did not commit, so that
a rerun under another owner (the default: a new one per job) does them at once instead of skipping them as
"claimed by another writer" until the lease (30 min by default) runs out."""
import pytest

from featurestore import FeatureStore
from featurestore.claims import live
from pipelines.materialize import Resources, Settings, materialize
from pipelines.sources import read_items

pytestmark = pytest.mark.timeout(300)
SETTINGS = Settings(frames=4)


def test_a_job_stopped_by_an_encoder_error_releases_its_claims_and_a_rerun_does_the_work(corpus, ray_local,
                                                                                        tmp_path):
    store = str(tmp_path / "store")
    # A setting outside the fingerprint that makes every encoder call raise (as a GPU running out of memory would):
    # items are claimed and decoded, then the job stops with the encoder's error.
    with pytest.raises(Exception, match="range\\(\\) arg 3 must not be zero"):
        materialize(read_items(str(corpus / "videos")), store, ["video"], settings=SETTINGS,
                    resources=Resources(rows_per_forward=0))
    version = FeatureStore(store).version("video")
    assert version.items() == [] and version.failures() == {}
    assert live(version.store.files, f"{version.path}/claims") == {}

    rerun = materialize(read_items(str(corpus / "videos")), store, ["video"], settings=SETTINGS)
    assert rerun.counts["video"] == {"ok": 8, "failed": 0, "skipped": 0}
    assert FeatureStore(store).version("video").items() == [f"v{i:04d}" for i in range(8)]
