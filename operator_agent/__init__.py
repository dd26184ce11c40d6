"""Operator agents: Claude models that run the console's own tools on a schedule, under a daily
budget of their own, with a person's approval for the calls that need it; their runs and the
log of every action they took."""
