"""Notifications: one message per event to a Slack-compatible incoming webhook (PLANNER_NOTIFY_URL).

The request is what Slack documents for incoming webhooks, `POST <url>` with the JSON body
`{"text": "..."}` (https://api.slack.com/messaging/webhooks), which these accept as is:

- Slack: `https://hooks.slack.com/services/...`; answers `200 ok`, and `400 invalid_payload`, `403
  action_prohibited`, `404 no_service` (the webhook was removed), `410 channel_is_archived` for errors
  that a retry cannot fix (https://api.slack.com/messaging/webhooks#handling_errors);
- Mattermost: `https://HOST/hooks/KEY`, the same JSON body ("Slack-compatible",
  https://developers.mattermost.com/integrate/webhooks/incoming/);
- Discord: a channel webhook's URL with `/slack` appended ("Execute Slack-Compatible Webhook",
  https://discord.com/developers/docs/resources/webhook#execute-slackcompatible-webhook);
- ntfy: it shows a POST body as the message verbatim, so give it the topic URL with its message
  template, `https://ntfy.sh/TOPIC?tpl=1&m={{.text}}` (ntfy 2.10 "message templating",
  https://github.com/binwiederhier/ntfy/releases/tag/v2.10.0; https://docs.ntfy.sh/publish/).

Events (README "Notifications" lists their text): a job's end (succeeded, failed with its one-line reason,
stopped by budget, cancelled), a campaign's end (the report's headline), and money at risk (a box past
its deadline, an orphan the reaper terminated, a provider paused for funds).

Each event is sent once: its key (e.g. `job:ID:succeeded`) is claimed as a row of the `notifications`
table before anything is sent, so a second tick, a second supervisor process or a restart finds it
claimed. The text is built and posted in a background thread with retries and backoff (timeouts,
connection errors, 429 and 5xx), so a tick never waits for a webhook and a webhook's failure never
fails a tick; a claim whose process died before delivery is picked up again by the next notifier
(`resume_unsent`). The URL is a secret like the API keys: it is never stored (the table holds the
text and the outcome), logged (failures are named by HTTP status or exception type, and urllib3's
debug lines are redacted) or printed.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import timedelta
from urllib.parse import urlsplit

import requests
from pydantic import SecretStr
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from planner.records import FINAL_STATES, Attempt, Job, Notification
from planner.run.report import campaign_report
from pricing.db import utcnow
from pricing.providers.http import RetryPolicy, one_line

log = logging.getLogger(__name__)

DELIVERY_LEASE = timedelta(minutes=10)  # a claim whose process died is delivered by another after this
TIMEOUT_S = 10.0
JOB_EVENTS = {state: f"job-{state}" for state in FINAL_STATES}
CAMPAIGN_FINISHED = "campaign-finished"
MONEY_EVENTS = ("past-deadline", "orphan-reaped", "provider-paused", "box-not-ended")


class NotifyError(RuntimeError):
    """A notification that could not be delivered; the message never holds the URL."""


class NotifySetupError(NotifyError):
    """PLANNER_NOTIFY_URL is missing or not a URL: a fix for the user (the CLI exits 2)."""


class _Transient(NotifyError):
    """Worth another try: a timeout, a connection error, 429 or 5xx."""


class _RedactURL(logging.Filter):
    """Replaces the webhook URL (and its path, which is the secret part of a Slack or Mattermost URL) in
    urllib3's debug lines, e.g. `"POST /services/T.../B.../XXXX HTTP/1.1" 200`."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            hidden = message
            for secret in sorted(self.secrets, key=len, reverse=True):
                hidden = hidden.replace(secret, "<PLANNER_NOTIFY_URL>")
            if hidden != message:
                record.msg, record.args = hidden, ()
        return True


_REDACT = _RedactURL()
logging.getLogger("urllib3.connectionpool").addFilter(_REDACT)


def post(url: str, text: str, policy: RetryPolicy = RetryPolicy(), timeout_s: float = TIMEOUT_S) -> None:
    """POST `{"text": text}` to the webhook, retrying transient failures with backoff; NotifyError when it
    cannot be delivered (named by status or exception type, never by URL)."""
    def once() -> None:
        try:
            response = requests.post(url, json={"text": text}, timeout=timeout_s)
        except requests.RequestException as exc:  # its message holds the URL: keep only the type
            raise _Transient(f"{type(exc).__name__} reaching the webhook") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise _Transient(f"HTTP {response.status_code} from the webhook")
        if not 200 <= response.status_code < 300:
            raise NotifyError(f"HTTP {response.status_code} from the webhook ({one_line(response.text, 80)}); "
                              "check PLANNER_NOTIFY_URL (a removed or revoked webhook answers 404)")

    retrying = Retrying(stop=stop_after_attempt(policy.attempts), reraise=True, sleep=policy.sleep,
                        wait=wait_random_exponential(multiplier=policy.initial_wait_s, max=policy.max_wait_s),
                        retry=retry_if_exception_type(_Transient))
    retrying(once)


def check_url(url: str) -> str | None:
    """Why `url` cannot be a webhook (without echoing it), else None."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return "PLANNER_NOTIFY_URL is not an http(s) URL; set it to the webhook URL your chat service gave you"
    return None


class Notifier:
    """Sends each event once to PLANNER_NOTIFY_URL, in the background. Without a URL every method does
    nothing, so callers never check."""

    def __init__(self, url: SecretStr | None, sessions: sessionmaker | None, *, policy: RetryPolicy = RetryPolicy(),
                 owner: str | None = None):
        self._url = url
        self.sessions = sessions
        self.policy = policy
        self.owner = owner or uuid.uuid4().hex
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []
        if self.enabled:
            value = url.get_secret_value()
            _REDACT.secrets.update({value, urlsplit(value).path} - {"", "/"})

    @classmethod
    def from_settings(cls, settings, sessions: sessionmaker) -> Notifier:
        url = settings.notify_url
        if url is not None and (problem := check_url(url.get_secret_value())):
            log.warning("notifications are off: %s", problem)
            url = None
        return cls(url, sessions, policy=RetryPolicy.from_settings(settings))

    @property
    def enabled(self) -> bool:
        return self._url is not None and bool(self._url.get_secret_value()) and self.sessions is not None

    # ------------------------------------------------------------------ events

    def job_ended(self, session: Session, job: Job) -> None:
        """A job reached a final state: one message, then the campaign's when it was the last job open."""
        if not self.enabled or job.state not in JOB_EVENTS:
            return
        self._claim(f"job:{job.id}:{job.state}", JOB_EVENTS[job.state], job.id)
        if job.campaign_id and not session.scalar(select(Job.id).where(
                Job.campaign_id == job.campaign_id, Job.state.not_in(FINAL_STATES)).limit(1)):
            self._claim(f"campaign:{job.campaign_id}:finished", CAMPAIGN_FINISHED, job.campaign_id)

    def money_at_risk(self, event: str, subject: str, text: str) -> None:
        """Money at risk, once per `subject` (e.g. an instance label): `event` is one of MONEY_EVENTS."""
        if event not in MONEY_EVENTS:
            raise ValueError(f"unknown money event {event!r}; one of {', '.join(MONEY_EVENTS)}")
        if self.enabled:
            self._claim(f"{event}:{subject}", event, subject, f"planner: money at risk: {text}")

    def orphan_reaped(self, backend: str, label: str, instance_id: str | None) -> None:
        self.money_at_risk("orphan-reaped", f"{backend}:{label}",
                           f"the reaper terminated {backend} instance {instance_id or '?'} ({label}), which no live "
                           "attempt owned; check the provider's console for others")

    def provider_paused(self, provider: str, reason: str) -> None:
        """A provider refused a launch for funds (HTTP 402 and the like): once per provider per UTC day."""
        self.money_at_risk("provider-paused", f"{provider}:{utcnow().date().isoformat()}",
                           f"{provider} is paused for funds: {one_line(reason, 300)}")

    def past_deadline(self, job_id: str, attempt: int, detail: str) -> None:
        """A box outlived its deadline (issue 21's deadlines call this): once per attempt."""
        self.money_at_risk("past-deadline", f"{job_id}:{attempt}",
                           f"job {job_id} attempt {attempt} is past its deadline: {one_line(detail, 300)}")

    def box_not_ended(self, job_id: str, attempt: int, instance_id: str, why: str) -> None:
        """The provider refused the key that would end a box (rotated, revoked): it bills on until its own
        deadline or a person ends it. Once per attempt."""
        self.money_at_risk("box-not-ended", f"{job_id}:{attempt}",
                           f"job {job_id} attempt {attempt}: instance {instance_id} could not be ended and keeps "
                           f"billing until its deadline; end it in the provider's console ({one_line(why, 200)})")

    def resume_unsent(self) -> None:
        """Deliver the claims that a process which died before sending them left behind."""
        if not self.enabled:
            return
        now = utcnow()
        with self.sessions() as session:
            stale = session.scalars(select(Notification.key).where(
                Notification.state == "pending", Notification.lease_until < now)).all()
            for key in stale:
                taken = session.execute(update(Notification).where(
                    Notification.key == key, Notification.state == "pending", Notification.lease_until < now)
                    .values(lease_owner=self.owner, lease_until=now + DELIVERY_LEASE)).rowcount
                session.commit()
                if taken == 1:
                    self._submit(key)

    def wait(self, timeout_s: float | None = None) -> None:
        """Block until the deliveries submitted so far are done (tests; a CLI command about to exit)."""
        wait(list(self._futures), timeout=timeout_s)

    # ------------------------------------------------------------------ claim and deliver

    def _claim(self, key: str, kind: str, subject: str, text: str | None = None) -> None:
        """Claim the event in a session of its own (the caller's is left as it was); an event already
        claimed, by this process or another, is not sent again."""
        now = utcnow()
        with self.sessions() as own:
            own.add(Notification(key=key, kind=kind, subject=subject, text=text, state="pending",
                                 lease_owner=self.owner, lease_until=now + DELIVERY_LEASE, created_at=now))
            try:
                own.commit()
            except IntegrityError:
                return
        self._submit(key)

    def _submit(self, key: str) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="planner-notify")
        self._futures = [f for f in self._futures if not f.done()]
        self._futures.append(self._pool.submit(self._deliver, key))

    def _deliver(self, key: str) -> None:
        """Build the text (once), post it, record the outcome; never raises (a background thread)."""
        try:
            with self.sessions() as session:
                row = session.get(Notification, key)
                if row is None or row.state != "pending" or row.lease_owner != self.owner:
                    return
                if row.text is None:
                    row.text = event_text(session, row.kind, row.subject)
                    session.commit()
                text = row.text
            try:
                post(self._url.get_secret_value(), text, self.policy)
                state, error = "sent", None
            except NotifyError as exc:
                state, error = "failed", str(exc)
                log.warning("notification %s not delivered: %s", key, exc)
            with self.sessions() as session:
                session.execute(update(Notification).where(Notification.key == key).values(
                    state=state, error=error, sent_at=utcnow() if state == "sent" else None,
                    lease_owner=None, lease_until=None))
                session.commit()
        except Exception as exc:  # a database hiccup: the claim stays pending and is retried after its lease
            log.warning("notification %s: %s; retried after its lease", key, type(exc).__name__)


# ------------------------------------------------------------------ the texts

def event_text(session: Session, kind: str, subject: str) -> str:
    if kind == CAMPAIGN_FINISHED:
        return f"planner: campaign {subject} finished: {campaign_report(session, subject, naive=False)['headline']}"
    if kind in JOB_EVENTS.values():
        return job_text(session, subject)
    raise ValueError(f"no text for a {kind} notification without one")


def job_text(session: Session, job_id: str) -> str:
    """`planner: job NAME (ID) succeeded: $1.23 over 2 attempts (1 interrupted), 0.8 h`, and the like."""
    job = session.get(Job, job_id)
    attempts = session.scalars(select(Attempt).where(Attempt.job_id == job_id)).all()
    billed = sum(a.dollars for a in attempts)
    interrupted = sum(a.outcome in ("preempted", "lost") for a in attempts)
    hours = sum(((a.ended_at or a.launched_at) - a.launched_at).total_seconds() for a in attempts) / 3600
    counted = f"{len(attempts)} attempt{'s' if len(attempts) != 1 else ''}" + \
        (f" ({interrupted} interrupted)" if interrupted else "")
    reason = one_line((job.error or "").splitlines()[0] if job.error else "no reason recorded", 300)
    name = f"job {job.name} ({job.id})" + (f" of campaign {job.campaign_id}" if job.campaign_id else "")
    said = {"succeeded": f"succeeded: ${billed:.2f} over {counted}, {hours:.2f} h",
            "failed": f"failed: {reason} (${billed:.2f} spent over {counted})",
            "stopped-by-budget": f"stopped by budget: {reason} (${billed:.2f} spent over {counted})",
            "cancelled": f"cancelled (${billed:.2f} spent over {counted})"}[job.state]
    return f"planner: {name} {said}"


def send_test(settings, sender: Callable[[str, str, RetryPolicy], None] = post) -> str:
    """`planner notify test`: one message now, in the foreground; returns the text sent."""
    if settings.notify_url is None or not settings.notify_url.get_secret_value():
        raise NotifySetupError("PLANNER_NOTIFY_URL is not set; set it to a Slack-compatible incoming webhook URL "
                          "(Slack, Mattermost, Discord's URL + /slack, ntfy's topic URL + ?tpl=1&m={{.text}})")
    url = settings.notify_url.get_secret_value()
    problem = check_url(url)
    if problem:
        raise NotifySetupError(problem)
    text = f"planner: test notification at {utcnow().isoformat(timespec='seconds')}; job and campaign events will " \
           "arrive here"
    sender(url, text, RetryPolicy.from_settings(settings))
    return text

