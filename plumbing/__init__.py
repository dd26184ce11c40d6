"""Shared web plumbing that imports no app: the error shape, request ids and metrics in the
middleware, parsers and renderers, pagination, the channel layer, probes and error pages."""
