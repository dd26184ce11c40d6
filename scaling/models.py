"""Scaling rules and decisions (see the autoscaling work in scaling/)."""
