"""Datasets (the embedded cluttered_digits TFDS builder), grain input pipelines and transforms."""
