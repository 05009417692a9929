"""How assets run: the condition the automation sensor evaluates, and the concurrency pools.

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
