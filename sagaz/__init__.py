"""sagaz: sagas and a transactional outbox that commit inside your own transaction."""

from sagaz import outbox
from sagaz.config import SagaConfig, configure, get_config
from sagaz.context import SagaContextManager, generate_correlation_id
from sagaz.errors import (
    ConfigurationError,
    InvalidContextError,
    LeaseLostError,
    MissingExtraError,
    SagaDefinitionError,
    SagaRegistryError,
    SagaTimeoutError,
    SagazError,
    StepTimeoutError,
    UnknownSagaError,
)
from sagaz.journal import MemoryJournal, SagaJournal, Transition, TransitionKind
from sagaz.registry import registry
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

__all__ = [
    "ConfigurationError",
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
    "StepOutcome",
    "StepStatus",
    "StepTimeoutError",
    "Transition",
    "TransitionKind",
    "UnknownSagaError",
    "action",
    "compensate",
    "configure",
    "generate_correlation_id",
    "outbox",
    "get_config",
    "registry",
    "start_saga",
    "__version__",
]
