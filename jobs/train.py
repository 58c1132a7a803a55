"""`pave train`: PAVE patches + LoRA on a frozen LLaVA-OneVision, trained by Ray Train workers from a feature store.
The flags are the run config's (training/config.py: `--config FILE` plus a `--section.field` flag per field, the
short flags as aliases); the training itself is training/. Outputs in --out (a path, or an object-store URL:
training/rundir.py): run_config.yaml, ray/ (Ray Train run:
checkpoints, data_order/), final/ (peft adapter + patches + run_config.yaml + provenance.json: what it was trained
on, training/provenance.py), metrics.jsonl, loss_curve.png."""
import sys
import time


def add_arguments(parser) -> None:
    from training.config import RunConfig, add_arguments as run_config_arguments

    parser.description = RunConfig.__doc__
    parser.add_argument("--dry-run", action="store_true",
                        help="check the inputs, print the resolved config, the sample and step counts and the first "
                             "batch's token counts, and stop (no Ray, nothing written)")
    run_config_arguments(parser)


def run(args) -> int:
    from jobs.ray_runtime import base_model_path, gpus_pending, init_ray, output_dir, output_path, ray_log_level
    from training.checkpoint import NonFiniteError
    from training.config import from_args
    from training.launch import check_inputs, dry_run, fit

    started = time.perf_counter()
    cfg = from_args(args)
    # absolute paths: Ray Train workers do not run in this directory
    cfg.out = output_dir(cfg.out, "--out", urls=True)
    cfg.data.store = output_path(cfg.data.store, "--store", urls=True)
    cfg.data.annotations = output_path(cfg.data.annotations, "--annotations", urls=True)
    if cfg.model.base:
        cfg.model.base = base_model_path(output_path(cfg.model.base, "--base-model"))
    inputs = check_inputs(cfg)  # before Ray starts: a wrong file costs no Ray start-up
    if args.dry_run:
        print(dry_run(cfg, inputs))
        return 0
    ray = init_ray()
    gpus = f"--scale.gpus-per-worker {cfg.scale.gpus_per_worker:g}"
    if cfg.scale.gpus_per_worker and gpus_pending(ray, gpus, "give --scale.gpus-per-worker 0 to train on CPUs"):
        print(f"pave train: {gpus} and no GPU in the cluster yet: the workers wait for GPU nodes to join",
              file=sys.stderr)
    try:
        final = fit(cfg, inputs, ray_log_level())
    except NonFiniteError as err:  # not bad input (exit 2): the run itself diverged
        print(f"pave train: {err}", file=sys.stderr)
        return 1
    print(f"trained {cfg.optim.steps} steps in {time.perf_counter() - started:.0f} s -> {final}")
    print(f"loss curve: {cfg.out.rstrip('/')}/loss_curve.png")
    return 0
