"""The parser's shortcuts give exactly what the email package's policy parser gives.

Plain address headers ("a@b", "Name <a@b>") and subjects without encoded
words skip the policy's header parser; digests skip rendering plain text as
HTML. Each is compared here with the long way on generated input, which
mixes plain forms with the characters that must send a value the long way.
"""

from __future__ import annotations

import random

import pytest

from merganser.resolvers import parsing
from merganser.resolvers.parsing import _POLICY, _plain_mailboxes, _policy_mailboxes, _subject, digest_message

ATEXT = "abcXYZ09!#$%&'*+/=?^_`{|}~-"
# Characters that make a value not plain, or plain in a way that is easy to get wrong.
AWKWARD = ATEXT + '. \t"()<>[]:;@,\\=?é\x00\x1f'


def contacts(pairs: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
    """Pairs as _contacts keeps them: whitespace in names collapsed, unusable addresses emptied."""
    if pairs is None:
        return None
    return [(" ".join(name.split()), parsing._addr_spec(address)) for name, address in pairs]


def word(rng: random.Random, alphabet: str, longest: int = 8) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, longest)))


def mailbox(rng: random.Random) -> str:
    alphabet = ATEXT if rng.random() < 0.8 else AWKWARD
    address = ".".join(word(rng, alphabet) for _ in range(rng.randint(1, 3)))
    address += "@" + ".".join(word(rng, alphabet) for _ in range(rng.randint(1, 3)))
    space = rng.choice(["", " ", "  ", "\t", " \t "])
    if rng.random() < 0.5:
        return space + address + space
    name = rng.choice([" ", "  ", "\t"]).join(word(rng, alphabet) for _ in range(rng.randint(1, 4)))
    return f"{space}{name}{rng.choice(['', ' ', '  '])}<{address}>{space}"


@pytest.mark.parametrize("seed", range(10))
def test_plain_mailboxes_are_what_the_policy_parser_makes_of_them(seed: int) -> None:
    rng = random.Random(seed)
    plain = 0
    for _ in range(1000):
        value = ",".join(mailbox(rng) for _ in range(rng.randint(1, 3)))
        quick = _plain_mailboxes(value)
        if quick is not None:
            plain += 1
            assert contacts(quick) == contacts(_policy_mailboxes(value)), value
    assert plain > 300


@pytest.mark.parametrize(
    "value",
    [
        "bench3@bench.example",
        "Bench Sender <sender@bench.example>",
        "Ann <a@example.org>, b@example.org,C  D\t<c.d@e.f>",
        "O'Brien <o'brien@example.org>",
        "a <b@c>",
        "a.b@c.d",
    ],
)
def test_common_forms_take_the_shortcut(value: str) -> None:
    quick = _plain_mailboxes(value)
    assert quick is not None
    assert contacts(quick) == contacts(_policy_mailboxes(value))


@pytest.mark.parametrize(
    "value",
    [
        '"Doe, Jane" <jane@example.org>',
        "=?utf-8?q?J=C3=BCrgen?= <j@example.org>",
        "Jürgen <j@example.org>",
        "a@b (comment)",
        "group: a@b, c@d;",
        "a.b <c@d>",
        "a@b,,c@d",
        "",
        "<a@b>",
        "a@b.",
    ],
)
def test_other_forms_go_the_long_way(value: str) -> None:
    assert _plain_mailboxes(value) is None


@pytest.mark.parametrize("seed", range(5))
def test_subjects_without_encoded_words_are_what_the_policy_parser_makes_of_them(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ATEXT + " \t\x0b\x0c\x1c\x1f\x00.:;()<>\"'é=?"
    for _ in range(2000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60)))
        expected = str(_POLICY.header_factory("subject", value)) if value else ""
        if not expected.strip():
            expected = parsing._decode_words(value)
        want = " ".join((expected if expected.strip() else value).split())
        assert _subject([value] if value else []) == want, repr(value)


def test_a_digest_is_the_parse_without_its_html_rendering_of_text() -> None:
    messages = [
        b"From: a@b\r\nSubject: plain\r\n\r\nHello\r\n\r\nWorld\r\n",
        b"Subject: html\r\nContent-Type: text/html\r\n\r\n<p>Hi <b>there</b></p>\r\n",
        b"Subject: blank\r\n\r\n   \r\n",
        b"",
    ]
    for raw in messages:
        parsed = parsing.parse_message(raw)
        digest = digest_message(raw)
        assert digest.text == parsed.text and digest.intro == parsed.intro
        assert digest.html == ([] if parsed.text else parsed.html)
        assert parsing.search_terms(digest) == parsing.search_terms(parsed)
