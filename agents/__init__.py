"""Agents: their sandboxes, sessions and messages, and the in-sandbox runtime."""
