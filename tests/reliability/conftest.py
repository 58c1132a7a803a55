import pytest
from jobruns import MODALITIES, RESOURCES, SETTINGS, checksums

from pipelines.materialize import materialize
from pipelines.sources import read_items


@pytest.fixture(scope="session")
def ray_address(ray_local) -> str:
    """Where `pave` processes started by the tests find the session's Ray cluster."""
    return ray_local.get_runtime_context().gcs_address


@pytest.fixture(scope="session")
def reference(corpus, ray_local, tmp_path_factory):
    """The corpus (video + audio) materialized without interruption: (store path, its checksums)."""
    store = tmp_path_factory.mktemp("reference") / "store"
    summary = materialize(read_items(str(corpus / "manifest.jsonl")), str(store), MODALITIES, settings=SETTINGS,
                          resources=RESOURCES)
    assert summary.counts == {m: {"ok": 8, "failed": 0, "skipped": 0} for m in MODALITIES}
    return store, checksums(store)
