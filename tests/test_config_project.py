"""planner.toml (`planner init`, found upward like git's repository), `planner config show`, and the
errors a bad config file or a missing input gives (exit 2, naming the key and the fix)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from planner.config import ConfigError, load_project, load_settings


@pytest.fixture
def project(tmp_path, monkeypatch):
    """An empty project directory with a subdirectory; the working directory is the project."""
    root = tmp_path / "proj"
    (root / "sub" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(root)
    return root


def test_the_headline_command_from_a_subdirectory(cli, project, tiny_model_dir, toy_corpus, monkeypatch, tmp_path):
    """`planner init --model M --data D`, then `planner launch train-bag --fraction 0.4` trains a bag."""
    import shutil

    shutil.copytree(tiny_model_dir, project / "model")
    (project / "data").mkdir()
    shutil.copy(toy_corpus, project / "data" / "train.jsonl")
    monkeypatch.setenv("PLANNER_POLL_INTERVAL_S", "0.2")
    cli("db", "upgrade")
    cli("init", "--model", "./model", "--data", "data/train.jsonl", "--max-steps", "2", "--batch-size", "4",
        "--backend", "local", "--runs-dir", "runs")
    text = (project / "planner.toml").read_text()
    assert 'data = "data/train.jsonl"' in text and "max_steps = 2" in text  # kept as given: portable
    monkeypatch.chdir(project / "sub" / "deeper")
    result = cli("launch", "train-bag", "--fraction", "0.4", "--yes", "--wait", "--json")
    [(job_id, state)] = json.loads(result.stdout)["jobs"].items()
    assert state == "succeeded"
    from planner.records import Job
    from pricing.db import session_factory

    with session_factory(os.environ["PLANNER_DB_URL"])() as session:
        params = json.loads(session.get(Job, job_id).spec)["params"]
    assert params["data"] == str(project / "data" / "train.jsonl")
    assert params["model"] == str(project / "model") and params["max_steps"] == 2
    assert (project / "runs" / "outputs" / job_id / "output" / "DONE").exists()  # runs_dir relative to the file


def test_without_a_project_missing_data_says_how_to_make_it_permanent(cli, project):
    result = cli("launch", "train-bag", "--fraction", "0.4", "--yes", code=2)
    assert "missing option --data" in result.stderr and "planner init --data" in result.stderr


@pytest.mark.parametrize("command", ["plan", "launch"])
def test_a_local_input_that_does_not_exist_is_exit_2(cli, project, command, toy_corpus):
    cli("db", "upgrade")
    result = cli(command, "train-bag", "--fraction", "0.4", "--data", "nope.jsonl", "--yes", code=2)
    assert "--data nope.jsonl: no such file" in result.stderr
    result = cli(command, "bagging", "--data", str(toy_corpus), "--eval", "missing-eval.jsonl", "--yes", code=2)
    assert "--eval missing-eval.jsonl" in result.stderr
    result = cli(command, "encode", "--model", "Qwen/Qwen3-4B", "--input", "docs.jsonl", "--yes", code=2)
    assert "--input docs.jsonl" in result.stderr
    assert json.loads(cli("jobs", "list", "--all", "--json").stdout) == []  # nothing was launched


def test_a_remote_input_keeps_the_stated_assumption(cli, project, recorded_providers):
    cli("db", "upgrade")
    cli("prices", "refresh")
    for uri in ("memory://nowhere/corpus.jsonl", "http://127.0.0.1:9/corpus.jsonl"):  # absent; unreachable
        plan = json.loads(cli("plan", "train-bag", "--fraction", "0.4", "--data", uri, "--json").stdout)
        assert any("assumed" in note for note in plan["jobs"][0]["needs"]["notes"])


def test_flags_win_over_the_project_file_and_config_show_says_where_each_value_comes_from(
        cli, project, toy_corpus, monkeypatch, tmp_path):
    cli("init", "--data", str(toy_corpus), "--budget", "20", "--method", "lora", "--storage", "outputs")
    Path(os.environ["PLANNER_CONFIG"]).write_text('refresh_cron = "5 * * * *"\n')
    monkeypatch.setenv("PLANNER_MAX_FAILURES", "7")
    monkeypatch.chdir(project / "sub")
    shown = json.loads(cli("config", "show", "--budget", "5", "--json").stdout)
    values = shown["values"]
    assert shown["project_file"] == str(project / "planner.toml")
    assert values["budget"] == {"value": 5.0, "source": "flag"}
    assert values["method"] == {"value": "lora", "source": f"project file {project / 'planner.toml'}"}
    assert values["seed"] == {"value": 0, "source": "default"}
    assert values["storage_uri"]["value"] == str(project / "outputs")  # relative to the file, not the cwd
    assert values["storage_uri"]["source"].startswith("project file")
    assert values["refresh_cron"] == {"value": "5 * * * *", "source": f"user config {os.environ['PLANNER_CONFIG']}"}
    assert values["max_failures"] == {"value": 7, "source": "environment"}
    assert values["db_url"]["source"] == "environment"  # the environment beats the project file
    table = cli("config", "show").stdout
    assert f"project file: {project / 'planner.toml'}" in table and "lora" in table


def test_init_updates_an_existing_file_and_the_nearest_file_wins(cli, project, toy_corpus, monkeypatch):
    cli("init", "--data", str(toy_corpus), "--seed", "3")
    cli("init", "--budget", "9")
    assert load_project().jobs == {"data": str(toy_corpus), "seed": 3, "budget": 9.0}
    monkeypatch.chdir(project / "sub")
    result = cli("init", "--seed", "4")
    assert "takes precedence over" in result.stdout
    assert load_project().jobs == {"seed": 4}
    cli("init", "--data", "missing.jsonl", code=2)
    cli("init", "--method", "qlora", code=2)


def test_relative_sqlite_url_in_the_project_resolves_against_its_directory(project, monkeypatch):
    (project / "planner.toml").write_text('db_url = "sqlite:///state/planner.db"\nruns_dir = "runs"\n')
    monkeypatch.delenv("PLANNER_DB_URL")
    monkeypatch.chdir(project / "sub")
    settings = load_settings()
    assert settings.db_url == f"sqlite:///{project / 'state' / 'planner.db'}"
    assert settings.runs_dir == project / "runs"


@pytest.mark.parametrize("where,text,message", [
    ("project", "budjet = 3\n", "unknown key 'budjet'; did you mean 'budget'?"),
    ("project", "runpod_api_key = 'x'\n", "runpod_api_key is a user setting, not a project one"),
    ("project", "seed = 'three'\n", "seed must be an integer, got a string"),
    ("project", "backend = 'aws'\n", "backend = 'aws': choose auto or local or runpod or vast or skypilot"),
    ("project", "data = 'a.jsonl'\nmodel = [\n", "TOML syntax error"),
    ("user", "db_ulr = 'sqlite:///x.db'\n", "unknown key 'db_ulr'; did you mean 'db_url'?"),
    ("user", "budget = 3\n", "a job default: it belongs in a project's planner.toml"),
    ("user", "max_failures = 3\nretention_days = \n", "at line 2, column 18"),
])
def test_bad_files_are_exit_2_naming_the_key(cli, project, where, text, message):
    path = project / "planner.toml" if where == "project" else Path(os.environ["PLANNER_CONFIG"])
    path.write_text(text)
    for args in (("prices", "show"), ("plan", "train-bag", "--fraction", "0.4"), ("config", "show")):
        result = cli(*args, code=2)
        assert message in result.stderr and str(path) in result.stderr, result.stderr
    with pytest.raises(ConfigError, match="planner.toml|config.toml"):
        load_settings()


def test_database_urls_that_cannot_work_are_exit_2(cli, project, monkeypatch):
    monkeypatch.setenv("PLANNER_DB_URL", "notaurl")
    for args in (("db", "upgrade"), ("prices", "show"), ("jobs", "list")):
        result = cli(*args, code=2)
        assert "not a database URL" in result.stderr and "notaurl" not in result.stderr
    monkeypatch.setenv("PLANNER_DB_URL", "mysql+pymysql://user:hunter2@db.example/planner")
    pytest.importorskip("sqlalchemy")
    try:
        import pymysql  # noqa: F401
        pytest.skip("PyMySQL is installed here")
    except ImportError:
        pass
    result = cli("db", "upgrade", code=2)
    assert "pip install 'PyMySQL'" in result.stderr and "hunter2" not in result.stderr


def test_config_show_masks_tokens_and_passwords_inside_urls(cli, project, monkeypatch):
    token, password = "ghp_abcdefTOKEN0123456789", "hunter2-db-password"
    monkeypatch.setenv("PLANNER_JOBS_INSTALL", f"planner[jobs] @ git+https://{token}@github.com/lab/planner@abc")
    monkeypatch.setenv("PLANNER_STORAGE_URI", f"s3://bucket/runs?password={password}&region=eu")
    monkeypatch.setenv("PLANNER_DB_URL", f"sqlite:///{project / 'p.db'}?password={password}")
    for command in (("config", "show"), ("config", "show", "--json")):
        shown = cli(*command).stdout
        assert token not in shown and password not in shown
    values = json.loads(cli("config", "show", "--json").stdout)["values"]
    assert values["jobs_install"]["value"] == "planner[jobs] @ git+https://***@github.com/lab/planner@abc"
    assert values["storage_uri"]["value"] == "s3://bucket/runs?password=***&region=eu"


@pytest.mark.parametrize("line", ['api_token = "a-long-api-token"', 'runpod_api_key = "rpa_xyz"',
                                  'jobs_install = "planner @ git+https://user:ghp_secret@github.com/lab/p"'])
def test_a_user_config_holding_any_secret_must_be_0600(project, line):
    path = Path(os.environ["PLANNER_CONFIG"])
    path.write_text(line + "\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by others; run: chmod 600"):
        load_settings()
    path.chmod(0o600)
    load_settings()
    path.write_text('refresh_cron = "5 * * * *"\n')
    path.chmod(0o644)
    load_settings()  # nothing secret in it: its mode is the user's business


def test_a_project_file_cannot_redirect_the_storage_credentials_without_the_user_confirming(
        cli, project, toy_corpus, monkeypatch, db_url):
    from planner.config import untrusted_routes
    from planner.plan import campaigns
    from planner.run.launching import JobOptions, LaunchError, submit
    from pricing.db import session_factory

    (project / "planner.toml").write_text('storage_uri = "s3://attacker-bucket/x"\n'
                                          'jobs_install = "planner[jobs] @ git+https://evil.example/p"\n')
    monkeypatch.setenv("RUNPOD_API_KEY", "rpa_test_key_123456")
    assert set(untrusted_routes()) == {"storage_uri", "jobs_install"}
    settings = load_settings()
    job = campaigns.train_bag_job(settings, model="s3://m/model", data="s3://m/data.jsonl", fraction=0.5, seed=0,
                                  method="lora")
    plan = campaigns.CampaignPlan("train-bag", {}, [job])
    with pytest.raises(LaunchError, match=r"storage_uri = 's3://attacker-bucket/x'.*planner config trust"):
        submit(settings, session_factory(db_url), plan, JobOptions(backend="runpod"))
    cli("config", "trust", code=1)  # asked, and not confirmed (no input): nothing recorded
    assert set(untrusted_routes()) == {"storage_uri", "jobs_install"}
    trusted = json.loads(cli("config", "trust", "--yes", "--json").stdout)["trusted"]
    assert trusted == {"storage_uri": "s3://attacker-bucket/x",
                       "jobs_install": "planner[jobs] @ git+https://evil.example/p"}
    assert untrusted_routes() == {}
    (project / "planner.toml").write_text('storage_uri = "s3://other-bucket/x"\n')  # a changed value asks again
    assert untrusted_routes() == {"storage_uri": "s3://other-bucket/x"}
    Path(os.environ["PLANNER_CONFIG"]).write_text('storage_uri = "s3://other-bucket/x"\n')  # the user's own value
    assert untrusted_routes() == {}


@pytest.mark.parametrize("variable", ["PLANNER_LOCAL_USD_PER_HOUR", "PLANNER_POLL_INTERVAL_S", "PLANNER_HTTP_TIMEOUT"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_settings_take_only_finite_numbers(project, monkeypatch, variable, value):
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable.removeprefix("PLANNER_").lower()):
        load_settings()


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_project_file_number_must_be_finite(cli, project, value):
    (project / "planner.toml").write_text(f"budget = {value}\n")
    result = cli("config", "show", code=2)
    assert "budget must be a finite number" in result.output


@pytest.mark.parametrize("key,value", [("seed", -1), ("seed", 2**63), ("epochs", 0), ("max_steps", 10**12)])
def test_integers_are_bounded_alike_in_the_project_file_and_on_the_command_line(cli, project, toy_corpus, key, value):
    (project / "planner.toml").write_text(f"{key} = {value}\n")
    assert f"{key} must be from" in cli("config", "show", code=2).stderr
    (project / "planner.toml").write_text("")
    flag = f"--{key.replace('_', '-')}"
    result = cli("plan", "train-bag", "--fraction", "0.4", "--data", str(toy_corpus), flag, str(value), code=2)
    assert flag in result.output and "Traceback" not in result.output


def test_a_model_name_no_file_system_takes_is_exit_2(cli, project, toy_corpus):
    result = cli("plan", "train-bag", "--fraction", "0.4", "--data", str(toy_corpus), "--model", "A" * 300, code=2)
    assert "--model" in result.stderr and "not a usable path" in result.stderr


def test_a_fraction_given_twice_is_exit_2_before_anything_is_planned(cli, project, toy_corpus):
    cli("db", "upgrade")
    result = cli("launch", "bagging", "--data", str(toy_corpus), "--fractions", "0.2,0.4,0.4",
                 "--weights", "1,1,1", "--yes", code=2)
    assert "0.4 more than once" in result.stderr and "the same draw" in result.stderr
    assert json.loads(cli("jobs", "list", "--all", "--json").stdout) == []
