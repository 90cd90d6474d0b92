"""Running recipes: the run directory, the driver, item outcomes, the one pipeline every command
runs on, and the engines rows run on (this process, or Ray workers)."""
