"""`pave train`: PAVE patches + LoRA on a frozen LLaVA-OneVision, trained by Ray Train workers that stream samples
joined with their stored features (no decoding, no encoders at train time).

The recipe (DESIGN.md): AdamW lr 2e-5, cosine with 3% warmup, weight decay 0, grad clip 0.1, bf16 + gradient
checkpointing on GPU, LoRA r=64/alpha=16/dropout 0.05 on every LLM *_proj, patches fully trainable. DDP by default,
FSDP as an option. Checkpoints (trainable weights + optimizer + scheduler + step + loss history) are reported to
Ray Train; a restarted worker group resumes from the latest one that loads, falling back to older ones.
Outputs in --out: ray/ (Ray Train run), final/ (peft adapter + patches, `PaveLlava.from_pretrained` layout),
train_config.json, metrics.jsonl, loss_curve.png.
"""
import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

TRAIN_CONFIG = "train_config.json"
TRAINABLE = "trainable.safetensors"
TRAINER_STATE = "trainer_state.pt"


@dataclass
class TrainConfig:
    store: str
    annotations: str
    out: str
    base_model: str = ""  # a LLaVA-OneVision dir; empty: a tiny random one matching the stored video dims
    sides: list[str] = field(default_factory=lambda: ["audio"])  # one patch per side channel; [] = LoRA only
    lora: bool = True
    fingerprints: dict[str, str] = field(default_factory=dict)  # modality -> fingerprint id, when a store has several
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 0.5  # fractional: Ray Data needs CPUs beside the workers (DESIGN pitfalls)
    strategy: str = "ddp"  # ddp | fsdp
    steps: int = 100
    batch_size: int = 4  # per worker
    grad_accum: int = 1
    lr: float = 2e-5
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    grad_clip: float = 0.1
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    patch_d_model: int = 512
    patch_layers: int = 2
    gradient_checkpointing: bool | None = None  # None: on with GPUs
    report_every: int = 10
    checkpoint_every: int = 50
    max_failures: int = 2
    seed: int = 0
    name: str = "pave"

    @property
    def modalities(self) -> list[str]:
        return ["video", *self.sides]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", required=True, help="feature store path or fsspec URL")
    parser.add_argument("--annotations", required=True, help="LLaVA conversation JSON (video = store item id)")
    parser.add_argument("--out", required=True, help="output directory (checkpoints, final adapter, metrics)")
    parser.add_argument("--base-model", default="", help="local LLaVA-OneVision dir (default: tiny random model)")
    parser.add_argument("--sides", default="audio", help="comma-separated side channels, one patch each; '' = none")
    parser.add_argument("--no-lora", dest="lora", action="store_false", help="train the patches only")
    parser.add_argument("--fingerprint", action="append", default=[], metavar="MODALITY=FP",
                        help="store version to use for a modality that has several")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--cpus-per-worker", type=float, default=0.5)
    parser.add_argument("--strategy", choices=["ddp", "fsdp"], default="ddp")
    for name in ("steps", "batch_size", "grad_accum", "lora_r", "lora_alpha", "patch_d_model", "patch_layers",
                 "report_every", "checkpoint_every", "max_failures", "seed"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=TrainConfig.__dataclass_fields__[name].default)
    for name in ("lr", "warmup_ratio", "weight_decay", "grad_clip", "lora_dropout"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=float, default=TrainConfig.__dataclass_fields__[name].default)
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=None)
    parser.add_argument("--name", default="pave", help="Ray Train run name (rerun with the same name to resume)")


def config_from_args(args) -> TrainConfig:
    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["sides"] = [s for s in args.sides.split(",") if s]
    values["fingerprints"] = dict(item.split("=", 1) for item in args.fingerprint)
    return TrainConfig(**values)


def build_tiny_base(base_dir: Path, samples, seed: int, video_dim: int | None = None) -> Path:
    """A tiny random LLaVA-OneVision whose projector reads `video_dim`-wide tokens (default: its own vision tower's)
    and whose tokenizer knows the words of `samples`, saved in base_dir (kept when it exists, so eval and resumed
    runs load the same one)."""
    from model.tiny import DEFAULT_WORDS, build_tiny_llava_onevision

    if not (base_dir / "config.json").exists():
        words = sorted(set(DEFAULT_WORDS) | {w for s in samples for _, text in s.turns for w in text.split()})
        dims = {} if video_dim is None else {"vision_hidden": video_dim}
        build_tiny_llava_onevision(base_dir, words=words, seed=seed, **dims)
    return base_dir.resolve()


def write_curves(history: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in history))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([m["step"] for m in history], [m["loss"] for m in history], marker="o")
    ax.set(xlabel="step", ylabel="loss", title="training loss")
    fig.tight_layout()
    fig.savefig(out / "loss_curve.png", dpi=100)
    plt.close(fig)


def train(cfg: TrainConfig) -> Path:
    """Run the Ray Train job; returns the exported final checkpoint dir (`PaveLlava.from_pretrained` layout)."""
    from pipelines.annotations import load_annotations
    from pipelines.training_data import check_samples, feature_dataset, modality_dtypes, open_versions

    from jobs.ray_runtime import init_ray

    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    samples = load_annotations(cfg.annotations)
    versions = open_versions(cfg.store, cfg.modalities, cfg.fingerprints)
    check_samples(samples, versions, cfg.annotations)  # fail before any worker starts
    dims = {m: v.schema.dim for m, v in versions.items()}
    if not cfg.base_model:  # saved under --out so that eval and resumed runs load the same one
        cfg.base_model = str(build_tiny_base(out / "base_model", samples, cfg.seed, dims["video"]))

    init_ray()
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.train_worker import train_loop_per_worker

    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": asdict(cfg), "dims": dims, "dtypes": modality_dtypes(versions),
                           "run_dir": str(out / "ray" / cfg.name)},  # where RunConfig puts the checkpoints
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0,
            resources_per_worker={"CPU": cfg.cpus_per_worker, "GPU": cfg.gpus_per_worker},
        ),
        run_config=RunConfig(
            name=cfg.name, storage_path=str(out / "ray"),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=3),
        ),
        datasets={"train": feature_dataset(samples, versions)},
    )
    result = trainer.fit()
    return export(result.checkpoint, cfg, dims, out)


def export(checkpoint, cfg: TrainConfig, dims: dict[str, int], out: Path) -> Path:
    """The final checkpoint as a standard PaveLlava dir (peft adapter + patches) + the metrics and loss curve."""
    import torch

    from jobs.train_worker import TrainingLoss, build_model, check_files, load_trainable

    final = out / "final"
    with checkpoint.as_directory() as directory:
        check_files(Path(directory))  # the final weights are exported only as they were written
        model = build_model(cfg, dims, torch.float32)
        load_trainable(TrainingLoss(model), Path(directory))
        history = torch.load(Path(directory) / TRAINER_STATE, weights_only=False)["history"]
    model.save_pretrained(final)
    (final / TRAIN_CONFIG).write_text(json.dumps(asdict(cfg), indent=2))
    write_curves(history, out)
    return final


def run(args) -> int:
    from jobs.ray_runtime import output_path

    cfg = config_from_args(args)
    cfg.out = output_path(cfg.out, "--out")
    started = time.perf_counter()
    final = train(cfg)
    print(f"trained {cfg.steps} steps in {time.perf_counter() - started:.0f} s -> {final}")
    print(f"loss curve: {Path(cfg.out) / 'loss_curve.png'}")
    return 0
