"""Runs inside the guest, started by its init: applies the sandbox's environment, gives up root,
and serves the agent runtime in this interpreter.

The environment comes from the host as a JSON object in a fw_cfg item, so values may hold any
text (spaces, newlines, quotes). This file is copied into the guest by path; it is not imported
on the host.
"""

from __future__ import annotations

import json
import os
import runpy
import sys

ENV_ITEM = "/sys/firmware/qemu_fw_cfg/by_name/opt/agent-console/env/raw"
APP_PATHS = ("/opt/app", "/opt/site")
AGENT_UID = 1000
WORKSPACE = "/workspace"


def _say(message: str) -> None:
    print(f"guest: {message}", flush=True)


def main() -> None:
    with open(ENV_ITEM, "rb") as item:
        env = json.loads(item.read().decode())
    os.environ.clear()
    os.environ.update({str(key): str(value) for key, value in env.items()})
    os.setgroups([])
    os.setgid(AGENT_UID)
    os.setuid(AGENT_UID)
    os.chdir(WORKSPACE)
    sys.path[:0] = APP_PATHS
    sys.argv = ["agents.runtime"]
    _say("starting the agent runtime")
    runpy.run_module("agents.runtime", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
