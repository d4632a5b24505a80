"""encnet command-line interface (Typer)."""
