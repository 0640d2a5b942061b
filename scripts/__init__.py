"""Command-line tools beside the project: `python scripts/<name>.py ...` or `python -m scripts.<name> ...`."""
