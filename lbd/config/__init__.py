"""Configuration: the typed model, YAML loading with line numbers, units."""

from lbd.config.loader import DEFAULT_CONFIG_PATH, ConfigError, load_config, load_config_text
from lbd.config.model import Config, parse_address
from lbd.units import parse_duration, parse_size

__all__ = ["Config", "ConfigError", "DEFAULT_CONFIG_PATH", "load_config", "load_config_text",
           "parse_address", "parse_duration", "parse_size"]
