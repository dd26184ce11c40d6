"""``agent-console``: the installed console's command.

``agent-console run`` starts every process, as ``make run`` does (``config.launch``); any other
subcommand is Django's management command of that name, dashes or underscores alike
(``agent-console migrate``, ``agent-console create-api-key …``, ``agent-console mcp-stdio``).

Its local state (SQLite file, keys, broker socket, sandboxes) goes to ``CONSOLE_VAR_DIR``; by
default ``var/`` of the current directory, and a relative value is taken from there too (a
wheel's package folder is no place to write).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from config import launch

USAGE = """usage: agent-console COMMAND [ARGS…]

  run                 start the console (web, gateway, worker, beat, and a broker if needed)
  migrate             create or update the database
  create-api-key …    an API key for a user (see --help)
  mcp-stdio …         the MCP server on stdin/stdout
  help                every other command (Django's management commands)
"""


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help"}:
        print(USAGE, end="")
        return 0 if args else 2
    var = Path(os.environ.get("CONSOLE_VAR_DIR") or "var").resolve()
    var.mkdir(parents=True, exist_ok=True)
    os.environ["CONSOLE_VAR_DIR"] = str(var)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    command, rest = args[0], args[1:]
    if command == "run":
        return launch.main()
    launch.local_keys(os.environ, var)  # the keys `run` makes and uses
    from django.core.management import execute_from_command_line

    execute_from_command_line(["agent-console", command.replace("-", "_"), *rest])
    return 0


if __name__ == "__main__":
    sys.exit(main())
