"""When downstream assets run on their own: the condition the automation sensor evaluates."""

import dagster as dg

#: Run as soon as any parent updated and none is in progress. Unlike plain `eager()`, a day
#: partition that never loaded (a failed day) does not hold everything downstream back.
AUTOMATION = (dg.AutomationCondition.eager()
              .without(~dg.AutomationCondition.any_deps_missing())
              .with_label("eager, allowing missing days"))
