"""What a trace keeps of a request's text (the stack's ``TraceContent``).

``full`` keeps the text as sent and answered. ``redacted`` masks what looks like personal
data or a credential: email addresses, phone numbers, card and IBAN-like numbers, IP
addresses, AWS access keys, and secret-looking tokens (AWS secret keys, bearer tokens, JWTs,
API keys, long random strings); each is replaced by its kind in brackets (``[email]``).
``none`` keeps no text at all, only the counts (tokens, sources, scores).

Masking errs towards masking: a 16-digit order number is masked as a card; a date, a time
or a version string is not.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Literal

TraceContent = Literal["full", "redacted", "none"]
CONTENT_MODES: tuple[TraceContent, ...] = ("full", "redacted", "none")

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_AWS_KEY_ID = re.compile(r"(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA|ABIA|ACCA)[A-Z0-9]{16}")
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(?:bearer|basic|token)\s+[A-Za-z0-9._~+/=-]{8,}")
_API_KEY = re.compile(
    r"\b(?:sk|pk|rk|ak|api|key|ghp|gho|ghu|ghs|ghr|github_pat|glpat|xox[abprs]|hf)[-_]"
    r"[A-Za-z0-9_-]{12,}"
)
# A long run of base64/hex-like characters with letters and digits both: an AWS secret key
# (40 characters), a hash, a session token.
_OPAQUE = re.compile(r"(?<![A-Za-z0-9/+=_-])[A-Za-z0-9/+=_-]{32,}(?![A-Za-z0-9/+=_-])")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ -]?[A-Z0-9]{4}){2,7}(?:[ -]?[A-Z0-9]{1,4})?\b")
# 13 to 19 digits, optionally grouped with spaces or dashes: card numbers and the like.
_CARD = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w])")
_PHONE = re.compile(
    r"(?<![\w+])(?:"
    r"\+\d{1,3}(?:[ .-]?\(?\d{1,4}\)?){2,5}"  # international: +44 20 7946 0958
    r"|\(?\d{3}\)?[ .-]\d{3}[ .-]\d{4}"  # (555) 123-4567, 555.123.4567
    r")(?!\w)"
)
# Candidates only; each is checked with ``ipaddress`` (so 12:30:45 or 1.2.3 are kept).
_IPV4 = re.compile(r"(?<!\w)(?<!\d\.)(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])[0-9A-Fa-f:]*:[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*(?![\w:])")


def _opaque(match: re.Match[str]) -> str:
    token = match.group(0)
    has_digit = any(c.isdigit() for c in token)
    has_alpha = any(c.isalpha() for c in token)
    return "[secret]" if has_digit and has_alpha else token


def _ip(match: re.Match[str]) -> str:
    candidate = match.group(0)
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return candidate
    return "[ip]"


_RULES: tuple[tuple[re.Pattern[str], Callable[[re.Match[str]], str]], ...] = (
    (_EMAIL, lambda m: "[email]"),
    (_JWT, lambda m: "[secret]"),
    (_BEARER, lambda m: "[secret]"),
    (_AWS_KEY_ID, lambda m: "[aws_key]"),
    (_API_KEY, lambda m: "[secret]"),
    (_OPAQUE, _opaque),
    (_IBAN, lambda m: "[iban]"),
    (_IPV6, _ip),
    (_IPV4, _ip),
    (_CARD, lambda m: "[card]"),
    (_PHONE, lambda m: "[phone]"),
)


def redact_text(text: str) -> str:
    """``text`` with personal data and credentials masked (see the module's docstring)."""
    for pattern, replace in _RULES:
        text = pattern.sub(replace, text)
    return text


def keep_text(text: str | None, content: TraceContent) -> str | None:
    """What a trace stores of ``text`` under ``content``: it, it redacted, or nothing."""
    if text is None or content == "none":
        return None
    return text if content == "full" else redact_text(text)
