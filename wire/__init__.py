"""What the console and the agent runtime both speak, framework-free: request ids and log lines,
SSE framing, bounded JSON, and the events and fields of a turn. It imports no Django and nothing
else of the project, so that a sandbox can carry it beside the runtime."""
