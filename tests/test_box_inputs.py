"""Storage credentials for the box (planner.run.credentials, jobs.boxenv), inputs uploaded content-addressed
(planner.run.inputs) and one model resolution for every job (jobs.storage.resolve_model)."""
from __future__ import annotations

import os
import uuid

import pytest

from jobs import boxenv, storage
from jobs.lifecycle import BadInput
from jobs.spec import JobSpec
from planner.run.backends.remote import box_plan
from planner.run.credentials import storage_credentials
from planner.run.inputs import local_input_problem, stage_inputs

AWS = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-example-123", "AWS_REGION": "eu-west-1",
       "AWS_ENDPOINT_URL_S3": "https://s3.example", "RUNPOD_API_KEY": "rp-key", "VAST_API_KEY": "vast-key",
       "PLANNER_API_TOKEN": "token", "HOME": "/root"}


def test_only_the_storage_uris_credentials_reach_the_box(tmp_path):
    creds = storage_credentials("s3://bucket/planner", AWS)
    assert creds == {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY": "secret-example-123",
                     "AWS_DEFAULT_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "https://s3.example"}
    key = tmp_path / "sa.json"
    key.write_text('{"type": "service_account"}')
    assert storage_credentials("gs://b/p", {"GOOGLE_APPLICATION_CREDENTIALS": str(key)}) == {
        "PLANNER_GCS_CREDENTIALS_JSON": '{"type": "service_account"}'}
    assert storage_credentials(str(tmp_path), AWS) == {} and storage_credentials(None, AWS) == {}


def test_the_plan_carries_them_apart_from_everything_stored(monkeypatch):
    for name, value in AWS.items():
        monkeypatch.setenv(name, value)
    spec = JobSpec("j1", "merge", "s3://bucket/planner/j1/output", {"models": ["a", "b"], "weights": [1, 1]})
    plan = box_plan("runpod", spec, None, attempt=1, spot=False, usd_per_hour=1.0, image="img",
                    jobs_install="planner[jobs]", disk_gb=20)
    assert plan.secret_env["AWS_SECRET_ACCESS_KEY"] == "secret-example-123"
    assert plan.box_env()["AWS_SECRET_ACCESS_KEY"] == "secret-example-123"
    for text in (repr(plan), str(plan.request), str(plan.env), plan.shell_script()):
        assert "secret-example-123" not in text and "rp-key" not in text
    assert not {"RUNPOD_API_KEY", "VAST_API_KEY", "PLANNER_API_TOKEN"} & set(plan.box_env())


def test_long_env_values_are_split_for_vast_and_joined_on_the_box(tmp_path, monkeypatch):
    env = {"SHORT": "x", "PLANNER_JOB_SPEC": "s" * 700, "PLANNER_GCS_CREDENTIALS_JSON": '{"k": "' + "v" * 400 + '"}'}
    split = boxenv.split(env, 256)
    assert all(len(k) + 1 + len(v) <= 256 for k, v in split.items())
    restored = dict(split)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    boxenv.restore(restored)
    assert restored["PLANNER_JOB_SPEC"] == env["PLANNER_JOB_SPEC"] and restored["SHORT"] == "x"
    path = restored["GOOGLE_APPLICATION_CREDENTIALS"]
    assert open(path).read() == env["PLANNER_GCS_CREDENTIALS_JSON"] and os.stat(path).st_mode & 0o077 == 0


def test_local_inputs_are_uploaded_once_content_addressed(tmp_path, tiny_model_dir):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"query": "q", "positive": "p"}\n')
    store = f"memory://inputs-{uuid.uuid4().hex[:8]}"
    bag = JobSpec("b1", "train-bag", f"{store}/b1/output", {"model": str(tiny_model_dir), "data": str(corpus),
                                                             "fraction": 1.0})
    hub = JobSpec("b2", "train-bag", f"{store}/b2/output", {"model": "Qwen/Qwen3-4B", "data": str(corpus),
                                                             "fraction": 1.0})
    assert "--model (or --previous)" in local_input_problem([bag]) and "PLANNER_STORAGE_URI" in local_input_problem([bag])
    assert local_input_problem([hub]).startswith("--data (or --new-data) ")
    (staged_bag, staged_hub), uploads = stage_inputs([bag, hub], store)
    digest = storage.sha256_file(corpus)
    assert staged_bag.params["data"] == f"{store}/inputs/{digest}/corpus.jsonl" == staged_hub.params["data"]
    assert staged_bag.params["model"].startswith(f"{store}/inputs/") and staged_hub.params["model"] == "Qwen/Qwen3-4B"
    assert len(uploads) == 2 and not any(u.skipped for u in uploads)
    assert storage.read_bytes(staged_bag.params["data"]) == corpus.read_bytes()
    assert local_input_problem([staged_bag, staged_hub]) is None
    _, again = stage_inputs([bag], store)
    assert all(u.skipped for u in again)  # the marker says it is there: nothing uploaded twice


def test_every_job_resolves_a_directory_a_uri_or_a_hub_id(tmp_path, tiny_model_dir):
    assert storage.resolve_model(str(tiny_model_dir), tmp_path) == tiny_model_dir
    remote = f"memory://models-{uuid.uuid4().hex[:8]}/tiny"
    storage.upload_tree(tiny_model_dir, remote)
    copy = storage.resolve_model(remote, tmp_path / "cache")
    assert (copy / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
    with pytest.raises(BadInput, match="no such directory"):
        storage.resolve_model(str(tmp_path / "missing"), tmp_path)
    with pytest.raises(BadInput, match="the hub did not give it"):  # offline in tests
        storage.resolve_model("nobody-here/no-such-model", tmp_path)
