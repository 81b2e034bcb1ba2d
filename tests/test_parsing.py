"""Parsing of raw messages: headers, bodies, attachments, index terms, and robustness.

Messages are built with ``email.message.EmailMessage`` where the standard
library writes what a mailer would, and as byte literals where the point is
exactly what is on the wire (encoded words, raw 8-bit headers, broken MIME).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage

import pytest

from merganser.resolvers import parsing
from merganser.resolvers.parsing import (
    AttachmentInfo,
    Contact,
    ParsedMessage,
    find_attachment,
    normalize_subject,
    parse_message,
    search_terms,
    tokenize_query,
)

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PDF = b"%PDF-1.4\n" + b"\x00\x01\xfe\xff" * 300 + b"\n%%EOF\n"


def _message(**headers: str) -> EmailMessage:
    msg = EmailMessage()
    for name, value in headers.items():
        msg[name.replace("_", "-")] = value
    return msg


def _with_attachment(filename: str) -> bytes:
    msg = _message(Subject="file")
    msg.set_content("see attached\n")
    msg.add_attachment(b"data", maintype="application", subtype="octet-stream", filename=filename)
    return msg.as_bytes()


# Headers and plain text bodies


def test_simple_text_message() -> None:
    msg = _message(
        From="Alice Example <alice@example.com>",
        To="Bob <bob@example.org>, carol@example.net",
        Cc="Dave <dave@example.org>",
        Bcc="eve@example.com",
        Reply_To="Lists <list@example.com>",
        Subject="Quarterly   report",
        Message_ID="<m1@example.com>",
        Date="Tue, 01 Jul 2003 10:52:37 +0200",
    )
    msg.set_content("Hello <b>world</b>\nsecond line\n\nNew paragraph & more\n")

    parsed = parse_message(msg.as_bytes())

    assert parsed.from_ == Contact("Alice Example", "alice@example.com")
    assert parsed.to == [Contact("Bob", "bob@example.org"), Contact("", "carol@example.net")]
    assert parsed.cc == [Contact("Dave", "dave@example.org")]
    assert parsed.bcc == [Contact("", "eve@example.com")]
    assert parsed.reply_to == [Contact("Lists", "list@example.com")]
    assert parsed.subject == "Quarterly report"
    assert parsed.message_id == "<m1@example.com>"
    assert parsed.in_reply_to == []
    assert parsed.references == []
    assert parsed.date == datetime(2003, 7, 1, 8, 52, 37, tzinfo=UTC)
    assert parsed.text == "Hello <b>world</b>\nsecond line\n\nNew paragraph & more\n"
    assert parsed.html == ["<p>Hello &lt;b&gt;world&lt;/b&gt;<br>second line</p><p>New paragraph &amp; more</p>"]
    assert parsed.intro == "Hello <b>world</b> second line New paragraph & more"
    assert parsed.attachments == []


def test_crlf_line_endings_are_normalized_in_text() -> None:
    raw = b"Subject: crlf\r\nContent-Type: text/plain\r\n\r\nline one\r\nline two\r\n"

    parsed = parse_message(raw)

    assert parsed.text == "line one\nline two\n"
    assert parsed.html == ["<p>line one<br>line two</p>"]


def test_missing_headers_give_empty_values() -> None:
    parsed = parse_message(b"\r\njust a body\r\n")

    assert parsed.from_ is None
    assert (parsed.to, parsed.cc, parsed.bcc, parsed.reply_to) == ([], [], [], [])
    assert (parsed.subject, parsed.message_id, parsed.date) == ("", None, None)
    assert parsed.text == "just a body\n"


def test_encoded_words_in_subject_and_display_names() -> None:
    raw = (
        b"From: =?iso-8859-1?q?Andr=E9?= <andre@example.com>\r\n"
        b"To: =?utf-8?b?0JDQvdC00YDQuNGB?= <andris@example.com>, =?utf-8?q?Caf=C3=A9?= <cafe@example.com>\r\n"
        b"Subject: =?utf-8?q?Caf=C3=A9_au_lait?= and\r\n =?iso-8859-1?q?cr=E8me?=\r\n"
        b"\r\nbody\r\n"
    )

    parsed = parse_message(raw)

    assert parsed.subject == "Café au lait and crème"
    assert parsed.from_ == Contact("André", "andre@example.com")
    assert parsed.to == [Contact("Андрис", "andris@example.com"), Contact("Café", "cafe@example.com")]


def test_raw_utf8_headers() -> None:
    raw = "From: Jürgen Groß <juergen@example.de>\r\nSubject: Grüße aus Köln\r\n\r\nHallo\r\n".encode()

    parsed = parse_message(raw)

    assert parsed.subject == "Grüße aus Köln"
    assert parsed.from_ == Contact("Jürgen Groß", "juergen@example.de")


def test_raw_latin1_headers_fall_back_to_windows_1252() -> None:
    raw = "From: André <andre@example.fr>\r\nSubject: Café\r\n\r\nx\r\n".encode("latin-1")

    parsed = parse_message(raw)

    assert parsed.subject == "Café"
    assert parsed.from_ == Contact("André", "andre@example.fr")


def test_internationalized_addresses() -> None:
    raw = (
        "From: Андрис <андрис@уайлддак.орг>\r\nTo: info@уайлддак.орг, Ünï <ünï@exämple.de>\r\n\r\nПривет\r\n"
    ).encode()

    parsed = parse_message(raw)

    assert parsed.from_ == Contact("Андрис", "андрис@уайлддак.орг")
    assert parsed.to == [Contact("", "info@уайлддак.орг"), Contact("Ünï", "ünï@exämple.de")]
    terms = search_terms(parsed)
    assert {"андрис@уайлддак.орг", "андрис", "уайлддак.орг", "уайлддак", "орг", "привет"} <= set(terms)


def test_quoted_local_part_is_kept() -> None:
    parsed = parse_message(b'From: "john doe"@example.com\r\n\r\nx')

    assert parsed.from_ == Contact("", '"john doe"@example.com')


def test_groups_and_repeated_address_headers_are_flattened() -> None:
    raw = b"To: team: a@example.com, b@example.com;\r\nTo: c@example.com\r\nCc: undisclosed-recipients:;\r\n\r\nx"

    parsed = parse_message(raw)

    assert [contact.address for contact in parsed.to] == ["a@example.com", "b@example.com", "c@example.com"]
    assert parsed.cc == []


def test_long_address_list_uses_the_linear_parser() -> None:
    addresses = [f"=?utf-8?q?N=C3=BC{i}?= <user{i}@example.com>" for i in range(200)]
    raw = ("To: " + ",\r\n ".join(addresses) + "\r\n\r\nx").encode()

    parsed = parse_message(raw)

    assert len(parsed.to) == 200
    assert parsed.to[0] == Contact("Nü0", "user0@example.com")
    assert parsed.to[199] == Contact("Nü199", "user199@example.com")


def test_date_is_converted_to_utc() -> None:
    parsed = parse_message(b"Date: Mon, 31 Dec 2018 23:30:00 -0330\r\n\r\nx")

    assert parsed.date == datetime(2019, 1, 1, 3, 0, tzinfo=UTC)
    assert parsed.date.tzinfo is UTC


def test_date_without_zone_information_is_utc() -> None:
    parsed = parse_message(b"Date: Mon, 1 Jan 2024 12:00:00 -0000\r\n\r\nx")

    assert parsed.date == datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("value", [b"yesterday", b"", b"Mon, 1 Jan 99999 00:00:00 +0000", b"32 Foo 2020 99:99"])
def test_bad_date_is_none(value: bytes) -> None:
    assert parse_message(b"Date: " + value + b"\r\n\r\nx").date is None


def test_message_ids_and_threading_headers() -> None:
    raw = (
        b"Message-ID:  <m3@example.com>  \r\n"
        b"In-Reply-To: <m2@example.com> (Bob's message of Monday)\r\n"
        b"References: <m0@example.com>\r\n <m1@example.com> <m2@example.com>\r\n\t<m1@example.com>\r\n"
        b"\r\nx"
    )

    parsed = parse_message(raw)

    assert parsed.message_id == "<m3@example.com>"
    assert parsed.in_reply_to == ["<m2@example.com>"]
    assert parsed.references == ["<m0@example.com>", "<m1@example.com>", "<m2@example.com>"]


def test_message_ids_without_angle_brackets() -> None:
    parsed = parse_message(b"Message-ID: bare@example.com\r\nIn-Reply-To: not an id\r\n\r\nx")

    assert parsed.message_id == "<bare@example.com>"
    assert parsed.in_reply_to == []


# Bodies


def test_multipart_alternative() -> None:
    msg = _message(Subject="alt")
    msg.set_content("Plain version\n")
    msg.add_alternative("<p>HTML <i>version</i></p>\n", subtype="html")

    parsed = parse_message(msg.as_bytes())

    assert parsed.text == "Plain version\n"
    assert parsed.html == ["<p>HTML <i>version</i></p>\n"]
    assert parsed.intro == "Plain version"
    assert parsed.attachments == []


def test_html_only_message_takes_intro_and_terms_from_the_html() -> None:
    msg = _message(Subject="news")
    msg.set_content(
        "<html><head><title>Ignored title</title><style>p { color: red }</style></head>"
        "<body><script>var hidden = 1;</script><p>Fish&nbsp;&amp;&nbsp;chips</p><p>today</p></body></html>",
        subtype="html",
    )

    parsed = parse_message(msg.as_bytes())

    assert parsed.text == ""
    assert len(parsed.html) == 1
    assert parsed.intro == "Fish & chips today"
    terms = search_terms(parsed)
    assert terms == ["news", "fish", "chips", "today"]


def test_text_from_html_keeps_words_split_by_inline_tags_whole() -> None:
    msg = _message(Subject="x")
    markup = "<p>Hel<b>lo</b> <SPAN class=a>wor</span>ld</p><div>next</div><!-- x -->line<br>end"
    msg.set_content(markup, subtype="html")

    assert parse_message(msg.as_bytes()).intro == "Hello world next line end"


def test_text_parts_accumulate_across_multipart_mixed() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nfirst\r\n"
        b"--b\r\nContent-Type: image/gif\r\nContent-Transfer-Encoding: base64\r\n\r\nR0lGODlh\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nsecond\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n<p>one</p>\r\n"
        b"--b\r\nContent-Type: text/html\r\n\r\n<p>two</p>\r\n"
        b"--b--\r\n"
    )

    parsed = parse_message(raw)

    assert parsed.text == "first\nsecond"
    assert parsed.html == ["<p>one</p>", "<p>two</p>"]
    assert [(a.id, a.filename, a.content_type, a.size) for a in parsed.attachments] == [
        ("ATT00001", "attachment-1.gif", "image/gif", 6)
    ]


def test_body_charsets_and_transfer_encodings() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
        b"caf=E9 cr=\r\n=E8me\r\n"
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.b64encode("Grüße".encode())
        + b"\r\n--b\r\nContent-Type: text/plain; charset=x-unknown\r\n\r\nna\xefve\r\n"
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nbad \xff byte\r\n"
        b"--b--\r\n"
    )

    parsed = parse_message(raw)

    assert parsed.text == "café crème\nGrüße\nnaïve\nbad \ufffd byte"


def test_long_text_gives_truncated_intro() -> None:
    words = [f"word{i}" for i in range(100)]
    msg = _message(Subject="long")
    msg.set_content("  \n\t".join(words) + "\n")

    intro = parse_message(msg.as_bytes()).intro

    assert intro.endswith("…")
    assert len(intro) <= 129
    body = intro[:-1]
    collapsed = " ".join(words)
    assert collapsed.startswith(body + " ")
    assert len(body) > 100


def test_intro_of_a_single_huge_word_is_cut() -> None:
    intro = parse_message(b"\r\n" + b"x" * 300).intro

    assert intro == "x" * 128 + "…"


def test_intro_skips_invisible_padding() -> None:
    msg = _message(Subject="pad")
    msg.set_content("\u200c\u034f \u200c Hello\u00a0there\n")

    assert parse_message(msg.as_bytes()).intro == "Hello there"


# Attachments


def _mixed_with_attachments() -> bytes:
    msg = _message(Subject="files", From="a@example.com")
    msg.set_content("Two files attached.\n")
    msg.add_attachment(PNG, maintype="image", subtype="png", filename="chart.png")
    msg.add_attachment(PDF, maintype="application", subtype="pdf", filename="report.pdf")
    return msg.as_bytes()


def test_attachments_in_multipart_mixed() -> None:
    raw = _mixed_with_attachments()
    assert b"Content-Transfer-Encoding: base64" in raw

    parsed = parse_message(raw)

    assert parsed.text == "Two files attached.\n"
    assert parsed.attachments == [
        AttachmentInfo("ATT00001", "chart.png", "image/png", len(PNG), "attachment", None),
        AttachmentInfo("ATT00002", "report.pdf", "application/pdf", len(PDF), "attachment", None),
    ]


def test_find_attachment_returns_decoded_bytes() -> None:
    raw = _mixed_with_attachments()

    png = find_attachment(raw, "ATT00001")
    pdf = find_attachment(raw, "ATT00002")

    assert png is not None and pdf is not None
    assert png == (AttachmentInfo("ATT00001", "chart.png", "image/png", len(PNG), "attachment", None), PNG)
    assert pdf[0].filename == "report.pdf"
    assert pdf[1] == PDF


@pytest.mark.parametrize("attachment_id", ["ATT00003", "ATT00000", "att00001", "", "nonsense"])
def test_find_attachment_unknown_id(attachment_id: str) -> None:
    assert find_attachment(_mixed_with_attachments(), attachment_id) is None


def test_inline_image_in_multipart_related() -> None:
    msg = _message(Subject="logo")
    msg.set_content("See the logo.\n")
    msg.add_alternative('<p>Logo: <img src="cid:logo@example.com"></p>\n', subtype="html")
    html_part = msg.get_payload()[1]
    html_part.add_related(PNG, maintype="image", subtype="png", cid="<logo@example.com>")
    raw = msg.as_bytes()

    parsed = parse_message(raw)

    assert parsed.text == "See the logo.\n"
    assert parsed.html == ['<p>Logo: <img src="cid:logo@example.com"></p>\n']
    assert parsed.attachments == [
        AttachmentInfo("ATT00001", "attachment-1.png", "image/png", len(PNG), "inline", "logo@example.com")
    ]
    found = find_attachment(raw, "ATT00001")
    assert found is not None and found[1] == PNG


def test_message_rfc822_attachment() -> None:
    inner = _message(Subject="Inner subject", From="inner@example.com")
    inner.set_content("Inner body\n")
    outer = _message(Subject="Fwd: Inner subject")
    outer.set_content("Forwarding.\n")
    outer.add_attachment(inner)
    raw = outer.as_bytes()

    parsed = parse_message(raw)

    assert parsed.text == "Forwarding.\n"
    assert [(a.id, a.filename, a.content_type, a.disposition) for a in parsed.attachments] == [
        ("ATT00001", "message.eml", "message/rfc822", "attachment")
    ]
    found = find_attachment(raw, "ATT00001")
    assert found is not None
    info, content = found
    assert info.size == len(content)
    embedded = parse_message(content)
    assert embedded.subject == "Inner subject"
    assert embedded.from_ == Contact("", "inner@example.com")
    assert embedded.text == "Inner body\n"


def test_text_part_with_attachment_disposition_is_an_attachment() -> None:
    msg = _message(Subject="notes")
    msg.set_content("Body text.\n")
    msg.add_attachment("notes in a file\n", filename="notes.txt")
    raw = msg.as_bytes()

    parsed = parse_message(raw)

    assert parsed.text == "Body text.\n"
    assert [(a.filename, a.content_type, a.size) for a in parsed.attachments] == [("notes.txt", "text/plain", 16)]
    found = find_attachment(raw, "ATT00001")
    assert found is not None and found[1] == b"notes in a file\n"


def test_inline_text_part_with_filename_is_body() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nbefore\r\n"
        b'--b\r\nContent-Type: text/plain; name="inline.txt"\r\nContent-Disposition: inline; filename="inline.txt"\r\n'
        b"\r\ninline text\r\n"
        b"--b--\r\n"
    )

    parsed = parse_message(raw)

    assert parsed.text == "before\ninline text"
    assert parsed.attachments == []


def test_other_text_types_are_attachments() -> None:
    raw = (
        b"Content-Type: multipart/alternative; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\n\r\nInvitation\r\n"
        b"--b\r\nContent-Type: text/calendar; method=REQUEST\r\n\r\nBEGIN:VCALENDAR\r\nEND:VCALENDAR\r\n"
        b"--b--\r\n"
    )

    parsed = parse_message(raw)

    assert parsed.text == "Invitation"
    assert [(a.filename, a.content_type, a.disposition) for a in parsed.attachments] == [
        ("attachment-1.ics", "text/calendar", "inline")
    ]


def test_single_part_non_text_message_is_an_attachment() -> None:
    raw = b"Content-Type: application/zip\r\nContent-Transfer-Encoding: base64\r\n\r\nUEsDBA==\r\n"

    parsed = parse_message(raw)

    assert parsed.text == ""
    assert parsed.html == []
    assert parsed.attachments == [AttachmentInfo("ATT00001", "attachment-1.zip", "application/zip", 4, "inline", None)]


def test_encoded_word_and_rfc2231_filenames() -> None:
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b'--b\r\nContent-Type: application/pdf; name="=?utf-8?q?R=C3=A9sum=C3=A9.pdf?="\r\n\r\n%PDF\r\n'
        b"--b\r\nContent-Type: application/pdf\r\nContent-Disposition: attachment;\r\n"
        b" filename*0*=utf-8''%C3%9Cbersicht%20;\r\n filename*1=2024.pdf\r\n\r\n%PDF\r\n"
        b"--b--\r\n"
    )

    parsed = parse_message(raw)

    assert [a.filename for a in parsed.attachments] == ["Résumé.pdf", "Übersicht 2024.pdf"]


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\x\\evil.exe", "evil.exe"),
        ("..\\..\\boot.ini", "boot.ini"),
        (".bashrc", "bashrc"),
        ("...", "attachment-1.bin"),
        ("dir/", "attachment-1.bin"),
        ("tab\there\x7f.txt", "tabhere.txt"),
        ("invoice\u202egpj.exe", "invoicegpj.exe"),
        ("Ünïcödé name.docx", "Ünïcödé name.docx"),
    ],
)
def test_filenames_are_sanitized(filename: str, expected: str) -> None:
    parsed = parse_message(_with_attachment(filename))

    assert [a.filename for a in parsed.attachments] == [expected]


def test_backslashes_in_rfc2231_filename_are_directory_separators() -> None:
    raw = (
        b"Content-Type: application/octet-stream\r\n"
        b"Content-Disposition: attachment; filename*=utf-8''C%3A%5Cx%5Cevil.exe\r\n\r\nMZ"
    )

    assert [a.filename for a in parse_message(raw).attachments] == ["evil.exe"]


def test_long_filename_is_cut_to_255_bytes_keeping_the_extension() -> None:
    parsed = parse_message(_with_attachment("ü" * 300 + ".pdf"))

    filename = parsed.attachments[0].filename
    assert len(filename.encode()) <= 255
    assert filename == "ü" * 125 + ".pdf"


# Subjects, terms and queries


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Re: RE: Fwd: [list] Hello  world", "hello world"),
        ("AW: SV: Re[3]: x", "x"),
        ("[dev-list] Re: [other] FW: Topic", "topic"),
        ("RE : Re(2): VS: Antw: Status", "status"),
        ("Fwd:Fw:re:aw:  Spaced\tout ", "spaced out"),
        ("Report on Re: prefixes", "report on re: prefixes"),
        ("Reply needed", "reply needed"),
        ("Straße", "strasse"),
        ("", ""),
    ],
)
def test_normalize_subject(subject: str, expected: str) -> None:
    assert normalize_subject(subject) == expected


def test_normalize_subject_is_fast_on_hostile_input() -> None:
    assert normalize_subject("re" + " " * 50_000 + "x") == "re x"


def test_search_terms() -> None:
    msg = _message(
        Subject="Quarterly REPORT: numbers",
        From="Alice Smith <Alice.Smith@Example.COM>",
        To="Bob <bob@example.org>",
        Cc="Straße <carol@example.net>",
        Bcc="hidden@secret.example",
    )
    msg.set_content("The report is attached. Report again, a b c.\n")

    terms = search_terms(parse_message(msg.as_bytes()))

    assert terms[:3] == ["quarterly", "report", "numbers"]
    assert "alice.smith@example.com" in terms
    assert {"alice.smith", "example.com", "alice", "smith", "example", "com"} <= set(terms)
    assert {"bob", "bob@example.org", "example.org", "strasse", "carol", "attached", "again"} <= set(terms)
    assert "hidden" not in terms and "secret" not in terms
    assert len(terms) == len(set(terms))
    assert "a" not in terms and "b" not in terms
    assert all(term == term.casefold() for term in terms)


def test_search_terms_are_capped_and_keep_first_occurrences() -> None:
    msg = _message(Subject="first")
    msg.set_content(" ".join(f"w{i}" for i in range(5000)) + " " + "z" * 65 + "\n")

    terms = search_terms(parse_message(msg.as_bytes()))

    assert len(terms) == 2000
    assert terms[:3] == ["first", "w0", "w1"]
    assert terms[-1] == "w1998"


def test_tokenize_query() -> None:
    assert tokenize_query("Hello, WORLD!") == ["hello", "world"]
    assert tokenize_query("  Grüße  grüsse GRÜSSE x ") == ["grüsse"]
    assert tokenize_query("alice.smith@example.com") == ["alice", "smith", "example", "com"]
    assert tokenize_query("") == []


def test_query_tokens_match_indexed_terms() -> None:
    msg = _message(Subject="Café déjà vu", From="Zoë <zoe@example.com>")
    msg.set_content("Ærøskøbing\n")

    terms = set(search_terms(parse_message(msg.as_bytes())))

    assert set(tokenize_query("CAFÉ Déjà zoë ærøskøbing")) <= terms


# Robustness


def _nested(depth: int) -> bytes:
    opening = b"".join(
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i, i + 1) for i in range(depth)
    )
    closing = b"".join(b"\r\n--b%d--\r\n" % i for i in reversed(range(depth)))
    leaf = b"--b%d\r\nContent-Type: text/plain\r\n\r\ndeep text\r\n--b%d--\r\n" % (depth, depth)
    return b"Subject: deep\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n" + opening + leaf + closing


NASTY_INPUTS = {
    "empty": b"",
    "binary garbage": b"\x00\xff" * 100,
    "header only, no blank line": b"Subject: hi\r\nFrom: a@example.com",
    "unterminated multipart": b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\n\r\nstart",
    "boundary never appears": b"Content-Type: multipart/mixed; boundary=nothere\r\n\r\nno parts at all\r\n",
    "invalid base64": b"Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!***=\r\n",
    "invalid quoted-printable": b"Content-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n=",
    "unknown charset": b"Content-Type: text/plain; charset=x-unknown\r\n\r\ncaf\xe9",
    "non-text codec as charset": b"Content-Type: text/plain; charset=base64\r\n\r\nhello",
    "nested 200 levels": _nested(200),
    "1 MB single line": b"Subject: x\r\n\r\n" + b"a" * 1_000_000,
    "1 MB single header line": b"Subject: " + b"word " * 200_000 + b"\r\n\r\nbody",
    "malformed encoded words": b"Subject: =?utf-8?B?***?=\r\nFrom: =?utf-8?q?broken <a@example.com>\r\n\r\nx",
    "unknown charset in encoded word": b"Subject: =?x-unknown?q?Caf=E9?=\r\nTo: =?bogus?b?AAAA?= <a@b.c>\r\n\r\nx",
    "garbage address": b'To: <<<@@@>>>\r\nFrom: @@@\r\nCc: "unterminated <a@b>\r\n\r\nx',
    "duplicate content-type": b"Content-Type: text/html\r\nContent-Type: text/plain\r\n\r\n<b>x</b>",
    "multipart without boundary": b"Content-Type: multipart/mixed\r\n\r\n--x\r\n\r\nhello\r\n--x--\r\n",
    "non-ascii header name": "Subjéct: x\r\nFrom: a@example.com\r\n\r\nbody".encode(),
    "invalid content-type": b"Content-Type: ;;;===\r\nContent-Disposition: ;filename=\r\n\r\nx",
    "huge content-type": b"Content-Type: multipart/mixed; " + b"x=y; " * 50_000 + b"boundary=b\r\n\r\n--b--\r\n",
    "bare carriage returns": b"Subject: a\rFrom: b\r\rbody\r",
    "nul bytes in headers": b"Subject: a\x00b\r\nFrom: \x00 <a@b.c>\r\n\r\n\x00",
    "message/rfc822 with garbage": b"Content-Type: message/rfc822\r\n\r\n\xff\xfe\x00: :\r\n",
    "truncated base64 attachment": _mixed_with_attachments()[:-400],
    "only a boundary line": b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b",
    "broken mime parameters": b"Content-Type: text/plain; charset*=''; name*0*=%ZZ\r\n\r\nx",
    "8-bit garbage in date and ids": b"Date: \xff\xfe\r\nMessage-ID: <\xff>\r\nReferences: <<<>>>\r\n\r\nx",
}


@pytest.mark.parametrize("raw", NASTY_INPUTS.values(), ids=NASTY_INPUTS.keys())
def test_nasty_input_does_not_raise(raw: bytes) -> None:
    # The unguarded parse: parse_message's last-resort guard must not be what saves these.
    parsed = parsing._parse_message(raw)

    assert parse_message(raw) == parsed
    assert isinstance(parsed, ParsedMessage)
    assert isinstance(parsed.subject, str) and "\n" not in parsed.subject and "\r" not in parsed.subject
    assert len(parsed.intro) <= 129
    assert all(attachment.filename for attachment in parsed.attachments)
    assert isinstance(search_terms(parsed), list)
    for attachment in parsed.attachments:
        found = find_attachment(raw, attachment.id)
        assert found is not None and found[0] == attachment and len(found[1]) == attachment.size
    assert find_attachment(raw, "ATT99999") is None


def test_nested_message_still_parses_headers_and_caps_depth() -> None:
    shallow = parse_message(_nested(20))
    deep = parse_message(_nested(200))

    assert (shallow.subject, shallow.text) == ("deep", "deep text")
    assert (deep.subject, deep.text) == ("deep", "")


def test_values_recovered_from_broken_headers() -> None:
    parsed = parse_message(NASTY_INPUTS["malformed encoded words"])

    assert parsed.subject == "=?utf-8?B?***?="
    assert parsed.from_ == Contact("=?utf-8?q?broken", "a@example.com")
    # The policy decodes words in an unknown charset with replacement characters.
    assert parse_message(NASTY_INPUTS["unknown charset in encoded word"]).subject == "Caf\ufffd"


def test_garbage_addresses_are_dropped() -> None:
    parsed = parse_message(NASTY_INPUTS["garbage address"])

    assert parsed.from_ is None
    assert parsed.to == []
    assert parsed.cc == []


def test_broken_bodies_decode_as_far_as_they_go() -> None:
    assert parse_message(NASTY_INPUTS["unknown charset"]).text == "café"
    assert parse_message(NASTY_INPUTS["non-text codec as charset"]).text == "hello"
    assert parse_message(NASTY_INPUTS["multipart without boundary"]).text == "--x\n\nhello\n--x--\n"
    assert parse_message(NASTY_INPUTS["unterminated multipart"]).text == "start"
    assert parse_message(NASTY_INPUTS["duplicate content-type"]).html == ["<b>x</b>"]


def test_huge_lines_are_kept() -> None:
    long_body = parse_message(NASTY_INPUTS["1 MB single line"])
    long_subject = parse_message(NASTY_INPUTS["1 MB single header line"])

    assert len(long_body.text) == 1_000_000
    assert long_body.intro == "a" * 128 + "…"
    # Header values are cut at 100,000 characters.
    assert long_subject.subject == " ".join(["word"] * 20_000)
    assert long_subject.text == "body"


def test_header_without_blank_line_is_all_headers() -> None:
    parsed = parse_message(NASTY_INPUTS["header only, no blank line"])

    assert (parsed.subject, parsed.from_, parsed.text, parsed.html) == ("hi", Contact("", "a@example.com"), "", [])


def test_truncated_attachment_keeps_earlier_parts() -> None:
    parsed = parse_message(NASTY_INPUTS["truncated base64 attachment"])

    assert parsed.subject == "files"
    assert parsed.text == "Two files attached.\n"
    assert [a.filename for a in parsed.attachments] == ["chart.png", "report.pdf"]
    assert parsed.attachments[0].size == len(PNG)
    assert parsed.attachments[1].size < len(PDF)


def test_embedded_message_keeps_raw_utf8_headers() -> None:
    inner = "Subject: Grüße\r\nFrom: Jürgen <j@example.de>\r\n\r\nHallo\r\n".encode()
    raw = (
        b"Content-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--b--\r\n"
    )

    found = find_attachment(raw, "ATT00001")

    assert found is not None
    assert found[1].startswith("Subject: Grüße\r\nFrom: Jürgen <j@example.de>\r\n\r\nHallo".encode())
    assert message_from_bytes(found[1], policy=policy.default)["subject"] == "Grüße"
