"""Everything about PostgreSQL: the store, its schema and migrations (the queue's tables included),
the connection helper with its read deadline, the keyset source ``PostgresTable``, the queue backend,
the transactional save, the commit-in-doubt resolver and the one error translator."""
