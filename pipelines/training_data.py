"""The train/eval input: a Ray Data dataset of annotation rows, each joined with its features from the store.

No decoding and no encoders run here: every sample fetches its main-video tokens and the side-channel tokens of
its video (one slice per array, see featurestore) inside Ray tasks, and Ray Train streams the rows to workers.
Row columns: sample_id, video_id, turns (JSON), video_tokens [F, Q, D], video_t [F], and per side channel m:
m_tokens [S, T, D], m_t_start [S], m_t_end [S]. Tokens stay in their stored dtype (uint16 bits for bfloat16);
`modality_dtypes` tells the collator how to read them.
"""
import json

from featurestore import FeatureStore, Version
from pipelines.annotations import Sample, check_against_store

VIDEO = "video"


def open_versions(store_url: str, modalities: list[str], fingerprints: dict[str, str] | None = None,
                  **store_options) -> dict[str, Version]:
    """The store version of each modality: the one given in `fingerprints`, else the only one the store has.
    `store_options`: FeatureStore's (storage_options, cache_dir, cache_bytes); the handles carry them to the Ray
    workers they are sent to."""
    store = FeatureStore(store_url, **store_options)
    fingerprints = fingerprints or {}
    return {m: store.version(m, fingerprints.get(m)) for m in modalities}


def modality_dtypes(versions: dict[str, Version]) -> dict[str, str]:
    return {m: v.schema.dtype for m, v in versions.items()}


def check_samples(samples: list[Sample], versions: dict[str, Version], source: str) -> None:
    """Fail before any training starts when a sample's video lacks features for a requested modality."""
    check_against_store(samples, {m: v.committed_items() for m, v in versions.items()}, source)


class FetchFeatures:
    """Ray Data map function: adds the features of the row's video. Holds picklable Version handles whose
    commit index is built once per process and reused across rows."""

    def __init__(self, versions: dict[str, Version]):
        self.versions = versions

    def __call__(self, row: dict) -> dict:
        video_id = row["video_id"]
        for modality, version in self.versions.items():
            features = version.get(video_id)
            if modality == VIDEO:
                row["video_tokens"] = features.tokens
                row["video_t"] = features.t_start  # frame presentation times
            else:
                row[f"{modality}_tokens"] = features.tokens
                row[f"{modality}_t_start"] = features.t_start
                row[f"{modality}_t_end"] = features.t_end
        return row


def sample_row(sample: Sample) -> dict:
    """The dataset row of a sample, before FetchFeatures adds its features."""
    return {"sample_id": sample.id, "video_id": sample.video_id, "turns": json.dumps(sample.turns)}


def feature_dataset(samples: list[Sample], versions: dict[str, Version], num_cpus: float = 0.25):
    """A Ray Dataset of samples joined with their features (lazy: nothing is read until it is iterated)."""
    import ray

    if VIDEO not in versions:
        raise ValueError(f"the main '{VIDEO}' tokens are required (they are the patch queries); got {sorted(versions)}")
    return ray.data.from_items([sample_row(s) for s in samples]).map(FetchFeatures(versions), num_cpus=num_cpus)
