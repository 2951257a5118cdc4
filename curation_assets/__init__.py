"""curation_assets: image-dataset curation as Dagster assets over Delta tables."""
