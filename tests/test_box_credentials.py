"""A third-party box never gets the user's default AWS credential chain (issue 24): only keys the user gave
for it (the AWS variables, fsspec's s3 config, or the profile PLANNER_BOX_AWS_PROFILE names)."""
from __future__ import annotations

from planner.run.credentials import storage_credentials

PROFILES = """[default]
aws_access_key_id = AKIADEFAULTUSERKEY01
aws_secret_access_key = default-user-secret-with-admin-rights

[planner-box]
aws_access_key_id = AKIAPLANNERBUCKET001
aws_secret_access_key = bucket-scoped-secret-for-boxes
"""


def test_the_default_chain_stays_home_and_a_named_box_profile_travels(tmp_path, monkeypatch):
    credentials = tmp_path / "credentials"
    credentials.write_text(PROFILES)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    import fsspec.config

    monkeypatch.setattr(fsspec.config, "conf", {})
    assert storage_credentials("s3://bucket/planner", {"AWS_PROFILE": "default"}) == {}
    box = storage_credentials("s3://bucket/planner", {"PLANNER_BOX_AWS_PROFILE": "planner-box"})
    assert box["AWS_ACCESS_KEY_ID"] == "AKIAPLANNERBUCKET001"
    assert box["AWS_SECRET_ACCESS_KEY"] == "bucket-scoped-secret-for-boxes"
