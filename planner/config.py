"""Settings from the environment (PLANNER_* and each provider's key variable), a project file and a user file.

Precedence: explicit arguments (flags) > environment > project file > user config file > defaults.

- The user config file is PLANNER_CONFIG or `<user config dir>/planner/config.toml`: any setting, lower
  case without the prefix; if it holds an API key it must be mode 0600.
- The project file is the nearest `planner.toml` upward from the working directory (as git finds its
  repository), written by `planner init`: the job defaults of `planner plan|launch` for this corpus
  and model (JOB_KEYS) and the settings that say where this project's data lives (PROJECT_SETTINGS).
  Machine and user matters (API keys, provider URLs, the API bind, what this machine costs) stay in
  the user file or the environment: a project file is meant to be committed and shared.
  Relative paths in it resolve against its directory.

Unknown keys in either file are an error naming the nearest known key; so is a TOML syntax error
(with its line and column). API keys are SecretStr: they print as '**********' and are read with
get_secret_value() only where a request header is built.

Each registered provider (pricing.providers.registry) gets two settings made from its entry,
`<name>_url` (PLANNER_<NAME>_URL) and `<name>_api_key` (its key variable, e.g. RUNPOD_API_KEY); code
reads them as `settings.providers[name].url` / `.api_key`.
"""
from __future__ import annotations

import difflib
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, get_args

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pydantic-settings brings tomli
    import tomli as tomllib

import platformdirs
from pydantic import AfterValidator, AliasChoices, Field, SecretStr, create_model, field_validator
from pydantic_settings import BaseSettings, InitSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from pricing.providers.registry import PROVIDERS

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


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError(f"{value!r} is not an http(s) URL")
    return value.rstrip("/")


@dataclass(frozen=True)
class ProviderSettings:
    """How to reach one provider: `Settings.providers[name]`."""

    url: str
    api_key: SecretStr | None


def provider_setting_names(name: str) -> tuple[str, str]:
    """The settings a registered provider gets: (its URL's, its API key's)."""
    return f"{name}_url", f"{name}_api_key"


def _provider_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for entry in PROVIDERS.values():
        url, key = provider_setting_names(entry.name)
        fields[url] = (Annotated[str, AfterValidator(_http_url)], entry.default_url)
        fields[key] = (SecretStr | None, Field(default=None, validation_alias=AliasChoices(entry.key_env, key)))
    return fields


_ProviderSettingFields = create_model("_ProviderSettingFields", __base__=BaseSettings, **_provider_fields())


class Settings(_ProviderSettingFields):
    model_config = SettingsConfigDict(env_prefix="PLANNER_", extra="ignore", populate_by_name=True,
                                      allow_inf_nan=False)  # "inf" dollars an hour, a NaN interval: no setting

    db_url: str = Field(default_factory=default_db_url)
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
    notify_url: SecretStr | None = None  # a Slack-compatible incoming webhook (planner.run.notify): a secret
    runs_dir: Path = Field(default_factory=default_runs_dir, description="local backend: logs and scratch")
    local_usd_per_hour: float = Field(default=0.0, ge=0, description="what an hour of this machine costs")
    local_gpus: int | None = Field(default=None, ge=1, description="GPUs of this machine a data-parallel job uses "
                                   "(default: every GPU nvidia-smi sees; on a CPU-only machine: CPU ranks)")
    local_max_hours: float = Field(default=24.0, gt=0, description="auto places a job on this machine only if its "
                                   "estimate there is at most this many hours (--backend local is obeyed)")
    poll_interval_s: float = Field(default=30.0, gt=0, description="supervisor tick while jobs run")
    preempted_cooldown: timedelta = timedelta(hours=1)  # an interrupted offer sits out this long
    max_failures: int = Field(default=3, ge=1, description="non-resumable failures before a job fails")
    max_usd_per_gb: float | None = Field(default=None, ge=0, description="bandwidth-price cap: hosts that bill "
                                         "more per GB in or out are never rented (Vast bills bandwidth per byte)")
    job_image: str = "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime"
    jobs_install: str = Field(default="", description="pip requirement for the jobs extra on the GPU box")
    box_startup_minutes: float = Field(default=20.0, gt=0, description="a cloud box that has not started its job "
                                       "this long after its create (image pull, install) is ended and counted as "
                                       "a failure")
    storage_uri: str | None = Field(default=None, description="fsspec URI for job outputs and checkpoints "
                                    "(s3://bucket/prefix); cloud backends need one")

    @field_validator("max_price_age", "preempted_cooldown", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return parse_duration(value)

    @property
    def providers(self) -> dict[str, ProviderSettings]:
        """Each registered provider's URL and API key, by provider name."""
        return {name: ProviderSettings(*(getattr(self, setting) for setting in provider_setting_names(name)))
                for name in PROVIDERS}

    @field_validator("db_url")
    @classmethod
    def _db_url(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except ArgumentError:  # never echo the value: a database URL may hold a password
            raise ValueError("not a database URL; use e.g. sqlite:////path/planner.db or "
                             "postgresql+psycopg://user@host/db") from None
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        project, user = load_project(), read_user_config()
        return (init_settings, env_settings, InitSettingsSource(settings_cls, init_kwargs=project.settings),
                InitSettingsSource(settings_cls, init_kwargs=user))


# ------------------------------------------------------------------------------------ files

PROJECT_FILE = "planner.toml"
# The job defaults a project file may hold: (type, built-in default, what it is). Each is the default
# of the `plan`/`launch` flag of the same name (`budget` is --budget, `encode` is bagging's --encode
# and encode's --input); a flag always wins.
JOB_KEYS: dict[str, tuple[type, Any, str]] = {
    "model": (str, "Qwen/Qwen3-4B", "base model: directory, fsspec URI or hub id"),
    "data": (str, None, "training corpus JSONL (path or fsspec URI)"),
    "eval": (str, None, "held-out set: bagging evaluates every bag and the merge on it"),
    "encode": (str, None, "corpus to encode: bagging's --encode, encode's --input"),
    "method": (str, None, "full | lora (default: the BOOM recipe for the model: LoRA from 1 B parameters, "
                          "full below; jobs.recipe)"),
    "seed": (int, 0, "bag sampling and training seed"),
    "epochs": (int, None, "training epochs (default: the recipe's)"),
    "batch_size": (int, None, "training batch size (default: the recipe's)"),
    "max_steps": (int, None, "stop training after this many steps"),
    "backend": (str, "auto", " | ".join(("auto", "local", *PROVIDERS, "skypilot"))),
    "budget": (float, None, "USD for one job (a campaign: for all its jobs)"),
    "spot": (bool, None, "true: only spot, false: only on-demand (unset: either)"),
    "max_price_per_hour": (float, None, "cap in USD per instance-hour"),
}
# integer keys' bounds: where the jobs' libraries are (torch.manual_seed takes 64 bits) or where no real run
# goes; the flags (click's min/max) and a project file are held to the same
INT_BOUNDS = {"seed": (0, 2**63 - 1), "epochs": (1, 1000), "batch_size": (1, 1_000_000), "max_steps": (1, 10**9)}
CHOICES = {"method": ("full", "lora"), "backend": ("auto", "local", *PROVIDERS, "skypilot")}
PATH_KEYS = ("data", "eval", "encode")  # always paths or URIs; `model` may also be a hub id
# The settings a project file may hold: where this project's database, outputs and job code live.
PROJECT_SETTINGS = ("db_url", "storage_uri", "runs_dir", "jobs_install", "job_image")


@dataclass(frozen=True)
class Project:
    """The nearest planner.toml (path None: there is none), its values resolved against its directory."""

    path: Path | None = None
    jobs: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


def find_project(start: Path | None = None) -> Path | None:
    """The nearest planner.toml in `start` (default: the working directory) or a directory above it."""
    here = (start or Path.cwd()).resolve()
    for directory in (here, *here.parents):
        candidate = directory / PROJECT_FILE
        if candidate.is_file():
            return candidate
    return None


def load_project(start: Path | None = None) -> Project:
    path = find_project(start)
    if path is None:
        return Project()
    raw = read_toml(path)
    user_keys = set(Settings.model_fields) - set(PROJECT_SETTINGS)
    for key in raw:
        if key in JOB_KEYS or key in PROJECT_SETTINGS:
            continue
        if key in user_keys:
            raise ConfigError(f"{path}: {key} is a user setting, not a project one (a project file is shared); "
                              f"put it in {config_path()} or PLANNER_{key.upper()}")
        raise ConfigError(_unknown(path, key, [*JOB_KEYS, *PROJECT_SETTINGS]))
    base = path.parent
    jobs = {key: check_job_value(path, key, value) for key, value in raw.items() if key in JOB_KEYS}
    for key in PATH_KEYS:
        if key in jobs:
            jobs[key] = resolve_path(jobs[key], base)
    if "model" in jobs:
        jobs["model"] = resolve_model(jobs["model"], base)
    settings = {key: raw[key] for key in PROJECT_SETTINGS if key in raw}
    for key, value in settings.items():
        if not isinstance(value, str):
            raise ConfigError(f"{path}: {key} must be a string, got {_toml_type(value)}")
    if "runs_dir" in settings:
        settings["runs_dir"] = resolve_path(settings["runs_dir"], base)
    if "storage_uri" in settings:
        settings["storage_uri"] = resolve_path(settings["storage_uri"], base)
    if "db_url" in settings:
        settings["db_url"] = _resolve_sqlite(settings["db_url"], base)
    return Project(path, jobs, settings)


def read_user_config() -> dict[str, Any]:
    """The user config file's keys (empty without one); unknown keys are a ConfigError."""
    path = config_path()
    if not path.is_file():
        return {}
    raw = read_toml(path)
    known = set(Settings.model_fields)
    aliases = {entry.key_env.lower() for entry in PROVIDERS.values()}  # a key may be written as its variable
    for key in raw:
        if key not in known and key.lower() not in aliases:
            hint = " (a job default: it belongs in a project's planner.toml, see planner init)" \
                if key in JOB_KEYS else ""
            raise ConfigError(_unknown(path, key, sorted(known)) + hint)
    return raw


def resolve_path(value: str, base: Path) -> str:
    """A path relative to `base` made absolute; URIs (s3://, file://...) and absolute paths unchanged."""
    if "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else Path(os.path.normpath(base / path)))


def resolve_model(value: str, base: Path) -> str:
    """A model is a path when it looks like one (./x, ../x, /x, ~/x) or exists; else a hub id as given."""
    if "://" in value:
        return value
    if value.startswith((".", "/", "~")) or (base / value).exists():
        return resolve_path(value, base)
    return value


def _resolve_sqlite(url: str, base: Path) -> str:
    prefix, sep, path = url.partition(":///")
    if not prefix.startswith("sqlite") or not sep or not path or path.startswith("/") or path == ":memory:":
        return url
    return f"{prefix}:///{resolve_path(path, base)}"


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:  # its message carries "(at line L, column C)"
        raise ConfigError(f"{path}: TOML syntax error: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


def _unknown(path: Path, key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f"{path}: unknown key {key!r}" + (f"; did you mean {close[0]!r}?" if close else
                                            f"; known keys: {', '.join(known)}")


def _toml_type(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", dict: "a table",
            list: "an array"}.get(type(value), type(value).__name__)


def check_job_value(path: Path, key: str, value: Any) -> Any:
    kind, _, _ = JOB_KEYS[key]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool)) or \
        (kind is float and isinstance(value, int) and not isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{path}: {key} must be {_toml_type(kind())}, got {_toml_type(value)}")
    value = float(value) if kind is float else value
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{path}: {key} = {value!r}: choose {' or '.join(CHOICES[key])}")
    if kind is float and not math.isfinite(value):  # TOML has nan and inf literals
        raise ConfigError(f"{path}: {key} must be a finite number, got {value}")
    if key in INT_BOUNDS and not INT_BOUNDS[key][0] <= value <= INT_BOUNDS[key][1]:
        raise ConfigError(f"{path}: {key} must be from {INT_BOUNDS[key][0]} to {INT_BOUNDS[key][1]}, got {value}")
    if kind in (int, float) and key not in INT_BOUNDS and value <= 0:
        raise ConfigError(f"{path}: {key} must be positive, got {value}")
    return value


# ------------------------------------------------------------------------------------ loading

def load_settings(**overrides: Any) -> Settings:
    """Settings, or ConfigError with a one-line message (never echoing a secret value)."""
    path = config_path()
    try:
        settings = Settings(**overrides)
    except ConfigError:
        raise
    except Exception as exc:  # pydantic ValidationError
        errors = getattr(exc, "errors", None)
        if callable(errors):
            first = errors()[0]
            name = ".".join(str(p) for p in first.get("loc", ())) or "config"
            msg = str(first.get("msg", "")).removeprefix("Value error, ")
            raise ConfigError(f"bad setting {name}: {msg}; fix PLANNER_{name.upper()}, {path} "
                              f"or the project's {PROJECT_FILE}") from None
        raise ConfigError(f"cannot load the configuration: {type(exc).__name__}") from None
    if path.is_file() and _file_has_keys(path) and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{path} holds an API key but is readable by others; run: chmod 600 {path}")
    return settings


def _file_has_keys(path: Path) -> bool:
    """Whether the user file sets any secret setting (a provider key, the API token, the webhook URL) or a
    value holding a credential inside a URL (a token in PLANNER_JOBS_INSTALL's git URL)."""
    secret_keys = {name.lower() for name in secret_env_names()} | {
        name for name, info in Settings.model_fields.items()
        if SecretStr in (info.annotation, *get_args(info.annotation))}
    try:
        raw = read_user_config()
    except ConfigError:
        return True  # unreadable as settings: judge it by its mode alone
    return any(key.lower().removeprefix("planner_") in secret_keys or key.lower() in secret_keys
               or (isinstance(value, str) and mask_url_secrets(value) != value) for key, value in raw.items())


_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/@:\s]*)(?::[^/@\s]*)?@", re.IGNORECASE)
_SECRET_QUERY = re.compile(r"(?P<name>[?&;](?:[a-z0-9_.-]*(?:password|passwd|pwd|token|secret|signature|credential|"
                           r"api[_-]?key|access[_-]?key|sig|auth)[a-z0-9_.-]*))=(?P<value>[^&;#\s]+)", re.IGNORECASE)


def mask_url_secrets(text: str) -> str:
    """`text` with the credentials inside any URL in it masked: a user's password (or a bare token as the
    user, as git hosts take them) and query parameters named like a password, token, key or signature."""
    def userinfo(match: re.Match) -> str:
        bare = ":" not in match.group(0)[len(match.group("scheme")):]
        user = "***" if bare and match.group("user") else match.group("user")
        return f"{match.group('scheme')}{user}{'' if bare else ':***'}@"

    return _SECRET_QUERY.sub(lambda m: f"{m.group('name')}=***", _USERINFO.sub(userinfo, text))


def setting_sources(project: Project | None = None) -> dict[str, str]:
    """Where each setting's effective value comes from: environment, project file, user config or default."""
    project = project if project is not None else load_project()
    user = {k.lower(): v for k, v in read_user_config().items()}
    env_keys = {k.upper() for k in os.environ}
    sources = {}
    for name, info in Settings.model_fields.items():
        alias = info.validation_alias
        env_names = [str(a) for a in alias.choices] if isinstance(alias, AliasChoices) else [f"PLANNER_{name}"]
        if any(n.upper() in env_keys for n in env_names):
            sources[name] = "environment"
        elif name in project.settings:
            sources[name] = f"project file {project.path}"
        elif name in user:
            sources[name] = f"user config {config_path()}"
        else:
            sources[name] = "default"
    return sources


# Project settings that decide where a cloud box sends the user's storage credentials and what code runs
# beside them: a shared planner.toml may propose them, but they take effect for a launch only once the user
# confirmed them (`planner config trust`) or holds the same values in the user config or the environment.
CREDENTIAL_ROUTES = ("storage_uri", "jobs_install", "job_image")


def trust_path() -> Path:
    return config_path().parent / "trusted-projects.json"


def _trusted() -> dict[str, dict[str, str]]:
    try:
        data = json.loads(trust_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def untrusted_routes(project: Project | None = None) -> dict[str, str]:
    """The project file's CREDENTIAL_ROUTES values in effect that this user has not confirmed."""
    project = project if project is not None else load_project()
    if project.path is None:
        return {}
    sources, user = setting_sources(project), {k.lower(): v for k, v in read_user_config().items()}
    confirmed = _trusted().get(str(project.path), {})
    return {key: project.settings[key] for key in CREDENTIAL_ROUTES
            if key in project.settings and sources[key].startswith("project file")
            and (key != "storage_uri" or "://" in project.settings[key])  # a directory here sends no keys
            and confirmed.get(key) != project.settings[key] and user.get(key) != project.settings[key]}


def trust_project(project: Project) -> dict[str, str]:
    """Record the user's confirmation of the project file's CREDENTIAL_ROUTES values (as they are now: a
    changed value needs confirming again); returns what was confirmed. The record is the user's (0600)."""
    values = {key: project.settings[key] for key in CREDENTIAL_ROUTES if key in project.settings}
    records = _trusted() | {str(project.path): values}
    path = trust_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        json.dump(records, stream, indent=2, sort_keys=True)
    os.replace(partial, path)
    return values


def secret_env_names() -> tuple[str, ...]:
    """Every environment variable a secret setting is read from (the provider keys, the API token), upper
    case: no job and no box gets them (planner.run.credentials, the local backend). Names are matched
    without regard to case, as the settings read them."""
    names: list[str] = []
    for name, info in Settings.model_fields.items():
        if SecretStr not in (info.annotation, *get_args(info.annotation)):
            continue
        alias = info.validation_alias
        names += [str(choice).upper() for choice in alias.choices] if isinstance(alias, AliasChoices) else []
        names.append(f"PLANNER_{name.upper()}")
    return tuple(dict.fromkeys(names))
