"""The run config as argparse flags, so that `pave train` parses as every other `pave` command does (one error line,
`--help` without heavy imports): one flag per field of the nested config dataclasses, spelt `--section.field` with
dashes (`--optim.grad-accum`), plus the short aliases a field declares (`Flags("--lr")`), its help the field's
comment in training/config.py. A bool field is `--section.field` (or `--section.field false`) / `--section.no-field`;
a list takes its values after one flag; a dict takes KEY=VALUE pairs.

Every flag defaults to "not given": only the flags on the command line override the config file (or the defaults)."""
import argparse
import dataclasses
import inspect
import io
import re
import tokenize
import types
import typing
from dataclasses import dataclass


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line, as every other bad input of `pave` (jobs/cli.py prints a
    SystemExit's message as `pave COMMAND: message` and exits 2)."""

    def __init__(self, *args, **kwargs):
        # no abbreviations: `--side` must not silently stand for `--sides`, nor an old flag for a new one
        super().__init__(*args, **{"allow_abbrev": False, **kwargs})

    def error(self, message):
        raise SystemExit(f"{message}; see `{self.prog} --help`")


@dataclass(frozen=True)
class Flags:
    """Annotated metadata of a config field: the short flags it is also known by."""

    aliases: tuple[str, ...]

    def __init__(self, *aliases: str):
        object.__setattr__(self, "aliases", aliases)


def field_comments(cls) -> dict[str, str]:
    """The comment of each field of dataclass `cls`: those on the lines above it and at the end of its line."""
    comments, above = {}, []
    lines = inspect.getsource(cls).splitlines(keepends=True)
    trailing = {start[0]: text for kind, text, start, _, _ in tokenize.generate_tokens(io.StringIO("".join(lines)).readline)
                if kind == tokenize.COMMENT}
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("# "))
            continue
        if match := re.match(r"\s+(\w+)\s*:", line):
            after = trailing.get(number, "").lstrip("# ")
            comments[match.group(1)] = " ".join([*above, after]).strip()
        above = []
    return comments


def _kind(annotation) -> tuple[type, tuple[str, ...]]:
    """(the field's base type, its aliases) from its annotation."""
    aliases: tuple[str, ...] = ()
    if typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        aliases = next((m.aliases for m in extra if isinstance(m, Flags)), ())
    return annotation, aliases


def add_arguments(parser: argparse.ArgumentParser, cls, prefix: str = "", group=None) -> None:
    """Flags for every field of the config dataclass `cls` (nested sections recursively, each an argument group)."""
    hints, comments = typing.get_type_hints(cls, include_extras=True), field_comments(cls)
    for f in dataclasses.fields(cls):
        annotation, aliases = _kind(hints[f.name])
        path = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(annotation):
            doc = inspect.getdoc(annotation) if annotation.__doc__ and not annotation.__doc__.startswith(
                annotation.__name__ + "(") else None
            add_arguments(parser, annotation, f"{path}.", parser.add_argument_group(path, doc))
            continue
        target = group or parser
        flag = "--" + path.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = comments.get(f.name, "")
        kw = dict(dest=path, default=argparse.SUPPRESS)
        args = typing.get_args(annotation)
        if annotation is bool or (isinstance(annotation, types.UnionType) and bool in args):
            head, _, name = flag.rpartition(".")
            negative = f"{head}.no-{name}" if head else f"--no-{name[2:]}"
            target.add_argument(flag, *aliases, nargs="?", const=True, type=_bool, metavar="true|false",
                                help=f"{help_text} (default: {default})", **kw)
            target.add_argument(negative, action="store_false", help=argparse.SUPPRESS, **kw)
            continue
        if typing.get_origin(annotation) is typing.Literal:
            kw.update(choices=args, metavar="{" + ",".join(map(str, args)) + "}")
        elif typing.get_origin(annotation) is list:
            kw.update(nargs="*", metavar="NAME")
        elif typing.get_origin(annotation) is dict:
            kw.update(nargs="*", metavar="KEY=VALUE", type=pair, action=Pairs)
        else:
            kw.update(type=annotation, metavar=annotation.__name__.upper())
        target.add_argument(flag, *aliases, help=f"{help_text} (default: {default!r})", **kw)


def _bool(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: expected true or false")


class Pairs(argparse.Action):
    """KEY=VALUE pairs into a dict, over those of earlier uses of the flag."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, {**getattr(namespace, self.dest, {}), **dict(values)})


def pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not (key and sep and value):
        raise argparse.ArgumentTypeError(f"{text!r}: expected KEY=VALUE")
    return key, value


def paths(cls, prefix: str = "") -> list[str]:
    """The dotted path of every field of the config dataclass `cls`, nested sections' fields included."""
    hints = typing.get_type_hints(cls, include_extras=True)
    found = []
    for f in dataclasses.fields(cls):
        annotation = _kind(hints[f.name])[0]
        if dataclasses.is_dataclass(annotation):
            found += paths(annotation, f"{prefix}{f.name}.")
        else:
            found.append(f"{prefix}{f.name}")
    return found


def given(args: argparse.Namespace, cls) -> dict:
    """The fields of `cls` given on the command line, as nested config values ({"optim": {"lr": 1e-4}})."""
    values: dict = {}
    for path in paths(cls):
        if path not in args:
            continue
        *sections, name = path.split(".")
        node = values
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = getattr(args, path)
    return values
