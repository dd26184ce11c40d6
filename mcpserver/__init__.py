"""The console as an MCP server: its operations as tools, over Streamable HTTP at ``/mcp`` and
over stdio (``manage.py mcp_stdio``)."""
