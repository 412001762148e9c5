"""Everything about SQLite: the store, the keyset source ``SQLiteTable`` and the transactional save."""
