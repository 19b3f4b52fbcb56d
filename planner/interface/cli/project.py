"""`planner init` (write ./planner.toml: this project's job defaults) and `planner config show` (every
effective value and where it came from: flag, project file, user config, environment, default)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from planner.config import (
    CREDENTIAL_ROUTES,
    JOB_KEYS,
    PATH_KEYS,
    PROJECT_FILE,
    PROJECT_SETTINGS,
    ConfigError,
    Settings,
    check_job_value,
    config_path,
    find_project,
    load_project,
    mask_url_secrets,
    read_toml,
    setting_sources,
    trust_project,
)
from planner.interface.cli import options
from planner.interface.cli.common import app, emit_json, fail, out, project, settings
from planner.interface.cli.options import local_input

config_app = typer.Typer(help="The effective configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

# init's flags for the settings a project file may hold (config.PROJECT_SETTINGS)
SETTING_FLAGS = {"storage_uri": "--storage", "db_url": "--db-url", "runs_dir": "--runs-dir",
                 "jobs_install": "--jobs-install", "job_image": "--job-image"}
SETTING_HELP = {"storage_uri": "fsspec URI for outputs and checkpoints (cloud launches need one)",
                "db_url": "this project's database (SQLAlchemy URL)", "runs_dir": "local outputs, checkpoints, logs",
                "jobs_install": "pip requirement for the jobs extra on a cloud box",
                "job_image": "the cloud box's image"}
assert set(SETTING_FLAGS) == set(PROJECT_SETTINGS)


def _setting(key: str):
    return Annotated[Optional[str], typer.Option(SETTING_FLAGS[key], help=SETTING_HELP[key] + ".")]


Backend = Annotated[Optional[str], typer.Option("--backend", help=options.job_help("backend"))]


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a JSON string is a valid TOML basic string


def render_project(values: dict) -> str:
    lines = [f"# {PROJECT_FILE}: this project's defaults for `planner plan|launch|jobs`, written by `planner init`.",
             "# Every command run in this directory or below uses them; a flag always wins. Relative paths",
             "# resolve against this file's directory. `planner config show` prints what is in effect.", ""]
    for key in [*JOB_KEYS, *PROJECT_SETTINGS]:
        if key in values:
            meaning = JOB_KEYS[key][2] if key in JOB_KEYS else SETTING_HELP[key]
            lines.append(f"{key} = {toml_value(values[key])}  # {meaning}")
    return "\n".join(lines) + "\n"


@app.command("init")
def init(
    ctx: typer.Context,
    model: options.Model = None, data: options.Data = None, eval: options.Eval = None, encode: options.Encode = None,
    method: options.Method = None, seed: options.Seed = None, epochs: options.Epochs = None,
    batch_size: options.BatchSize = None, max_steps: options.MaxSteps = None, backend: Backend = None,
    budget: options.Budget = None, spot: options.Spot = None, max_price_per_hour: options.MaxPrice = None,
    storage_uri: _setting("storage_uri") = None, db_url: _setting("db_url") = None,
    runs_dir: _setting("runs_dir") = None, jobs_install: _setting("jobs_install") = None,
    job_image: _setting("job_image") = None, as_json: options.Json = False,
) -> None:
    """Write ./planner.toml with this project's defaults (keeps what an existing one holds unless given)."""
    project()  # a broken project file above is reported first
    settings()
    path = Path.cwd() / PROJECT_FILE
    given = {key: value for key, value in ctx.params.items() if key != "as_json" and value is not None}
    existing = {}
    if path.is_file():
        try:
            existing = read_toml(path)
            load_project(path.parent)  # a broken file is reported, not overwritten
        except ConfigError as exc:
            fail(f"{exc}; fix it or remove it before planner init")
    for key, value in given.items():
        if key in JOB_KEYS:
            if isinstance(value, float) and not math.isfinite(value):
                fail(f"--{key.replace('_', '-')} must be a finite number")
            try:
                check_job_value(path, key, value)
            except ConfigError as exc:
                fail(str(exc).replace(f"{path}: ", "planner init: "))
            if key in PATH_KEYS:
                local_input(value, "--" + key)  # a local corpus must exist; the file keeps it as given
            elif key == "model":
                local_input(value, "--model", model=True)
    values = {**existing, **given}
    path.write_text(render_project(values), encoding="utf-8")
    try:
        load_project(path.parent)
        settings()  # e.g. a db_url that is not a URL: the file is written, the error names the fix
    except ConfigError as exc:
        fail(str(exc))
    above = find_project(path.parent.parent) if path.parent.parent != path.parent else None
    if as_json:
        emit_json({"path": str(path), "values": values, "shadows": str(above) if above else None})
        return
    out.print(f"{'updated' if existing else 'wrote'} {path}: " + (", ".join(f"{k} = {toml_value(v)}"
                                                                          for k, v in values.items()) or "no values"),
              highlight=False, markup=False)
    if above:
        out.print(f"note: it takes precedence over {above} here and below", highlight=False, markup=False)


def _shown(name: str, value) -> object:
    if hasattr(value, "get_secret_value"):
        return "**********"
    if name == "db_url":
        from sqlalchemy.engine import make_url

        return mask_url_secrets(make_url(value).render_as_string(hide_password=True))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str):  # a token in PLANNER_JOBS_INSTALL's git URL, a ?password= in a storage URI
        return mask_url_secrets(value)
    return value


@config_app.command("trust")
def config_trust(yes: Annotated[bool, typer.Option("--yes", "-y", help="Confirm without asking.")] = False,
                 as_json: options.Json = False) -> None:
    """Confirm the project file's storage_uri, jobs_install and job_image: where cloud boxes send your storage
    credentials and what they install beside them. Asked once per value; a changed value asks again."""
    found = project()
    if found.path is None:
        fail(f"no {PROJECT_FILE} here or above; nothing to trust")
    routes = {key: found.settings[key] for key in CREDENTIAL_ROUTES if key in found.settings}
    if not routes:
        fail(f"{found.path} sets none of {', '.join(CREDENTIAL_ROUTES)}; nothing to trust")
    for key, value in routes.items():  # beside the question (stderr): --json's stdout stays one document
        typer.echo(f"{key} = {mask_url_secrets(value)}", err=True)
    if not yes and not typer.confirm(f"Launch cloud boxes with these values from {found.path}?", default=False):
        fail("not confirmed; nothing recorded", code=1)
    trust_project(found)
    if as_json:
        emit_json({"project_file": str(found.path), "trusted": routes})
    else:
        out.print(f"trusted for {found.path}", highlight=False, markup=False)


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    model: options.Model = None, data: options.Data = None, eval: options.Eval = None, encode: options.Encode = None,
    method: options.Method = None, seed: options.Seed = None, epochs: options.Epochs = None,
    batch_size: options.BatchSize = None, max_steps: options.MaxSteps = None, backend: Backend = None,
    budget: options.Budget = None, spot: options.Spot = None, max_price_per_hour: options.MaxPrice = None,
    as_json: options.Json = False,
) -> None:
    """Every effective value and where it comes from (flag, project file, user config, environment, default)."""
    flags = options.resolve(ctx)
    project = flags.project
    cfg = settings()
    rows: dict[str, dict] = {}
    for key in JOB_KEYS:
        given = flags.given[key]
        source = "flag" if given is not None else (f"project file {project.path}" if key in project.jobs else "default")
        rows[key] = {"value": flags[key], "source": source}
    sources = setting_sources(project)
    for name in Settings.model_fields:
        rows[name] = {"value": _shown(name, getattr(cfg, name)), "source": sources[name]}
    user = config_path()
    if as_json:
        emit_json({"project_file": str(project.path) if project.path else None,
                   "user_config": str(user) if user.is_file() else None, "values": rows})
        return
    out.print(f"project file: {project.path or f'none (planner init writes ./{PROJECT_FILE})'}; "
              f"user config: {user if user.is_file() else f'none ({user})'}", highlight=False, markup=False)
    table = Table(show_edge=False, pad_edge=False)
    for column in ("key", "value", "from"):
        table.add_column(column)
    for key, row in rows.items():
        value = row["value"]
        table.add_row(key, "-" if value is None else str(value), row["source"])
    out.print(table)
