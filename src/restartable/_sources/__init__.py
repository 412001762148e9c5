"""What every resumable source shares, whatever the database: batches by key, files with markers, transactions.

Plain sequences and iterators are handled by ``Job.iterate`` itself
(:mod:`restartable._cursor`). The sources here get the run context
(:class:`restartable._run.RunContext`), never the Job: ``ctx.cursor(name)`` registers a
cursor loaded from the record, and ``ctx.loop_hooks(...)`` gives the between-items work
(checkpoint when due, stop on a signal or fencing, progress).

* :mod:`.batches` drives any :class:`~.batches.BatchSource`; the keyset tables are each
  database's own (``restartable.PostgresTable`` in :mod:`restartable._postgres.table`,
  ``restartable.SQLiteTable`` in :mod:`restartable._sqlite.table`);
* :mod:`.files` — ``job.files`` and ``job.output``;
* :mod:`.transaction` — ``job.transaction()``: the contract, and what each store's
  ``transactional()`` builds on.

Pipelines of stages, which drive a whole Job, live above it in :mod:`restartable._pipeline`.
"""
