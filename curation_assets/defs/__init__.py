"""Dagster glue: one module per stage plus resources, partitions and sensors."""
