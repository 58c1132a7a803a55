"""Deterministic test rows, shared by the tests and the writer subprocesses they start (writer_proc.py)."""
import zlib

import numpy as np
import torch

from featurestore import FeatureStore, TokenSchema, fingerprint


def schema(dtype: str = "float16", modality: str = "video", extras=None, **attrs) -> TokenSchema:
    extras = {"view": ((), "int32")} if extras is None else extras
    return TokenSchema(modality, tokens_per_step=4, dim=8, dtype=dtype, extras=extras, attrs=attrs or {"fps": 2.0})


def version(url: str, dtype: str = "float16", weights: str = "w0", storage_options=None, **kw):
    s = schema(dtype, **kw)
    fp = fingerprint("tiny-encoder", weights, {"size": 32, "fps": 2.0}, dtype, "t1")
    return FeatureStore(url, storage_options).create_version(s, fp)


def rows(schema: TokenSchema, video_id: str, n: int | None = None) -> dict:
    """add() keyword arguments for `video_id`: the same values on every call and in every process."""
    rng = np.random.default_rng(zlib.crc32(video_id.encode()))
    n = n or int(rng.integers(3, 9))
    values = rng.standard_normal((n, schema.tokens_per_step, schema.dim), dtype=np.float32)
    if schema.dtype == "bfloat16":
        tokens = torch.from_numpy(values).to(torch.bfloat16)
    else:
        tokens = values.astype(schema.dtype)
    t_start = np.cumsum(rng.uniform(0.1, 1.0, n))
    extras = {
        name: (rng.integers(0, 100, (n, *shape)) if np.dtype(dtype).kind in "iu" else rng.standard_normal((n, *shape)))
        .astype(dtype)
        for name, (shape, dtype) in schema.extras.items()
    }
    return {"tokens": tokens, "t_start": t_start, "t_end": t_start + 0.5, **extras}


def stored_tokens(tokens) -> np.ndarray:
    """What the store must hold for these tokens: the same values, or the bit patterns for bfloat16."""
    if isinstance(tokens, torch.Tensor):
        return tokens.view(torch.uint16).numpy()
    return tokens


def write(version, ids, owner=None, shard_bytes=4 * 8 * 2 * 4):
    """Write `ids` in one part; the default shard size gives several shards per part for tiny test rows."""
    with version.writer(owner, shard_bytes=shard_bytes) as w:
        for video_id in ids:
            w.add(video_id, **rows(version.schema, video_id))
