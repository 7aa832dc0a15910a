#!/usr/bin/env python
"""Django's command-line utility for Gantry."""
import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "dashboard.settings")
    from django.core.management import execute_from_command_line

    from dashboard.env import ConfigError, stop_for

    try:
        execute_from_command_line(sys.argv)
    except ConfigError as exc:
        stop_for(exc)


if __name__ == "__main__":
    main()
