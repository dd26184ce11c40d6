"""The framework-free wire layer, shared by the console and the agent runtime."""
