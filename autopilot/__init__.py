"""The operator agents at work: the loop that runs one (Claude through the console's gateway,
with the console's MCP tools), its Celery tasks, and the operators' pages for them."""
