"""The `pave` command line. Each subcommand lives in its own module under jobs/, which defines
`add_arguments(parser)` and `run(args) -> int`; heavy imports stay inside `run` so `pave --help` is instant."""
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
    "model-info": ("jobs.model_info", "parameter counts of a PAVE patch vs its base model"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pave", description="PAVE data engine: side-channel features for video LLMs, on Ray."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
