"""The journalctl stand-in: the per-unit logs the supervisor writes, ``-u`` and ``-n`` only."""

from __future__ import annotations

import sys

from .common import SandboxError, log_path, sandbox_root
from .systemd import known_units, unit_name


def main(argv: list[str]) -> int:
    try:
        root = sandbox_root()
    except SandboxError as error:
        print(str(error), file=sys.stderr)
        return 1
    units: list[str] = []
    lines: int | None = None
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-u", "--unit") and args:
            units.append(unit_name(args.pop(0)))
        elif arg.startswith("--unit="):
            units.append(unit_name(arg.split("=", 1)[1]))
        elif arg in ("-n", "--lines") and args:
            lines = int(args.pop(0))
        elif arg.startswith("--lines="):
            lines = int(arg.split("=", 1)[1])
        elif arg.startswith("-n") and arg[2:].isdigit():
            lines = int(arg[2:])
        elif arg in ("-o", "--output", "--since", "--until", "-p", "--priority") and args:
            args.pop(0)
    output: list[str] = []
    for unit in units or known_units(root):
        try:
            output.extend(log_path(root, unit).read_text(errors="replace").splitlines())
        except OSError:
            continue
    if lines is not None:
        output = output[-lines:] if lines > 0 else []
    if not output:
        print("-- No entries --")
    else:
        print("\n".join(output))
    return 0
