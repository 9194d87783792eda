"""Exceptions that reach the user as one readable line (see ``cli.main``)."""


class SparkSinksError(Exception):
    """Base for every error the CLI reports without a traceback."""

    exit_code = 1


class ConfigError(SparkSinksError):
    """The configuration is invalid; the message names the config path."""

    exit_code = 2


class PluginError(SparkSinksError):
    """A plugin failed to load or misbehaved; the message names the plugin."""

    exit_code = 1


class SinkError(SparkSinksError):
    """A sink cannot work (unreachable endpoint, missing stream, bad credentials).

    Sinks raise it with a message meant for an operator; the core prefixes the
    sink's instance name.
    """

    exit_code = 1
