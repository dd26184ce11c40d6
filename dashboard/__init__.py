"""The operator dashboard (staff only): the fleet's overview, agents, scaling rules and their
decisions, and the audit log; htmx pages over the services and selectors."""
