"""PostgreSQL's speed paths (TALLY_POSTGRES_FAST_PATHS, on by default).

- `reads.py`: the count queries' one statement straight through asyncpg, on a
  small pool of its own, instead of through a SQLAlchemy session.

With the setting off, PostgreSQL goes through SQLAlchemy's asyncpg dialect like
every other statement.
"""
