"""Runs one unit's supervisor (lib/systemd.py); a script here so that lib/ imports as a package."""

import sys

from lib.systemd import main

sys.exit(main(sys.argv[1:]))
