"""sagaz: sagas and a transactional outbox that commit inside your own transaction."""

from sagaz import outbox
from sagaz.config import SagaConfig, configure, get_config
from sagaz.context import SagaContextManager, generate_correlation_id
from sagaz.errors import (
    ConfigurationError,
    CorruptRowError,
    InvalidContextError,
    LeaseLostError,
    MissingExtraError,
    SagaDefinitionError,
    SagaRegistryError,
    SagaTimeoutError,
    SagazError,
    SchemaNotReadyError,
    StepTimeoutError,
    UnknownSagaError,
)
from sagaz.journal import MemoryJournal, SagaJournal, Transition, TransitionKind
from sagaz.registry import registry
from sagaz.run_context import StepRun, current_run
from sagaz.saga import Saga, action, compensate
from sagaz.start import start_saga
from sagaz.types import (
    ParallelFailureStrategy,
    SagaResult,
    SagaStatus,
    StepOutcome,
    StepStatus,
)

__version__ = "0.1.0"
"""sagaz's version: the one place it is written (pyproject.toml reads it from here)."""

__all__ = [
    "ConfigurationError",
    "CorruptRowError",
    "InvalidContextError",
    "LeaseLostError",
    "MemoryJournal",
    "MissingExtraError",
    "ParallelFailureStrategy",
    "Saga",
    "SagaConfig",
    "SagaContextManager",
    "SagaDefinitionError",
    "SagaJournal",
    "SagaRegistryError",
    "SagaResult",
    "SagaStatus",
    "SagaTimeoutError",
    "SagazError",
    "SchemaNotReadyError",
    "StepOutcome",
    "StepRun",
    "StepStatus",
    "StepTimeoutError",
    "Transition",
    "TransitionKind",
    "UnknownSagaError",
    "action",
    "compensate",
    "configure",
    "current_run",
    "generate_correlation_id",
    "outbox",
    "get_config",
    "registry",
    "start_saga",
    "__version__",
]
