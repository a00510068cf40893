#!/usr/bin/env python3
"""make-pdf.py - writes a plain multi-page PDF 1.4 from page-delimited text.

    python3 examples/statements/make-pdf.py IN.txt OUT.pdf

Each page of IN.txt (pages separated by a form feed, as pdftotext writes
them) becomes one A4 page of OUT.pdf, its lines set in Helvetica, top to
bottom, so that `pdftotext -enc UTF-8 OUT.pdf -` gives the text back with
the same page breaks.  Only the Python standard library is used.

Text is encoded in WinAnsiEncoding (Windows-1252), the encoding every PDF
reader knows for the standard fonts, so Latin accents survive; a character
outside it is an error naming the line.  Non-ASCII bytes are written as
octal escapes, so the PDF file itself is ASCII apart from the binary marker
comment.  Nothing depends on the clock: the same input gives the same bytes.
"""
import sys

PAGE_W, PAGE_H = 595, 842          # A4 in points
MARGIN = 50
FONT_SIZE = 10.0
LEADING = 12.0
MIN_FONT_SIZE = 5.0


def pdf_string(text, where):
    """A PDF literal string for text, in WinAnsiEncoding."""
    try:
        raw = text.encode("cp1252")
    except UnicodeEncodeError as e:
        sys.exit(f"{where}: {text[e.start]!r} is not in WinAnsiEncoding")
    out = []
    for b in raw:
        c = chr(b)
        if c in "()\\":
            out.append("\\" + c)
        elif 32 <= b < 127:
            out.append(c)
        else:
            out.append(f"\\{b:03o}")
    return "(" + "".join(out) + ")"


def page_content(lines, path, first_line_no):
    """The content stream of one page: one text line per source line."""
    # Shrink a page that would not fit rather than spill it onto two pages:
    # one source page must stay one PDF page.
    room = PAGE_H - 2 * MARGIN
    size, leading = FONT_SIZE, LEADING
    if len(lines) * leading > room:
        leading = room / len(lines)
        size = max(MIN_FONT_SIZE, leading / 1.2)
    ops = ["BT", f"/F1 {size:.2f} Tf", f"{leading:.2f} TL",
           f"{MARGIN} {PAGE_H - MARGIN - size:.2f} Td"]
    for i, line in enumerate(lines):
        if i > 0:
            ops.append("T*")
        if line.strip():
            ops.append(pdf_string(line.rstrip(), f"{path}:{first_line_no + i}") + " Tj")
    ops.append("ET")
    return ("\n".join(ops) + "\n").encode("ascii")


def build(pages, path, title):
    """The whole PDF as bytes."""
    objects = {}   # number -> bytes of the object body
    n_pages = len(pages)
    page_ids = [5 + 2 * i for i in range(n_pages)]
    objects[1] = b"<< /Type /Catalog /Pages 2 0 R >>"
    objects[2] = ("<< /Type /Pages /Kids [" + " ".join(f"{p} 0 R" for p in page_ids) +
                  f"] /Count {n_pages} >>").encode("ascii")
    objects[3] = (b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica"
                  b" /Encoding /WinAnsiEncoding >>")
    objects[4] = ("<< /Title " + pdf_string(title, path) +
                  " /Producer (sheaf examples/statements/make-pdf.py) >>").encode("ascii")
    line_no = 1
    for i, text in enumerate(pages):
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()   # the newline that ends the page's last line
        stream = page_content(lines, path, line_no)
        line_no += text.count("\n")
        objects[page_ids[i]] = (
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {PAGE_W} {PAGE_H}]"
            f" /Resources << /Font << /F1 3 0 R >> >> /Contents {page_ids[i] + 1} 0 R >>"
        ).encode("ascii")
        objects[page_ids[i] + 1] = (f"<< /Length {len(stream)} >>\nstream\n".encode("ascii") +
                                    stream + b"endstream")

    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = {}
    for num in sorted(objects):
        offsets[num] = len(out)
        out += f"{num} 0 obj\n".encode("ascii") + objects[num] + b"\nendobj\n"
    xref_at = len(out)
    size = max(objects) + 1
    out += f"xref\n0 {size}\n".encode("ascii")
    out += b"0000000000 65535 f \n"            # each entry is exactly 20 bytes
    for num in range(1, size):
        out += f"{offsets[num]:010d} 00000 n \n".encode("ascii")
    out += (f"trailer\n<< /Size {size} /Root 1 0 R /Info 4 0 R >>\n"
            f"startxref\n{xref_at}\n%%EOF\n").encode("ascii")
    return bytes(out)


def main(argv):
    if len(argv) != 3:
        sys.exit("usage: make-pdf.py IN.txt OUT.pdf")
    src, dst = argv[1], argv[2]
    with open(src, encoding="utf-8") as f:
        text = f.read()
    pages = text.split("\f")
    # A form feed after the last page (pdftotext's habit) opens no page.
    if len(pages) > 1 and not pages[-1].strip():
        pages.pop()
    title = next((l.strip() for l in text.split("\n") if l.strip()), "document")
    with open(dst, "wb") as f:
        f.write(build(pages, src, title))


if __name__ == "__main__":
    main(sys.argv)
