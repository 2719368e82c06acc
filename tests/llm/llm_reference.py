"""References for the real-model tests, independent of the engine under test.

The GGUF file's metadata read here with a small reader of the format (not llama.cpp), and
from it:

- the model's tokenizer rebuilt with Hugging Face ``tokenizers`` (byte-level BPE from the
  file's vocabulary and merges, the pre-tokenizer of SmolLM2's ``tokenizer.json``: digits
  one by one, then GPT-2's byte-level split), so the engine's token counts are checked
  against the model's tokenizer as TGI would run it, not against llama.cpp's own;
- the model's chat template, rendered as ``transformers`` renders it (a sandboxed jinja2
  environment, ``trim_blocks``/``lstrip_blocks``, ``add_generation_prompt``).
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
ROOT = Path(__file__).resolve().parents[2]
_SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9
_CONTROL = 3  # GGUF token type of special (control) tokens


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The key/value metadata at the head of a GGUF (v2/v3) file."""
    with path.open("rb") as file:
        data = file.read(16 * 1024 * 1024)  # SmolLM2's metadata is ~2 MB
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        size = take("<Q")
        text = data[pos : pos + size].decode("utf-8")
        pos += size
        return text

    def value(kind: int) -> Any:
        if kind == _STRING:
            return string()
        if kind == _ARRAY:
            item, count = take("<I"), take("<Q")
            return [value(item) for _ in range(count)]
        return take(_SCALARS[kind])

    assert data[:4] == b"GGUF", f"{path} is not a GGUF file"
    pos = 4
    take("<I")  # version
    take("<Q")  # tensor count
    count = take("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(count):
        key = string()
        metadata[key] = value(take("<I"))
    return metadata


@dataclass(frozen=True)
class Reference:
    metadata: dict[str, Any]
    tokenizer: Any  # tokenizers.Tokenizer

    def ids(self, text: str) -> list[int]:
        """``text`` tokenized as the model's tokenizer does (special tokens written in the
        text parsed as such; no BOS: SmolLM2's tokenizer adds none)."""
        return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

    def count(self, text: str) -> int:
        return len(self.ids(text))

    def decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def token(self, token_id: int) -> str:
        return str(self.tokenizer.id_to_token(token_id))

    def chat(self, messages: list[dict[str, str]]) -> str:
        """The conversation as the model reads it: its own template, with the assistant's
        generation prompt."""
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        template = environment.from_string(self.metadata["tokenizer.chat_template"])
        return template.render(messages=messages, add_generation_prompt=True)

    @property
    def context_length(self) -> int:
        return int(self.metadata["llama.context_length"])


@functools.cache
def reference() -> Reference:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    from llmhost_local.llama import model_path

    metadata = gguf_metadata(model_path())
    assert metadata["tokenizer.ggml.model"] == "gpt2", metadata["tokenizer.ggml.model"]
    assert metadata["tokenizer.ggml.pre"] == "smollm", metadata["tokenizer.ggml.pre"]
    tokens: list[str] = metadata["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ", 1)) for merge in metadata["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    kinds = metadata["tokenizer.ggml.token_type"]
    tokenizer.add_special_tokens(
        [
            AddedToken(token, special=True, normalized=False)
            for token, kind in zip(tokens, kinds, strict=True)
            if kind == _CONTROL
        ]
    )
    return Reference(metadata, tokenizer)


def readme_text(ref: Reference, tokens: int) -> str:
    """The README's first ``tokens`` tokens, as text."""
    ids = ref.ids((ROOT / "README.md").read_text())
    assert len(ids) > tokens, "the README is shorter than asked"
    return ref.decode(ids[:tokens])


def over_the_input_limit(ref: Reference, max_input: int, max_total: int) -> tuple[str, int]:
    """README text over ``max_input`` tokens but with a few new tokens still within
    ``max_total`` (so TGI's input check is the one that fires), and its token count."""
    text = readme_text(ref, (max_input + max_total) // 2)
    count = ref.count(text)
    assert max_input < count <= max_total - 8, count
    return text, count


def sse_events(lines: Iterator[bytes]) -> Iterator[dict[str, Any] | str]:
    """The ``data:`` payloads of an SSE stream, parsed (``[DONE]`` as the string)."""
    for raw in lines:
        line = raw.decode().rstrip("\r\n")
        if not line.startswith("data:"):
            assert line == "", f"not an SSE data line: {line!r}"
            continue
        payload = line[len("data:") :].strip()
        yield payload if payload == "[DONE]" else json.loads(payload)
