"""Batch-encode a corpus with an embedder into sharded Parquet, resumable and idempotent.

    python -m jobs.encode --model MODEL --input URI --output URI [--text-field text] [--id-field id]
                          [--prompt-name query | --instruction TEXT] [--dim N]
                          [--dtype bfloat16|float16|float32|int8|nf4] [--max-length N]
                          [--batch-tokens N] [--shard-size N] [--cache-dir DIR]

The input is JSONL (.jsonl, .ndjson) or Parquet (.parquet) with an id and a text per record, or
plain text (.txt) with one text per line whose ids are the 1-based line numbers; a local path or
an fsspec URI. Every record is checked before the model is touched: a missing field, an empty
text, a repeated id or an unreadable file exits 2 with one line naming the record's position.

Embedding of a text t: e = normalize(h(prompt + t)[:dim]), where h is the final hidden state of
the end-of-text token the tokenizer appends (left padding, last-token pooling, jobs.embedder) and
normalize is the L2 norm; that equals SentenceTransformer(MODEL).encode(..., prompt_name=...,
normalize_embeddings=True, truncate_dim=dim). The prompt is the model's sentence-transformers
prompt named by --prompt-name (default: its default_prompt_name, else none), or
`Instruct: TEXT\\nQuery:` for --instruction TEXT.

Records are split by position into shards of --shard-size. The output directory ends up with

    .encode/job.json                       the job's identity: command, model and input hashes (first)
    shard-00000-of-00004.parquet ...       id, embedding (fixed-size list of float32), input order
    .encode/shard-...parquet.done          the shard's sha256; a shard counts only once this exists
    manifest.json                          model, hash, dim, dtype, prompt, records, shard checksums
    DONE                                   last: the peaks of the rank that wrote it (jobs.memory)

A shard's bytes depend only on its records and the settings, so a killed job rerun with the same
command encodes only the shards without a marker and ends byte-identical to an uninterrupted run;
a finished job exits 0 at once. With several GPUs, launch one process per GPU (torchrun sets RANK
and WORLD_SIZE): rank r encodes shards i with i % WORLD_SIZE == r, and whichever rank finds every
shard done writes the manifest and DONE. Exit codes: 0 done (or this rank's part done), 2 bad
input, 75 interrupted by SIGTERM/SIGINT (resumable).

Speed: within a shard, texts are sorted by token length and grouped into batches of at most
--batch-tokens tokens (padding included; default 32768 on a GPU, 2048 on the CPU), so short texts
make wide batches and long ones narrow;
tokenization runs in a background thread ahead of the model, into pinned memory copied to the GPU
asynchronously. With flash-attention 2 installed on a GPU a batch is packed into one padding-free
row (variable-length attention) instead of padded.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import queue
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from jobs import memory, storage
from jobs.lifecycle import BadInput, StopRequest, run_job
from jobs.protocol import done_uri

JOB = ".encode/job.json"
MARKERS = ".encode"
MANIFEST = "manifest.json"
DTYPES = ("bfloat16", "float16", "float32", "int8", "nf4")
QUANTIZED = {"int8": "load_in_8bit", "nf4": "load_in_4bit"}
# Checkpoints saved quantized (config.json quantization_config.quant_method): transformers loads them with
# the package each format needs, the optional extra `planner[quantized]`. compressed-tensors (llmcompressor's
# W4A16 "pack-quantized", e.g. Qwen3-Embedding-4B-W4A16-G128) loads on a CPU too (weights unpacked to
# dense at load) and on a GPU; GPTQ's kernels (gptqmodel; auto-gptq is unmaintained) need a CUDA GPU.
PREQUANTIZED = {"compressed-tensors": ("compressed_tensors", "pip install 'planner[quantized]'", False),
                "gptq": ("gptqmodel", "pip install gptqmodel on the GPU box", True)}  # (module, install, needs CUDA)
FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".txt": "text"}
PREFETCH_BATCHES = 8
BATCH_TOKENS = {"cuda": 32768, "cpu": 2048}  # CPU caches favour small batches, GPUs wide ones (bench/)


# --- the corpus: every record read and checked before any model work ----------------------------

@dataclass(frozen=True)
class Corpus:
    ids: list  # all int or all str, unique
    texts: list[str]


def read_texts(path: Path, name: str, *, text_field: str = "text", id_field: str = "id") -> Corpus:
    """Read and validate every record of the input file at `path` (`name` is how errors call it)."""
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise BadInput(f"{name}: cannot tell the format; name the file .jsonl, .parquet or .txt")
    if not path.is_file():
        raise BadInput(f"{name}: no such file")
    if kind == "parquet":
        rows = _parquet_rows(path, name, text_field, id_field)
    else:
        lines = _lines(path, name)
        rows = _jsonl_rows(lines, name, text_field, id_field) if kind == "jsonl" else _text_rows(lines)
    ids, texts, first_seen = [], [], {}
    for where, record_id, text in rows:
        if isinstance(record_id, bool) or not isinstance(record_id, (int, str)) or record_id == "":
            raise BadInput(f"{name} {where}: id {record_id!r} must be a non-empty string or an integer")
        if ids and type(record_id) is not type(ids[0]):
            raise BadInput(f"{name} {where}: id {record_id!r} is a {type(record_id).__name__} but earlier ids "
                           f"are {type(ids[0]).__name__}s; use one id type throughout")
        if record_id in first_seen:
            raise BadInput(f"{name} {where}: id {record_id!r} repeats the id at {first_seen[record_id]}; "
                           "ids must be unique")
        if not isinstance(text, str):
            raise BadInput(f"{name} {where}: '{text_field}' is {type(text).__name__}, not a string")
        if not text.strip():
            raise BadInput(f"{name} {where}: the text is empty; drop the record or fill it in")
        first_seen[record_id] = where
        ids.append(record_id)
        texts.append(text)
    if not ids:
        raise BadInput(f"{name}: no records")
    return Corpus(ids, texts)


def _lines(path: Path, name: str) -> list[str]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise BadInput(f"{name} line {line}: not UTF-8 text") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start a new one
    return [line.removesuffix("\r") for line in lines]


def _text_rows(lines: list[str]) -> Iterator[tuple[str, int, str]]:
    for number, line in enumerate(lines, start=1):
        yield f"line {number}", number, line


def _jsonl_rows(lines: list[str], name: str, text_field: str, id_field: str) -> Iterator[tuple[str, object, object]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise BadInput(f"{name} line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise BadInput(f"{name} line {number}: a record must be a JSON object with '{id_field}' and '{text_field}'")
        for field, flag in ((id_field, "--id-field"), (text_field, "--text-field")):
            if field not in record:
                raise BadInput(f"{name} line {number}: no '{field}' field; add it or name the field with {flag}")
        yield f"line {number}", record[id_field], record[text_field]


def _parquet_rows(path: Path, name: str, text_field: str, id_field: str) -> Iterator[tuple[str, object, object]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        for field, flag in ((id_field, "--id-field"), (text_field, "--text-field")):
            if field not in schema.names:
                raise BadInput(f"{name}: no '{field}' column (columns: {', '.join(schema.names)}); "
                               f"name the column with {flag}")
        table = pq.read_table(path, columns=[id_field, text_field])
    except (OSError, pa.ArrowException) as exc:
        raise BadInput(f"{name}: not a readable Parquet file ({exc})") from None
    for row, (record_id, text) in enumerate(zip(table[id_field].to_pylist(), table[text_field].to_pylist()), start=1):
        if record_id is None or text is None:
            raise BadInput(f"{name} row {row}: '{id_field if record_id is None else text_field}' is null")
        yield f"row {row}", record_id, text


# --- the model: inspected before it is loaded ---------------------------------------------------

@dataclass(frozen=True)
class ModelInfo:
    path: Path
    hidden_size: int
    max_length: int  # sentence-transformers' max_seq_length when set, else the model's positions
    prompts: dict[str, str] | None  # None when the model has no config_sentence_transformers.json
    default_prompt_name: str | None
    quantization: str | None = None  # a checkpoint saved quantized: its quant_method (PREQUANTIZED)


def inspect_model(path: Path, name: str) -> ModelInfo:
    def read(file: str) -> dict | None:
        try:
            return json.loads((path / file).read_text()) if (path / file).is_file() else None
        except json.JSONDecodeError as exc:
            raise BadInput(f"model {name}: {file} is not valid JSON ({exc.msg})") from None

    config = read("config.json")
    if config is None or "hidden_size" not in config:
        raise BadInput(f"model {name}: no config.json with hidden_size; give a transformers model directory")
    positions = int(config.get("max_position_embeddings") or 32768)
    st_config = read("sentence_bert_config.json") or {}
    st_prompts = read("config_sentence_transformers.json")
    return ModelInfo(
        path=path, hidden_size=int(config["hidden_size"]),
        max_length=min(int(st_config.get("max_seq_length") or positions), positions),
        prompts=None if st_prompts is None else dict(st_prompts.get("prompts") or {}),
        default_prompt_name=None if st_prompts is None else st_prompts.get("default_prompt_name"),
        quantization=(config.get("quantization_config") or {}).get("quant_method"),
    )


def check_quantized(model: ModelInfo, name: str, dtype: str, device) -> None:
    """A checkpoint saved quantized loads only in a format we know, with its package, as it was quantized."""
    if model.quantization is None:
        return
    if model.quantization not in PREQUANTIZED:
        raise BadInput(f"model {name} is quantized with {model.quantization}, which jobs.encode does not load "
                       f"(it loads {', '.join(PREQUANTIZED)} checkpoints); use the unquantized model")
    if dtype in QUANTIZED:
        raise BadInput(f"model {name} is already quantized ({model.quantization}); --dtype {dtype} would quantize it "
                       "again: use --dtype bfloat16 (the compute dtype)")
    import importlib.util

    module, install, needs_cuda = PREQUANTIZED[model.quantization]
    if importlib.util.find_spec(module) is None:
        raise BadInput(f"model {name} is a {model.quantization} checkpoint, which needs {module}: {install}")
    if needs_cuda and device.type != "cuda":
        raise BadInput(f"model {name} is a {model.quantization} checkpoint, whose kernels need a CUDA GPU")


def resolve_prompt(model: ModelInfo, name: str, prompt_name: str | None, instruction: str | None) -> str:
    """The text put before every input, as sentence-transformers' encode(prompt_name=...) would."""
    from jobs.prompt import query_prompt

    if instruction is not None:
        return query_prompt(instruction)
    prompt_name = prompt_name or model.default_prompt_name
    if prompt_name is None:
        return ""
    if model.prompts is None:
        raise BadInput(f"model {name} has no config_sentence_transformers.json to take prompt '{prompt_name}' from; "
                       "give --instruction TEXT instead")
    if prompt_name not in model.prompts:
        raise BadInput(f"model {name} has no prompt named '{prompt_name}' "
                       f"(it has: {', '.join(sorted(model.prompts)) or 'none'}); give --instruction TEXT instead")
    return model.prompts[prompt_name]


def check_dtype(dtype: str, device) -> None:
    """int8/nf4 need bitsandbytes (>= 0.48, which can place 8-bit models) and a CUDA GPU."""
    if dtype not in QUANTIZED:
        return
    if device.type != "cuda":
        raise BadInput(f"--dtype {dtype} needs a CUDA GPU; use bfloat16, float16 or float32 here")
    try:
        import bitsandbytes
    except ImportError:
        raise BadInput(f"--dtype {dtype} needs bitsandbytes; pip install 'bitsandbytes>=0.48' "
                       "or use bfloat16") from None
    major, minor = (int(part) for part in bitsandbytes.__version__.split(".")[:2])
    if (major, minor) < (0, 48):
        raise BadInput(f"--dtype {dtype} needs bitsandbytes >= 0.48 (found {bitsandbytes.__version__})")


def load_encoder(path: Path, device, dtype: str):
    """The model in eval mode on `device`; int8/nf4 are bitsandbytes-quantized with bf16 compute. A
    checkpoint saved quantized (PREQUANTIZED) is loaded as it was saved, `dtype` its compute dtype.

    The KV cache is turned off: an encoder never decodes, and the cache would hold every layer's
    keys and values for the whole batch (and hide packed sequences from transformers' masking).
    """
    import torch

    from jobs.embedder import load_model

    if dtype in QUANTIZED:
        from transformers import BitsAndBytesConfig

        options = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": torch.bfloat16} if dtype == "nf4" else {}
        quantization = BitsAndBytesConfig(**{QUANTIZED[dtype]: True}, **options)
        net = load_model(path, device=device, dtype=torch.bfloat16, quantization_config=quantization,
                         device_map={"": str(device)})
    else:
        net = load_model(path, device=device, dtype=getattr(torch, dtype))
    net.config.use_cache = False
    return net.eval()


# --- the plan: shards by position, batches by a token budget ------------------------------------

@dataclass(frozen=True)
class Shard:
    index: int
    count: int
    start: int  # first record (0-based input position)
    stop: int   # one past the last record

    @property
    def file(self) -> str:
        return f"shard-{self.index:05d}-of-{self.count:05d}.parquet"


def plan_shards(records: int, shard_size: int) -> list[Shard]:
    """Consecutive runs of `shard_size` records (the last may be shorter)."""
    count = -(-records // shard_size)
    return [Shard(i, count, i * shard_size, min((i + 1) * shard_size, records)) for i in range(count)]


def plan_batches(lengths: Sequence[int], batch_tokens: int, *, packed: bool = False) -> list[list[int]]:
    """Group the indices of sequences with these token lengths into batches of at most `batch_tokens`.

    Indices are sorted by length, longest first (ties by index, so the plan is a pure function of
    the lengths), and a batch grows while its cost stays within the budget. Padded, a batch costs
    rows x longest length, the compute it really does; packed, it costs the sum of the lengths. A
    sequence longer than the budget gets a batch of its own. Longest first means neighbours have
    similar lengths (little padding) and the most memory-hungry batch comes first.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches, current = [], []
    longest = total = 0
    for i in order:
        cost = total + lengths[i] if packed else (len(current) + 1) * max(longest, lengths[i])
        if current and cost > batch_tokens:
            batches.append(current)
            current, longest, total = [], 0, 0
        current.append(i)
        longest, total = max(longest, lengths[i]), total + lengths[i]
    if current:
        batches.append(current)
    return batches


def collate_padded(sequences: list[list[int]], pad_id: int) -> dict:
    """Left-padded input_ids and attention_mask: row r is [pad] * (L - n_r) + ids_r, L the longest n_r."""
    import torch

    longest = max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, longest - len(ids):] = torch.tensor(ids)
        attention_mask[row, longest - len(ids):] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def collate_packed(sequences: list[list[int]]) -> dict:
    """All sequences concatenated into one row, positions restarting at 0 for each.

    cu_seq_lens = [0, n_0, n_0 + n_1, ...] (int32) are the boundaries flash-attention's variable-length
    kernels take; without them transformers derives a block-diagonal causal mask from the positions.
    """
    import torch

    lengths = torch.tensor([len(s) for s in sequences])
    bounds = torch.zeros(len(sequences) + 1, dtype=torch.int32)
    bounds[1:] = lengths.cumsum(0)
    return {
        "input_ids": torch.tensor([token for s in sequences for token in s]).unsqueeze(0),
        "position_ids": torch.cat([torch.arange(n) for n in lengths.tolist()]).unsqueeze(0),
        "cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds,
        "max_length_q": int(lengths.max()), "max_length_k": int(lengths.max()),
    }


# --- encoding: tokenization a step ahead in a thread, the model on the main one ------------------

@dataclass(frozen=True)
class EncodeConfig:
    prompt: str
    max_length: int
    batch_tokens: int
    dim: int | None
    packed: bool


@dataclass(frozen=True)
class Batch:
    rows: list[int]   # the batch's positions inside its window of texts
    inputs: dict
    tokens: int
    last: bool        # the window's last batch


def embed_batch(net, inputs: dict, dim: int | None):
    """L2-normalized last-token embeddings (float32), truncated to `dim` and renormalized."""
    import torch.nn.functional as F

    from jobs.embedder import embed, truncate_dim

    if "position_ids" in inputs:  # packed: each sequence's last token sits just before the next boundary
        hidden = net(**inputs).last_hidden_state[0]
        pooled = F.normalize(hidden[inputs["cu_seq_lens_q"][1:].long() - 1].float(), p=2, dim=-1)
    else:
        pooled = embed(net, inputs)
    return truncate_dim(pooled, dim)


def tokenized_batches(tokenizer, windows: Iterable[Sequence[str]], settings: EncodeConfig, *, pin: bool) -> Iterator[Batch]:
    """Each window tokenized (prompt + text, truncated to max_length), sorted and batched by tokens."""
    for texts in windows:
        encoded = tokenizer([settings.prompt + text for text in texts], truncation=True,
                            max_length=settings.max_length, return_attention_mask=False)["input_ids"]
        plan = plan_batches([len(ids) for ids in encoded], settings.batch_tokens, packed=settings.packed)
        for number, rows in enumerate(plan):
            sequences = [encoded[row] for row in rows]
            inputs = collate_packed(sequences) if settings.packed else collate_padded(sequences, tokenizer.pad_token_id)
            if pin:
                inputs = {key: value.pin_memory() if hasattr(value, "pin_memory") else value
                          for key, value in inputs.items()}
            yield Batch(rows, inputs, sum(map(len, sequences)), number == len(plan) - 1)


def prefetch(items: Iterator, depth: int) -> Iterator:
    """`items` produced by a background thread up to `depth` ahead; its exception is re-raised here.

    The fast tokenizer and tensor copies release the GIL, so tokenizing the next batches overlaps
    with the model's forward pass on the main thread.
    """
    buffer: queue.Queue = queue.Queue(maxsize=depth)
    end, stop = object(), threading.Event()

    def offer(item) -> bool:
        """Put `item` in the buffer unless the consumer has gone away."""
        while not stop.is_set():
            try:
                buffer.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(end)
        except BaseException as exc:  # handed to the consumer, which raises it
            offer(exc)

    producer = threading.Thread(target=produce, name="tokenize", daemon=True)
    producer.start()
    try:
        while (item := buffer.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        # wait for it: a thread still inside the Rust tokenizer when the interpreter exits aborts the process
        producer.join()


def encode_windows(net, tokenizer, windows: Iterable[Sequence[str]], settings: EncodeConfig, *,
                   on_batch: Callable[[int, int], None] = lambda records, tokens: None) -> Iterator:
    """For each window of texts, its embeddings in input order: a float32 array [len(window), dim].

    Only the window's own texts decide its batches, so its result does not depend on what else is
    encoded (the resume guarantee). `on_batch(records, tokens)` is called after every batch; an
exception it raises stops the encoding there.
    """
    import numpy as np
    import torch

    device = next(net.parameters()).device
    batches = prefetch(tokenized_batches(tokenizer, windows, settings, pin=device.type == "cuda"), PREFETCH_BATCHES)
    parts: list[tuple[list[int], torch.Tensor]] = []  # kept on the device: no sync until the window ends
    try:
        for batch in batches:
            inputs = {key: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                      for key, value in batch.inputs.items()}
            with torch.inference_mode():
                parts.append((batch.rows, embed_batch(net, inputs, settings.dim)))
            on_batch(len(batch.rows), batch.tokens)
            if batch.last:
                rows = np.fromiter((row for rows, _ in parts for row in rows), dtype=np.int64)
                stacked = torch.cat([vectors for _, vectors in parts]).cpu().numpy()
                embeddings = np.empty_like(stacked)
                embeddings[rows] = stacked
                parts = []
                yield embeddings
    finally:
        batches.close()  # stops and joins the tokenizer thread now, not whenever the generator is collected


# --- the output: shards, markers, manifest -----------------------------------------------------

def shard_bytes(ids: list, embeddings) -> bytes:
    """A Parquet file of (id, embedding: fixed_size_list<float32>[dim]) rows, byte-for-byte reproducible."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = pa.array(np.ascontiguousarray(embeddings, dtype=np.float32).reshape(-1), type=pa.float32())
    table = pa.table({"id": pa.array(ids), "embedding": pa.FixedSizeListArray.from_arrays(values, embeddings.shape[1])})
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def marker(output: str, shard: Shard) -> str:
    return storage.join(output, MARKERS, f"{shard.file}.done")


def finish(output: str, identity: dict, shards: list[Shard], used: dict) -> bool:
    """Write the manifest and DONE if every shard has its marker; False while some are still missing.
    DONE holds `used`, this rank's memory peaks (jobs.memory.usage), as the supervisor reads a job's DONE
    (planner.plan.memory.peaks): what the planner learns its encode VRAM correction from."""
    if not all(storage.exists(marker(output, shard)) for shard in shards):
        return False
    storage.write_json_atomic(storage.join(output, MANIFEST), {**identity, "shards": [
        {"file": s.file, "first_record": s.start, "records": s.stop - s.start,
         "sha256": storage.read_bytes(marker(output, s)).decode()} for s in shards]})
    storage.write_json_atomic(done_uri(output), {"memory": {"ranks": [used]}})
    return True


# --- the job ----------------------------------------------------------------------------------

def distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) for a plain run."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return rank, world, int(os.environ.get("LOCAL_RANK", rank))


def run(args: argparse.Namespace, stop: StopRequest) -> int:
    import torch

    command = {key: getattr(args, key) for key in ("model", "input", "text_field", "id_field", "prompt_name",
                                                    "instruction", "dim", "dtype", "max_length", "shard_size")}
    if storage.exists(done_uri(args.output)):
        if storage.read_json(storage.join(args.output, MANIFEST)).get("command") != command:
            raise BadInput(f"{args.output} holds a finished encode of a different command; choose a new --output")
        print(f"{args.output} is already encoded", file=sys.stderr)
        return 0

    rank, world, local_rank = distributed_rank()
    device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    check_dtype(dtype, device)
    if not storage.exists(args.input):
        raise BadInput(f"input {args.input} not found")
    input_path = storage.cached_local_copy(args.input, args.cache_dir)
    corpus = read_texts(input_path, args.input, text_field=args.text_field, id_field=args.id_field)
    model = inspect_model(storage.resolve_model(args.model, args.cache_dir), args.model)
    check_quantized(model, args.model, dtype, device)
    if args.dim is not None and args.dim > model.hidden_size:
        raise BadInput(f"--dim {args.dim} exceeds the model's {model.hidden_size} dimensions")
    identity = {
        "command": command, "model": args.model, "model_sha256": storage.content_digest(model.path),
        "input": args.input, "input_sha256": storage.sha256_file(input_path), "records": len(corpus.ids),
        "dim": args.dim or model.hidden_size, "dtype": dtype,
        "prompt": resolve_prompt(model, args.model, args.prompt_name, args.instruction),
        "max_length": args.max_length or model.max_length, "shard_size": args.shard_size,
        "pooling": "last-token", "normalization": "l2" + (" after truncation to dim" if args.dim else ""),
    }
    job = storage.join(args.output, JOB)
    if storage.exists(job):
        recorded = storage.read_json(job)
        if changed := sorted(key for key in identity if recorded.get(key) != identity[key]):
            raise BadInput(f"{args.output} holds an encode job whose {', '.join(changed)} differ; "
                           "rerun the same command or choose a new --output")
    else:
        storage.write_json_atomic(job, identity)

    shards = plan_shards(len(corpus.ids), args.shard_size)
    mine = [s for s in shards if s.index % world == rank]
    todo = [s for s in mine if not storage.exists(marker(args.output, s))]
    if not storage.is_remote(args.output):  # a writer killed mid-write leaves its temporary file behind
        for shard in todo:
            for stale in storage.local_path(args.output).glob(f".{shard.file}.*.tmp"):
                stale.unlink(missing_ok=True)
    print(f"rank {rank}/{world}: {len(todo)} of {len(mine)} shards to encode ({len(mine) - len(todo)} already done)",
          file=sys.stderr, flush=True)
    if todo:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        encode_shards(args.output, model, corpus, todo, device=device, dtype=dtype, prompt=identity["prompt"],
                      max_length=identity["max_length"], dim=args.dim,
                      batch_tokens=args.batch_tokens or BATCH_TOKENS[device.type], check_stop=stop.check)
    if not finish(args.output, identity, shards, memory.usage(device)):
        print(f"rank {rank}: my shards are done; the last rank to finish writes DONE", file=sys.stderr)
    return 0


def encode_shards(output: str, model: ModelInfo, corpus: Corpus, todo: list[Shard], *, device, dtype: str,
                  prompt: str, max_length: int, batch_tokens: int, dim: int | None,
                  check_stop: Callable[[], None]) -> None:
    """Load the model, encode the shards in `todo` and write each with its marker as soon as it is done."""
    from tqdm import tqdm

    from jobs.embedder import load_tokenizer

    tokenizer = load_tokenizer(model.path)
    net = load_encoder(model.path, device, dtype)
    check_stop()
    settings = EncodeConfig(prompt, max_length, batch_tokens, dim,
                        packed=net.config._attn_implementation == "flash_attention_2")
    windows = (corpus.texts[s.start:s.stop] for s in todo)
    with tqdm(total=sum(s.stop - s.start for s in todo), unit="rec", desc="encode", smoothing=0.05) as progress:
        tokens = 0

        def on_batch(records: int, batch_size_tokens: int) -> None:
            nonlocal tokens
            tokens += batch_size_tokens
            progress.set_postfix_str(f"{tokens / max(progress.format_dict['elapsed'], 1e-9):,.0f} tok/s", refresh=False)
            progress.update(records)
            check_stop()

        for shard, embeddings in zip(todo, encode_windows(net, tokenizer, windows, settings, on_batch=on_batch)):
            data = shard_bytes(corpus.ids[shard.start:shard.stop], embeddings)
            storage.write_bytes_atomic(storage.join(output, shard.file), data)
            storage.write_bytes_atomic(marker(output, shard), hashlib.sha256(data).hexdigest().encode())
            progress.write(f"shard {shard.index + 1}/{shard.count} written ({shard.stop - shard.start} records)",
                           file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobs.encode", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory, fsspec URI or hub id (sentence-transformers layout)")
    parser.add_argument("--input", required=True, help=".jsonl, .parquet or .txt file, local or fsspec URI")
    parser.add_argument("--output", required=True, help="output directory or fsspec URI")
    parser.add_argument("--text-field", default="text", help="the text's field or column (JSONL, Parquet)")
    parser.add_argument("--id-field", default="id", help="the id's field or column (JSONL, Parquet)")
    prompt = parser.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-name", help="a prompt of the model's config_sentence_transformers.json, e.g. query")
    prompt.add_argument("--instruction", help="encode as queries with the prompt 'Instruct: TEXT\\nQuery:'")
    parser.add_argument("--dim", type=int, help="keep the first N dimensions (Matryoshka) and renormalize")
    parser.add_argument("--dtype", choices=DTYPES, help="default: bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--max-length", type=int, help="truncate inputs to N tokens (default: the model's)")
    parser.add_argument("--batch-tokens", type=int,
                        help="tokens per batch, padding included (default: 32768 on a GPU, 2048 on the CPU)")
    parser.add_argument("--shard-size", type=int, default=10000, help="records per output shard")
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "planner-jobs",
                        help="where remote inputs and models are downloaded to")
    args = parser.parse_args(argv)
    for flag, value, least in (("--dim", args.dim, 1), ("--max-length", args.max_length, 2),
                               ("--batch-tokens", args.batch_tokens, 1), ("--shard-size", args.shard_size, 1)):
        if value is not None and value < least:
            parser.error(f"{flag} must be at least {least}")
    if args.instruction is not None and not args.instruction.strip():
        parser.error("--instruction must not be empty")

    return run_job(lambda stop: run(args, stop), "finished shards are kept, rerun the same command to resume",
                   repeat_raises=True)


if __name__ == "__main__":
    raise SystemExit(main())
