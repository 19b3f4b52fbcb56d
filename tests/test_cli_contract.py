"""What the README promises of every command: --json everywhere, JSON without Python reprs, exit 2 for
a fix the user must make."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from planner.interface.cli import app
from planner.interface.cli.common import emit_json, jsonable


def walk(command, path: tuple[str, ...] = ()):
    if getattr(command, "commands", None) is not None:  # a group (typer vendors its own click classes)
        for name, sub in sorted(command.commands.items()):
            yield from walk(sub, (*path, name))
    else:
        yield path, command


COMMANDS = list(walk(typer.main.get_command(app)))


def test_the_walk_sees_every_sub_app():
    tops = {path[0] for path, _ in COMMANDS}
    assert {"db", "prices", "plan", "launch", "jobs", "budget", "serve", "demo", "init", "config"} <= tops
    assert len(COMMANDS) > 20


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_takes_json(path, command):
    flags = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    assert "--json" in flags, f"planner {' '.join(path)} has no --json"


def test_json_converts_sets_and_times_and_refuses_reprs(capsys):
    emit_json({"unknown GPUs": {"B", "A"}, "at": datetime(2026, 1, 2, tzinfo=timezone.utc),
               "age": timedelta(minutes=2), "path": Path("/x")})
    assert json.loads(capsys.readouterr().out) == {"unknown GPUs": ["A", "B"], "at": "2026-01-02T00:00:00+00:00",
                                                   "age": 120.0, "path": "/x"}
    with pytest.raises(TypeError, match="object is not JSON"):
        jsonable(object())


def test_a_failed_vast_refresh_has_no_python_repr_in_its_json(recorded_providers, monkeypatch):
    from planner.run.replay import recorded_payload

    monkeypatch.setenv("PLANNER_HTTP_RETRIES", "1")
    recorded_providers.clear()
    recorded_providers.expect_request("/rp/graphql", method="POST").respond_with_data(
        recorded_payload("/graphql"), content_type="application/json")
    recorded_providers.expect_request("/vast/api/v0/bundles/").respond_with_data("oops", status=500)
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    result = runner.invoke(app, ["prices", "refresh", "--json"])
    assert result.exit_code == 1, result.output
    assert "set()" not in result.stdout and "frozenset" not in result.stdout
    by_provider = {r["provider"]: r for r in json.loads(result.stdout)}
    assert by_provider["vast"]["status"] == "failed"


@pytest.mark.parametrize("env,args,message", [
    ({"PLANNER_DB_URL": "notaurl"}, ["prices", "show"], "not a database URL"),
    ({"PLANNER_DB_URL": "nosuchdialect://x"}, ["db", "upgrade"], "no SQLAlchemy dialect"),
    ({"PLANNER_MAX_PRICE_AGE": "soon"}, ["prices", "show"], "max_price_age"),
    ({}, ["prices", "show"], "run: planner db upgrade"),
    ({}, ["plan", "train-bag", "--fraction", "2", "--data", "x"], "--fraction must be in (0, 1]"),
])
def test_a_fix_to_make_is_exit_2(monkeypatch, env, args, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
