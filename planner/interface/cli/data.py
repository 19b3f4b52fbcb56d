"""`planner data`: training corpora into the one JSONL the jobs read (jobs.data)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from jobs.data import BadData, import_flagembedding
from planner.interface.cli import options
from planner.interface.cli.common import app, emit_json, fail, out

data_app = typer.Typer(help="Training corpora: convert them into the one JSONL the jobs read.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("import-flagembedding")
def data_import_flagembedding(
        sources: Annotated[list[Path], typer.Argument(help="FlagEmbedding training directories (searched "
                                                           "recursively, e.g. bge-full-data's jsonl_output) or files.")],
        output: Annotated[Path, typer.Option("--output", "-o", help="The corpus JSONL to write.")],
        as_json: options.Json = False) -> None:
    """One corpus from FlagEmbedding training data, each line's task its directory/file, as FlagEmbedding batches
    (classification and clustering then train without in-batch negatives)."""
    try:
        rows = import_flagembedding(sources, output)
    except (BadData, OSError) as exc:
        fail(str(exc))
    if as_json:
        emit_json({"output": str(output), "records": sum(r["records"] for r in rows), "tasks": rows})
        return
    table = Table("task", "records", "type", "in-batch negatives", "prompts")
    for row in rows:
        table.add_row(row["task"], str(row["records"]), row["type"] or "-",
                      "yes" if row["in_batch_negatives"] else "no", str(row["prompts"]))
    out.print(table)
    out.print(f"{sum(r['records'] for r in rows)} records in {len(rows)} tasks written to {output}", highlight=False)
