"""In-process fakes of external services used by tests and benchmarks."""
