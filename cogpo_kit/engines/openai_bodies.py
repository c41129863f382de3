"""What the OpenAI-compatible engine sends and reads: request bodies per server kind, replies.

Servers differ in how they take a constrained label: llama.cpp's server takes a GBNF ``grammar``;
vLLM from 0.11 takes ``structured_outputs: {"choice": [...]}`` and older vLLM ``guided_choice``
(each ignores the other's field: the label would silently be free text), so vLLM servers are told
apart by ``GET /version``. vLLM servers get ``max_completion_tokens`` (``max_tokens`` is
deprecated there) and an explicit ``top_k`` (0 is "no limit" from 0.9, -1 before), so that a
model's ``generation_config.json`` does not set one behind our back.

Reasoning models on vLLM >= 0.11 think first (stopped at ``thinking_end``, token ids returned);
the label is then asked from ``/v1/completions`` with the token ids of the prompt, the thinking and
the end of thinking (:func:`completion_label_body`): re-sending the thinking as an assistant
message would not work, chat templates of reasoning models (DeepSeek-R1's) drop it. Elsewhere they
think and answer in one request and the label is parsed from the text after the thinking.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from cogpo_kit.engines.base import Request
from cogpo_kit.engines.common import choices_grammar, label_budget, sample_seed
from cogpo_kit.engines.config import EngineParams

STRUCTURED_OUTPUTS_SINCE = (0, 11)
"""First vLLM release whose server reads ``structured_outputs`` (older ones read ``guided_choice``)."""
TOP_K_ZERO_SINCE = (0, 9)
"""First vLLM release that takes ``top_k: 0`` as "no limit" (older ones reject 0 and want -1)."""


@dataclass(frozen=True)
class Server:
    """What the engine knows about one server."""

    flavor: str = "none"
    """``vllm``, ``grammar`` (llama.cpp) or ``none`` (free text, parsed)."""
    version: Optional[tuple[int, ...]] = None
    """vLLM's release from ``GET /version`` (``None``: unknown, taken as recent)."""

    @property
    def old_vllm(self) -> bool:
        return self.flavor == "vllm" and self.version is not None and self.version < STRUCTURED_OUTPUTS_SINCE

    @property
    def token_level(self) -> bool:
        """Labels after thinking are continued at token level (``/v1/completions``)."""
        return self.flavor == "vllm" and not self.old_vllm


def parse_version(text: Any) -> Optional[tuple[int, ...]]:
    """``(0, 10, 2)`` from ``"0.10.2"`` / ``"0.11.0rc1"`` / ``{"version": ...}``; ``None`` if unreadable."""
    if isinstance(text, dict):
        text = text.get("version")
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", str(text or ""))
    return tuple(int(x) for x in m.groups() if x is not None) if m else None


def flavor_from_models(payload: Any) -> str:
    """``vllm``, ``grammar`` (llama.cpp) or ``none`` from a ``GET /models`` answer."""
    try:
        owners = {str(m.get("owned_by", "")).lower() for m in payload.get("data", [])}
    except AttributeError:
        return "none"
    if "vllm" in owners:
        return "vllm"
    if owners & {"llamacpp", "llama.cpp", "me"}:
        return "grammar"
    return "none"


def _sampling(request: Request, index: int, server: Server) -> dict:
    s = request.sampling
    body: dict[str, Any] = {"n": 1, "temperature": max(0.0, float(s.temperature)), "top_p": float(s.top_p),
                            "seed": sample_seed(s.seed, index)}
    if s.top_k and s.top_k > 0:
        if server.flavor in ("vllm", "grammar"):
            body["top_k"] = int(s.top_k)
    elif server.flavor == "vllm":
        old = server.version is not None and server.version < TOP_K_ZERO_SINCE
        body["top_k"] = -1 if old else 0
    return body


def _choice_field(server: Server, choices) -> dict:
    if server.old_vllm:
        return {"guided_choice": list(choices)}
    return {"structured_outputs": {"choice": list(choices)}}


def request_body(request: Request, index: int, config: EngineParams, server: Server | str) -> dict:
    """The ``/chat/completions`` body of sample ``index`` of ``request`` for ``server`` (or a flavor)."""
    if isinstance(server, str):
        server = Server(server)
    s = request.sampling
    think = config.thinking_end
    body: dict[str, Any] = {"model": config.model,
                            "messages": [{"role": m["role"], "content": m["content"]} for m in request.messages]}
    body.update(_sampling(request, index, server))
    max_tokens = int(s.max_tokens)
    stops = list(s.stop)
    if request.choices is not None:
        if think and server.token_level:
            max_tokens = int(config.max_thinking_tokens)
            stops.append(think)
            body["return_token_ids"] = True
        elif think:
            max_tokens = int(config.max_thinking_tokens) + label_budget(request)
        elif server.flavor == "vllm":
            max_tokens = label_budget(request)
            body.update(_choice_field(server, request.choices))
        elif server.flavor == "grammar":
            max_tokens = label_budget(request)
            body["grammar"] = choices_grammar(request.choices)
        else:
            max_tokens = max(label_budget(request), int(s.max_tokens))
    body["max_completion_tokens" if server.flavor == "vllm" else "max_tokens"] = max_tokens
    if server.flavor == "vllm" and config.truncation == "left":
        body["truncate_prompt_tokens"] = max(1, int(config.context_length) - max_tokens)
    if stops:
        body["stop"] = stops
    return body


def completion_label_body(request: Request, index: int, config: EngineParams, server: Server,
                          prompt_ids: list[int]) -> dict:
    """The ``/completions`` body that asks the label after the thinking, at token level."""
    body: dict[str, Any] = {"model": config.model, "prompt": list(prompt_ids)}
    body.update(_sampling(request, index, server))
    room = int(config.context_length) - len(prompt_ids)
    body["max_tokens"] = max(1, min(label_budget(request), room)) if room > 0 else label_budget(request)
    body.update(_choice_field(server, request.choices))
    return body


@dataclass(frozen=True)
class Reply:
    """One parsed completion."""

    text: str
    """``message.content`` (chat) or ``text`` (completions)."""
    finish: str
    """``stop``, ``length`` or ``error``."""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning: str = ""
    """The thinking that a server started with a reasoning parser moves out of ``content``
    (``message.reasoning``; ``message.reasoning_content`` on older releases)."""
    prompt_ids: Optional[list[int]] = None
    token_ids: Optional[list[int]] = None

    def full_text(self, think: Optional[str]) -> str:
        """The answer as the model wrote it: thinking, end-of-thinking marker, answer."""
        if not self.reasoning:
            return self.text
        if not think:
            return self.text or self.reasoning
        if not self.text and self.finish == "length":  # the thinking never ended
            return self.reasoning
        return self.reasoning + think + self.text


def _finish(reason: Any) -> str:
    if reason in ("error", "abort"):
        return "error"
    return "length" if reason == "length" else "stop"


def _ids(value: Any) -> Optional[list[int]]:
    return [int(x) for x in value] if isinstance(value, list) else None


def parse_response(payload: Any, *, chat: bool = True) -> Reply:
    """A ``/chat/completions`` answer (``chat=False``: a ``/completions`` one); ``ValueError`` if malformed."""
    if not isinstance(payload, dict) or not isinstance(payload.get("choices"), list) or not payload["choices"]:
        raise ValueError("no 'choices' list")
    ch = payload["choices"][0]
    if not isinstance(ch, dict):
        raise ValueError("'choices[0]' is not an object")
    if chat:
        msg = ch.get("message")
        if not isinstance(msg, dict) or not isinstance(msg.get("content", ""), (str, type(None))):
            raise ValueError("no 'choices[0].message.content'")
        text = msg.get("content") or ""
        reasoning = msg.get("reasoning") or msg.get("reasoning_content") or ""
    elif isinstance(ch.get("text"), str):
        text, reasoning = ch["text"], ""
    else:
        raise ValueError("no 'choices[0].text'")
    usage = payload.get("usage") or {}
    return Reply(text=text, finish=_finish(ch.get("finish_reason")), reasoning=str(reasoning),
                 prompt_tokens=int(usage.get("prompt_tokens") or 0),
                 completion_tokens=int(usage.get("completion_tokens") or 0),
                 prompt_ids=_ids(payload.get("prompt_token_ids")), token_ids=_ids(ch.get("token_ids")))


def parse_tokens(payload: Any) -> list[int]:
    """The ids of a vLLM ``/tokenize`` answer; ``ValueError`` if malformed."""
    ids = _ids(payload.get("tokens")) if isinstance(payload, dict) else None
    if ids is None:
        raise ValueError("no 'tokens' list")
    return ids
