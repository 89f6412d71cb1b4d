"""Configuration: parse (TOML) -> validate (schema, references, secrets) -> frozen snapshot + hash."""

from gateway.config.load import Config, default_path, load
from gateway.config.problems import ConfigError, Problem

__all__ = ["Config", "ConfigError", "Problem", "default_path", "load"]
