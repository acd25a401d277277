"""An order service on FastAPI + sagaz: see ../README.md."""
