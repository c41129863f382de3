"""Parameters of an inference engine, its sampling settings and the response cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

ENGINE_NAMES = ("llamacpp", "transformers", "vllm", "openai")


@dataclass(frozen=True)
class SamplingParams:
    """How completions are sampled (the paper's CRV agents: T=0.7, top_p=0.9, top_k=50)."""

    temperature: float = 0.7
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 0.9
    """Nucleus sampling mass."""
    top_k: int = 50
    """Keep only the k most likely tokens (0 or -1: no limit)."""
    max_tokens: int = 512
    """Upper bound on generated tokens per completion."""
    stop: tuple[str, ...] = ()
    """Strings that end a completion (not included in the text)."""
    seed: int = 0
    """Base seed; sample ``i`` of a request uses a seed derived from this and ``i``."""


@dataclass(frozen=True)
class CacheParams:
    """The persistent response cache (SQLite) that sits under every engine."""

    enabled: bool = True
    """Serve finished requests from the cache and store new results in it."""
    path: Optional[str] = None
    """SQLite file; default ``<output_dir>/cache/responses.sqlite`` (shared by the runs there)."""
    clear: bool = False
    """Delete this engine's cached entries before the stage runs."""
    retry_truncated: bool = True
    """Ask again for completions cut at ``max_tokens`` (recorded as ``length``) instead of serving
    them; ``false`` serves them from the cache, still marked ``length``. Greedy (temperature 0)
    completions cut at ``max_tokens`` are always served: the same budget cuts them the same way."""


@dataclass(frozen=True)
class EngineParams:
    """Which back end serves a model, and how."""

    engine: Literal["llamacpp", "transformers", "vllm", "openai"] = "llamacpp"
    """Back end: ``llamacpp`` (CPU default), ``transformers``, ``vllm`` (GPU servers), ``openai`` (HTTP)."""
    model: str = "embedded:smollm2-135m-instruct"
    """Model spec: ``embedded:smollm2-135m-instruct``, an HF hub id, a local folder or file, ``tiny:...``;
    for ``openai`` the model name the server expects."""
    context_length: int = 8192
    """Context window to use (llama.cpp ``n_ctx``, vLLM ``max_model_len``, transformers' limit)."""
    truncation: Literal["error", "left"] = "error"
    """A prompt longer than the context: ``error`` (clear error naming the request) or ``left`` (drop
    the oldest prompt tokens, counted in the manifest)."""
    threads: int = 0
    """CPU threads for llama.cpp / torch (0: all cores)."""
    batch_size: int = 16
    """Requests generated together (transformers) or in flight together (llama.cpp: sequences per
    batch)."""
    gguf_weights: Literal["auto", "as_is", "f32", "f16", "q8_0"] = "auto"
    """llama.cpp: the GGUF's weights as stored, or converted once (cached) to ``f32`` (the exact
    dequantized weights, as the transformers engine has them), ``f16`` or ``q8_0``. ``auto``:
    ``f32`` for models under 1B parameters stored as Q4_1/Q5_1 (llama.cpp has no fast batched CPU
    kernels for those: the embedded model ran 1.6x faster so), else as stored."""
    kv_cache_mb: int = 1024
    """llama.cpp: memory for the KV caches of the parallel sequences (each holds ``context_length``
    tokens); fewer than ``batch_size`` sequences run together when they would not fit."""
    prompt_cache_mb: int = 1024
    """llama.cpp: host memory for the KV cells of finished prompts (least recently used dropped
    first). A prompt that starts like a saved one restores those cells instead of evaluating them
    again: a request's later samples asked in a later round, the next request of the same agent.
    ``0`` switches it off."""
    device: str = "auto"
    """transformers: ``cpu``, ``cuda``, ``cuda:1`` or ``auto``."""
    retire_rows: bool = False
    """transformers: the kit's decoding loop, where a row that has finished leaves its batch (its KV cache rows
    dropped) and prompts are read in groups of similar length, so a batch's cost follows the tokens its rows read
    and write; ``false`` (default): ``model.generate``, every row padded to the batch's longest prompt and carried
    to the end of its longest answer. The same tokens up to rounding in bfloat16, which on the demo's truncated
    greedy answers moved many extracted answers (``benchmarks/results/evaluate.md``): opt-in until that is
    understood."""
    dtype: str = "auto"
    """transformers / vLLM weight dtype: ``auto``, ``float32``, ``bfloat16``, ``float16``."""
    tensor_parallel_size: int = 1
    """vLLM tensor parallel degree."""
    data_parallel_size: int = 1
    """vLLM data parallel replicas (one offline ``LLM`` per replica)."""
    gpu_memory_utilization: float = 0.9
    """vLLM share of GPU memory to use."""
    base_urls: tuple[str, ...] = ()
    """``openai``: one or more server base URLs (``http://host:port/v1``); each request goes to the server
    in rotation with the fewest requests in flight."""
    api_key_env: Optional[str] = None
    """``openai``: name of the environment variable holding the API key (the key is never a param)."""
    max_concurrency: int = 8
    """``openai``: requests in flight at once, over all servers (thousands are fine: one async client)."""
    timeout_s: float = 600.0
    """``openai``: per-request timeout in seconds."""
    max_retries: int = 6
    """``openai``: retries on 429, 5xx, timeouts and refused connections (exponential backoff, jitter)."""
    retry_backoff_s: float = 1.0
    """``openai``: first retry delay in seconds; doubles per retry, with jitter (a server's Retry-After wins)."""
    retry_backoff_max_s: float = 30.0
    """``openai``: longest delay between two retries, in seconds."""
    eject_after: int = 3
    """``openai``: failed attempts in a row (timeouts, 5xx, dropped connections, malformed answers) after
    which a server leaves rotation; a refused connection takes it out at once. Its requests in flight
    move to the servers still in rotation."""
    eject_s: float = 5.0
    """``openai``: seconds before a server out of rotation is checked again (``GET /health``); each failed
    check doubles the wait."""
    eject_max_s: float = 120.0
    """``openai``: longest wait between two checks of a server out of rotation, in seconds."""
    health_interval_s: float = 30.0
    """``openai``: a server in rotation that has answered nothing for this long is checked
    (``GET /health`` at the server's root; ``0``: only servers out of rotation are checked)."""
    health_timeout_s: float = 10.0
    """``openai``: a health check that takes longer fails. Any HTTP answer but 5xx passes (servers without
    a ``/health`` route answer 404)."""
    guided_choice: Literal["auto", "grammar", "vllm", "none"] = "auto"
    """``openai``: how to ask the server for a constrained label: a GBNF ``grammar`` field (llama.cpp
    server), vLLM's ``structured_outputs`` (``guided_choice`` before vLLM 0.11, told by ``/version``),
    or ``none`` (free text, parsed); ``auto`` picks from the server's identity."""
    thinking_end: Optional[str] = None
    """Reasoning models: the end-of-thinking marker (``</think>``); label answers are constrained only
    after it. ``None``: answer at once."""
    max_thinking_tokens: int = 4096
    """Reasoning models: tokens allowed before the constrained answer (vLLM: a thought cut here gets
    the end-of-thinking marker, then the label)."""
    cache: CacheParams = field(default_factory=CacheParams)
    """The response cache under this engine."""
