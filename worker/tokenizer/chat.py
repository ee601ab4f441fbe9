"""Chat templates: the model's own Jinja template, rendered the way HF transformers renders it.

Templates in GGUF files are written for `transformers.apply_chat_template`, so the environment
copies its choices: a sandbox (the template comes from a downloaded file), `trim_blocks` and
`lstrip_blocks`, the `loopcontrols` extension, a `tojson` that keeps non-ASCII text and HTML
characters as they are, and the `raise_exception` / `strftime_now` helpers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, NoReturn

from jinja2 import TemplateError
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

log = logging.getLogger("worker.tokenizer")

# Used when a model carries no template: plain ChatML, no default system prompt.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """A chat template that cannot be rendered for the given messages."""


def _raise_exception(message: str) -> NoReturn:
    raise ChatTemplateError(f"chat template refused the messages: {message}")


def _tojson(
    value: Any, indent: int | None = None, separators: tuple[str, str] | None = None, sort_keys: bool = False
) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML, which would change the prompt text.
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


class ChatTemplate:
    """A compiled chat template plus the special-token strings it may refer to."""

    def __init__(self, source: str | None, *, bos_token: str = "", eos_token: str = "") -> None:
        self.bos_token = bos_token
        self.eos_token = eos_token
        env = _environment()
        self.from_model = bool(source)
        if source:
            try:
                self._template = env.from_string(source)
            except TemplateError as e:
                # Plain prompts still work, so the model stays usable; chat prompts get ChatML.
                log.warning("the model's chat template does not compile (%s); using ChatML instead", e)
                self.from_model = False
        if not self.from_model:
            self._template = env.from_string(CHATML_TEMPLATE)
        self.source = source if self.from_model and source else CHATML_TEMPLATE
        # Size of the model's own template in characters; 0 when the ChatML fallback is in use.
        self.size = len(source) if self.from_model and source else 0

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        try:
            return self._template.render(
                messages=[dict(m) for m in messages],
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **extra,
            )
        except ChatTemplateError:
            raise
        except TemplateError as e:  # sandbox violations and undefined-name errors alike
            raise ChatTemplateError(f"chat template failed to render: {e}") from e
