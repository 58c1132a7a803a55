"""Training throughput on one GPU: step time, tokens/s and MFU of patch + LoRA on LLaVA-OneVision-Qwen2 0.5B / 7B
shapes with random weights, and how much of a real `pave train` step waits for data streamed from the feature store.

  python benchmarks/train_bench.py prepare DIR --preset 7b    # DIR/store, DIR/annotations.json, DIR/base (random)
  python benchmarks/train_bench.py step DIR --batch 1 4       # model-only steps: same model, recipe and batches as
                                                              # the Ray worker, no Ray, no data wait
  python -m jobs.cli train --store DIR/store --annotations DIR/annotations.json --base-model DIR/base --out RUN \\
      --gpus-per-worker 1 --batch-size 1 --steps 30 --report-every 10 --checkpoint-every 1000
  python benchmarks/train_bench.py report RUN                 # its steady-state metrics (--skip warm-up windows)

`prepare --tiny` writes a tiny model and small tokens instead: the same sequence then runs on a CPU in about a minute.
The store holds random bf16 tokens of the real dims: video 32 frames x 196 x 1152 (pre-projector SigLIP, pooled),
audio 1 x 1024 per 1 s hop with 2 s windows, clips of 60-600 s; one question per video with a one-word answer.
The recipe is RunConfig's defaults (training/config.py, docs/DESIGN.md): LoRA r=64 alpha=16 on every LLM *_proj, one
audio patch, AdamW, bf16 compute with float32 trainable weights, gradient checkpointing.

MFU: training/throughput.py (4 N model FLOPs per token over the GPU's dense bf16 peak; `mfu_attn` adds causal
attention).
"""
import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from featurestore import FeatureStore, TokenSchema, fingerprint  # noqa: E402
from model.tiny import save_tiny_base  # noqa: E402
from training.config import RunConfig, from_dict, load, validate  # noqa: E402
from training.throughput import flop_params, flops_per_token, peak_flops  # noqa: E402

QUESTION = "<video>\nWhat is the pitch of the tone in this video: low or high?"
SHAPES = {  # frames, tokens per frame, video dim, audio dim, clip seconds (min, max), videos
    "full": (32, 729, 1152, 1024, (60, 600), 64),  # every SigLIP patch (27x27), as `pave materialize` stores it
    "tiny": (4, 4, 32, 16, (4, 8), 16),
}


def write_store(directory: Path, shapes: tuple, seed: int, min_frames: int | None = None) -> None:
    """A store of random bf16 video + audio tokens, and one question per video (answer: 'low' or 'high'); with
    `min_frames`, each video has between that many frames and the shape's (samples of different lengths)."""
    frames, tokens_per_frame, video_dim, audio_dim, (min_s, max_s), videos = shapes
    g = torch.Generator().manual_seed(seed)
    store = FeatureStore(str(directory / "store"))
    video = store.create_version(TokenSchema("video", tokens_per_frame, video_dim, "bfloat16",
                                             attrs={"time_kind": "point"}),
                                 fingerprint("bench-video", "random", {}, "bfloat16", "1"))
    audio = store.create_version(TokenSchema("audio", 1, audio_dim, "bfloat16",
                                             attrs={"time_kind": "span", "window_s": 2.0, "hop_s": 1.0}),
                                 fingerprint("bench-audio", "random", {}, "bfloat16", "1"))
    annotations = []
    with video.writer() as vw, audio.writer() as aw:
        for i in range(videos):
            video_id = f"v{i:04d}"
            duration = int(torch.randint(min_s, max_s + 1, (), generator=g))
            n = int(torch.randint(min_frames, frames + 1, (), generator=g)) if min_frames else frames
            frame_t = (np.arange(n) + 0.5) * duration / n
            tokens = 0.5 * torch.randn(n, tokens_per_frame, video_dim, generator=g)
            vw.add(video_id, tokens.bfloat16(), frame_t, frame_t)
            starts = np.arange(duration - 1, dtype=np.float64)
            tokens = 0.5 * torch.randn(len(starts), 1, audio_dim, generator=g)
            aw.add(video_id, tokens.bfloat16(), starts, starts + 2.0)
            annotations.append({"id": f"{video_id}-q0", "video": video_id, "conversations": [
                {"from": "human", "value": QUESTION}, {"from": "gpt", "value": ("low", "high")[i % 2]}]})
    (directory / "annotations.json").write_text(json.dumps(annotations))


def build_reference_base(preset: str, directory: Path, seed: int) -> None:
    """LLaVA-OneVision-Qwen2 `preset` shapes with random bf16 weights, saved like a downloaded checkpoint, with the
    tiny tokenizer (token ids only set sequence lengths here; Qwen2's tokenizer is not downloaded)."""
    from transformers import LlavaOnevisionForConditionalGeneration

    from model.llava import reference_config
    from model.tiny import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    config = reference_config(preset)
    config.image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    config.video_token_id = tokenizer.convert_tokens_to_ids("<video>")
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init is slow on CPU
        model = LlavaOnevisionForConditionalGeneration._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def prepare(args) -> None:
    from pipelines.annotations import load_annotations

    args.dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if not (args.dir / "annotations.json").exists():
        shapes = SHAPES["tiny" if args.tiny else "full"]
        write_store(args.dir, (*shapes[:-1], args.videos or shapes[-1]), args.seed, args.min_frames)
    print(f"store + annotations: {time.perf_counter() - started:.0f} s")
    started = time.perf_counter()
    if not (args.dir / "base" / "config.json").exists():
        if args.tiny:
            video_dim = SHAPES["tiny"][2]
            texts = [text for s in load_annotations(args.dir / "annotations.json") for _, text in s.turns]
            save_tiny_base(args.dir / "base", texts, args.seed, video_dim)
        else:
            build_reference_base(args.preset, args.dir / "base", args.seed)
    print(f"base model: {time.perf_counter() - started:.0f} s")


def dataset(cfg: RunConfig):
    """(samples, versions) of a prepared dir, as `pave train` opens them."""
    from pipelines.annotations import load_annotations
    from pipelines.training_data import open_versions

    return load_annotations(cfg.data.annotations), open_versions(cfg.data.store, cfg.modalities)


def mfu(flops_per_s: float) -> float | None:
    return flops_per_s / peak if torch.cuda.is_available() and (peak := peak_flops(torch.device("cuda"))) else None


def step(args) -> None:
    """Times `Recipe.step` (the step `pave train` workers take) on fixed batches collated from the store exactly as
    a worker collates them; one recipe, so one model, for every batch size. Every batch size sees the same first
    --samples samples (default: the largest batch), as consecutive batches taken in turn: with samples of different
    lengths, B=1 and a packed B=4 then train on the same tokens."""
    from model.collate import token_count
    from pipelines.training_data import FetchFeatures, sample_row
    from training.modeling import to_device
    from training.recipe import Recipe

    cfg = bench_config(args.dir, max(args.batch), args.checkpointing, args.compile, args.pack, args.lora_dropout)
    if args.functional_rng:  # dropout masks regenerated in the backward from a philox seed instead of kept
        torch._functorch.config.functionalize_rng_ops = True
    samples, versions = dataset(cfg)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    recipe = Recipe(cfg, samples, versions, device).setup()
    fetch = FetchFeatures(versions)
    count = args.samples or max(args.batch)
    if uneven := [b for b in args.batch if count % b]:
        raise SystemExit(f"--samples {count} is not a multiple of --batch {uneven[0]}: every batch size must see the "
                         f"same samples")
    rows = [fetch(sample_row(s)) for s in samples[:count]]
    device_name = torch.cuda.get_device_name() if recipe.on_gpu else "cpu"
    for batch_size in args.batch:
        batches = [to_device(recipe.collate({k: [r[k] for r in rows[i:i + batch_size]] for k in rows[0]}), device)
                   for i in range(0, count, batch_size)]
        turn = itertools.cycle(batches)
        try:  # whole rounds over the batches
            ms, peak = measure(lambda: recipe.step([next(turn)]), device, args.iters * len(batches),
                               args.warmup * len(batches))
        except torch.OutOfMemoryError:
            print(json.dumps({"bench": "train_step", "device": device_name, "batch": batch_size, "error": "OOM"}))
            recipe.optimizer.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            continue
        tokens = sum(token_count(b) for b in batches) / len(batches)
        dense, with_attn = flops_per_token(recipe.model, tokens / batch_size)
        tokens_per_s = tokens / (ms / 1000)
        print_record({
            "bench": "train_step", "device": device_name, "base": recipe.model.hf.config.text_config.hidden_size,
            "batch": batch_size, "seq_len": tokens / batch_size, "checkpointing": args.checkpointing,
            "checkpointed_layers": len(recipe.checkpointed), "compile": args.compile, "pack": args.pack,
            "attention": recipe.attention,
            "step_ms": round(ms, 1), "tokens_per_s": round(tokens_per_s),
            "samples_per_s": round(batch_size / (ms / 1000), 2), "samples": count,
            "seq_lens": sorted({n for b in batches for n in sample_lengths(b)}),
            "mfu": mfu(dense * tokens_per_s), "mfu_attn": mfu(with_attn * tokens_per_s),
            "flop_params": flop_params(recipe.model), "peak_gib": peak, "lora_dropout": cfg.model.lora.dropout,
        })
        if args.profile:
            profile(lambda: recipe.step([next(turn)]), args.profile)
        if args.memory_peak:
            memory_peak(lambda: recipe.step([next(turn)]))


def profile(fn, steps: int, rows: int = 18) -> None:
    """torch.profiler over `steps` steps: GPU busy time vs wall time, then the ops with the most GPU time (self)
    and the most CPU time (self), per step."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
        wall = (time.perf_counter() - start) / steps
    events = prof.key_averages()
    gpu = lambda e: getattr(e, "self_device_time_total", 0) or getattr(e, "self_cuda_time_total", 0)  # noqa: E731
    busy = sum(gpu(e) for e in events) / 1000 / steps
    print(f"profile: wall {1000 * wall:.1f} ms/step, GPU kernels {busy:.1f} ms/step "
          f"({100 * busy / (1000 * wall):.0f}%; each kernel counted as its aten op too)")
    for e in sorted(events, key=gpu, reverse=True)[:rows]:
        print(f"  gpu {gpu(e) / 1000 / steps:8.2f} ms  x{e.count // steps:<5d} {e.key[:90]}")
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]:
        print(f"  cpu {e.self_cpu_time_total / 1000 / steps:8.2f} ms  x{e.count // steps:<5d} {e.key[:90]}")


def memory_peak(fn, rows: int = 25) -> None:
    """The CUDA memory alive at the peak of one call of fn, grouped by where it was allocated (the first frames
    outside torch's own modules; compiled graphs show as their Inductor output file): which tensors make a step's
    peak, from torch.cuda.memory's allocation history."""
    import os

    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
    fn()
    torch.cuda.synchronize()
    trace = torch.cuda.memory._snapshot()["device_traces"][0]
    events = [e for e in trace if e["action"] in ("alloc", "free_completed")]
    torch.cuda.memory._record_memory_history(enabled=None)
    total, peak, peak_at = 0, 0, 0
    for i, e in enumerate(events):
        total += e["size"] if e["action"] == "alloc" else -e["size"]
        if total > peak:
            peak, peak_at = total, i
    live = {}
    for e in events[: peak_at + 1]:
        if e["action"] == "alloc":
            live[e["addr"]] = e
        else:
            live.pop(e["addr"], None)

    def where(e) -> str:
        mine = [f for f in e["frames"] if "torch/" not in f["filename"] or "torchinductor" in f["filename"]
                or "checkpoint" in f["filename"]]
        return " < ".join(f"{os.path.basename(f['filename'])}:{f['line']} {f['name']}" for f in mine[:3])

    groups = {}
    for e in live.values():
        key = where(e)
        size, count = groups.get(key, (0, 0))
        groups[key] = (size + e["size"], count + 1)
    print(f"memory peak: {(before + peak) / 2**30:.1f} GiB = {before / 2**30:.1f} before the step + "
          f"{peak / 2**30:.1f} allocated in it (event {peak_at} of {len(events)}); alive at the peak:")
    for key, (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:rows]:
        print(f"  mem {size / 2**30:7.2f} GiB x{count:<5d} {key[:300]}")


def sample_lengths(batch: dict) -> list[int]:
    """Tokens of each sample of a collated batch (packed or padded)."""
    if batch["attention_mask"] is None:
        return list(batch["packing"]["sample_lengths"])
    return batch["attention_mask"].sum(1).tolist()


def measure(fn, device, iters: int, warmup: int) -> tuple[float, float | None]:
    """Mean ms of fn over `iters` runs after `warmup`, and peak allocated GiB (CUDA) during them."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(iters):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(1000 * (time.perf_counter() - start))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    return statistics.mean(times), peak


def bench_config(directory: Path, batch_size: int, checkpointing: str, compile_layers: bool | None,
                 pack: bool = False, lora_dropout: float | None = None) -> RunConfig:
    data = {"store": str(directory / "store"), "annotations": str(directory / "annotations.json"),
            "batch_size": batch_size, "pack": pack}
    model = {"base": str(directory / "base"), "activation_checkpointing": checkpointing, "compile": compile_layers}
    if lora_dropout is not None:
        model["lora"] = {"dropout": lora_dropout}
    return validate(from_dict({"data": data, "model": model, "out": str(directory / "run")}, "train_bench"))


def report(args) -> None:
    """Steady-state metrics of a finished `pave train` run: the mean over its metric windows but the first --skip
    (model and data pipeline warm-up), MFU from the model's shapes (built on the meta device: no weights, no memory)."""
    from training.loop import WORKER_METRICS, read_rank_log
    from training.modeling import build_skeleton
    from training.tracking import METRICS

    for run in args.runs:
        history = [json.loads(line) for line in (run / METRICS).read_text().splitlines()]
        cfg = load(run / "final")
        workers = [read_rank_log(run / "ray" / cfg.name, WORKER_METRICS, rank) for rank in range(cfg.scale.workers)]
        model = build_skeleton(cfg, {m: v.schema.dim for m, v in dataset(cfg)[1].items()})
        steady = history[args.skip:] or history
        mean = {k: statistics.mean(m[k] for m in steady)
                for k in ("step_time_s", "tokens_per_s", "samples_per_s", "data_wait_frac")}
        seq_len = mean["tokens_per_s"] / mean["samples_per_s"]
        dense, with_attn = flops_per_token(model, seq_len)
        print_record({
            "bench": "pave_train", "run": str(run), "strategy": cfg.scale.strategy, "workers": cfg.scale.workers,
            "base": model.hf.config.text_config.hidden_size, "batch": cfg.data.batch_size, "seq_len": round(seq_len),
            "windows_end": [m["step"] for m in history],
            "window_step_ms": [round(1000 * m["step_time_s"]) for m in history],
            "steady_from_window": args.skip + 1, "step_ms": round(1000 * mean["step_time_s"], 1),
            "tokens_per_s": round(mean["tokens_per_s"]), "samples_per_s": round(mean["samples_per_s"], 2),
            # each worker's own steady-state samples/s, summed (the run's metrics.jsonl is rank 0's alone)
            "samples_per_s_all_workers": round(sum(statistics.mean(m["samples_per_s"] for m in w[args.skip:] or w)
                                                   for w in workers), 2),
            "data_wait_frac_per_worker": [round(statistics.mean(m["data_wait_frac"] for m in w[args.skip:] or w), 4)
                                          for w in workers],
            "mfu": mfu(dense * mean["tokens_per_s"]), "mfu_attn": mfu(with_attn * mean["tokens_per_s"]),
            "data_wait_frac": round(mean["data_wait_frac"], 4),
            "window_data_wait_frac": [round(m["data_wait_frac"], 4) for m in history],
            "peak_gib": max((m["gpu_mem_peak_gib"] for m in history if "gpu_mem_peak_gib" in m), default=None),
        })


def print_record(record: dict) -> None:
    record = {k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}
    print(json.dumps(record), flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="synthetic store + annotations + random base model in DIR (kept if there)")
    prep.add_argument("dir", type=Path)
    prep.add_argument("--preset", choices=["0.5b", "7b"], default="7b")
    prep.add_argument("--tiny", action="store_true", help="tiny model and tokens (CPU smoke test)")
    prep.add_argument("--videos", type=int, help="videos in the store (default: the shape's, 64 / 16)")
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--min-frames", type=int, help="videos of this many frames up to the shape's 32, at random "
                      "(default: all 32): samples of different lengths")
    st = sub.add_parser("step", help="time model-only training steps on batches from DIR")
    st.add_argument("dir", type=Path)
    st.add_argument("--batch", type=int, nargs="+", default=[1])
    st.add_argument("--samples", type=int, help="samples every batch size trains on (default: the largest batch)")
    st.add_argument("--iters", type=int, default=10, help="timed rounds over the batches")
    st.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    st.add_argument("--checkpointing", default="auto", help="activation checkpointing: auto, none, full or N layers")
    st.add_argument("--pack", action="store_true", help="pack each batch into one sequence (no padding)")
    st.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile each decoder layer (default: with a GPU)")
    st.add_argument("--lora-dropout", type=float, help="LoRA dropout (default: the recipe's, 0.05)")
    st.add_argument("--functional-rng", action="store_true",
                    help="compiled layers regenerate dropout masks in the backward (functionalize_rng_ops)")
    st.add_argument("--profile", type=int, default=0, metavar="STEPS",
                    help="after timing, torch.profiler over STEPS steps: GPU busy share and the top ops")
    st.add_argument("--memory-peak", action="store_true",
                    help="after timing, one step under torch.cuda.memory's history: what is alive at its peak")
    rep = sub.add_parser("report", help="steady-state throughput, MFU and data wait of `pave train` runs")
    rep.add_argument("runs", type=Path, nargs="+")
    rep.add_argument("--skip", type=int, default=1, help="warm-up windows left out of the means")
    args = p.parse_args(argv)
    {"prepare": prepare, "step": step, "report": report}[args.command](args)


if __name__ == "__main__":
    main()
