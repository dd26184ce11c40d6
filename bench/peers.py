"""Other LLM gateways, run beside the console's on the same fake Anthropic, for
``bench/gateway.py --peer``.

LiteLLM's proxy is installed from PyPI, pinned, into its own virtual environment under
``var/peers/litellm`` (never into the project's), configured with one model routed to the fake
Anthropic and no database, and served on loopback by one uvicorn worker, as the console's
gateway is one process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

from harness import ROOT, Child, free_port, wait_ready

__all__ = ["LITELLM_VERSION", "PEERS", "PeerUnavailable", "start_peer"]

LITELLM_VERSION = "1.106.12"
PEERS = ("litellm",)
# Its import and start-up take tens of seconds on a busy machine.
START_SECONDS = 180


class PeerUnavailable(Exception):
    """The peer could not be installed or started."""


def _litellm_install(folder: Path) -> Path:
    """The ``litellm`` command of a virtual environment in ``folder`` holding the pinned
    LiteLLM proxy, created (or brought to the pin) first."""
    venv = folder / "venv"
    litellm = venv / "bin" / "litellm"
    stamp = folder / "installed"
    if litellm.exists() and stamp.exists() and stamp.read_text() == LITELLM_VERSION:
        return litellm
    folder.mkdir(parents=True, exist_ok=True)
    print(f"installing LiteLLM's proxy {LITELLM_VERSION} in {folder} …", flush=True)
    log = folder / "install.log"
    try:
        with log.open("wb") as out:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, stdout=out)
            subprocess.run(
                [str(venv / "bin" / "pip"), "install", f"litellm[proxy]=={LITELLM_VERSION}"],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
    except (OSError, subprocess.CalledProcessError) as exc:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise PeerUnavailable(f"LiteLLM's proxy could not be installed ({exc}):\n{tail}") from exc
    stamp.write_text(LITELLM_VERSION)
    return litellm


def _litellm_config(folder: Path, model: str, upstream_url: str, upstream_key: str) -> Path:
    """One model, sent to ``upstream_url`` as Anthropic; a master key; no database."""
    config = {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"anthropic/{model}",
                    "api_base": upstream_url,
                    "api_key": upstream_key,
                },
            }
        ],
        "general_settings": {"master_key": "sk-bench-peer"},
    }
    path = folder / "config.yaml"
    path.write_text(json.dumps(config, indent=2))  # YAML reads JSON
    return path


def start_peer(
    name: str, log_dir: Path, model: str, upstream_url: str, upstream_key: str
) -> tuple[Child, str, str]:
    """The peer ``name``, serving ``model`` from the fake Anthropic at ``upstream_url``, once it
    answers; its Anthropic Messages URL and the key it takes. Raises ``PeerUnavailable``."""
    if name != "litellm":
        raise PeerUnavailable(f"no peer named {name!r}")
    folder = ROOT / "var" / "peers" / "litellm"
    litellm = _litellm_install(folder)
    config = _litellm_config(log_dir, model, upstream_url, upstream_key)
    port = free_port()
    env = {
        # Not the console's environment: a DATABASE_URL would give LiteLLM a database.
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(folder),
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start-up
        "LITELLM_TELEMETRY": "False",
        "PYTHONUNBUFFERED": "1",
    }
    argv = [str(litellm), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    peer = Child("litellm", [*argv, "--num_workers", "1"], env, log_dir)
    url = f"http://127.0.0.1:{port}"

    def alive() -> str | None:
        try:
            with urllib.request.urlopen(f"{url}/health/liveliness", timeout=2) as response:
                return url if response.status == 200 else None
        except OSError:
            return None

    try:
        wait_ready(peer, alive, seconds=START_SECONDS)
    except RuntimeError as exc:
        peer.stop()
        raise PeerUnavailable(f"LiteLLM's proxy did not start: {exc}") from exc
    return peer, f"{url}/v1/messages", "sk-bench-peer"
