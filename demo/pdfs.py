"""Small PDFs written byte for byte: pages with a real text layer (Helvetica text objects), an encrypted one,
and a broken one, for the PDF reader's tests and the demo corpus.

    pdf_bytes([["Chapter 1", "Light travels in straight lines."], ["Page two"]]) → bytes of a 2-page PDF

No PDF library writes them: the objects, the cross-reference table and the trailer are laid out here, so the
reader is tested on the structure real producers emit (one content stream per page, a standard font resource).
"""
from __future__ import annotations

import hashlib


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _content(lines: list[str], width: int, height: int) -> bytes:
    ops = ["0.85 0.9 1 rg", f"36 {height - 30} {width - 72} 8 re f", "0 0 0 rg", "BT", "/F1 14 Tf", "18 TL",
           f"40 {height - 60} Td"]
    for line in lines:
        ops.append(f"({_escape(line)}) Tj T*")
    ops.append("ET")
    return "\n".join(ops).encode("latin-1", "replace")


def pdf_bytes(pages: list[list[str]], width: int = 420, height: int = 300, encrypted: bool = False) -> bytes:
    """A PDF with one page per entry of `pages`, each line of text drawn as a text object. With `encrypted`, the
    trailer names a standard security handler whose user password is not empty (readers must refuse it)."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    catalog = add(b"")  # filled once the page tree's number is known
    pages_obj = add(b"")
    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>")
    kids = []
    for lines in pages:
        stream = _content(lines, width, height)
        contents = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        kids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %d %d] /Resources << /Font << /F1 %d 0 R >> >>"
                        b" /Contents %d 0 R >>" % (pages_obj, width, height, font, contents)))
    objects[catalog - 1] = b"<< /Type /Catalog /Pages %d 0 R >>" % pages_obj
    objects[pages_obj - 1] = (b"<< /Type /Pages /Kids [" + b" ".join(b"%d 0 R" % k for k in kids)
                              + b"] /Count %d >>" % len(kids))
    encrypt = 0
    if encrypted:
        digest = hashlib.sha256(repr(pages).encode()).digest()
        o_value, u_value = (digest * 2)[:32], (digest[::-1] * 2)[:32]
        encrypt = add(b"<< /Filter /Standard /V 1 /R 2 /Length 40 /P -44 /O <" + o_value.hex().encode()
                      + b"> /U <" + u_value.hex().encode() + b"> >>")

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    trailer = b"<< /Size %d /Root %d 0 R" % (len(objects) + 1, catalog)
    if encrypt:
        file_id = hashlib.md5(bytes(out)).hexdigest().encode()
        trailer += b" /Encrypt %d 0 R /ID [<%s> <%s>]" % (encrypt, file_id, file_id)
    out += b"trailer\n" + trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def broken_pdf_bytes() -> bytes:
    """A PDF header followed by garbage: no objects, no cross-reference table."""
    return b"%PDF-1.7\n" + bytes(range(256)) * 4
