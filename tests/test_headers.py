"""The relay reads Message-ID, From and Subject from the header block by handing the stdlib parser only
those fields' lines: the result must be what the parser gives for the whole block, on any block."""
from __future__ import annotations

import pytest

from proxy.relay.headers import _PARSER, HeaderFacts, _decoded, header_block, read_headers


def whole_block(content: bytes) -> HeaderFacts:
    """The reading before: every header line through the parser."""
    msg = _PARSER.parsebytes(header_block(content), headersonly=True)
    msgid = msg.get("Message-ID")
    return HeaderFacts(msgid.strip().strip("<>").strip() if msgid else None,
                       _decoded(msg.get("From")), _decoded(msg.get("Subject")))


BLOCKS = [
    b"From: <a@b.c>\r\nTo: <d@e.f>\r\nDate: Sun,  6 Dec 2026 20:34:10 +0000\r\nMessage-Id: <24df.0003@vm>\r\n\r\nbody\r\n",
    b"Subject: folded\r\n over two\r\n\tand three lines\r\nMessage-ID:\r\n <folded@id>\r\n\r\nbody",
    b"Subject: first\r\nSubject: second\r\nFrom: one <1@x>\r\nfrom: two <2@x>\r\n\r\n",
    b"X-From: not this\r\nX-Subject: nor this\r\nReceived: from x\r\n by y\r\nSubject: this\r\n\r\n",
    b"Subject: =?utf-8?q?Caf=C3=A9?= =?utf-8?b?w6l0w6k=?=\r\nFrom: =?iso-8859-1?q?J=F6rg?= <j@x>\r\n\r\n",
    b"To: a\r\nno colon on this line\r\nSubject: after the end of the headers\r\n\r\n",
    b"To: a\r\nSubject : a space before the colon ends the headers\r\nMessage-ID: <late@x>\r\n\r\n",
    b"From someone Sun Dec  6 2026\r\nSubject: after an mbox line\r\n\r\n",
    b"Subject: only headers, no blank line\r\nMessage-ID: <x@y>",
    b"Subject: LF only\nMessage-ID: <lf@only>\n\nbody\n",
    b"Subject: a bare\rCR splits the line\r\nMessage-ID: <cr@x>\r\n\r\n",
    b"Subject: 8bit \xc3\xa9t\xc3\xa9 \xff\r\nFrom: \xe2\x82\xac <e@x>\r\n\r\n",
    b"Message-ID: <  spaced@id  >\r\n\r\n",
    b"Message-ID:\r\n\r\n",
    b"\r\nSubject: in the body\r\n",
    b"",
    b":\r\nSubject: after an empty field name\r\n\r\n",
    b"Subject:\tleading tab\r\n \r\nMessage-ID: <after-blank-continuation@x>\r\n\r\n",
]


@pytest.mark.parametrize("content", BLOCKS)
def test_the_selected_fields_read_as_the_whole_block_does(content):
    assert read_headers(content) == whole_block(content)


def test_the_fields_are_read():
    facts = read_headers(BLOCKS[1])
    assert facts == HeaderFacts("folded@id", None, "folded\r\n over two\r\n\tand three lines")  # compat32 keeps folds
    assert read_headers(BLOCKS[4]).subject == "Caféété"  # RFC 2047 6.2: blanks between encoded words go
    assert read_headers(BLOCKS[5]).subject is None  # the parser's headers ended at the line without a colon
