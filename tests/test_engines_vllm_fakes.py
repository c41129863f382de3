"""A stand-in ``vllm`` package that behaves like the real one where the engine relies on it.

The package is written to disk (so that spawned data-parallel replicas import it too) and:

- ``LLM(...)`` starts a child process, as vLLM's engine core does: a replica that may not have
  children (a daemon process) fails at start as with the real library;
- ``LLM.chat`` renders conversations with the model folder's real chat template through
  transformers (``continue_final_message`` included) and tokenizes them as vLLM does; a prompt
  longer than ``max_model_len`` is rejected;
- thinking stopped at ``</think>`` keeps the stop string's tokens in ``token_ids`` (only the text is
  cut), plus one token past it, as a multi-token step can leave;
- ``LLM.generate`` takes token prompts and answers structured-output choices.

The tokenizer is the embedded SmolLM2 model's (transformers 5), saved twice: with its own chat
template and with one built like DeepSeek-R1's, which drops everything up to ``</think>`` from
assistant messages and opens the thinking in the generation prompt.
"""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

R1_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='') %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{% set ns.system_prompt = message['content'] %}{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<|User|>' + message['content'] }}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{% set content = message['content'] %}"
    "{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}"
    "{{ '<|Assistant|>' + content + eos_token }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{% if add_generation_prompt %}{{ '<|Assistant|><think>\\n' }}{% endif %}"
)
"""DeepSeek-R1-Distill's chat template, reduced to what matters here (same control flow)."""

FAKE_VLLM = '''
"""Stand-in vllm (tests only)."""
import multiprocessing as mp
import os

from vllm.sampling_params import SamplingParams, StructuredOutputsParams


def _engine_core(conn):
    try:
        conn.recv()
    except (EOFError, OSError):
        pass


class CompletionOutput:
    def __init__(self, text, token_ids, finish_reason, stop_reason=None):
        self.index, self.text, self.token_ids = 0, text, list(token_ids)
        self.finish_reason, self.stop_reason = finish_reason, stop_reason


class RequestOutput:
    def __init__(self, prompt_token_ids, outputs):
        self.prompt_token_ids, self.outputs = list(prompt_token_ids), outputs


class LLM:
    instances = []

    def __init__(self, model, **kw):
        self.kw = dict(kw, model=model)
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        if gpus and gpus == os.environ.get("FAKE_VLLM_FAIL_GPUS"):
            raise RuntimeError(f"CUDA out of memory on GPUs {gpus} (fake)")
        ctx = mp.get_context("fork")
        parent, child = ctx.Pipe()
        self._core = ctx.Process(target=_engine_core, args=(child,), daemon=True)  # the engine core
        self._core.start()
        self._core_conn = parent
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.max_model_len = kw.get("max_model_len")
        self.calls = []
        LLM.instances.append(self)

    def get_tokenizer(self):
        return self.tokenizer

    def _check_len(self, ids):
        if self.max_model_len and len(ids) > self.max_model_len:
            raise ValueError(f"The decoder prompt (length {len(ids)}) is longer than the maximum model "
                             f"length of {self.max_model_len}.")

    def _answer(self, ids, p):
        tok = self.tokenizer
        kw = p.kw
        so = kw.get("structured_outputs")
        if so is not None:
            text = so.choice[kw["seed"] % len(so.choice)]
            return CompletionOutput(text, tok.encode(text, add_special_tokens=False), "stop")
        last = tok.decode(ids[-12:])
        if "BOOM" in tok.decode(ids):
            raise RuntimeError("fake engine failure")
        if "</think>" in (kw.get("stop") or []):
            if "LONG" in tok.decode(ids):  # the thinking budget runs out
                text = "think on and on"
                return CompletionOutput(text, tok.encode(text, add_special_tokens=False), "length")
            text = "let me think"
            ids_out = (tok.encode(text, add_special_tokens=False) + tok.encode("</think>", add_special_tokens=False)
                       + tok.encode(" over", add_special_tokens=False))
            return CompletionOutput(text, ids_out, "stop", "</think>")
        text = f"free {kw['seed']} after {last!r}"
        return CompletionOutput(text, tok.encode(text, add_special_tokens=False), "stop")

    def chat(self, messages, sampling_params=None, use_tqdm=True, chat_template=None,
             add_generation_prompt=True, continue_final_message=False, **kw):
        self.calls.append(("chat", messages, sampling_params,
                           {"add_generation_prompt": add_generation_prompt,
                            "continue_final_message": continue_final_message}))
        outs = []
        for conv, p in zip(messages, sampling_params):
            text = self.tokenizer.apply_chat_template(conv, tokenize=False, add_generation_prompt=add_generation_prompt,
                                                      continue_final_message=continue_final_message)
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            self._check_len(ids)
            outs.append(RequestOutput(ids, [self._answer(ids, p)]))
        return outs

    def generate(self, prompts, sampling_params=None, use_tqdm=True, **kw):
        self.calls.append(("generate", prompts, sampling_params, {}))
        outs = []
        for prompt, p in zip(prompts, sampling_params):
            ids = list(prompt["prompt_token_ids"])
            self._check_len(ids)
            outs.append(RequestOutput(ids, [self._answer(ids, p)]))
        return outs
'''

FAKE_SAMPLING_PARAMS = '''
class StructuredOutputsParams:
    def __init__(self, choice=None, **kw):
        if choice is None:
            raise ValueError("You must use one kind of structured outputs constraint")
        self.choice = list(choice)


class SamplingParams:
    def __init__(self, **kw):
        top_k = kw.get("top_k", 0)
        if top_k < -1:
            raise ValueError(f"top_k must be 0 (disable), or at least 1, got {top_k}.")
        self.kw = kw
'''


def write_fake_vllm(root: Path) -> Path:
    """Write the stand-in ``vllm`` package under ``root``; returns ``root``."""
    pkg = root / "vllm"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(FAKE_VLLM))
    (pkg / "sampling_params.py").write_text(textwrap.dedent(FAKE_SAMPLING_PARAMS))
    return root


def embedded_tokenizer():
    """The embedded SmolLM2 model's tokenizer: from its GGUF file (about 20 s on 2 cores) the first
    time, then from a copy saved under the kit's cache."""
    pytest.importorskip("transformers")
    from transformers import AutoTokenizer

    from cogpo_kit.models.resolve import ModelNotFoundError, cache_root, embedded_gguf

    try:
        gguf = embedded_gguf("smollm2-135m-instruct")
    except ModelNotFoundError as exc:
        pytest.skip(str(exc))
    st = gguf.stat()
    saved = cache_root() / "test-tokenizers" / f"{gguf.stem}-{st.st_size}-{int(st.st_mtime)}"
    if (saved / "tokenizer_config.json").exists():
        return AutoTokenizer.from_pretrained(str(saved))
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tmp = saved.with_name(saved.name + f".tmp{os.getpid()}")
    tok.save_pretrained(str(tmp))
    if not saved.exists():
        os.replace(tmp, saved)
    return tok


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """``{"smollm": folder, "r1": folder}``: the embedded tokenizer with its own / an R1-like template."""
    tok = embedded_tokenizer()
    root = tmp_path_factory.mktemp("tok")
    dirs = {}
    for name, template in (("smollm", None), ("r1", R1_TEMPLATE)):
        if template is not None:
            tok.chat_template = template
        tok.save_pretrained(str(root / name))
        dirs[name] = str(root / name)
    return dirs


@pytest.fixture
def fake_vllm_pkg(tmp_path_factory, monkeypatch):
    """The stand-in ``vllm`` importable here and in spawned processes."""
    root = write_fake_vllm(tmp_path_factory.mktemp("fakevllm"))
    monkeypatch.syspath_prepend(str(root))
    for name in [m for m in sys.modules if m == "vllm" or m.startswith("vllm.")]:
        monkeypatch.delitem(sys.modules, name)
    import vllm

    vllm.LLM.instances.clear()
    return vllm


# -- the fakes behave like the real thing where it matters ----------------------------------------

def test_r1_template_drops_thinking_from_assistant_messages(model_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dirs["r1"])
    conv = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "hmm</think>YES"}]
    assert "hmm" not in tok.apply_chat_template(conv, tokenize=False)
    assert tok.apply_chat_template(conv[:1], tokenize=False, add_generation_prompt=True).endswith("<think>\n")
    cont = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "hmm</think>"}]
    with pytest.raises(Exception, match="final message"):
        tok.apply_chat_template(cont, tokenize=False, add_generation_prompt=False, continue_final_message=True)


def test_tokenizer_is_transformers_5_batch_encoding(model_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dirs["smollm"])
    out = tok.apply_chat_template([{"role": "user", "content": "a long question " * 20}], add_generation_prompt=True,
                                  tokenize=True)
    assert len(out) < 10 < len(out["input_ids"])  # len() counts keys, not tokens


def _start_llm(path, conn):  # pragma: no cover - child process
    try:
        import vllm

        vllm.LLM(model=path)
        conn.send("started")
    except BaseException as exc:
        conn.send(f"{type(exc).__name__}: {exc}")


def test_fake_llm_cannot_start_in_a_daemon_process(fake_vllm_pkg, model_dirs):
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_start_llm, args=(model_dirs["smollm"], child), daemon=True)
    proc.start()
    assert parent.poll(60)
    assert "daemonic processes are not allowed to have children" in parent.recv()
    proc.join(10)
