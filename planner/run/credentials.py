"""The credentials a cloud box needs for PLANNER_STORAGE_URI, and nothing else.

A box reads its inputs from, and writes checkpoints, reports and outputs to, the storage URI, so it
needs that store's credentials; it never gets a secret setting (planner.config.secret_env_names: the
provider API keys, PLANNER_API_TOKEN). They come
from the lab's own configuration, in this order:

  s3://   the AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
          AWS_DEFAULT_REGION / AWS_REGION, AWS_ENDPOINT_URL[_S3]); else fsspec's config for s3
          (key, secret, token, client_kwargs.endpoint_url/region_name); else the AWS profile named for
          boxes by PLANNER_BOX_AWS_PROFILE, resolved to keys by botocore. Never the default credential
          chain (AWS_PROFILE, the default profile, SSO, an instance role): those are the user's own, with
          whatever they may reach, and a third-party box must get keys made for it (README: bucket-scoped
          keys, or a role assumed with STS for the campaign's length)
  gs://   the contents of the GOOGLE_APPLICATION_CREDENTIALS file, as PLANNER_GCS_CREDENTIALS_JSON
          (jobs.boxenv writes it to a 0600 file on the box and points GOOGLE_APPLICATION_CREDENTIALS at it)

The result goes into LaunchPlan.secret_env, which backends add to the box's environment only in the
request they send (RunPod `env`, Vast `env`): not in the plan's `request`, the attempt's handle, the
database, a log line or a command line.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from jobs.protocol import GCS_JSON
from planner.config import secret_env_names

BOX_PROFILE = "PLANNER_BOX_AWS_PROFILE"  # an AWS profile made for the boxes (bucket-scoped keys, an STS role)
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL")


class CredentialsError(ValueError):
    """The storage URI's credentials cannot be read: one line naming what to fix (never a secret)."""


def storage_credentials(storage_uri: str | None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a box needs to reach `storage_uri` (empty for a local path or no URI)."""
    environ = os.environ if environ is None else environ
    scheme = (storage_uri or "").split("://", 1)[0].lower() if "://" in (storage_uri or "") else ""
    if scheme in ("s3", "s3a"):
        found = _aws(environ)
    elif scheme in ("gs", "gcs"):
        found = _gcs(environ)
    else:
        found = {}
    never = set(secret_env_names())
    return {k: v for k, v in found.items() if v and k.upper() not in never}


def _aws(environ: Mapping[str, str]) -> dict[str, str]:
    out = {k: environ[k] for k in AWS_VARS if environ.get(k)}
    if "AWS_DEFAULT_REGION" not in out and environ.get("AWS_REGION"):
        out["AWS_DEFAULT_REGION"] = environ["AWS_REGION"]
    if "AWS_ENDPOINT_URL" not in out and environ.get("AWS_ENDPOINT_URL_S3"):
        out["AWS_ENDPOINT_URL"] = environ["AWS_ENDPOINT_URL_S3"]
    if out.get("AWS_ACCESS_KEY_ID") and out.get("AWS_SECRET_ACCESS_KEY"):
        return out
    out.update({k: v for k, v in _fsspec_s3().items() if k not in out})
    if out.get("AWS_ACCESS_KEY_ID") and out.get("AWS_SECRET_ACCESS_KEY"):
        return out
    if environ.get(BOX_PROFILE):
        out.update({k: v for k, v in _aws_profile(environ[BOX_PROFILE]).items() if k not in out})
    return out


def _fsspec_s3() -> dict[str, str]:
    try:
        import fsspec.config
    except ImportError:
        return {}
    conf = fsspec.config.conf.get("s3") or {}
    client = conf.get("client_kwargs") or {}
    pairs = {"AWS_ACCESS_KEY_ID": conf.get("key"), "AWS_SECRET_ACCESS_KEY": conf.get("secret"),
             "AWS_SESSION_TOKEN": conf.get("token"),
             "AWS_ENDPOINT_URL": conf.get("endpoint_url") or client.get("endpoint_url"),
             "AWS_DEFAULT_REGION": client.get("region_name")}
    return {k: str(v) for k, v in pairs.items() if v}


def _aws_profile(profile: str) -> dict[str, str]:
    """Keys of the named AWS profile, resolved by botocore (a dependency of s3fs)."""
    try:
        import botocore.session
    except ImportError:
        return {}
    try:
        session = botocore.session.Session(profile=profile)
        credentials = session.get_credentials()
        frozen = credentials.get_frozen_credentials() if credentials is not None else None
        region = session.get_config_variable("region")
    except Exception:  # a missing or broken profile: the box gets no keys, and says so when it cannot write
        return {}
    if frozen is None:
        return {}
    return {k: v for k, v in {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
                              "AWS_SESSION_TOKEN": frozen.token, "AWS_DEFAULT_REGION": region}.items() if v}


def _gcs(environ: Mapping[str, str]) -> dict[str, str]:
    path = environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not path:
        return {}
    try:
        return {GCS_JSON: Path(path).read_text()}
    except OSError as exc:
        raise CredentialsError(f"GOOGLE_APPLICATION_CREDENTIALS names {path}, which cannot be read "
                               f"({exc.strerror}); fix the path or unset it") from None


SECRET_STORAGE_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def secret_values(settings, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Every secret value this process holds that a provider's or a store's message could quote back: the
    provider keys, the API token, the webhook URL, and the storage credentials a box would get (the AWS keys,
    the GCS service account's private key). The supervisor blanks them in whatever it stores or serves."""
    values = [provider.api_key.get_secret_value() for provider in settings.providers.values() if provider.api_key]
    values += [secret.get_secret_value() for secret in (settings.api_token, settings.notify_url) if secret]
    try:
        box = storage_credentials(settings.storage_uri, environ)
    except CredentialsError:
        box = {}
    values += [box[name] for name in SECRET_STORAGE_VARS if box.get(name)]
    if box.get(GCS_JSON):
        try:
            values.append(json.loads(box[GCS_JSON]).get("private_key") or "")
        except (ValueError, AttributeError):
            values.append(box[GCS_JSON])
    # longest first, so a secret containing another is blanked whole; short values are no secrets (and
    # blanking them would garble every message)
    return tuple(sorted({v for v in values if len(v) >= 8}, key=len, reverse=True))


def redact(text: str | None, secrets: tuple[str, ...]) -> str | None:
    """`text` with every secret value replaced by '***'."""
    if not text:
        return text
    for secret in secrets:
        text = text.replace(secret, "***")
    return text
