"""The supervisor: sees every job through launches, interruptions and failures to an end, inside its budget.

All state lives in the database (planner.records), so the supervisor can be killed and restarted at
any moment: `tick()` reads what is live, polls it, and acts. One tick per job:

  cancel requested        terminate the live attempt, settle it, the job is cancelled
  live attempt            poll it (provider faults: retry next tick; a refused key: the job waits, saying
                          so, the attempt stays live and is never called lost) and read the runner's progress;
                          past the budget -> a checkpointing kind is asked to stop (SIGTERM: it saves and
                          exits 75) and is "stopping" until it has, or its grace ran out (then terminated);
                          other kinds are terminated; either way the job is stopped-by-budget
                          measured slow, another offer finishes clearly cheaper -> moved: end it (it
                          checkpoints), place it again elsewhere (planner.plan.moving)
      SUCCEEDED           (the DONE marker exists) settle, the job succeeded
      PREEMPTED / LOST    settle, the offer sits out a cool-down, relaunch from the checkpoint
      FAILED exit 75      the runner checkpointed and asked to be resumed: relaunch
      FAILED otherwise    relaunch up to max_failures, then failed with the log tail
  no live attempt         dependencies done -> claim the job (a lease: only one supervisor launches
                          it), place it on the best offer now, reserve the worst case, launch

Each job's step is isolated: whatever it raises (a poisoned spec, a deleted run directory, an object
store that is down) is recorded on that job and tried again next tick; the other jobs go on. A job
whose attempt runs on a backend this process cannot reach (its key is not set here) waits, saying so.

Exactly one launch per attempt. Every attempt row is written before its instance is created, holding
a claim on the create: a lease on the database's clock that the launcher renews while the create is in
flight, however slow, and a fence. A supervisor finding an attempt without an instance id recovers it
only once the claim has lapsed (its launcher died): it takes the claim (bumps the fence), then adopts
the instance by its label, ends the attempt as the report its box left says (a box that finished and
deleted itself before the takeover; settled from the attempt's row), or records the launch as lost. The
launcher records the create's answer only while its fence holds; a late answer finds it gone and ends its
own instance. The reaper terminates
this project's labelled instances that no live attempt owns (planner.run.reaper). An attempt costs
what planner.plan.billing says; budgets count what live attempts accrue, every tick, up to the next tick plus,
for a checkpointing kind, the grace its stop may take, so the stop starts early enough that no budget is passed.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta

from sqlalchemy import event, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from jobs.protocol import EXIT_BAD_INPUT, EXIT_INTERRUPTED, SIGTERM_GRACE_S, parse_progress
from jobs.spec import KINDS, JobSpec, SpecError
from planner.plan import budget as budgets
from planner.plan import memory, moving
from planner.plan.billing import attempt_cost, billed_rate, traffic_columns
from planner.plan.budget import job_spent
from planner.plan.placement import NoPlacement, PlaceFn, PlacementContext
from planner.records import FINAL_STATES, LIVE_ATTEMPT, Attempt, Campaign, Job, Reservation, project_id
from planner.run import progress, reaper
from planner.run.backends.base import (
    Backend,
    BackendError,
    Handle,
    KeyRejected,
    PollResult,
    Scope,
    Status,
    instance_label,
)
from planner.run.backends.markers import read_done
from planner.run.credentials import redact
from planner.run.logs import bad_input_reason, log_tail
from planner.run.notify import Notifier
from planner.run.tick_report import TickReport
from pricing.db import database_now
from pricing.providers.base import ProviderError
from pricing.refresh import holder_dead

log = logging.getLogger(__name__)

LAUNCH_LEASE = timedelta(minutes=10)  # a claim on a job that a crashed supervisor left behind expires
CREATE_LEASE = timedelta(seconds=60)  # a claim on an attempt's create, renewed every quarter of it while in flight
MAX_LAUNCH_FAILURES = 8  # launches failing in a row (nothing started between them) before the job fails
MAX_POLL_FAILURES = 20  # consecutive failed polls (provider down) before the attempt counts as lost


class Supervisor:
    def __init__(self, sessions: sessionmaker, backends: dict[str, Backend], place: PlaceFn, *,
                 budget=None, clock: Callable[[], datetime] | None = None, poll_interval_s: float = 30.0,
                 cooldown: timedelta = timedelta(hours=1), owner: str | None = None,
                 notifier: Notifier | None = None, secrets: tuple[str, ...] = ()):
        self.sessions = sessions
        self.backends = backends
        self.place = place
        self.budget = budget  # planner.plan.budget.Ledger (reserve/release), or None for no global caps
        self.clock = clock or self._database_clock  # attempts' times and budgets; leases use the database's
        self.poll_interval_s = poll_interval_s
        self.cooldown = cooldown
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.unpaid: dict[str, datetime] = {}  # backend -> until when it launches nothing (its account cannot pay)
        self.weighed: dict[int, tuple] = {}  # attempt id -> (checkpoint step, TFLOP/s) its move was last weighed at
        with sessions() as session:
            self.project = project_id(session)
        for backend in backends.values():
            backend.project = self.project  # its instances carry this project's label
        self.notify = notifier or Notifier(None, sessions)  # PLANNER_NOTIFY_URL's messages; without one, none
        self.secrets = secrets  # blanked in every job error and attempt detail written (provider messages)
        if secrets:  # once per sessionmaker however many supervisors it serves (a cancel builds one)
            info = sessions.kw.get("info") or {}
            sessions.configure(info={**info, REDACTED: tuple(dict.fromkeys((*info.get(REDACTED, ()), *secrets)))})
            if not event.contains(sessions, "before_flush", _redact_before_flush):
                event.listen(sessions, "before_flush", _redact_before_flush)

    # ------------------------------------------------------------------ the loop

    def tick(self) -> TickReport:
        report = TickReport()
        self.notify.resume_unsent()
        with self.sessions() as session:
            job_ids = session.scalars(select(Job.id).where(Job.state.not_in(FINAL_STATES)).order_by(Job.created_at)).all()
        for job_id in job_ids:
            self._isolated_step(job_id, report)
        report.reaped = reaper.reap(self.sessions, self.backends, on_reaped=self.notify.orphan_reaped)
        return report

    def open_jobs(self) -> int:
        with self.sessions() as session:
            return session.scalar(select(func.count()).select_from(Job).where(Job.state.not_in(FINAL_STATES)))

    def _isolated_step(self, job_id: str, report: TickReport) -> None:
        """One job's step; what it raises stays with that job: recorded on it, tried again next tick."""
        try:
            with self.sessions() as session:
                job = session.get(Job, job_id)
                if job is not None and job.state not in FINAL_STATES:
                    self._step(session, job, report)
        except EndedElsewhere as exc:  # another supervisor of this project saw the same end first: it is theirs
            log.info("job %s: %s", job_id, exc)
        except Exception as exc:  # noqa: BLE001 (the point: one job's fault, e.g. a store that is down, is that job's)
            why = redact(fault_line(exc), self.secrets)
            log.warning("job %s: its step failed (%s); tried again next tick", job_id, why)
            report.faults[job_id] = why
            with self.sessions() as session:
                session.execute(update(Job).where(Job.id == job_id).values(error=f"tick failed: {why}; retried"))
                session.commit()

    def _step(self, session: Session, job: Job, report: TickReport) -> None:
        attempt = self._live_attempt(session, job)
        if attempt is not None and attempt.backend not in self.backends:
            self._wait_for_backend(session, job, attempt, report)
            return
        if job.cancel_requested:
            if attempt is not None:
                try:
                    self._end_attempt(session, job, attempt, "cancelled", PollResult(Status.FAILED, detail="cancelled"),
                                      open_if_refused=True)
                except KeyRejected as exc:  # the box bills on: the job stays marked, the next tick tries again
                    why = f"waiting: the cancel could not end its box: {exc}"
                    job.error, job.updated_at = redact(why, self.secrets), self.clock()
                    session.commit()
                    report.waiting[job.id] = job.error
                    return
            self._finish(session, job, "cancelled", "cancelled by the user", report)
            return
        if attempt is not None:
            if attempt.instance_id is None:
                self._recover_cut_off_launch(session, job, attempt, report)
            else:
                self._watch(session, job, attempt, report)
            return
        blocked = self._dependency_problem(session, job)
        if blocked == "wait":
            return
        if blocked:
            self._finish(session, job, "failed", blocked, report)
            return
        self._launch(session, job, report)

    # ------------------------------------------------------------------ launching

    def _launch(self, session: Session, job: Job, report: TickReport) -> None:
        now, db_now = self.clock(), database_now(session)
        free = or_(Job.lease_owner.is_(None), Job.lease_until < db_now, Job.lease_owner == self.owner)
        if job.lease_owner and job.lease_owner != self.owner and holder_dead(job.lease_owner):
            free = or_(free, Job.lease_owner == job.lease_owner)  # a supervisor of this host that died holding it
        claimed = session.execute(
            update(Job).where(Job.id == job.id, Job.state.in_(("pending", "preempted")), free)
            .values(lease_owner=self.owner, lease_until=db_now + LAUNCH_LEASE)
        ).rowcount
        session.commit()
        if claimed != 1:
            return
        session.refresh(job)
        try:
            job_spec = JobSpec.from_json(job.spec)
        except SpecError as exc:  # no relaunch reads it better: fail it before anything is reserved or written
            self._finish(session, job, "failed", f"its spec cannot run: {exc}", report)
            return
        context = PlacementContext(self._cooling_offers(session, job, now), self._remaining_fraction(session, job),
                                   job_spent(session, job.id), now, self._unpaid_backends(now))
        placement = self.place(session, job, context)
        if isinstance(placement, NoPlacement):
            if placement.over_budget and (wait := self._budget_wait(session, job)):
                self._release_claim(session, job, error=wait)
            elif placement.over_budget:
                self._finish(session, job, "stopped-by-budget", placement.reason, report)
            elif placement.impossible:
                self._finish(session, job, "failed", placement.reason, report)
            else:
                self._release_claim(session, job, error=placement.reason)  # prices may change: try next tick
            return
        if not self._claim_holds(session, job):  # placing outlasted the claim (a store or book slow to answer)
            return  # and another supervisor took the job meanwhile: it is theirs to launch
        if self.budget is not None:
            refusal = self.budget.reserve(session, job, placement.worst_case_usd)
            if refusal and refusal.shared and (wait := self._budget_wait(session, job)):
                self._release_claim(session, job, error=wait)
                return
            if refusal:
                self._finish(session, job, "stopped-by-budget", refusal.reason, report)
                return
        backend = self.backends[placement.backend]
        number = (session.scalar(select(func.max(Attempt.number)).where(Attempt.job_id == job.id)) or 0) + 1
        offer = placement.offer
        attempt = Attempt(job_id=job.id, number=number, backend=backend.name, provider=offer.provider if offer else backend.name,
                          offer_key=offer.offer_key if offer else None, gpu_model=offer.gpu_model if offer else None,
                          gpu_count=offer.gpu_count if offer else 1, tier=offer.tier if offer else None,
                          location=offer.location if offer else None, spot=placement.spot,
                          usd_per_hour=placement.usd_per_hour, billing_seconds=placement.billing_seconds,
                          outcome="launching", launched_at=now, launch_fence=1, mini_batch_size=placement.mini_batch,
                          planned_vram_gb=placement.planned_vram_gb, planned_ram_gb=placement.planned_ram_gb,
                          ram_gb=offer.ram_gb if offer else None, **traffic_columns(placement.traffic),
                          launch_lease_until=database_now(session) + CREATE_LEASE)
        session.add(attempt)
        job.state, job.updated_at, job.error = "launching", now, None
        session.commit()  # the attempt exists before the instance does: a crash from here on is recoverable
        spec = placement.apply(job_spec)
        try:
            plan = backend.plan(spec, offer, attempt=number, spot=placement.spot, usd_per_hour=placement.usd_per_hour,
                                disk_gb=json.loads(job.requirements or "{}").get("disk_gb"),
                                max_hours=placement.max_hours)
            with self._create_claim(attempt):
                handle = backend.launch(plan)
        except (BackendError, ProviderError) as exc:  # provider weather, not the job's fault: re-plan next tick
            if not self._record_create(session, attempt, outcome="launch-failed", ended_at=self.clock(),
                                       detail=f"launch failed: {exc}", dollars=0.0):  # nothing started, nothing billed
                return  # another supervisor took the attempt over meanwhile: it is theirs now
            scope = getattr(exc, "scope", Scope.OFFER)
            if scope is Scope.BACKEND:  # an empty balance (402): nothing launches there until it is topped up
                self.unpaid[backend.name] = self.clock() + self.cooldown
                self.notify.provider_paused(backend.name, str(exc))
            if scope is Scope.JOB or (scope is Scope.BACKEND and job.backend == backend.name):
                session.commit()  # our malformed request (422); a job that may run only on the unpaid backend
                self._finish(session, job, "failed", str(exc), report)
                return
            self._after_launch_failure(session, job, attempt, report)
            return
        # billed from when the instance exists: the answer to the create, not the row written before the host
        # search, the bid read and any rate-limited retries of the create (a cut-off launch keeps the row's time)
        if not self._record_create(
                session, attempt, usd_per_hour=handle.data.get("usd_per_hour", plan.usd_per_hour),  # a bid read is paid
                launched_at=self.clock(), billed_usd_per_hour=billed_rate(handle.data.get("billed_usd_per_hour")),
                instance_id=handle.instance_id, handle=handle.to_json(), outcome="running"):
            self._disown(session, backend, attempt, handle)
            return
        job.state, job.lease_owner, job.lease_until, job.updated_at = "running", None, None, self.clock()
        session.commit()
        report.launched.append(job.id)
        log.info("job %s attempt %d launched on %s (%s, $%.3f/h)", job.id, number, backend.name,
                 attempt.gpu_model, attempt.usd_per_hour)

    def _claim_holds(self, session: Session, job: Job) -> bool:
        """Renew this supervisor's claim on the job if it still holds it (nobody took it over while it lapsed)."""
        renewed = session.execute(
            update(Job).where(Job.id == job.id, Job.lease_owner == self.owner, Job.state.in_(("pending", "preempted")))
            .values(lease_until=database_now(session) + LAUNCH_LEASE)).rowcount == 1
        if not renewed:
            session.rollback()
            log.info("job %s: its launch claim lapsed while placing and was taken over; left to its holder", job.id)
        return renewed

    def _recover_cut_off_launch(self, session: Session, job: Job, attempt: Attempt, report: TickReport) -> None:
        """An attempt row with no instance id: a create in flight (its launcher renews the claim: leave it), or
        one a dead supervisor cut off (the claim lapsed): take the claim over, then adopt it, end it as the report
        its box left says (a box that finished, reported and deleted itself before the takeover), or call it lost."""
        db_now = database_now(session)
        taken = session.execute(
            update(Attempt).where(Attempt.id == attempt.id, Attempt.launch_fence == attempt.launch_fence,
                                  Attempt.outcome == "launching", Attempt.instance_id.is_(None),
                                  or_(Attempt.launch_lease_until.is_(None), Attempt.launch_lease_until < db_now))
            .values(launch_fence=Attempt.launch_fence + 1, launch_lease_until=db_now + CREATE_LEASE)).rowcount
        session.commit()
        if taken != 1:
            return
        session.refresh(attempt)
        labels = {instance_label(job.id, attempt.number, self.project), instance_label(job.id, attempt.number)}
        backend = self.backends[attempt.backend]
        try:
            found = [h for h in backend.list_labeled() if h.label in labels]
        except (BackendError, ProviderError) as exc:  # provider weather: look again next tick, never guess "lost"
            log.warning("job %s attempt %d: cannot list %s instances to adopt a cut-off launch (%s); next tick",
                        job.id, attempt.number, attempt.backend, exc)
            session.execute(update(Attempt).where(Attempt.id == attempt.id, Attempt.launch_fence == attempt.launch_fence)
                            .values(launch_lease_until=None))  # free for the next tick, whoever runs it
            session.commit()
            return
        spec = JobSpec.from_json(job.spec)
        reported = None if found else next(
            ((label, result) for label in sorted(labels)
             if (result := backend.reported(label, spec.output_uri)) is not None), None)
        if found:
            handle = _adopted(found[0], spec, attempt)
            recorded = self._record_create(session, attempt, instance_id=handle.instance_id, handle=handle.to_json(),
                                           outcome="running")
        elif reported is not None:  # its box ran, reported and deleted itself before anyone saw its id
            handle = _adopted(Handle(backend=backend.name, instance_id="", label=reported[0], data={}), spec,
                              attempt)
            recorded = self._record_create(session, attempt, handle=handle.to_json(), outcome="running")
        else:
            recorded = self._record_create(session, attempt, outcome="lost", ended_at=self.clock(),
                                           detail="launch cut off before the instance existed")
        if recorded:
            job.state = "running" if found or reported else "preempted"
            job.lease_owner = job.lease_until = None
            session.commit()
        if recorded and reported is not None:  # settled from the attempt's row: the create came after it
            self._act_on(session, job, attempt, backend, handle, reported[1], report)

    def _record_create(self, session: Session, attempt: Attempt, **values) -> bool:
        """Write how the attempt's create ended, if this supervisor still holds its claim (the fence it saw)."""
        if "detail" in values:
            values["detail"] = redact(values["detail"], self.secrets)
        recorded = session.execute(
            update(Attempt).where(Attempt.id == attempt.id, Attempt.launch_fence == attempt.launch_fence,
                                  Attempt.outcome == "launching")
            .values(launch_lease_until=None, **values)).rowcount == 1
        session.commit()
        session.refresh(attempt)
        return recorded

    def _disown(self, session: Session, backend: Backend, attempt: Attempt, handle: Handle) -> None:
        """Our create answered after another supervisor had taken the attempt over: unless it adopted this very
        instance, nobody owns it, so end it now (the reaper would, a tick later, while it bills)."""
        if attempt.instance_id == handle.instance_id:
            return
        log.warning("job %s attempt %d: the create answered after the attempt was taken over; ending %s",
                    attempt.job_id, attempt.number, handle.instance_id)
        try:
            backend.cancel(handle)
        except (BackendError, ProviderError) as exc:
            log.warning("job %s attempt %d: cannot end %s (%s); the reaper will", attempt.job_id, attempt.number,
                        handle.instance_id, exc)

    @contextmanager
    def _create_claim(self, attempt: Attempt) -> Iterator[None]:
        """Renew the attempt's claim on the database's clock while its create is in flight, however long the
        provider takes (429 retries, a slow host search), so no other supervisor takes it for cut off."""
        stop = threading.Event()
        attempt_id, fence = attempt.id, attempt.launch_fence

        def renew() -> None:
            while not stop.wait(CREATE_LEASE.total_seconds() / 4):
                try:
                    with self.sessions() as session:
                        session.execute(update(Attempt).where(Attempt.id == attempt_id, Attempt.launch_fence == fence,
                                                              Attempt.outcome == "launching")
                                        .values(launch_lease_until=database_now(session) + CREATE_LEASE))
                        session.commit()
                except Exception as exc:  # noqa: BLE001 (the database briefly away: the next renewal tries again)
                    log.warning("attempt %s: cannot renew its create claim (%s)", attempt_id, fault_line(exc))

        renewer = threading.Thread(target=renew, name=f"create-claim-{attempt_id}", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()

    def _wait_for_backend(self, session: Session, job: Job, attempt: Attempt, report: TickReport) -> None:
        """The live attempt runs on a backend this process cannot reach (its API key is not set here): the job
        waits, saying what to set; a cancel cannot end its instance from here, and says so."""
        key = f"{attempt.backend.upper()}_API_KEY"
        where = f"its attempt runs on {attempt.backend}" + (f" ({attempt.instance_id})" if attempt.instance_id else "")
        why = (f"waiting: cannot end {where} from here: set {key} where the supervisor runs" if job.cancel_requested
               else f"waiting: {where}, which this process cannot reach: set {key}")
        if job.error != why:
            job.error, job.updated_at = why, self.clock()
            session.commit()
        report.waiting[job.id] = why

    def _wait_for_key(self, session: Session, job: Job, attempt: Attempt, exc: KeyRejected,
                      report: TickReport) -> None:
        """The provider refuses the key (rotated, revoked) while the attempt's box runs: its end cannot be seen,
        and the box cannot be ended from here (the reaper holds the same key). It is no lost box: the attempt
        stays live (budgets count it as accruing), nothing is relaunched, the job says why and what fixes it,
        and the money at risk is sent once. The box still ends itself when its job ends or at its deadline
        (jobs.boxend); a supervisor with a working key polls it again and settles it as it is then seen."""
        why = redact(f"{KEY_REFUSED} ({attempt.backend} {attempt.instance_id}), which bills until it ends "
                     f"itself: {exc}; with the fixed key where the supervisor runs, its watch "
                     "resumes", self.secrets)
        log.warning("job %s attempt %d: poll refused (%s)", job.id, attempt.number, exc)
        self.notify.box_not_ended(job.id, attempt.number, attempt.instance_id, str(exc))
        if job.error != why:
            job.error, job.updated_at = why, self.clock()
        session.commit()
        report.waiting[job.id] = why

    def _database_clock(self) -> datetime:
        with self.sessions() as session:
            return database_now(session)

    # ------------------------------------------------------------------ watching

    def _watch(self, session: Session, job: Job, attempt: Attempt, report: TickReport) -> None:
        backend = self.backends[attempt.backend]
        handle = Handle.from_attempt(attempt)
        try:
            result = backend.poll(handle)
            attempt.poll_failures = 0
            if (job.error or "").startswith(KEY_REFUSED):  # the key was fixed: the watch goes on
                job.error = None
        except KeyRejected as exc:  # not weather, not a loss: the box bills on, unseen, until the key is fixed
            self._wait_for_key(session, job, attempt, exc, report)
            return
        except (BackendError, ProviderError) as exc:
            attempt.poll_failures += 1
            attempt.detail = f"poll failed: {exc}"
            if attempt.poll_failures < MAX_POLL_FAILURES:
                session.commit()
                report.faults[job.id] = redact(f"poll failed ({attempt.poll_failures} in a row, retried): "
                                                f"{fault_line(exc)}", self.secrets)
                if attempt.outcome == "stopping":  # unseen, it may still run: its grace holds all the same
                    self._watch_stop(session, job, attempt, PollResult(Status.RUNNING), report)
                return
            result = PollResult(Status.LOST, detail=f"{MAX_POLL_FAILURES} polls failed in a row: {exc}")
        self._act_on(session, job, attempt, backend, handle, result, report)

    def _act_on(self, session: Session, job: Job, attempt: Attempt, backend: Backend, handle: Handle,
                result: PollResult, report: TickReport) -> None:
        """What a live attempt's poll result means for it and its job: wait, stop, move, or end and settle it."""
        attempt.polled_at = self.clock()
        if billed_rate(result.billed_usd_per_hour) is not None:  # 0 once a pod has exited: keep the running rate
            attempt.billed_usd_per_hour = result.billed_usd_per_hour
        self._read_progress(job, attempt)
        if attempt.outcome == "stopping":
            self._watch_stop(session, job, attempt, result, report)
            return
        stalled = getattr(backend, "stalled", None)  # a cloud box: up past its startup window, the job never started
        if result.status in (Status.RUNNING, Status.PENDING) and stalled is not None and (
                why := stalled(handle, attempt.launched_at, self.clock())):
            result = PollResult(Status.FAILED, detail=why)  # ended below with its log tail, and counted
        past = getattr(backend, "past_deadline", None)  # a cloud box whose own watchdog did not end it
        if result.status in (Status.RUNNING, Status.PENDING) and past is not None and (
                why := past(handle, attempt.launched_at, self.clock())):
            self.notify.past_deadline(job.id, attempt.number, why)
            result = PollResult(Status.FAILED, detail=why)  # ended below (its instance deleted), and counted
        if result.status in (Status.RUNNING, Status.PENDING):
            if result.detail:  # e.g. SkyPilot recovering the attempt from a preemption on its own
                attempt.detail = result.detail
            over = self._over_budget(session, job, attempt)
            if over and self._stop_grace(job) and self._start_stop(session, job, attempt, over, report):
                pass  # it saves its work, then ends (_watch_stop)
            elif over:
                self._end_attempt(session, job, attempt, "stopped-by-budget", PollResult(Status.FAILED, detail=over))
                self._finish(session, job, "stopped-by-budget", over, report)
            elif result.status is Status.RUNNING and (move := self._weigh_move(session, job, attempt)) is not None:
                self._end_attempt(session, job, attempt, "moved", PollResult(Status.FAILED, detail=move.reason))
                job.state, job.lease_owner, job.lease_until = "pending", None, None
                session.commit()
                report.relaunch(job.id, move.reason)
            else:
                session.commit()
            return
        if result.status is Status.SUCCEEDED:
            self._read_throughput(job, attempt)
            self._end_attempt(session, job, attempt, "succeeded", result)
            self._finish(session, job, "succeeded", None, report)
        elif result.status in (Status.PREEMPTED, Status.LOST):
            self._end_attempt(session, job, attempt, result.status.value, result)
            job.state = "preempted"
            session.commit()
            report.relaunch(job.id, ("preempted" if result.status is Status.PREEMPTED else "lost")
                            + (f": {result.detail}" if result.detail else ""))
        elif result.exit_code == EXIT_INTERRUPTED:
            self._end_attempt(session, job, attempt, "preempted", result)
            job.state = "preempted"
            session.commit()
            report.relaunch(job.id, f"interrupted: exit {EXIT_INTERRUPTED}, resumable")
        elif result.exit_code == EXIT_BAD_INPUT:  # the runner refused its input: a relaunch would refuse it again
            tail = log_tail(backend, handle)
            reason = bad_input_reason(tail)
            attempt.detail = f"bad input (exit {EXIT_BAD_INPUT}): {reason}; log tail:\n{tail}"
            self._end_attempt(session, job, attempt, "failed", result)
            self._finish(session, job, "failed", f"bad input (exit {EXIT_BAD_INPUT}): {reason}", report)
        elif (oom := memory.out_of_memory(result.exit_code)) is not None:  # never the same memory again
            self._end_attempt(session, job, attempt, "out-of-memory", result)
            where = (f"{attempt.gpu_count}x {attempt.gpu_model}" if attempt.gpu_model else attempt.provider) + (
                f" at chunk {attempt.mini_batch_size}" if attempt.mini_batch_size else "")
            attempt.detail = f"{oom} on {where}; log tail:\n{log_tail(backend, handle)}"
            job.state, job.lease_owner, job.lease_until = "pending", None, None
            session.commit()
            report.relaunch(job.id, f"{oom} on {where}: placing it with a smaller chunk or more memory")
        else:
            attempt.detail = f"{result.detail or 'failed'}; log tail:\n{log_tail(backend, handle)}"
            self._end_attempt(session, job, attempt, "failed", result)
            self._after_failure(session, job, attempt, report)

    def _start_stop(self, session: Session, job: Job, attempt: Attempt, over: str, report: TickReport) -> bool:
        """Ask the attempt's job to save its work and exit (Backend.stop) instead of terminating it: the work since
        its last checkpoint is kept for a relaunch with a raised budget. The attempt is "stopping" from now on, in
        the database, so a restarted supervisor goes on waiting for it. False: no graceful stop (the backend has
        none, or asking failed): the caller terminates it at once."""
        try:
            if not self.backends[attempt.backend].stop(Handle.from_attempt(attempt)):
                return False
        except (BackendError, ProviderError) as exc:
            log.warning("job %s attempt %d: cannot stop it gracefully (%s); terminating it", job.id, attempt.number,
                        exc)
            return False
        attempt.outcome, attempt.stop_requested_at, attempt.stop_reason = "stopping", self.clock(), over
        job.error, job.updated_at = f"{STOPPING}: {over}", self.clock()
        session.commit()
        report.waiting[job.id] = f"{STOPPING}: {over}"
        log.info("job %s attempt %d: %s: %s", job.id, attempt.number, STOPPING, over)
        return True

    def _watch_stop(self, session: Session, job: Job, attempt: Attempt, result: PollResult,
                    report: TickReport) -> None:
        """A budget stop under way: once the job has exited (75 after its checkpoint, or any other end) the attempt
        is settled and the job stopped-by-budget; one that finished first succeeded; one still running past its
        grace is terminated."""
        if result.status is Status.SUCCEEDED:  # it finished before it stopped: the work is done, within budget
            self._read_throughput(job, attempt)
            self._end_attempt(session, job, attempt, "succeeded", result)
            self._finish(session, job, "succeeded", None, report)
            return
        grace = self._stop_grace(job) or timedelta(0)
        if result.status in (Status.RUNNING, Status.PENDING):
            if self.clock() - attempt.stop_requested_at < grace:
                report.waiting[job.id] = f"{STOPPING}: {attempt.stop_reason}"
                return
            how = f"it did not exit within {grace.total_seconds():.0f} s of SIGTERM: terminated"
            result = PollResult(Status.FAILED, detail=how)
        elif result.exit_code == EXIT_INTERRUPTED:
            step = parse_progress(attempt.progress).get("checkpoint_step")
            how = "it saved its work and exited" + (f" (checkpoint at step {step})" if step is not None else "")
            checkpoint = JobSpec.from_json(job.spec).checkpoint_uri
            if checkpoint:  # what a lab that raises the budget needs to go on from here
                how += f"; to resume, launch it again with --checkpoint {checkpoint} and a larger --budget"
        else:
            how = f"it ended ({result.detail or result.status.value})"
        self._end_attempt(session, job, attempt, "stopped-by-budget", replace(result, detail=f"stopped by budget: {how}"))
        self._finish(session, job, "stopped-by-budget", f"{attempt.stop_reason} ({how})", report)

    def _stop_grace(self, job: Job) -> timedelta | None:
        """How long a graceful stop of the job may take: its own SIGTERM grace (what it counts on to save), plus
        the poll interval within which a tick notices it exited. None for a kind that does not checkpoint (a
        stop would save nothing: it is terminated at once)."""
        try:
            spec = JobSpec.from_json(job.spec)
        except SpecError:
            return None
        if not KINDS[spec.kind].checkpointed:
            return None
        try:
            seconds = float(spec.params.get("sigterm_grace_seconds", SIGTERM_GRACE_S))
        except (TypeError, ValueError):
            seconds = SIGTERM_GRACE_S
        return timedelta(seconds=max(seconds, 0.0) + self.poll_interval_s)

    def _after_launch_failure(self, session: Session, job: Job, attempt: Attempt, report: TickReport) -> None:
        """The offer sits out its cool-down and the job is placed again; only a run of launch failures
        with nothing started in between (a spec no box can run, a revoked key) fails the job."""
        recent = session.scalars(select(Attempt.outcome).where(Attempt.job_id == job.id)
                                 .order_by(Attempt.number.desc()).limit(MAX_LAUNCH_FAILURES)).all()
        if len(recent) == MAX_LAUNCH_FAILURES and all(outcome == "launch-failed" for outcome in recent):
            self._finish(session, job, "failed", f"{MAX_LAUNCH_FAILURES} launches failed in a row; last: "
                                                 f"{attempt.detail}", report)
        else:
            job.state, job.lease_owner, job.lease_until = "pending", None, None
            session.commit()
            report.launch_failure(job.id, "launch failed")

    def _after_failure(self, session: Session, job: Job, attempt: Attempt, report: TickReport) -> None:
        failures = session.scalar(select(func.count()).select_from(Attempt)
                                  .where(Attempt.job_id == job.id, Attempt.outcome == "failed"))
        if failures >= job.max_failures:
            self._finish(session, job, "failed", f"{failures} attempts failed; last: {attempt.detail}", report)
        else:
            job.state, job.lease_owner, job.lease_until = "pending", None, None
            session.commit()
            code = attempt.exit_code
            report.relaunch(job.id, f"crashed with exit {code}" if code is not None else
                            f"crashed: {(attempt.detail or 'no exit code').splitlines()[0]}")

    def _end_attempt(self, session: Session, job: Job, attempt: Attempt, outcome: str, result: PollResult,
                     *, open_if_refused: bool = False) -> None:
        """Record how the attempt ended, make sure its instance is gone (a stopped pod still bills disk), settle.
        Once: two supervisors of a project watch the same attempts, and the one that records the end second (its
        poll began before the other's end was committed) raises EndedElsewhere rather than settle it again, at its
        own time, and relaunch or finish the job a second time. `open_if_refused`: where the provider refuses the
        key that would end the box (it bills on), raise KeyRejected and leave the attempt open (a cancel)."""
        backend = self.backends.get(attempt.backend)
        if backend is not None and attempt.instance_id:
            try:
                backend.cancel(Handle.from_attempt(attempt))
            except KeyRejected as exc:  # the reaper holds the same key: nothing here can end the box
                log.warning("job %s attempt %d: terminate refused (%s)", job.id, attempt.number, exc)
                self.notify.box_not_ended(job.id, attempt.number, attempt.instance_id, str(exc))
                if open_if_refused:
                    raise
            except (BackendError, ProviderError) as exc:
                log.warning("job %s attempt %d: terminate failed (%s); the reaper will retry", job.id, attempt.number, exc)
        ended_at = self.clock()
        ended = session.execute(update(Attempt).where(Attempt.id == attempt.id, Attempt.outcome == attempt.outcome)
                                .values(outcome=outcome, ended_at=ended_at)).rowcount
        if ended != 1:
            session.rollback()
            raise EndedElsewhere(f"attempt {attempt.number} was ended by another supervisor meanwhile")
        attempt.outcome, attempt.ended_at, attempt.exit_code = outcome, ended_at, result.exit_code
        if outcome != "failed" or not attempt.detail:  # a failure keeps the detail with its log tail
            attempt.detail = result.detail or attempt.detail
        self._settle(session, job, attempt)

    def _settle(self, session: Session, job: Job, attempt: Attempt) -> None:
        attempt.dollars = attempt_cost(attempt, attempt.ended_at or self.clock())
        session.commit()  # the ledger derives spend from these settled dollars

    def _finish(self, session: Session, job: Job, state: str, error: str | None, report: TickReport) -> None:
        job.state, job.error = state, error
        job.finished_at = job.updated_at = self.clock()
        job.lease_owner = job.lease_until = None
        if self.budget is not None:
            self.budget.release(session, job)
        session.commit()
        self.notify.job_ended(session, job)
        report.finished.append((job.id, state))
        log.info("job %s %s%s", job.id, state, f": {error}" if error else "")

    def _release_claim(self, session: Session, job: Job, error: str) -> None:
        job.lease_owner = job.lease_until = None
        job.error, job.updated_at = error, self.clock()
        session.commit()

    # ------------------------------------------------------------------ money and progress

    def _weigh_move(self, session: Session, job: Job, attempt: Attempt) -> moving.Move | None:
        """Whether the attempt, its throughput measured, should checkpoint and move (planner.plan.moving). A
        fault while weighing (a price book that cannot be read) leaves the attempt where it runs: moving only
        saves money, and must never keep the attempt from being watched."""
        mark = (parse_progress(attempt.progress).get("checkpoint_step"), attempt.measured_tflops)
        if attempt.measured_tflops is None or self.weighed.get(attempt.id) == mark:
            return None  # once per checkpoint: sizing the job again reads its corpus, and a move waits for one
        self.weighed[attempt.id] = mark
        now = self.clock()
        try:
            context = PlacementContext(self._cooling_offers(session, job, now), self._remaining_fraction(session, job),
                                       job_spent(session, job.id), now, self._unpaid_backends(now))
            return moving.weigh(session, job, attempt, self.place, context)
        except Exception as exc:  # noqa: BLE001 (see above: the watch goes on)
            log.warning("job %s attempt %d: cannot weigh a move (%s); it stays", job.id, attempt.number, fault_line(exc))
            return None

    def _over_budget(self, session: Session, job: Job, attempt: Attempt) -> str | None:
        """Stop before the spend would pass the job's (or its campaign's, or the month's) budget by the next poll
        plus, for a kind stopped gracefully, the grace its stop may take from there: a stop started at the next
        tick still ends within the budget."""
        grace = self._stop_grace(job)
        ahead = self.clock() + timedelta(seconds=self.poll_interval_s) + (grace or timedelta(0))
        by = "by the next check" + (" and a stop's grace" if grace else "")
        projected = job_spent(session, job.id) + attempt_cost(attempt, ahead)
        if job.budget_usd is not None and projected > job.budget_usd:
            return (f"spend would reach ${projected:.2f} {by}, over the job budget of "
                    f"${job.budget_usd:.2f}; raise it with --budget to go on")
        campaign = session.get(Campaign, job.campaign_id) if job.campaign_id else None
        if campaign is not None and campaign.budget_usd is not None:
            others = sum(self._projected(session, other, ahead) for other in session.scalars(
                select(Job).where(Job.campaign_id == job.campaign_id, Job.id != job.id)))
            if others + projected > campaign.budget_usd:
                return (f"the campaign's spend would reach ${others + projected:.2f} {by}, over its "
                        f"budget of ${campaign.budget_usd:.2f}; raise it to go on")
        return self._over_monthly_budget(session, job, projected, ahead, by)

    def _over_monthly_budget(self, session: Session, job: Job, projected: float, ahead: datetime,
                             by: str) -> str | None:
        """The month's money by the next check: what was settled, what every live attempt will have accrued,
        and what other jobs hold. Over the cap, the job stops when it is the one past its own reservation (or
        holds none); jobs inside theirs were promised that money when they launched."""
        cap = budgets.monthly_budget(session)
        if cap is None:
            return None
        month = budgets.committed(session, ahead)
        reservation = session.get(Reservation, job.id)
        if month <= cap or (reservation is not None and projected <= reservation.usd):
            return None
        return (f"this month's spend would reach ${month:.2f} {by}, over the monthly budget of "
                f"${cap:.2f}; raise it with `planner budget set --monthly USD` to go on")

    def _budget_wait(self, session: Session, job: Job) -> str | None:
        """Other jobs' reservations hold part of the budget: wait for them to settle instead of stopping,
        so a campaign's parallel jobs do not stop each other with worst cases that will not be spent."""
        held = self.budget.held_by_others(session, job) if self.budget is not None else 0.0
        if held <= 0:
            return None
        return f"waiting: running jobs hold ${held:.2f} of the budget in reservations until they settle"

    def _projected(self, session: Session, job: Job, until: datetime) -> float:
        """The job's settled spend plus what its live attempt will have cost by `until`."""
        live = self._live_attempt(session, job)
        return job_spent(session, job.id) + (attempt_cost(live, until) if live is not None else 0.0)

    def _unpaid_backends(self, now: datetime) -> frozenset[str]:
        return frozenset(name for name, until in self.unpaid.items() if until > now)

    def _cooling_offers(self, session: Session, job: Job, now: datetime) -> frozenset[str]:
        """Offers this job left within the cool-down: taken (preempted), gone (lost) or refused at create;
        and, for good, the offers it moved off for being slow (planner.plan.moving)."""
        rows = session.scalars(select(Attempt.offer_key).where(
            Attempt.job_id == job.id, Attempt.outcome.in_(("preempted", "lost", "launch-failed")),
            Attempt.ended_at > now - self.cooldown, Attempt.offer_key.is_not(None))).all()
        return frozenset(rows) | moving.moved_off(session, job.id)

    def _remaining_fraction(self, session: Session, job: Job) -> float:
        latest = session.scalars(select(Attempt.progress).where(Attempt.job_id == job.id)
                                 .order_by(Attempt.number.desc()).limit(1)).first()
        return progress.remaining_fraction(parse_progress(latest))

    def _read_progress(self, job: Job, attempt: Attempt) -> None:
        raw = progress.read(job.spec)
        if raw is not None:  # else no checkpoint yet, or a remote store that is briefly unreachable
            attempt.progress = json.dumps(raw)
            if raw.get("attempt", attempt.number) == attempt.number:  # not the last attempt's, left on the store
                _record_throughput(attempt, raw)
                memory.record_peaks(attempt, raw)

    def _read_throughput(self, job: Job, attempt: Attempt) -> None:
        """The runner's DONE marker holds the whole attempt's achieved throughput."""
        done = read_done(JobSpec.from_json(job.spec).output_uri)
        if done is not None:
            _record_throughput(attempt, done)
            memory.record_peaks(attempt, done)

    def _dependency_problem(self, session: Session, job: Job) -> str | None:
        """None when every dependency succeeded, "wait" while some still run, else why this job cannot."""
        if not job.dependencies:
            return None
        states = dict(session.execute(select(Job.id, Job.state).where(Job.id.in_(job.dependencies))).all())
        for dependency in job.dependencies:
            state = states.get(dependency)
            if state is None or (state in FINAL_STATES and state != "succeeded"):
                return f"dependency {dependency} {state or 'does not exist'}"
        return None if all(states[d] == "succeeded" for d in job.dependencies) else "wait"

    def _live_attempt(self, session: Session, job: Job) -> Attempt | None:
        return session.scalars(select(Attempt).where(Attempt.job_id == job.id, Attempt.outcome.in_(LIVE_ATTEMPT))
                               .order_by(Attempt.number.desc())).first()


REDACTED = "planner.redacted"  # Session.info key: the secret values its flushes blank
STOPPING = "stopping for budget: saving a checkpoint first"  # a job's error while its budget stop is under way
KEY_REFUSED = "waiting: cannot see or end its box"  # a job's error while the provider refuses the key (_wait_for_key)


def _redact_before_flush(session: Session, flush_context, instances) -> None:
    """A provider's or a store's message may quote a key back (a signed URL, a request echoed in an error):
    no job error or attempt detail reaches the database, and so `jobs show` or the API, with one."""
    secrets = session.info.get(REDACTED, ())
    for row in (*session.new, *session.dirty):
        if isinstance(row, Attempt):
            row.detail = redact(row.detail, secrets)
        elif isinstance(row, Job):
            row.error = redact(row.error, secrets)


def _record_throughput(attempt: Attempt, report: dict) -> None:
    measured = report.get("tflops_per_gpu")  # achieved, FLOPs counted as the planner counts them (jobs.recipe)
    if isinstance(measured, (int, float)) and measured > 0:
        attempt.measured_tflops = float(measured)


class EndedElsewhere(Exception):
    """The attempt this supervisor is ending was ended by another one of the project since it was read."""


def fault_line(exc: BaseException) -> str:
    """An exception as one line for a job's error and the tick's report (botocore's, a KeyError, a JSON error)."""
    text = " ".join(str(exc).split()) or "no message"
    return f"{type(exc).__name__}: {text}"[:300]


def _adopted(found: Handle, spec: JobSpec, attempt: Attempt) -> Handle:
    """A cut-off launch's instance as the listing found it, with what its launch would have recorded: a
    listing knows only id and label, and a cloud backend's poll reads the output URI and the spot flag
    from the handle (what the backend found itself wins)."""
    data = {"output_uri": spec.output_uri, "spot": attempt.spot, "usd_per_hour": attempt.usd_per_hour, **found.data}
    return replace(found, data=data)
