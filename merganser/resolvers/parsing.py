"""Turning raw RFC 5322 message bytes into what the server indexes and shows.

Everything here is a pure function of the message bytes, built on the standard
library's ``email`` package with the ``policy.default`` header semantics.

The server must store every message it accepts, so nothing here may raise
whatever the bytes are: each header and each MIME part is read on its own, and
when one cannot be understood it degrades to a replacement-decoded or empty
value instead of losing the rest of the message. The ``email`` package is
also slow on hostile input (its header parser is superlinear on very long
values), so long values are either bounded or handled by the package's
simpler, linear helpers. It is slow on ordinary input too: a subject without
encoded words and addresses written as "local@domain" or "Name
<local@domain>" skip its header parser, for these give exactly what it would.
"""

from __future__ import annotations

import functools
import html
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.generator import BytesGenerator
from email.header import decode_header, make_header
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import Message
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from typing import Literal

# The MIME tree is walked iteratively; parts nested deeper than this, or beyond
# this many parts, are ignored so a hostile message cannot make indexing slow.
_MAX_DEPTH = 50
_MAX_PARTS = 2_000

# The policy's header parser costs about 0.2 ms per address and grows faster
# than linearly; longer subjects and address lists use the linear helpers of
# ``email.header`` and ``email.utils`` instead.
_MAX_POLICY_HEADER = 1_000
# Values are cut to this length before the policy parses them: real MIME
# headers are far shorter even with a long RFC 2231 file name, and a hostile
# one of a few hundred kilobytes would take the parser seconds.
_MAX_MIME_HEADER = 8_000
_HEADER_CACHE_SIZE = 256
_MAX_CACHED_HEADER = 256
_CACHED_HEADERS = frozenset({"content-type", "content-disposition", "content-transfer-encoding"})
# Longer header values are cut before anything reads them.
_MAX_HEADER = 100_000

_INTRO_CHARS = 128
_MAX_TERMS = 2_000
_MIN_TERM = 2
_MAX_TERM = 64
_MAX_FILENAME_BYTES = 255
_MAX_EXTENSION_BYTES = 32

_ADDRESS_HEADERS = ("from", "to", "cc", "bcc", "reply-to")
_TOP_HEADERS = frozenset({*_ADDRESS_HEADERS, "subject", "message-id", "in-reply-to", "references", "date"})
_PART_HEADERS = frozenset({"content-type", "content-disposition", "content-id"})

_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
DOT_ATOM_ADDRESS = rf"{_ATEXT}(?:\.{_ATEXT})*@{_ATEXT}(?:\.{_ATEXT})*"
"""An address of ASCII dot-atoms, the plain form that parses the same under every parser (pattern text)."""
_PLAIN_MAILBOX = re.compile(
    rf"[ \t]*(?:({_ATEXT}(?:[ \t]+{_ATEXT})*)[ \t]*<({DOT_ATOM_ADDRESS})>|({DOT_ATOM_ADDRESS}))[ \t]*"
)
_SURROGATES = re.compile("[\udc80-\udcff]")
_LINE_BREAKS = re.compile(r"\r\n?|\n")
_MESSAGE_ID = re.compile(r"<([^<>]*)>")
_WORD = re.compile(r"\w+", re.UNICODE)
_NON_SPACE = re.compile(r"\S+")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n\s*")
# Control characters, lone surrogates and the bidirectional overrides used to
# disguise extensions ("invoice\u202efdp.exe").
_UNSAFE_FILENAME = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_SUBJECT_PREFIXES = re.compile(
    r"(?:\s*(?:(?:re|fwd?|aw|sv|vs|antw)\s*(?:(?:\[\d*\]|\(\d*\))\s*)?[:：]|\[[^\[\]]*\]))*",
    re.IGNORECASE,
)
# Comments, invisible elements and tags. Unclosed comments and elements run to
# the end and a tag cannot contain "<", so the scan stays linear on broken HTML.
_HTML_MARKUP = re.compile(
    r"<!--.*?(?:-->|\Z)|<(script|style|title|template)\b[^<>]*>.*?(?:</\1\s*>|\Z)|</?([a-z0-9]*+)[^<>]*+>",
    re.DOTALL | re.IGNORECASE,
)
# Tags that do not separate words ("<b>Hel</b>lo" is one word).
_INLINE_TAGS = frozenset(
    {"a", "abbr", "b", "big", "code", "em", "font", "i", "mark", "s", "small", "span", "strong", "sub", "sup", "u"}
)
# Invisible characters that newsletters pad their preview text with.
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u034f\u200b\u200c\u200d\u2060\ufeff"))

# Labels that promise nothing about the bytes: try UTF-8, then Windows-1252.
_UNDECLARED_CHARSETS = frozenset({"", "us-ascii", "ascii", "unknown-8bit", "x-unknown", "unknown", "default"})
# Labels Python does not know under that name, or whose superset mail clients mean.
_CHARSET_ALIASES = {
    "iso-8859-8-i": "iso-8859-8",
    "iso-8859-6-i": "iso-8859-6",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
    "x-sjis": "shift_jis",
    "unicode-1-1-utf-7": "utf-7",
}
_EXTENSIONS = {
    "application/octet-stream": "bin",
    "application/pdf": "pdf",
    "application/zip": "zip",
    "application/msword": "doc",
    "application/vnd.ms-excel": "xls",
    "application/pkcs7-signature": "p7s",
    "application/pgp-signature": "asc",
    "audio/mpeg": "mp3",
    "image/jpeg": "jpg",
    "image/svg+xml": "svg",
    "message/delivery-status": "txt",
    "message/global": "eml",
    "text/calendar": "ics",
    "text/plain": "txt",
    "text/rfc822-headers": "txt",
}
_EXTENSION = re.compile(r"[a-z0-9]{1,10}")


class _BoundedHeaderRegistry(HeaderRegistry):
    """``policy.default``'s header registry, bounded in length and remembering short MIME headers.

    The feedparser parses each part's Content-Type five times or so, which
    makes header parsing most of the cost of parsing a small message; header
    objects are immutable, so short MIME header values are parsed once (the
    cache holds a few megabytes at most). Values are cut to
    ``_MAX_MIME_HEADER`` characters because the parser needs seconds for a
    hostile value of a few hundred kilobytes.
    """

    def __init__(self) -> None:
        super().__init__()
        self._cached = functools.lru_cache(maxsize=_HEADER_CACHE_SIZE)(super().__call__)

    def __call__(self, name: str, value: str) -> BaseHeader:
        value = value[:_MAX_MIME_HEADER]
        if len(value) <= _MAX_CACHED_HEADER and name.lower() in _CACHED_HEADERS:
            return self._cached(name, value)
        return super().__call__(name, value)


_POLICY = policy.default.clone(header_factory=_BoundedHeaderRegistry())
# Embedded messages are written back out with their headers exactly as
# received and 8-bit bodies left alone.
_EMBEDDED_POLICIES = {
    linesep: _POLICY.clone(refold_source="none", cte_type="8bit", linesep=linesep) for linesep in ("\n", "\r\n")
}


@dataclass(frozen=True, slots=True)
class Contact:
    """A person in an address header."""

    name: str  # display name, decoded; "" if none
    address: str  # addr-spec; "" if unparseable


@dataclass(frozen=True, slots=True)
class AttachmentInfo:
    """What the server lists about an attachment; the content is fetched again with find_attachment."""

    id: str  # "ATT00001", "ATT00002", ... in MIME tree order, depth first
    filename: str  # safe to offer for download, never empty
    content_type: str  # lowercased "type/subtype"
    size: int  # bytes of the decoded content
    disposition: str  # "attachment" or "inline"
    content_id: str | None  # without angle brackets


@dataclass(frozen=True, slots=True)
class ParsedMessage:
    """What the server indexes and shows of a message."""

    from_: Contact | None
    to: list[Contact]
    cc: list[Contact]
    bcc: list[Contact]
    reply_to: list[Contact]
    subject: str  # decoded, whitespace collapsed
    message_id: str | None  # with angle brackets
    in_reply_to: list[str]  # message ids with angle brackets
    references: list[str]  # message ids with angle brackets, in header order
    date: datetime | None  # the Date header in UTC
    text: str  # the text/plain body parts joined with "\n"
    html: list[str]  # the text/html body parts, or the plain text as HTML
    intro: str  # the start of the text, whitespace collapsed
    attachments: list[AttachmentInfo]


@dataclass(frozen=True, slots=True)
class Digest:
    """What storing a message needs of its parse, small enough to pass between processes cheaply.

    ``html`` is only kept when there is no plain text, the one case in which
    search terms are made from it; otherwise it is the text again as HTML and
    would double what has to be copied.
    """

    from_: Contact | None
    to: list[Contact]
    cc: list[Contact]
    subject: str
    message_id: str | None
    in_reply_to: list[str]
    references: list[str]
    date: datetime | None
    text: str
    html: list[str]
    intro: str
    attachments: bool


_Kind = Literal["text", "html", "attachment"]


@dataclass(frozen=True, slots=True)
class _Leaf:
    """A MIME part that is not a container, with what its headers say about it."""

    part: Message
    kind: _Kind
    content_type: str
    disposition: str
    filename: str
    content_id: str | None
    charset: str | None


def parse_message(raw: bytes) -> ParsedMessage:
    """Parse a message for storage; never raises, whatever the bytes."""
    try:
        return _parse_message(raw)
    except Exception:
        # Every header and part is already guarded; this only keeps an
        # unforeseen failure from losing a message the server has accepted.
        return _unparsed()


def digest_message(raw: bytes) -> Digest:
    """What storing the message needs of parse_message's result; never raises either."""
    try:
        # The plain text's HTML rendering is all that is left out; making it cannot fail.
        parsed = _parse_message(raw, html_from_text=False)
    except Exception:
        parsed = _unparsed()
    return Digest(
        from_=parsed.from_,
        to=parsed.to,
        cc=parsed.cc,
        subject=parsed.subject,
        message_id=parsed.message_id,
        in_reply_to=parsed.in_reply_to,
        references=parsed.references,
        date=parsed.date,
        text=parsed.text,
        html=[] if parsed.text else parsed.html,
        intro=parsed.intro,
        attachments=bool(parsed.attachments),
    )


def find_attachment(raw: bytes, attachment_id: str) -> tuple[AttachmentInfo, bytes] | None:
    """Re-parse and return the attachment's info and decoded bytes, walking the same order as parse_message."""
    try:
        msg = _parse(raw)
        linesep = _linesep(raw)
        number = 0
        for leaf in _leaves(msg):
            if leaf.kind == "attachment":
                number += 1
                if _attachment_id(number) == attachment_id:
                    return _attachment(leaf, number, linesep)
    except Exception:
        # Same reasoning as parse_message: a broken message has no attachment.
        return None
    return None


def normalize_subject(subject: str) -> str:
    """Subject for threading: without reply/forward prefixes and [list tags], whitespace collapsed, casefolded.

    Replies are threaded with their original by subject when references are
    missing, and every client and list decorates subjects differently.
    """
    rest = subject[_SUBJECT_PREFIXES.match(subject).end() :]
    return " ".join(rest.split()).casefold()


def search_terms(parsed: ParsedMessage | Digest) -> list[str]:
    """Distinct casefolded word tokens of the subject, people and body, in order of first occurrence.

    Addresses are indexed whole and as local part and domain too, so a search
    for either finds the message; the body falls back to the text of the HTML
    for messages without a plain text part.
    """
    terms: dict[str, None] = {}
    _add_words(terms, parsed.subject)
    people = [parsed.from_] if parsed.from_ else []
    for contact in [*people, *parsed.to, *parsed.cc]:
        _add_words(terms, contact.name)
        address = contact.address.casefold()
        local, _, domain = address.rpartition("@")
        for term in (address, local, domain):
            _add_term(terms, term)
        _add_words(terms, address)
    _add_words(terms, parsed.text or _html_to_text("\n".join(parsed.html)))
    return list(terms)


def tokenize_query(query: str) -> list[str]:
    """The tokens of a search query, made exactly as search_terms makes them so both agree."""
    terms: dict[str, None] = {}
    _add_words(terms, query)
    return list(terms)


# Parsing


def _unparsed() -> ParsedMessage:
    return ParsedMessage(None, [], [], [], [], "", None, [], [], None, "", [], "", [])


def _parse_message(raw: bytes, html_from_text: bool = True) -> ParsedMessage:
    msg = _parse(raw)
    headers = _header_values(msg, _TOP_HEADERS)
    texts: list[str] = []
    htmls: list[str] = []
    attachments: list[AttachmentInfo] = []
    linesep = _linesep(raw)
    for leaf in _leaves(msg):
        if leaf.kind == "attachment":
            info, _ = _attachment(leaf, len(attachments) + 1, linesep)
            attachments.append(info)
        else:
            body = _LINE_BREAKS.sub("\n", _decode_text(_payload_bytes(leaf.part), leaf.charset))
            (texts if leaf.kind == "text" else htmls).append(body)
    text = "\n".join(body for body in texts if body)
    if html_from_text and not htmls and text.strip():
        htmls.append(_text_to_html(text))
    from_ = _contacts(headers.get("from", []))
    message_ids = _message_ids(headers.get("message-id", []))
    return ParsedMessage(
        from_=from_[0] if from_ else None,
        to=_contacts(headers.get("to", [])),
        cc=_contacts(headers.get("cc", [])),
        bcc=_contacts(headers.get("bcc", [])),
        reply_to=_contacts(headers.get("reply-to", [])),
        subject=_subject(headers.get("subject", [])),
        message_id=message_ids[0] if message_ids else None,
        in_reply_to=_message_ids(headers.get("in-reply-to", [])),
        references=_message_ids(headers.get("references", [])),
        date=_date(headers.get("date", [])),
        text=text,
        html=htmls,
        intro=_intro(text if text.strip() else _html_to_text("\n".join(htmls))),
        attachments=attachments,
    )


def _parse(raw: bytes) -> Message:
    """The message tree, from the most faithful parse that succeeds.

    The feedparser calls the header parser, which can fail on a hostile
    header; the compat32 parse then still gives the structure. Both recurse
    once per nesting level, so for a message nested too deeply (or if both
    fail) only the headers are parsed and the body is kept as one part.
    """
    for message_policy in (_POLICY, policy.compat32):
        try:
            return message_from_bytes(raw, policy=message_policy)
        except RecursionError:
            break
        except Exception:
            continue
    try:
        return BytesParser(policy=policy.compat32).parsebytes(raw, headersonly=True)
    except Exception:
        return Message(policy=_POLICY)


def _linesep(raw: bytes) -> str:
    """The line ending of the message's first line, to write embedded messages back out with."""
    end = raw.find(b"\n")
    return "\r\n" if end > 0 and raw[end - 1] == 0x0D else "\n"


def _leaves(msg: Message) -> Iterator[_Leaf]:
    """The non-container parts, depth first in document order, at most ``_MAX_DEPTH`` levels deep."""
    stack: list[tuple[Message, int]] = [(msg, 0)]
    seen = 0
    while stack and seen < _MAX_PARTS:
        part, depth = stack.pop()
        seen += 1
        try:
            leaf = _classify(part)
            if leaf is None and depth < _MAX_DEPTH:
                children = [child for child in part.get_payload() if isinstance(child, Message)]
                stack.extend((child, depth + 1) for child in reversed(children))
        except Exception:
            continue
        if leaf is not None:
            yield leaf


def _classify(part: Message) -> _Leaf | None:
    """Decide whether a part is body text, body HTML or an attachment; None for a container.

    Text parts other than plain and HTML (calendars, CSV, ...) cannot be shown
    as the body, so they are attachments too rather than being dropped.
    """
    headers = _header_values(part, _PART_HEADERS)
    content_type, params = _mime_header("content-type", headers.get("content-type", []))
    if content_type.count("/") != 1:
        content_type = part.get_default_type()
    maintype = content_type.partition("/")[0]
    if part.is_multipart() and maintype != "message":
        return None
    disposition, disposition_params = _mime_header("content-disposition", headers.get("content-disposition", []))
    filename = disposition_params.get("filename") or params.get("name") or ""
    if "=?" in filename:
        filename = _decode_words(filename)
    kind: _Kind
    if disposition == "attachment":
        kind = "attachment"
    elif content_type == "text/plain":
        kind = "text"
    elif content_type == "text/html":
        kind = "html"
    elif maintype == "multipart":
        # A multipart whose boundary never appears: its content is all there is.
        kind = "text"
    else:
        kind = "attachment"
    return _Leaf(
        part=part,
        kind=kind,
        content_type=content_type,
        disposition="attachment" if disposition == "attachment" else "inline",
        filename=filename,
        content_id=_content_id(headers.get("content-id", [])),
        charset=params.get("charset"),
    )


def _attachment(leaf: _Leaf, number: int, linesep: str) -> tuple[AttachmentInfo, bytes]:
    content = _embedded_bytes(leaf.part, linesep) if leaf.part.is_multipart() else _payload_bytes(leaf.part)
    if leaf.content_type == "message/rfc822":
        fallback = "message.eml"
    else:
        fallback = f"attachment-{number}.{_extension(leaf.content_type)}"
    info = AttachmentInfo(
        id=_attachment_id(number),
        filename=_safe_filename(leaf.filename, fallback),
        content_type=leaf.content_type,
        size=len(content),
        disposition=leaf.disposition,
        content_id=leaf.content_id,
    )
    return info, content


def _attachment_id(number: int) -> str:
    return f"ATT{number:05d}"


def _payload_bytes(part: Message) -> bytes:
    """The part's content with the transfer encoding removed; broken encodings decode as far as they go."""
    try:
        payload = part.get_payload(decode=True)
    except Exception:
        return b""
    return payload if isinstance(payload, bytes) else b""


def _embedded_bytes(part: Message, linesep: str) -> bytes:
    """The bytes of the message(s) inside a message/* part, headers as received."""
    chunks: list[bytes] = []
    for inner in part.get_payload():
        if not isinstance(inner, Message):
            continue
        for generator_policy in (_EMBEDDED_POLICIES[linesep], policy.compat32.clone(linesep=linesep)):
            buffer = io.BytesIO()
            try:
                BytesGenerator(buffer, mangle_from_=False, policy=generator_policy).flatten(inner)
            except Exception:
                continue
            chunks.append(buffer.getvalue())
            break
    return linesep.encode().join(chunks)


def _decode_text(data: bytes, charset: str | None) -> str:
    """Bytes of a text part as text: by the declared charset if Python knows it, else UTF-8 or Windows-1252."""
    label = (charset or "").strip().strip("\"'").lower()
    label = _CHARSET_ALIASES.get(label, label)
    if label not in _UNDECLARED_CHARSETS:
        try:
            return data.decode(label, "replace")
        except Exception:
            # Unknown labels, and codecs that are not text encodings ("base64").
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


# Headers


def _header_values(part: Message, names: frozenset[str]) -> dict[str, list[str]]:
    """The raw values of the wanted headers, 8-bit bytes decoded and folding removed.

    Raw values are read so that one header the policy cannot parse does not
    affect the others, and so that raw UTF-8 (which the parser keeps as
    surrogate escapes) is decoded before anything parses it.
    """
    values: dict[str, list[str]] = {}
    for name, value in part.raw_items():
        key = str(name).strip().lower()
        if key in names:
            cleaned = _LINE_BREAKS.sub("", _fix_8bit(str(value)[:_MAX_HEADER]))
            values.setdefault(key, []).append(cleaned)
    return values


def _fix_8bit(value: str) -> str:
    """Turn surrogate-escaped raw bytes into text: UTF-8 if they are valid UTF-8, else Windows-1252."""
    if not _SURROGATES.search(value):
        return value
    data = value.encode("utf-8", "surrogateescape")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", "replace")


def _decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words with ``email.header``, keeping the value as it is if they are broken."""
    try:
        return _fix_8bit(str(make_header(decode_header(value))))
    except Exception:
        return value


def _subject(values: list[str]) -> str:
    if not values:
        return ""
    value = values[0]
    decoded = ""
    if len(value) <= _MAX_POLICY_HEADER and value.isascii() and "=?" not in value:
        # Without encoded words the policy's parser gives the text back unchanged.
        decoded = value
    elif len(value) <= _MAX_POLICY_HEADER:
        try:
            decoded = str(_POLICY.header_factory("subject", value))
        except Exception:
            decoded = ""
    if not decoded.strip():
        decoded = _decode_words(value)
    # A malformed encoded word can decode to nothing; the raw text beats an empty subject.
    return " ".join((decoded if decoded.strip() else value).split())


def _contacts(values: list[str]) -> list[Contact]:
    """All addresses of every occurrence of an address header, groups flattened."""
    value = ", ".join(v for v in values if v.strip())
    if not value:
        return []
    pairs: list[tuple[str, str]] | None = None
    if len(value) <= _MAX_POLICY_HEADER:
        pairs = _plain_mailboxes(value)
        if pairs is None:
            pairs = _policy_mailboxes(value)
    if pairs is None:
        try:
            pairs = [(_decode_words(name), address) for name, address in getaddresses([value])]
        except Exception:
            return []
    contacts = []
    for name, address in pairs:
        name = " ".join(_fix_8bit(name).split())
        address = _addr_spec(_fix_8bit(address))
        if name or address:
            contacts.append(Contact(name=name, address=address))
    return contacts


def _plain_mailboxes(value: str) -> list[tuple[str, str]] | None:
    """(display name, address) of every mailbox when each is "local@domain" or "Name <local@domain>".

    Most mail names people that way, with ASCII words only, and for exactly
    those forms the policy's parser (some 70 microseconds an address) gives
    the words of the name and the address as written; anything else
    (quotes, comments, groups, encoded words, 8-bit text) is left to it.
    """
    if "=?" in value:
        return None
    pairs = []
    for part in value.split(","):
        match = _PLAIN_MAILBOX.fullmatch(part)
        if match is None:
            return None
        name, bracketed, bare = match.groups()
        pairs.append((name or "", bracketed or bare))
    return pairs


def _policy_mailboxes(value: str) -> list[tuple[str, str]] | None:
    try:
        return [(address.display_name, address.addr_spec) for address in _POLICY.header_factory("to", value).addresses]
    except Exception:
        return None


def _addr_spec(address: str) -> str:
    """An address as parsed, or "" when the parser could only give back garbage ("<>", "<<<@@@>>>")."""
    address = address.strip()
    if "<" in address or ">" in address:
        return ""
    if not address.startswith('"') and any(c.isspace() for c in address):
        return ""
    return address


def _message_ids(values: list[str]) -> list[str]:
    """Message ids with angle brackets, whitespace removed, duplicates dropped, in header order.

    Comments and other text around bracketed ids are ignored; clients that
    leave out the brackets are still understood when the id has an "@".
    """
    ids: dict[str, None] = {}
    for value in values:
        found = ["".join(match.group(1).split()) for match in _MESSAGE_ID.finditer(value)]
        if not found:
            found = [word.strip("<>") for word in value.split() if "@" in word]
        ids.update((f"<{inner}>", None) for inner in found if inner)
    return list(ids)


def _date(values: list[str]) -> datetime | None:
    if not values:
        return None
    try:
        parsed = parsedate_to_datetime(values[0])
        if parsed.tzinfo is None:
            # "-0000" means UTC with the sender's zone unknown.
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except Exception:
        return None


def _mime_header(name: str, values: list[str]) -> tuple[str, dict[str, str]]:
    """The lowercased main value of a Content-Type or Content-Disposition and its decoded parameters."""
    if not values:
        return "", {}
    try:
        header = _POLICY.header_factory(name, values[0])
        main = header.content_type if name == "content-type" else header.content_disposition
        return (main or "").lower(), {key: _fix_8bit(value) for key, value in header.params.items()}
    except Exception:
        return values[0].partition(";")[0].strip().lower(), {}


def _content_id(values: list[str]) -> str | None:
    """A Content-ID without its angle brackets, as HTML refers to it in "cid:" URLs."""
    if not values:
        return None
    match = _MESSAGE_ID.search(values[0])
    inner = "".join((match.group(1) if match else values[0]).split())
    return inner or None


# Text


def _intro(text: str) -> str:
    """The first ``_INTRO_CHARS`` characters with whitespace collapsed, cut at a word boundary.

    Only the words needed are looked at, so this is cheap on long bodies.
    """
    words: list[str] = []
    length = -1
    for match in _NON_SPACE.finditer(text):
        word = match.group().translate(_INVISIBLE)
        if not word:
            continue
        if length + 1 + len(word) > _INTRO_CHARS:
            return (" ".join(words) if words else word[:_INTRO_CHARS]) + "…"
        words.append(word)
        length += 1 + len(word)
    return " ".join(words)


def _text_to_html(text: str) -> str:
    """Plain text as HTML: escaped, blank-line separated paragraphs as <p>, other line breaks as <br>."""
    paragraphs = [html.escape(p.strip("\n")) for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    return "".join("<p>" + p.replace("\n", "<br>") + "</p>" for p in paragraphs)


def _html_to_text(markup: str) -> str:
    """The visible text of HTML, for the intro and the index when there is no plain text part."""
    return html.unescape(_HTML_MARKUP.sub(_markup_replacement, markup))


def _markup_replacement(match: re.Match[str]) -> str:
    return "" if (match.group(2) or "").lower() in _INLINE_TAGS else " "


def _add_words(terms: dict[str, None], text: str) -> None:
    for match in _WORD.finditer(text):
        if len(terms) >= _MAX_TERMS:
            return
        _add_term(terms, match.group().casefold())


def _add_term(terms: dict[str, None], term: str) -> None:
    if _MIN_TERM <= len(term) <= _MAX_TERM and len(terms) < _MAX_TERMS:
        terms[term] = None


# File names


def _safe_filename(name: str, fallback: str) -> str:
    """A file name that is safe to offer for download: no directories, control characters or leading dots."""
    name = name.replace("\\", "/").rpartition("/")[2]
    name = _UNSAFE_FILENAME.sub("", name).lstrip(". ").rstrip()
    return _limit_bytes(name or fallback, _MAX_FILENAME_BYTES)


def _limit_bytes(name: str, limit: int) -> str:
    """Shorten a name to ``limit`` bytes of UTF-8, keeping a short extension."""
    if len(name.encode()) <= limit:
        return name
    stem, dot, extension = name.rpartition(".")
    suffix = f".{extension}" if dot and stem and len(extension.encode()) < _MAX_EXTENSION_BYTES else ""
    head = (stem if suffix else name).encode()[: limit - len(suffix.encode())]
    return head.decode("utf-8", "ignore") + suffix


def _extension(content_type: str) -> str:
    """A file name extension for a content type, for attachments that do not name themselves."""
    if content_type in _EXTENSIONS:
        return _EXTENSIONS[content_type]
    subtype = content_type.partition("/")[2]
    return subtype if _EXTENSION.fullmatch(subtype) else "bin"
