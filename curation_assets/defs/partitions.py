"""Shards as Dagster dynamic partitions."""

import dagster as dg

SHARDS_PARTITION = "shards"

shards_partitions = dg.DynamicPartitionsDefinition(name=SHARDS_PARTITION)
