"""Not yet implemented: its issue has not landed."""


def add_arguments(parser):
    pass


def run(args) -> int:
    raise SystemExit(f"pave {args.command}: not yet implemented")
