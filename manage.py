#!/usr/bin/env python
"""Django's command-line utility for Gantry."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    from django.core.management import execute_from_command_line

    from dashboard.env import ConfigError

    try:
        execute_from_command_line(sys.argv)
    except ConfigError as exc:
        # A bad setting is the operator's to fix: say which and how, not a traceback.
        sys.stderr.write(f"gantry: configuration error: {exc}\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
