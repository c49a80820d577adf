"""SQLite's speed paths (TALLY_SQLITE_FAST_PATHS, on by default).

- `driver.py`: aiosqlite with one trip to its worker thread per statement;
- `inline_reads.py`: the count queries' statement on the event loop's thread;
- `recount_thread.py`: recalculation's recounts on one low-priority thread.

With the setting off, SQLite goes through SQLAlchemy's plain aiosqlite driver
and ordinary async sessions, like every other statement.
"""
