"""Training pipeline: synthesize -> prepare -> train -> evaluate -> export (CLI: `python -m training --help`)."""
