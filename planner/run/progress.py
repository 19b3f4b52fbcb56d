"""The runner's progress file (jobs.protocol.PROGRESS_FILE beside a job's checkpoints), read and understood once.

The runner (jobs/) writes what it knows: train-bag `{step, total_steps, tokens_seen, loss, wall,
tokens_per_s, tflops_per_gpu, eta_s, ...}`; other kinds may write `records`/`total_records` and
`records_per_s`. The supervisor copies the raw file into `Attempt.progress` at every poll
(`read`); the views (CLI and API) turn it into a `Progress` (`parse`) and a line of text.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from jobs.protocol import duration, progress_uri
from jobs.spec import JobSpec
from jobs.storage import read_json


def read(spec: JobSpec | str) -> dict | None:
    """The raw progress file of a job (a JobSpec or its JSON), None when there is none (yet) or the
    store is briefly unreachable."""
    spec = JobSpec.from_json(spec) if isinstance(spec, str) else spec
    if not spec.checkpoint_uri:
        return None
    try:
        data = read_json(progress_uri(spec.checkpoint_uri))
    except Exception:  # noqa: BLE001 (a store that is down raises botocore's own errors, which are no OSError)
        return None
    return data if isinstance(data, dict) else None


@dataclass(frozen=True)
class Progress:
    done: float | None  # steps (train) or records (encode) done
    total: float | None
    unit: str  # "step" | "record"
    tokens: int | None = None
    rate: float | None = None  # tokens/s when known, else records/s
    rate_unit: str = "tok/s"
    tflops_per_gpu: float | None = None
    eta_s: float | None = None
    loss: float | None = None

    @property
    def fraction(self) -> float | None:
        if not self.total or self.done is None:
            return None
        return max(0.0, min(1.0, self.done / self.total))

    def as_dict(self) -> dict:
        return asdict(self) | {"fraction": self.fraction}


def parse(raw: dict | None) -> Progress | None:
    """What a progress file says, in one shape for every kind; None when it says nothing useful."""
    if not raw:
        return None
    if raw.get("total_steps") is not None or raw.get("step") is not None:
        done, total, unit = raw.get("step"), raw.get("total_steps"), "step"
    else:
        done, total, unit = raw.get("records"), raw.get("total_records"), "record"
    tokens = raw.get("tokens_seen", raw.get("tokens"))
    rate, rate_unit = raw.get("tokens_per_s"), "tok/s"
    if rate is None and raw.get("records_per_s") is not None:
        rate, rate_unit = raw["records_per_s"], "rec/s"
    eta = raw.get("eta_s")
    wall = raw.get("wall", raw.get("wall_s"))
    if eta is None and done and total and wall:  # the average pace so far, as a fallback
        eta = wall / done * max(total - done, 0)
    if done is None and tokens is None:
        return None
    return Progress(done=done, total=total, unit=unit, tokens=tokens, rate=rate, rate_unit=rate_unit,
                    tflops_per_gpu=raw.get("tflops_per_gpu"), eta_s=eta, loss=raw.get("loss"))


def remaining_fraction(raw: dict | None) -> float:
    """The share of the work still to do (1.0 when unknown), for re-planning a relaunch."""
    progress = parse(raw)
    if progress is None or progress.unit != "step" or progress.fraction is None:
        return 1.0
    resumes_at = raw.get("checkpoint_step")  # progress reported between checkpoints runs ahead of the resume point
    if isinstance(resumes_at, (int, float)) and progress.total:
        return 1.0 - max(0.0, min(1.0, resumes_at / progress.total))
    return 1.0 - progress.fraction


def _count(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.0f}"


def describe(progress: Progress | None) -> str:
    """One line: 'step 120/500 (24%) · 1.2M tokens · 3.4k tok/s · ETA 12m00s'."""
    if progress is None:
        return ""
    parts = []
    if progress.done is not None:
        total = f"/{progress.total:.0f}" if progress.total else ""
        pct = f" ({progress.fraction:.0%})" if progress.fraction is not None else ""
        parts.append(f"{progress.unit} {progress.done:.0f}{total}{pct}")
    if progress.tokens:
        parts.append(f"{_count(progress.tokens)} tokens")
    if progress.rate:
        parts.append(f"{_count(progress.rate)} {progress.rate_unit}")
    if progress.loss is not None:
        parts.append(f"loss {progress.loss:.4f}")
    if progress.eta_s is not None and (progress.fraction or 0) < 1:
        parts.append(f"ETA {duration(progress.eta_s)}")
    return " · ".join(parts)
