"""Chat templates: chat messages as the one prompt string a model was trained on (pure).

``render_prompt`` picks the format by the catalog's ``chat_template`` name (Llama 3 headers,
Llama 2 ``[INST]`` with ``<<SYS>>``, Mistral ``[INST]``, Zephyr, ChatML, SOLAR, Code Llama
70B, Falcon, Flan-T5), for engine routes that take a prompt rather than messages.

Engines apply a model's own template through their chat API; this rendering is what is sent
only for models without one (Falcon, Flan-T5) or engines without a chat API (hf-inference),
and otherwise the text whose tokens are counted to budget a prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from llmhost.engines.codecs import ChatMessage
from llmhost.errors import LlmhostError


class UnknownChatTemplate(LlmhostError):
    code = "unknown_chat_template"
    status = 422

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no chat template named '{name}'; known templates: {', '.join(TEMPLATES)}"
        )
        self.name = name


class ChatMessagesInvalid(LlmhostError):
    """The messages cannot be rendered for this model (order of roles, empty turns)."""

    code = "invalid_messages"
    status = 422

    def __init__(self, message: str) -> None:
        super().__init__(f"messages: {message}")


def _turns(messages: Sequence[ChatMessage]) -> tuple[str | None, list[ChatMessage]]:
    """(system text or None, user/assistant turns) after checking the conversation's shape.

    Leading system messages are joined; after them roles must alternate user, assistant,
    user... and end with a user turn, the shape every template here requires.
    """
    systems: list[str] = []
    index = 0
    while index < len(messages) and messages[index].role == "system":
        systems.append(messages[index].content)
        index += 1
    turns = list(messages[index:])
    if not turns:
        raise ChatMessagesInvalid("at least one user message is required")
    for position, message in enumerate(turns):
        expected = "user" if position % 2 == 0 else "assistant"
        if message.role != expected:
            raise ChatMessagesInvalid(
                f"message {index + position} has role '{message.role}' where '{expected}' "
                "was expected: system messages come first, then user and assistant alternate"
            )
    if turns[-1].role != "user":
        raise ChatMessagesInvalid("the last message must come from the user")
    return ("\n\n".join(systems) if systems else None), turns


def _llama3(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    parts = []
    if system is not None:
        parts.append(f"<|start_header_id|>system<|end_header_id|>\n\n{system.strip()}<|eot_id|>")
    for m in turns:
        parts.append(
            f"<|start_header_id|>{m.role}<|end_header_id|>\n\n{m.content.strip()}<|eot_id|>"
        )
    parts.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "<|begin_of_text|>", "".join(parts)


def _llama2(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    # Llama 2 chat and Code Llama instruct (7B-34B): every user turn opens with BOS.
    text = ""
    for position, m in enumerate(turns):
        content = m.content
        if position == 0 and system is not None:
            content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
        if m.role == "user":
            text += f"<s>[INST] {content.strip()} [/INST]"
        else:
            text += f" {content.strip()} </s>"
    return "<s>", text.removeprefix("<s>")


def _codellama70b(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    parts = [f"Source: system\n\n {system.strip()} <step> "] if system is not None else []
    parts += [f"Source: {m.role}\n\n {m.content.strip()} <step> " for m in turns]
    parts.append("Source: assistant\nDestination: user\n\n ")
    return "<s>", "".join(parts)


def _mistral(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    # Mistral's templates have no system role: it goes in front of the first user turn.
    text = ""
    for position, m in enumerate(turns):
        content = m.content
        if position == 0 and system is not None:
            content = f"{system}\n\n{content}"
        text += f"[INST] {content} [/INST]" if m.role == "user" else f"{content}</s>"
    return "<s>", text


def _zephyr(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    parts = [f"<|system|>\n{system}</s>\n"] if system is not None else []
    parts += [f"<|{m.role}|>\n{m.content}</s>\n" for m in turns]
    parts.append("<|assistant|>\n")
    return "", "".join(parts)


def _chatml(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    parts = [f"<|im_start|>system\n{system}<|im_end|>\n"] if system is not None else []
    parts += [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in turns]
    parts.append("<|im_start|>assistant\n")
    return "", "".join(parts)


def _solar(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    parts = [f"### System:\n{system}\n\n"] if system else []
    for m in turns:
        parts.append(
            f"### User:\n{m.content}\n\n" if m.role == "user" else f"### Assistant:\n{m.content}"
        )
    parts.append("### Assistant:\n")
    return "", "".join(parts)


def _falcon(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    # Falcon-instruct has no official template; this is the "User:"/"Assistant:" format
    # TII pointed to on the falcon-7b-instruct model page discussion.
    lines = [system.strip()] if system else []
    lines += [f"{'User' if m.role == 'user' else 'Assistant'}: {m.content.strip()}" for m in turns]
    lines.append("Assistant:")
    return "", "\n".join(lines)


def _flan_t5(system: str | None, turns: list[ChatMessage]) -> tuple[str, str]:
    # Flan-T5 is an instruction follower without chat tokens: plain paragraphs.
    head = [system.strip()] if system else []
    if len(turns) == 1:
        return "", "\n\n".join([*head, turns[0].content.strip()])
    lines = [f"{'User' if m.role == 'user' else 'Assistant'}: {m.content.strip()}" for m in turns]
    return "", "\n\n".join([*head, "\n".join(lines), "Assistant:"])


_Renderer = Callable[[str | None, list[ChatMessage]], tuple[str, str]]

TEMPLATES: Mapping[str, _Renderer] = {
    "llama3": _llama3,
    "llama2": _llama2,
    "codellama-70b": _codellama70b,
    "mistral": _mistral,
    "zephyr": _zephyr,
    "chatml": _chatml,
    "solar": _solar,
    "falcon": _falcon,
    "flan-t5": _flan_t5,
}


def render_prompt(template: str, messages: Sequence[ChatMessage], *, bos: bool = False) -> str:
    """``messages`` as one prompt string in the model's format, ending where the model
    should start answering.

    With ``bos=True`` the text is exactly what the model's Hugging Face chat template
    renders with ``add_generation_prompt=True``. The default leaves out the leading BOS
    token because TGI's generate route, vLLM's completions and LMI tokenize the prompt with
    special tokens and add BOS themselves; sending it too would double it. Raises
    ``UnknownChatTemplate`` and ``ChatMessagesInvalid`` (422).
    """
    renderer = TEMPLATES.get(template)
    if renderer is None:
        raise UnknownChatTemplate(template)
    system, turns = _turns(messages)
    bos_token, body = renderer(system, turns)
    return bos_token + body if bos else body
