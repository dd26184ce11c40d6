"""The agent runtime: the server inside each sandbox. It imports nothing from Django.

It keeps each session's history, runs Claude's turns through the console's gateway with the
short-lived token it was given, and reports its health and metrics.
"""
