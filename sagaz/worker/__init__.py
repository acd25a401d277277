"""The saga worker: claims started sagas and runs them under a lease."""

from sagaz.worker.saga_worker import SagaWorker

__all__ = ["SagaWorker"]
