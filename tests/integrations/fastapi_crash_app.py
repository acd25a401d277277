"""An app run by uvicorn in a subprocess that the test kills (SIGKILL) while its
background saga is in a step: a worker must take the saga over once the lease expires.

Configured from SAGAZ_* environment variables, like an application in production."""

import os
import time
from typing import Any

from fastapi import BackgroundTasks, FastAPI

from sagaz import Saga, action
from sagaz.integrations.fastapi import create_lifespan, health_router, run_saga_background


class CrashSaga(Saga):
    """`hang` blocks forever in the process whose pid the context names, else returns."""

    saga_name = "integration-crash"

    @action("prepare")
    async def prepare(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"prepared_by": os.getpid()}

    @action("hang", depends_on=["prepare"])
    def hang(self, ctx: dict[str, Any]) -> dict[str, Any]:
        if ctx["pid"] == os.getpid():
            time.sleep(600)
        return {"finished_by": os.getpid()}


app = FastAPI(lifespan=create_lifespan())
app.include_router(health_router)


@app.post("/start", status_code=202)
async def start(background_tasks: BackgroundTasks) -> dict[str, str]:
    saga_id = await run_saga_background(background_tasks, CrashSaga, {"pid": os.getpid()})
    return {"saga_id": saga_id}
