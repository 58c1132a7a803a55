"""What a version of features *is*: its token schema (shapes, dtype, per-row extras, caller semantics such as fps)
and its fingerprint (what produced the tokens). Both are plain JSON so that every reader, on every machine, sees the
same thing the writer declared; nothing about shapes or rates is hard-coded anywhere else."""
import hashlib
import json
import re
from dataclasses import asdict, dataclass, field

import numpy as np

NAME = re.compile(r"[a-z0-9_]+\Z")
# Logical token dtype -> numpy dtype stored in Zarr. numpy has no bfloat16: its bit patterns are stored as uint16.
TOKEN_DTYPES = {"float16": "float16", "bfloat16": "uint16", "float32": "float32"}
# Per-row arrays every part has; extras may not reuse these names.
ROW_ARRAYS = ("tokens", "t_start", "t_end")
RESERVED = set(ROW_ARRAYS) | {"offsets"}


class FeatureError(ValueError):
    """Bad input, a schema/fingerprint conflict, or a store that cannot serve the request. The message says which."""


def plain(value, canonical_numbers: bool = False):
    """JSON-ready copy: tuples -> lists, numpy scalars/arrays -> Python, keys -> str. With `canonical_numbers`,
    integral floats become ints, so that fps=2 and fps=2.0 hash the same."""
    if isinstance(value, dict):
        return {str(k): plain(v, canonical_numbers) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [plain(v, canonical_numbers) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if canonical_numbers and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass(frozen=True)
class TokenSchema:
    """Shape semantics of one modality's tokens. Each stored row is one time step: `tokens[row]` has shape
    (tokens_per_step, dim), `t_start[row]`/`t_end[row]` are seconds, and each extra has `trailing_shape` per row."""

    modality: str
    tokens_per_step: int
    dim: int
    dtype: str
    extras: dict = field(default_factory=dict)  # name -> (trailing_shape, numpy dtype str)
    attrs: dict = field(default_factory=dict)  # caller semantics, JSON: fps, window_s, hop_s, time_kind, grid, ...

    def __post_init__(self):
        if not NAME.match(self.modality):
            raise FeatureError(f"modality {self.modality!r} must match [a-z0-9_]+")
        if self.dtype not in TOKEN_DTYPES:
            raise FeatureError(f"dtype {self.dtype!r} is not one of {sorted(TOKEN_DTYPES)}")
        for name in ("tokens_per_step", "dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise FeatureError(f"{name} must be a positive int, got {value!r}")
        extras = {}
        for name, (shape, dtype) in self.extras.items():
            if not NAME.match(name) or name in RESERVED:
                raise FeatureError(f"extra {name!r} must match [a-z0-9_]+ and not be one of {sorted(RESERVED)}")
            try:
                extras[name] = (tuple(int(s) for s in shape), np.dtype(dtype).name)
            except TypeError as e:
                raise FeatureError(f"extra {name!r}: {dtype!r} is not a numpy dtype") from e
        # Normalised so that a schema equals itself after a JSON round trip (tuples become lists in JSON).
        object.__setattr__(self, "tokens_per_step", int(self.tokens_per_step))
        object.__setattr__(self, "dim", int(self.dim))
        object.__setattr__(self, "extras", extras)
        object.__setattr__(self, "attrs", plain(self.attrs))
        try:
            json.dumps(self.attrs, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise FeatureError(f"attrs must be plain JSON: {e}") from e

    @property
    def stored_dtype(self) -> np.dtype:
        return np.dtype(TOKEN_DTYPES[self.dtype])

    def row_arrays(self) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """Every per-row array of a part: name -> (trailing shape, stored numpy dtype)."""
        arrays = {
            "tokens": ((self.tokens_per_step, self.dim), self.stored_dtype),
            "t_start": ((), np.dtype("float64")),
            "t_end": ((), np.dtype("float64")),
        }
        arrays.update({name: (shape, np.dtype(dtype)) for name, (shape, dtype) in self.extras.items()})
        return arrays

    def to_json(self) -> dict:
        return plain(asdict(self))

    @classmethod
    def from_json(cls, data: dict) -> "TokenSchema":
        return cls(**data)


@dataclass(frozen=True)
class Fingerprint:
    id: str  # short stable hex hash of `spec`
    spec: dict  # the canonical JSON that was hashed


def fingerprint(
    encoder: str, weights_digest: str, preprocessing: dict, dtype: str, transform_version: str
) -> Fingerprint:
    """Stable identity of "how these tokens were made". Any change (weights, preprocessing, dtype, transform code)
    gives a new id, hence a new version next to the old ones; the same inputs give the same id on every machine."""
    spec = {
        "encoder": encoder,
        "weights_digest": weights_digest,
        "preprocessing": preprocessing,
        "dtype": dtype,
        "transform_version": transform_version,
    }
    text = json.dumps(plain(spec, canonical_numbers=True), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return Fingerprint(id=hashlib.sha256(text.encode()).hexdigest()[:16], spec=json.loads(text))
