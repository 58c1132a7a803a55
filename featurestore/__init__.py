"""Feature store: Zarr v3 sharded token arrays per (modality, fingerprint), written atomically and resumably by
concurrent writers, read one video (or one time range) at a time. See store.py for the layout."""
from .features import Features
from .ids import ID_RULE, id_problem
from .schema import FeatureError, Fingerprint, TokenSchema, fingerprint
from .store import FeatureStore, ItemNotFound, Version, VersionInfo
from .writer import PartWriter

__all__ = [
    "FeatureError",
    "FeatureStore",
    "Features",
    "Fingerprint",
    "ID_RULE",
    "ItemNotFound",
    "PartWriter",
    "TokenSchema",
    "Version",
    "VersionInfo",
    "fingerprint",
    "id_problem",
]
