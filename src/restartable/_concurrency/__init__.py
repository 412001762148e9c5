"""Concurrency inside one job: the engines that run a run's items, files or commands in parallel.

* :mod:`.window` — the bookkeeping every engine shares: which items are done above the
  watermark, the window that bounds the checkpoint, dead letters;
* :mod:`.engines` — ``job.map`` (worker threads), ``job.amap`` / ``job.aiterate`` (asyncio);
* :mod:`.executors` — ``job.map(executor=...)``: worker processes, a Dask cluster, any Executor;
* :mod:`.processes` — ``restartable each-file``: one command per file, N at a time.

Each gets the run context (:class:`restartable._run.RunContext`), never the Job, and
retries by the one policy of :mod:`restartable._retry`.
"""
