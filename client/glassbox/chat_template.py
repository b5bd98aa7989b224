"""Chat templates rendered here, on the client, exactly as transformers renders them.

The service only reads a model's template from its files (GGUF ``tokenizer.chat_template``,
or a Hugging Face directory's ``chat_template.jinja`` / ``tokenizer_config.json``) and sends
it with the catalogue; it never runs one. Rendering mirrors transformers'
``utils/chat_template_utils.py`` (5.x): a jinja2 ``ImmutableSandboxedEnvironment`` with
``trim_blocks`` and ``lstrip_blocks``, the ``loopcontrols`` extension, a ``{% generation %}``
block that renders its body, ``raise_exception``, ``strftime_now``, its ``tojson`` (no HTML
escaping, non-ASCII kept), its ``dict`` and ``namespace``; messages with ``None`` values
dropped, reasoning fields aliased, and everything the template sees rebuilt from plain JSON
types.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, List, Mapping, Optional

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def render(template: str, conversations: List[list], add_generation_prompt: bool,
           tools: Optional[list], documents: Optional[list], variables: dict) -> List[str]:
    """Each conversation rendered by ``template``; ``variables`` (bos_token, the caller's
    keyword arguments, ...) are visible to the template."""
    compiled = _compile(template)
    if tools is not None:
        for tool in tools:
            if not isinstance(tool, Mapping):
                raise ValueError("tools must be JSON schemas (dicts); glassbox does not turn "
                                 "Python functions into schemas")
    if documents is not None and not all(isinstance(d, Mapping) for d in documents):
        raise TypeError("Documents should be a list of dicts with 'title' and 'text' keys!")
    tools, documents, variables = (_plain(tools), _plain(documents), _plain(variables))
    rendered = []
    for chat in conversations:
        chat = _plain([{k: v for k, v in m.items() if v is not None} for m in chat])
        rendered.append(compiled.render(messages=_alias_reasoning(chat), tools=tools,
                                        documents=documents,
                                        add_generation_prompt=add_generation_prompt,
                                        **variables))
    return rendered


@lru_cache(maxsize=16)
def _compile(template: str):
    try:
        import jinja2
        from jinja2 import nodes
        from jinja2.ext import Extension
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:  # a declared dependency; only a broken install lacks it
        raise ImportError("apply_chat_template needs jinja2 (pip install 'jinja2>=3.1.6')") from e

    class Generation(Extension):
        # transformers' AssistantTracker without its tracking: the block renders its body.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

        def _render(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        # Rejects underscore attributes, which could reach CPython internals.
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    "Chat templates cannot store underscore-prefixed attributes on a namespace, "
                    f"but got {name!r}. Please rename the attribute.")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env.from_string(template)


def _alias_reasoning(chat: list) -> list:
    out = []
    for message in chat:
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None),
                         None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        out.append(message)
    return out


def _plain(value: Any) -> Any:
    """The value rebuilt from JSON types (anything else becomes an inert "<TypeName>"), so the
    template cannot reach methods of rich objects."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    for kind in (str, bool, int, float):
        if isinstance(value, kind):
            return kind(value) if kind is not str else str.__str__(value)
    if isinstance(value, Mapping):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    if hasattr(value, "item") and getattr(value, "shape", None) == ():  # numpy scalars
        return _plain(value.item())
    return f"<{type(value).__name__}>"
