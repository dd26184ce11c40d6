"""Scaling: rules that grow and shrink agent pools, and the decisions they make."""
