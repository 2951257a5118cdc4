"""Pure algorithms and I/O (numpy, polars, torch, faiss); never imports dagster."""
