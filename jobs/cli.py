"""The `pave` command line. Each subcommand lives in its own module under jobs/, which defines either
`add_arguments(parser)` and `run(args) -> int`, or `main(argv) -> int` when a library parses its flags (`pave train`:
the run config's parser); heavy imports stay inside them so `pave --help` is instant."""
import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS = {
    "demo": ("jobs.demo", "synthetic corpus -> materialize -> train -> eval, prints a results table"),
    "make-corpus": ("jobs.make_corpus", "write a synthetic video corpus whose side-channel content is known"),
    "materialize": ("jobs.materialize", "decode videos and write timestamped tokens into a feature store (Ray Data)"),
    "train": ("jobs.train", "train PAVE patches + LoRA from a feature store (Ray Train)"),
    "eval": ("jobs.evaluate", "evaluate a checkpoint: generation, accuracy, JSON + Markdown report"),
    "store": ("jobs.store", "feature store tools: ls, inspect, verify, gc"),
    "import-checkpoint": ("jobs.import_checkpoint", "convert an official PAVE release into a checkpoint pave eval loads"),
    "model-info": ("jobs.model_info", "parameter counts of a PAVE patch vs its base model"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `pave` parser; only `command`'s module is imported and given its flags, so that `pave --help` and every
    other command stay quick whatever a module imports."""
    parser = argparse.ArgumentParser(
        prog="pave", description="PAVE data engine: side-channel features for video LLMs, on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if name != command:
            sub.add_parser(name, help=help_text)
            continue
        module = importlib.import_module(module_name)
        parsed = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(parsed)
        parsed.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    if command:
        module = importlib.import_module(COMMANDS[command][0])
        if hasattr(module, "main"):  # parses its own flags
            return module.main(argv[1:]) or 0
    args = build_parser(command).parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
