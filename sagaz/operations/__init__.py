"""Operating sagaz: the health check and the counts behind `sagaz stats`.

`sagaz.operations.health.check_health` is the one health check the framework health
endpoints and the CLI share; `sagaz.operations.stats.read_stats` adds the counts an
operator looks at (every saga by name and status, the workers holding leases).
"""
