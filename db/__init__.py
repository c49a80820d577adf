"""Persistence and domain writes: models, engine, unit of work, the aggregate, queries."""
