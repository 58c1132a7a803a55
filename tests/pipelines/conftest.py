"""The corpus materialized once per session, every modality, from its JSONL manifest, on the session's local Ray."""
import pytest

from pipelines.materialize import MODALITIES, Resources, materialize
from pipelines.sources import read_items


@pytest.fixture(scope="session")
def resources():
    """Small parts, so that the corpus spans several parts per version, as a real job's output does."""
    return Resources(part_items=3, batch_size=4)


@pytest.fixture(scope="session")
def materialized(corpus, ray_local, resources, tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    summary = materialize(read_items(str(corpus / "manifest.jsonl")), str(store), list(MODALITIES),
                          resources=resources)
    return store, summary
