"""``python -m agents.runtime``: serve one agent, configured by the environment."""

from __future__ import annotations

from agents.runtime.server import main

if __name__ == "__main__":
    main()
