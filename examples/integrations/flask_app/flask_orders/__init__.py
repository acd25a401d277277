"""An order service on Flask + Flask-SQLAlchemy + sagaz: see ../README.md.

``flask --app flask_orders ...`` finds `create_app` here.
"""

from flask_orders.app import create_app

__all__ = ["create_app"]
