"""How assets run: the condition the automation sensor evaluates, the concurrency pools, the
retry policy of steps that read the landing zone, and the Celery queue of torch steps.

The pools' sizes are set in orchestration/dagster.yaml (one step at a time each)."""

import dagster as dg

#: Run as soon as any parent updated and none is in progress. Unlike plain `eager()`, a day
#: partition that never loaded (a failed day) does not hold everything downstream back.
AUTOMATION = (dg.AutomationCondition.eager()
              .without(~dg.AutomationCondition.any_deps_missing())
              .with_label("eager, allowing missing days"))

#: Assets that write the warehouse: DuckDB takes one writer per file.
WAREHOUSE_POOL = "duckdb"
#: Model training, the one job that wants the accelerator to itself.
GPU_POOL = "gpu"

#: Op tags of the assets that take the `device` resource (they may load a torch model): the Celery
#: executor (orchestration/celery.py) sends their steps to the `gpu` queue, which only GPU workers
#: read. Other executors ignore the tag.
TORCH_OP_TAGS = {"dagster-celery/queue": "gpu"}

#: Steps that read landing files (a network share or a bucket mount can fail for a moment)
#: try twice more, 10 s and then about 20 s later; a corrupt file is never retried (see
#: `LandingFileError.transient`): an event file becomes one quarantined `unreadable_file` row,
#: an items or users file fails its run at once. Each step writes in one transaction, so a retry starts
#: from the last committed state.
LANDING_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
