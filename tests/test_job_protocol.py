"""What the box and the planner agree on is declared once (jobs.protocol) and both sides read it."""
from __future__ import annotations

import dataclasses
import json

import pytest

from jobs import protocol, storage
from jobs.spec import KINDS, JobSpec
from planner.plan.choose import Limits
from planner.run import inputs


def test_the_planner_prices_rework_at_the_jobs_default_checkpoint_interval():
    from jobs.train_bag import Config

    job_default = {f.name: f.default for f in dataclasses.fields(Config)}["save_every_minutes"]
    assert Limits().checkpoint_hours * 60 == job_default == protocol.CHECKPOINT_MINUTES


def test_one_directory_address_for_uploads_and_provenance(tmp_path):
    """The upload address of a directory and a model's recorded hash are the same scheme: sorted
    `path<TAB>sha256` lines of its files, hidden (tool metadata) entries left out."""
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"\x00" * 10)
    before = storage.content_digest(model)
    (model / ".cache").mkdir()
    (model / ".cache" / "download.metadata").write_text("fetched at 12:00")
    assert storage.content_digest(model) == before
    home, uri = inputs.input_uri(model, str(tmp_path / "store"))
    assert home.endswith(before) and uri == storage.join(home, "model")
    (model / "config.json").write_text('{"a": 1}')
    assert storage.content_digest(model) != before


def test_a_kind_declares_its_inputs_once():
    """The inputs a cloud launch uploads and the flag an error names come from jobs.spec.KINDS."""
    spec = JobSpec("j", "merge", "s3://b/out", {"models": ["./a", "s3://b/m"], "weights": [1, 1]})
    assert [param for param, _ in inputs.local_inputs(spec)] == ["models"]
    assert KINDS["merge"].flag("models") == "--models (or --previous)" and KINDS["merge"].flag("weights") == "--weights"
    assert all(set(k.model_inputs) <= set(k.inputs) for k in KINDS.values())


def test_report_and_marker_locations():
    assert protocol.report_uri("s3://b/out", "job-1-a0") == "s3://b/out/.attempts/job-1-a0.json"
    assert protocol.done_uri("s3://b/out") == "s3://b/out/" + protocol.DONE_MARKER
    assert protocol.progress_uri("s3://b/ck") == "s3://b/ck/" + protocol.PROGRESS_FILE


def test_sizing_counts_the_query_prompt_the_job_puts_before_a_query(tmp_path):
    """The planner's corpus sample (jobs.data.sample_stats) counts the instruction prompt the trainer tokenizes
    (jobs.prompt), the job's default instruction where a record names none, at the one CHARS_PER_TOKEN."""
    from jobs.data import sample_stats
    from jobs.prompt import format_query

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"query": "what is a bag", "positive": "a seeded sample of the corpus"}) + "\n"
                      + json.dumps({"query": "why merge", "positive": "to pool the bags", "instruction": "Find"}) + "\n")
    expected = [len(format_query("what is a bag")), len(format_query("why merge", "Find"))]
    stats = sample_stats(str(corpus))
    assert stats.mean_query_tokens == pytest.approx(sum(n / protocol.CHARS_PER_TOKEN + 1 for n in expected) / 2)


def test_a_stored_progress_report_reads_as_a_dict_or_nothing():
    """One reading of Attempt.progress for the supervisor and the move rule (jobs.protocol.parse_progress)."""
    assert protocol.parse_progress('{"step": 3}') == {"step": 3}
    assert protocol.parse_progress(None) == protocol.parse_progress("") == protocol.parse_progress("{oops") == {}
    assert protocol.parse_progress("[1, 2]") == {}
