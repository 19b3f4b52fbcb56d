"""Settings from the environment (PLANNER_*, RUNPOD_API_KEY, VAST_API_KEY) and an optional TOML file.

Precedence: explicit arguments > environment > config file > defaults. The config file is
PLANNER_CONFIG or `<user config dir>/planner/config.toml`; if it holds an API key it must be mode 0600.
API keys are SecretStr: they print as '**********' and are read with get_secret_value() only where
a request header is built.
"""
from __future__ import annotations

import os
import re
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import platformdirs
from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

APP = "planner"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class ConfigError(ValueError):
    """Bad configuration: one line naming the setting and the fix (the CLI exits 2)."""


def config_path() -> Path:
    return Path(os.environ.get("PLANNER_CONFIG") or Path(platformdirs.user_config_dir(APP)) / "config.toml")


def default_db_url() -> str:
    return f"sqlite:///{Path(platformdirs.user_data_dir(APP)) / 'planner.db'}"


def default_runs_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP)) / "runs"


def parse_duration(value: Any) -> timedelta:
    """'2h', '90m', '7200', 7200 or a timedelta -> timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)):
        return timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a duration; use e.g. 2h, 90m or 7200 (seconds)")
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PLANNER_", extra="ignore", populate_by_name=True)

    db_url: str = Field(default_factory=default_db_url)
    runpod_url: str = "https://api.runpod.io"
    vast_url: str = "https://console.vast.ai"
    runpod_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("RUNPOD_API_KEY", "runpod_api_key")
    )
    vast_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("VAST_API_KEY", "vast_api_key")
    )
    refresh_cron: str = "0 * * * *"
    max_price_age: timedelta = timedelta(hours=2)
    retention_days: int = Field(default=14, ge=1)
    http_timeout: float = Field(default=30.0, gt=0)
    vast_disk_gb: float = Field(default=50.0, ge=0, description="disk size priced into Vast offers")
    vast_search_limit: int = Field(default=5000, ge=64)
    vast_min_interval_s: float = Field(default=6.0, ge=0, description="spacing of Vast searches (10 a minute)")
    http_retries: int = Field(default=5, ge=1, description="attempts per provider request")
    http_retry_wait_s: float = Field(default=2.0, ge=0, description="first backoff wait, doubling")
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8377, ge=1, le=65535)
    api_token: SecretStr | None = None  # required to serve beyond localhost
    runs_dir: Path = Field(default_factory=default_runs_dir, description="local backend: logs and scratch")
    local_usd_per_hour: float = Field(default=0.0, ge=0, description="what an hour of this machine costs")
    poll_interval_s: float = Field(default=30.0, gt=0, description="supervisor tick while jobs run")
    preempted_cooldown: timedelta = timedelta(hours=1)  # an interrupted offer sits out this long
    max_failures: int = Field(default=3, ge=1, description="non-resumable failures before a job fails")
    job_image: str = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
    jobs_install: str = Field(default="", description="pip requirement for the jobs extra on the GPU box")
    storage_uri: str | None = Field(default=None, description="fsspec URI for job outputs and checkpoints "
                                    "(s3://bucket/prefix); cloud backends need one")

    @field_validator("max_price_age", "preempted_cooldown", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @field_validator("runpod_url", "vast_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} is not an http(s) URL")
        return value.rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = config_path()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path.is_file():
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Settings, or ConfigError with a one-line message (never echoing a secret value)."""
    path = config_path()
    try:
        settings = Settings(**overrides)
    except Exception as exc:  # pydantic ValidationError or a TOML syntax error
        errors = getattr(exc, "errors", None)
        if callable(errors):
            first = errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or "config"
            raise ConfigError(f"bad setting {where}: {first.get('msg')}; fix the PLANNER_* variable or {path}") from None
        raise ConfigError(f"cannot read config file {path}: {type(exc).__name__}; fix its TOML syntax") from None
    if path.is_file() and _file_has_keys(path) and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} holds an API key but is readable by others; run: chmod 600 {path}")
    return settings


def _file_has_keys(path: Path) -> bool:
    text = path.read_text(errors="replace").lower()
    return "api_key" in text
