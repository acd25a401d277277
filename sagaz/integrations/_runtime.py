"""Where `SagaRuntime`, `find_runtime` and the background runner used to live; they are
now `sagaz.runtime` and `sagaz.background` (re-exported here and from
`sagaz.integrations._base`)."""

from sagaz.background import BackgroundRun, BackgroundSagaRunner
from sagaz.runtime import SagaRuntime, find_runtime

__all__ = ["BackgroundRun", "BackgroundSagaRunner", "SagaRuntime", "find_runtime"]
