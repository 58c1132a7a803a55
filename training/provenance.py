"""What a run was trained on, recorded with its weights: in every checkpoint and in the exported final/ directory
(PROVENANCE, a small JSON file the driver reads without loading any weights).

    {"features": {"video": {"fingerprint": "1a2b...", "encoder": "siglip..."}, "audio": {...}},
     "layout": {"video_tokens_per_step": 729, "video_tokens": "full", "newline": "grid"},
     "patches": {"neighbourhood": "time", "tie_v_to_k": false},
     "base": {"path": "/models/llava-ov-7b", "config_sha256": "...", "weights_digest": "..."}}

Trained weights only make sense with the features and the base model they were trained on: patches and LoRA
evaluated on another encoder's tokens or over another base still generate, just wrongly. So `pave eval` and a resumed
`pave train` compare the recorded provenance with what they are about to use and refuse a difference, naming it.
"patches" records which side tokens each frame's patch attended to; it is the checkpoint's own (its patch configs
carry it), so there is nothing to compare it with.
"""
import hashlib
import json
import struct
from pathlib import Path

from featurestore import Version
from model.llava import VideoLayout
from training.config import ConfigError, ModelConfig

PROVENANCE = "provenance.json"
TENSOR_SAMPLE = 4096  # bytes read from each end of every tensor
FILE_SAMPLE = 2**20  # bytes read from each end of a weights file in another format


class ProvenanceError(ConfigError):
    """Weights about to be used with other features or another base model than they were trained on; the message
    says what differs and what to do."""


def weights_digest(base: Path) -> str:
    """sha256 over what tells one set of base weights from another, reading a few MB of a 15 GB 7B base: per
    safetensors file its name, size and header (every tensor's name, dtype, shape and offsets), and the first and
    last TENSOR_SAMPLE bytes of every tensor. Enough because another architecture, dtype or layout changes the
    header, and other weights of the same shapes (another seed, another fine-tune) differ in every tensor they
    touched, hence at its ends too; only an edit confined to the middle of a tensor escapes, which training does
    not produce. A file in another format (pytorch .bin) counts by its size and first and last MiB."""
    digest = hashlib.sha256()
    files = sorted(p for p in base.iterdir() if p.suffix in (".safetensors", ".bin"))
    if not files:
        raise ConfigError(f"base model {base}: no *.safetensors or *.bin weights there")
    for path in files:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}\n".encode())
        with open(path, "rb") as f:
            if path.suffix != ".safetensors":
                digest.update(f.read(FILE_SAMPLE))
                f.seek(max(0, size - FILE_SAMPLE))
                digest.update(f.read(FILE_SAMPLE))
                continue
            (length,) = struct.unpack("<Q", f.read(8))
            header = f.read(length)
            digest.update(header)
            spans = sorted(entry["data_offsets"] for name, entry in json.loads(header).items()
                           if name != "__metadata__")
            for begin, end in spans:
                begin, end = begin + 8 + length, end + 8 + length  # offsets count from the end of the header
                for start in (begin, max(begin, end - TENSOR_SAMPLE)):
                    f.seek(start)
                    digest.update(f.read(min(TENSOR_SAMPLE, end - begin)))
    return digest.hexdigest()


def base_identity(base: str) -> dict:
    path = Path(base)
    if not (path / "config.json").is_file():
        raise ConfigError(f"base model {base}: no config.json there; expected a local LLaVA-OneVision directory")
    return {"path": str(path), "config_sha256": hashlib.sha256((path / "config.json").read_bytes()).hexdigest(),
            "weights_digest": weights_digest(path)}


def record(base: str, versions: dict[str, Version], model: ModelConfig) -> dict:
    """The provenance of weights trained (or about to be used) on `versions` over the base model in `base` with the
    video layout and patches of `model`."""
    from transformers import AutoConfig

    vision = AutoConfig.from_pretrained(base).vision_config
    layout = VideoLayout(vision.image_size // vision.patch_size, model.newline)
    tokens = versions["video"].schema.tokens_per_step
    return {
        "features": {m: {"fingerprint": v.fingerprint.id, "encoder": v.fingerprint.spec.get("encoder", "")}
                     for m, v in versions.items()},
        "layout": {"video_tokens_per_step": tokens,
                   "video_tokens": {layout.grid**2: "full", layout.side**2: "pooled"}.get(tokens, "other"),
                   "newline": model.newline},
        "patches": {"neighbourhood": model.patches.neighbourhood, "tie_v_to_k": model.patches.tie_v_to_k},
        "base": base_identity(base),
    }


def differences(recorded: dict, current: dict, store: str, base: str) -> list[str]:
    """What `current` changes from `recorded`, one phrase each, as "<recorded>, <source> has <current>" where
    `store` and `base` name the sources of the current features and base model (e.g. "--store /data/other")."""
    found = []
    was, now = recorded["features"], current["features"]
    for m in sorted(was.keys() | now.keys()):
        before, after = was.get(m), now.get(m)
        if (before or {}).get("fingerprint") != (after or {}).get("fingerprint"):
            found.append(f"{m} features {_features(before)}, {store} has {_features(after)}")
    if recorded["layout"] != current["layout"]:
        found.append(f"video tokens {_layout(recorded['layout'])}, now {_layout(current['layout'])}")
    keys = ("config_sha256", "weights_digest")
    if [recorded["base"][k] for k in keys] != [current["base"][k] for k in keys]:
        found.append(f"base model {recorded['base']['path']} ({_base(recorded['base'])}), {base} has "
                     f"{_base(current['base'])}")
    return found


def _features(entry: dict | None) -> str:
    return f"{entry['fingerprint']} (encoder {entry['encoder'] or '?'})" if entry else "none"


def _layout(layout: dict) -> str:
    return f"{layout['video_tokens_per_step']} per frame ({layout['video_tokens']}, newline {layout['newline']})"


def _base(identity: dict) -> str:
    return f"config.json sha256 {identity['config_sha256'][:12]}, weights digest {identity['weights_digest'][:12]}"


def save(directory: Path, provenance: dict) -> None:
    (Path(directory) / PROVENANCE).write_text(json.dumps(provenance, indent=2))


def load(directory: Path) -> dict | None:
    """The provenance recorded in a checkpoint or final/ directory; None for one written before it was recorded
    (or imported from an official release)."""
    path = Path(directory) / PROVENANCE
    return json.loads(path.read_text()) if path.exists() else None
