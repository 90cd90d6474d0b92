"""The `scripted` backend: chat models that answer from a list, for offline tests. A test
registers one per role name (`register`), and a config selects it like any other model
(`backend: scripted`, `model: <name>`), so no code path takes test doubles as a parameter.
Structured output goes through the same JSON parsing path as the real backends."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from pydantic import BaseModel, PrivateAttr

from aidsafe.errors import UserError
from aidsafe.models.structured import json_answer_parser

# An answer: a dict (sent as JSON), raw text (sent as is), an exception (raised), or a function
# of the received messages returning one of those.
Answer = dict[str, Any] | str | BaseException | Callable[[list[BaseMessage]], Any]


class ScriptedChatModel(BaseChatModel):
    """Answers in order; the last answer repeats when `repeat_last` is set."""

    answers: list[Any]
    repeat_last: bool = False
    _received: list[list[BaseMessage]] = PrivateAttr(default_factory=list)
    _position: int = PrivateAttr(default=0)

    def __init__(self, answers: Sequence[Answer], repeat_last: bool = False, **kwargs: Any):
        super().__init__(answers=list(answers), repeat_last=repeat_last, **kwargs)

    @property
    def _llm_type(self) -> str:
        return "scripted"

    @property
    def received(self) -> list[list[BaseMessage]]:
        """The messages of every call, in order."""
        return self._received

    @property
    def calls(self) -> int:
        return len(self._received)

    def _next(self, messages: list[BaseMessage]) -> str:
        self._received.append(list(messages))
        if self._position >= len(self.answers):
            if not (self.repeat_last and self.answers):
                raise AssertionError(f"scripted model ran out of answers after {self._position}")
            answer = self.answers[-1]
        else:
            answer = self.answers[self._position]
            self._position += 1
        if callable(answer) and not isinstance(answer, BaseException):
            answer = answer(messages)
        if isinstance(answer, BaseException):
            raise answer
        return answer if isinstance(answer, str) else json.dumps(answer)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> ChatResult:
        text = self._next(messages)
        tokens = sum(len(m.text.split()) for m in messages)
        message = AIMessage(
            content=text,
            usage_metadata={
                "input_tokens": tokens,
                "output_tokens": len(text.split()),
                "total_tokens": tokens + len(text.split()),
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def bind_schema(self, schema: type[BaseModel]) -> Runnable[Any, Any]:
        """Scripted answers are JSON text already; the caller parses them."""
        return self

    def with_structured_output(  # type: ignore[override]
        self, schema: type[BaseModel], *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[Any, Any]:
        return self.bind_schema(schema) | json_answer_parser(schema, include_raw)


_REGISTRY: dict[str, BaseChatModel] = {}


def register(name: str, model: BaseChatModel) -> None:
    """Make `model` (a ScriptedChatModel, or any chat model a benchmark instruments) the answer
    to `backend: scripted, model: <name>` in this process."""
    _REGISTRY[name] = model


def registered(names: Iterable[str]) -> dict[str, BaseChatModel]:
    """The registered models among `names` (sent to Ray workers with the run)."""
    return {name: _REGISTRY[name] for name in names if name in _REGISTRY}


def lookup(name: str | None) -> BaseChatModel:
    if name is None or name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UserError(
            f"scripted model {name!r} is not registered in this process (known: {known})"
        )
    return _REGISTRY[name]


def clear() -> None:
    _REGISTRY.clear()
