"""How a query is worded for the embedding model, declared once: `Instruct: {instruction}\\nQuery:` before it
(Qwen3 embedders, BOOM; documents carry none). Torch-free, so the planner's sizing (jobs.data.sample_stats)
counts the same prompt the job tokenizes (jobs.embedder, jobs.train_bag, jobs.encode, jobs.evaluate)."""
from __future__ import annotations

DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def query_prompt(instruction: str = DEFAULT_INSTRUCTION) -> str:
    return f"Instruct: {instruction}\nQuery:"


def format_query(query: str, instruction: str | None = None) -> str:
    return query_prompt(instruction or DEFAULT_INSTRUCTION) + query
