"""What every web adapter shares, free of any framework import and of the runtime: one
small module per concern.

* `correlation` - the correlation-id rule and the header-name check;
* `commit` - the commit/rollback policy of a request's unit of work;
* `portal` - the event-loop portal sync adapters hand coroutines to;
* `health` - the health report every health endpoint serves;
* `errors` - the configuration error the adapters raise.
"""
