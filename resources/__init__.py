"""Dagster resources: thin adapters from the Dagster layer to the core's I/O."""
from resources.database import DatabaseResource

__all__ = ["DatabaseResource"]
