"""Web framework adapters: `sagaz.integrations.fastapi`, `.flask`, `.django`.

Importing this package imports no framework; each adapter imports its own framework and
raises `sagaz.MissingExtraError` naming the extra to install when it is missing.
"""
