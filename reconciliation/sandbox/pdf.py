"""A tiny writer of real, valid PDF 1.4 files, without dependencies.

The sandbox Dolibarr returns invoice PDFs (builddoc/download, exchanges 75-77). Clients store them,
show them to finance staff and hand them to Aipress24, so the bytes must open in any PDF reader:
a proper object table (xref) with exact byte offsets, a trailer and `%%EOF`. Text uses the
standard Helvetica fonts with WinAnsi encoding; characters outside Latin-1 become "?".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

PAGE_WIDTH, PAGE_HEIGHT = 595, 842  # A4 in points
MARGIN = 50
LINE_HEIGHT = 14
FONT_REGULAR, FONT_BOLD = "F1", "F2"


@dataclass(frozen=True)
class Text:
    """One run of text at (x, y) from the bottom-left corner of the page."""

    x: float
    y: float
    value: str
    size: float = 10
    bold: bool = False


@dataclass
class InvoiceDocument:
    """What an invoice PDF shows: who, what, how much."""

    ref: str
    title: str
    seller: Sequence[str]
    customer: Sequence[str]
    details: Sequence[tuple[str, str]]
    lines: Sequence[tuple[str, str, str, str, str]]  # description, qty, unit net, VAT %, net
    totals: Sequence[tuple[str, str]]
    notes: Sequence[str] = field(default_factory=tuple)


def escape(value: str) -> bytes:
    """A PDF literal string body: backslash, parentheses escaped; Latin-1 (WinAnsi) bytes."""
    encoded = value.encode("latin-1", errors="replace")
    return encoded.replace(b"\\", b"\\\\").replace(b"(", b"\\(").replace(b")", b"\\)")


def _content_stream(texts: Sequence[Text]) -> bytes:
    parts = []
    for item in texts:
        font = FONT_BOLD if item.bold else FONT_REGULAR
        parts.append(
            b"BT /%s %s Tf %s %s Td (%s) Tj ET"
            % (
                font.encode(),
                _number(item.size),
                _number(item.x),
                _number(item.y),
                escape(item.value),
            )
        )
    return b"\n".join(parts) + b"\n"


def _number(value: float) -> bytes:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text.encode()


def write_pdf(pages: Sequence[Sequence[Text]], *, title: str) -> bytes:
    """The bytes of a PDF with one page per item of `pages`."""
    pages = list(pages) or [[]]
    page_count = len(pages)
    # Object numbers: 1 catalog, 2 pages, 3 regular font, 4 bold font, 5 info,
    # then for each page: the page object and its content stream.
    objects: dict[int, bytes] = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        4: (
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica-Bold "
            b"/Encoding /WinAnsiEncoding >>"
        ),
        5: b"<< /Title (%s) /Producer (ap24sync sandbox) >>" % escape(title),
    }
    kids = []
    for index, texts in enumerate(pages):
        page_number, content_number = 6 + 2 * index, 7 + 2 * index
        kids.append(b"%d 0 R" % page_number)
        stream = _content_stream(texts)
        objects[content_number] = (
            b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"endstream"
        )
        objects[page_number] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] "
            b"/Resources << /Font << /F1 3 0 R /F2 4 0 R >> >> /Contents %d 0 R >>"
            % (PAGE_WIDTH, PAGE_HEIGHT, content_number)
        )
    objects[2] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), page_count)

    output = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets: dict[int, int] = {}
    for number in sorted(objects):
        offsets[number] = len(output)
        output += b"%d 0 obj\n" % number + objects[number] + b"\nendobj\n"
    xref_offset = len(output)
    size = max(objects) + 1
    output += b"xref\n0 %d\n" % size
    output += b"0000000000 65535 f \n"
    for number in range(1, size):
        output += b"%010d 00000 n \n" % offsets[number]
    output += b"trailer\n<< /Size %d /Root 1 0 R /Info 5 0 R >>\n" % size
    output += b"startxref\n%d\n%%%%EOF\n" % xref_offset
    return bytes(output)


def invoice_pdf(document: InvoiceDocument) -> bytes:
    """An invoice laid out on A4 pages: header, parties, lines table, totals."""
    pages: list[list[Text]] = []
    texts: list[Text] = []
    y = PAGE_HEIGHT - MARGIN

    def new_page() -> None:
        nonlocal texts, y
        texts = []
        pages.append(texts)
        y = PAGE_HEIGHT - MARGIN

    def line(value: str, *, x: float = MARGIN, size: float = 10, bold: bool = False) -> None:
        texts.append(Text(x, y, value, size, bold))

    def advance(steps: float = 1) -> None:
        nonlocal y
        y -= LINE_HEIGHT * steps
        if y < MARGIN:
            new_page()

    new_page()
    line(f"{document.title} {document.ref}", size=18, bold=True)
    advance(2)
    for index, value in enumerate(document.seller):
        line(value, bold=index == 0)
        advance()
    advance()
    line("Customer", bold=True)
    advance()
    for value in document.customer:
        line(value)
        advance()
    advance()
    for label, value in document.details:
        line(f"{label}: {value}")
        advance()
    advance()
    columns = (MARGIN, 330, 380, 460, 510)
    for x, header in zip(columns, ("Description", "Qty", "Unit net", "VAT %", "Net"), strict=True):
        line(header, x=x, bold=True)
    advance()
    for row in document.lines:
        description = row[0] if len(row[0]) <= 48 else row[0][:45] + "..."
        for x, value in zip(columns, (description, *row[1:]), strict=True):
            line(value, x=x)
        advance()
    advance()
    for label, value in document.totals:
        line(label, x=380, bold=True)
        line(value, x=510)
        advance()
    if document.notes:
        advance()
        for value in document.notes:
            line(value, size=8)
            advance()
    return write_pdf(pages, title=f"{document.title} {document.ref}")
