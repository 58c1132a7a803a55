"""The `pave` command line. Each subcommand lives in its own module under jobs/, which defines `add_arguments(parser)`
and `run(args) -> int`; heavy imports stay inside `run`, so that `--help` is instant. Every command parses with
argparse (`pave train`'s flags are generated from the run config: training/flags.py), and a usage error is one line
like any other bad input.

Errors: bad input (the error classes below, a `SystemExit` with a message, a full or read-only disk) prints one line,
`pave COMMAND: what, which item, what to do`, and exits 2; anything else is a bug and keeps its traceback."""
import errno
import importlib
import os
import sys

from jobs import ray_runtime
from training.flags import OneLineParser

# subcommand -> (module, one-line help)
COMMANDS = {
    "demo": ("jobs.demo", "synthetic corpus -> materialize -> train -> eval, prints a results table"),
    "make-corpus": ("jobs.make_corpus", "write a synthetic video corpus whose side-channel content is known"),
    "materialize": ("jobs.materialize", "decode videos and write timestamped tokens into a feature store (Ray Data)"),
    "train": ("jobs.train", "train PAVE patches + LoRA from a feature store (Ray Train)"),
    "eval": ("jobs.evaluate", "evaluate a checkpoint: generation, accuracy, JSON + Markdown report"),
    "report": ("jobs.report", "compare training runs and evaluations: one HTML page with plots and tables"),
    "store": ("jobs.store", "feature store tools: ls, inspect, verify, gc, import"),
    "import-checkpoint": ("jobs.import_checkpoint", "convert an official PAVE release into a checkpoint pave eval loads"),
    "model-info": ("jobs.model_info", "parameter counts of a PAVE patch vs its base model"),
    "data": ("jobs.data", "convert a paper task's raw annotations (convert); check what would train (check)"),
    "score": ("jobs.score", "a paper task's official metrics of predictions (Music-AVQA, AVSD, ScanQA, SQA3D)"),
}


# Bad input, not a bug: their messages name the item and what to do. Looked up only in modules already imported
# (an error class whose module was never imported cannot have been raised), so that this costs no import.
USER_ERRORS = {"featurestore.schema": "FeatureError", "featurestore.store": "ItemNotFound",
               "pipelines.annotations": "AnnotationError", "pipelines.sources": "SourceError",
               "training.config": "ConfigError",
               "training.data": "DataOrderError", "model.official": "OfficialCheckpointError",
               "tasks.common": "TaskDataError"}
# The machine's state, not the program's: the OS message and the path say it all.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.ENOENT}
USAGE_EXIT = 2


def user_error_message(err: BaseException) -> str | None:
    """The one-line message for a bad-input error, None for anything else."""
    err = getattr(err, "cause", None) or err  # a Ray task's error wraps the one raised in the task
    classes = tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS.items() if module in sys.modules)
    if isinstance(err, classes):
        return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if isinstance(err, OSError) and err.errno in ENVIRONMENT_ERRNOS:
        where = f": {err.filename}" if err.filename else ""
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
        return f"{err.strerror}{where}" + ("; free some space or write elsewhere" if full else "")
    if isinstance(err, (FileExistsError, NotADirectoryError)) and err.filename and not os.path.isdir(err.filename):
        return f"{err.filename}: a file is in the way of a directory there; give a directory path, or move the file"
    return None


def build_parser(command: str | None = None) -> OneLineParser:
    """The `pave` parser; only `command`'s module is imported and given its flags, so that `pave --help` and every
    other command stay quick whatever a module imports."""
    parser = OneLineParser(prog="pave", description="PAVE data engine: side-channel features for video LLMs, on Ray.")
    parser.add_argument("--verbose", action="store_true",  # main() takes it out wherever it is, before parsing
                        help="Ray's own logs in full (default: only its warnings and errors)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
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
    if "--verbose" in argv:  # global, before or after the command (jobs/ray_runtime.py: what it shows)
        argv = [arg for arg in argv if arg != "--verbose"]
        os.environ[ray_runtime.VERBOSE_ENV] = "1"
    if not ray_runtime.verbose():
        ray_runtime.hide_progress_bars()  # before a command's module imports transformers
    command = argv[0] if argv and argv[0] in COMMANDS else None
    try:
        args, unknown = build_parser(command).parse_known_args(argv)
        if unknown:  # named here, where the command is known: argparse's own message points at `pave --help`
            raise SystemExit(f"unrecognized arguments: {' '.join(unknown)}; see `pave {command} --help`")
        return args.run(args) or 0
    except SystemExit as exit_:
        if not isinstance(exit_.code, str):  # --help (0)
            raise
        prefix = "" if exit_.code.startswith("pave") else f"pave {command}: " if command else "pave: "
        print(f"{prefix}{exit_.code}", file=sys.stderr)
        return USAGE_EXIT
    except Exception as err:
        message = user_error_message(err)
        if message is None:
            raise
        print(f"pave {command}: {message}", file=sys.stderr)
        return USAGE_EXIT


if __name__ == "__main__":
    sys.exit(main())
