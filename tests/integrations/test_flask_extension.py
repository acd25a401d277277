"""SagazExtension as a Flask extension: registration, the app-factory pattern, settings
from app.config and keyword arguments, and the missing-extra error."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from sagaz import ConfigurationError, ParallelFailureStrategy, SagaStatus
from sagaz.integrations.flask import EXTENSION_KEY, SagazExtension
from tests.conftest import DatabaseUrls
from tests.core.test_optional_imports import run_blocked
from tests.integrations.flask_apps import Order, build_app, db, dispose_db_engines
from tests.integrations.integration_helpers import IntegrationOrderSaga


def flask_app(database_url: str | None = None, **config: object) -> Flask:
    app = Flask(__name__)
    app.config.update(config)
    if database_url is not None:
        app.config["SQLALCHEMY_DATABASE_URI"] = database_url
        db.init_app(app)
    return app


def test_the_extension_is_stored_in_app_extensions(sqlite: DatabaseUrls) -> None:
    app = flask_app(sqlite.sync)
    extension = SagazExtension(app, db)
    assert app.extensions[EXTENSION_KEY] is extension
    assert extension.config(app).database_url == sqlite.sync  # taken from the db's bind
    dispose_db_engines(app)


def test_registering_twice_is_an_error(sqlite: DatabaseUrls) -> None:
    app = flask_app(sqlite.sync)
    extension = SagazExtension(app, db)
    with pytest.raises(ConfigurationError, match="already been registered"):
        extension.init_app(app, db)
    with pytest.raises(RuntimeError, match="already been registered"):  # as before
        SagazExtension(app)
    dispose_db_engines(app)


def test_the_db_must_be_initialised_on_the_app_first(sqlite: DatabaseUrls) -> None:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = sqlite.sync
    with pytest.raises(ConfigurationError, match=r"db.init_app\(app\) before"):
        SagazExtension(app, db)
    assert EXTENSION_KEY not in app.extensions


def test_one_extension_serves_several_apps_from_a_factory(
    sqlite: DatabaseUrls, tmp_path: Path
) -> None:
    extension = SagazExtension(lease_seconds=7.0)  # defaults for every app
    other = f"sqlite:///{tmp_path / 'other.db'}"
    first = flask_app(sqlite.sync)
    second = flask_app(other, SAGAZ_LEASE_SECONDS=3.0)
    extension.init_app(first, db)  # db passed late
    extension.init_app(second, db)
    assert extension.config(first).database_url == sqlite.sync
    assert extension.config(first).lease_seconds == 7.0
    assert extension.config(second).database_url == other
    assert extension.config(second).lease_seconds == 3.0  # app.config wins over kwargs
    with second.app_context():
        assert extension.config() is extension.config(second)  # the current app
    for app in (first, second):
        dispose_db_engines(app)


def test_settings_from_app_config_strings_are_converted(sqlite: DatabaseUrls) -> None:
    app = flask_app(
        sqlite.sync,
        SAGAZ_MAX_RETRIES="4",
        SAGAZ_FAILURE_STRATEGY="wait_all",
        SAGAZ_LOG_TRANSITIONS="yes",
        SAGAZ_BROKER_URL="redis://localhost:6379/0",
    )
    config = SagazExtension(app, db).config(app)
    assert config.max_retries == 4
    assert config.failure_strategy is ParallelFailureStrategy.WAIT_ALL
    assert config.log_transitions is True
    assert config.broker_url == "redis://localhost:6379/0"
    dispose_db_engines(app)


def test_an_explicit_database_url_and_url_objects(sqlite: DatabaseUrls, tmp_path: Path) -> None:
    elsewhere = sa.make_url(f"sqlite:///{tmp_path / 'sagaz.db'}")
    app = flask_app(sqlite.sync, SAGAZ_DATABASE_URL=elsewhere)
    assert SagazExtension(app, db).config(app).database_url == str(elsewhere)
    dispose_db_engines(app)


def test_without_a_db_or_url_sagas_run_in_memory() -> None:
    app = flask_app()
    extension = SagazExtension(app)
    assert extension.config(app).database_url is None
    assert extension.health(app).as_dict() == {"status": "ok", "database": "not configured"}
    try:
        with app.app_context():
            result = extension.run_sync(IntegrationOrderSaga, {"n": "in-memory"})
        assert result.status is SagaStatus.COMPLETED
    finally:
        extension.close()


def test_an_empty_database_url_setting_means_in_memory(sqlite: DatabaseUrls) -> None:
    # an unset environment variable often arrives as "": not the db's bind, not a URL
    app = flask_app(sqlite.sync, SAGAZ_DATABASE_URL="")
    assert SagazExtension(app, db).config(app).database_url is None
    dispose_db_engines(app)


def test_which_app_outside_an_app_context() -> None:
    extension = SagazExtension()
    first, second, stranger = flask_app(), flask_app(), flask_app()
    extension.init_app(first)
    try:
        # the only app: no context needed (a script or a worker thread)
        assert extension.config() is extension.config(first)
        result = extension.run_sync(IntegrationOrderSaga, {"n": "no-context"})
        assert result.status is SagaStatus.COMPLETED
        extension.init_app(second)
        with pytest.raises(ConfigurationError, match="no Flask application context"):
            extension.config()
        with second.app_context():
            assert extension.config() is extension.config(second)
        with pytest.raises(RuntimeError, match="not registered on this app"):
            extension.config(stranger)
        with stranger.app_context(), pytest.raises(RuntimeError, match="not registered"):
            extension.run_sync(IntegrationOrderSaga, {})
    finally:
        extension.close()


def test_run_sync_refuses_what_is_not_a_saga() -> None:
    app = flask_app()
    extension = SagazExtension(app)
    with app.app_context():
        for wrong in (object(), "integration-order", IntegrationOrderSaga.run):
            with pytest.raises(TypeError, match="run_sync needs a Saga class or instance"):
                extension.run_sync(wrong, {})  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="create_saga needs a Saga subclass"):
            extension.run_sync(dict, {})  # type: ignore[arg-type]
    extension.close()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"SAGAZ_DATABSE_URL": "sqlite://"}, "unknown sagaz setting.*SAGAZ_DATABSE_URL"),
        ({"SAGAZ_MAX_RETRYS": 1}, r"SAGAZ_MAX_RETRYS \(did you mean SAGAZ_MAX_RETRIES\?\)"),
        ({"SAGAZ_METRICS": "maybe"}, "SAGAZ_METRICS must be true or false"),
        ({"SAGAZ_LEASE_SECONDS": "0"}, r"SAGAZ_LEASE_SECONDS \(SagaConfig.lease_seconds\)"),
        ({"SAGAZ_MAX_RETRIES": "many"}, "SAGAZ_MAX_RETRIES must be an integer"),
        ({"SAGAZ_CORRELATION_HEADER": "X-Bad Header"}, "SAGAZ_CORRELATION_HEADER"),
        ({"SAGAZ_SHUTDOWN_GRACE_SECONDS": "soon"}, "SAGAZ_SHUTDOWN_GRACE_SECONDS"),
        ({"SAGAZ_BIND_KEY": "missing"}, "SAGAZ_BIND_KEY 'missing' is not a bind"),
    ],
)
def test_invalid_settings_are_refused_naming_them(
    sqlite: DatabaseUrls, config: dict[str, object], message: str
) -> None:
    app = flask_app(sqlite.sync, **config)
    with pytest.raises(ConfigurationError, match=message):
        SagazExtension(app, db)
    assert EXTENSION_KEY not in app.extensions
    dispose_db_engines(app)


def test_unknown_keyword_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"lease_secs \(did you mean lease_seconds\?\)"):
        SagazExtension(lease_secs=3)


def test_every_setting_is_read_from_app_config(sqlite: DatabaseUrls) -> None:
    app = flask_app(
        sqlite.sync,
        SAGAZ_MAX_RETRIES="2",
        SAGAZ_MAX_RETRY_BACKOFF=4,
        SAGAZ_COMPENSATION_RETRIES=1,
        SAGAZ_FAILURE_STRATEGY="wait_all",
        SAGAZ_SAGA_TIMEOUT_SECONDS=60,
        SAGAZ_STEP_TIMEOUT_SECONDS="2.5",
        SAGAZ_SHUTDOWN_GRACE_SECONDS=3,
    )
    extension = SagazExtension(app, db, max_retries=5, metrics=False)
    config = extension.config(app)
    assert config.max_retries == 2  # app.config wins over the keyword
    assert (config.max_retry_backoff, config.compensation_retries) == (4, 1)
    assert config.failure_strategy is ParallelFailureStrategy.WAIT_ALL
    assert (config.saga_timeout_seconds, config.step_timeout_seconds) == (60, 2.5)
    assert config.database_url == sqlite.sync
    dispose_db_engines(app)


def test_the_hooks_are_registered_through_flasks_public_api(sqlite: DatabaseUrls) -> None:
    """Appended (as app.before_request would), not inserted at the front of Flask's
    internal lists: a hook the app registers after init_app runs after sagaz's."""
    app = flask_app(sqlite.sync)

    @app.before_request
    def earlier() -> None:
        return None

    SagazExtension(app, db)
    hooks = app.before_request_funcs[None]
    assert hooks[0] is earlier
    assert hooks[-1].__module__ == "sagaz.integrations.flask.hooks"
    dispose_db_engines(app)


def test_an_in_memory_sqlite_db_cannot_be_shared() -> None:
    app = flask_app("sqlite://")
    with pytest.raises(ConfigurationError, match="in-memory SQLite"):
        SagazExtension(app, db)
    app.config["SAGAZ_DATABASE_URL"] = None  # explicitly: sagas in memory only
    assert SagazExtension(app, db).config(app).database_url is None
    dispose_db_engines(app)


def test_the_apps_sqlite_engine_is_left_as_configured(sqlite: DatabaseUrls) -> None:
    """The db's engine is not switched to sagaz's BEGIN IMMEDIATE: a request that read
    through db.session (an open transaction) can still run_sync, whose journal writes
    through sagaz's own engine on the same file."""
    app, extension = build_app(sqlite.sync)
    try:
        with app.app_context():
            assert db.session.scalars(sa.select(Order)).all() == []  # a read: a transaction
            assert db.session().in_transaction()
            result = extension.run_sync(IntegrationOrderSaga, {"n": "after-a-read"})
            assert result.status is SagaStatus.COMPLETED
    finally:
        extension.close()
        dispose_db_engines(app)


@pytest.mark.parametrize("installed", [(), ("flask",)])
def test_a_missing_flask_or_flask_sqlalchemy_names_the_extra(installed: tuple[str, ...]) -> None:
    done = run_blocked(
        f"""
        for name in {installed!r}:
            BLOCKED.remove(name)
        import sagaz
        try:
            import sagaz.integrations.flask
        except sagaz.MissingExtraError as error:
            print("extra:", error.extra, "|", error)
        else:
            raise SystemExit("no MissingExtraError")
        """
    )
    assert done.returncode == 0, done.stderr
    assert "extra: flask |" in done.stdout
    assert "pip install 'sagaz[flask]'" in done.stdout
