"""A small reader of Protocol Buffers *text format* (``label_map.pbtxt``, ``pipeline.config``).

No schema is needed: a file becomes a tree of :class:`TextMessage` whose fields are kept in
order with their line numbers. What it accepts (the subset TF Object Detection API files use):

* ``name: value`` with a number (``1``, ``-2.5``, ``.0003``, ``1e-4``, ``0x1F``, ``1.0f``,
  ``inf``, ``nan``), a string (``'x'`` or ``"x"``, C escapes, adjacent strings concatenated) or
  an identifier (an enum value such as ``SOFTMAX``, ``true``/``false``);
* ``name { ... }``, ``name: { ... }`` or ``name < ... >`` for a nested message;
* ``name: [v1, v2]`` for a repeated field (scalars or messages);
* ``#`` comments, and ``,`` or ``;`` after a field.

A repeated field is the same name written several times. Every error is a
:class:`TextFormatError` with the line number; callers turn it into their own one-line error
naming the file. Readers mark the fields they use (:meth:`TextMessage.get` and friends), so
:meth:`TextMessage.unused_leaves` lists what a reader did not take (``maskrcnn config
--from-pipeline`` prints it).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ...errors import MaskRCNNError

__all__ = ["TextFormatError", "TextMessage", "Field", "Identifier", "parse", "read_text_file"]

#: Deepest nesting accepted (a hostile file cannot exhaust the stack).
MAX_DEPTH = 100


class TextFormatError(ValueError):
    """A syntax error: ``line`` (1-based) and a short description."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


class Identifier(str):
    """An unquoted word (an enum value, ``true``/``false``), kept apart from quoted strings."""


@dataclass
class Field:
    """One ``name: value`` or ``name { ... }`` of a message, as written."""

    name: str
    value: Any  # int | float | str | Identifier | TextMessage
    line: int
    used: bool = False


@dataclass
class TextMessage:
    """A parsed message: its fields in file order; ``path`` names it in messages (``model.faster_rcnn``)."""

    fields: list[Field] = field(default_factory=list)
    path: str = ""
    line: int = 1

    # ----------------------------------------------------------------- access
    def names(self) -> list[str]:
        """Field names in order of first appearance."""
        return list(dict.fromkeys(f.name for f in self.fields))

    def entries(self, name: str) -> list[Field]:
        """Every field called ``name`` (a repeated field), in order."""
        return [f for f in self.fields if f.name == name]

    def has(self, name: str) -> bool:
        return any(f.name == name for f in self.fields)

    def get(self, name: str, default: Any = None) -> Any:
        """The last value of scalar field ``name`` (marked used), or ``default``."""
        found = self.entries(name)
        if not found:
            return default
        for f in found:
            f.used = True
        return found[-1].value

    def get_all(self, name: str) -> list[Any]:
        """Every value of repeated field ``name`` (marked used)."""
        found = self.entries(name)
        for f in found:
            f.used = True
        return [f.value for f in found]

    def message(self, name: str) -> "TextMessage | None":
        """The last sub-message ``name``, or None. Its own leaves are marked by whoever reads them;
        an empty message (``random_horizontal_flip {}``) is marked used here."""
        found = [f for f in self.entries(name) if isinstance(f.value, TextMessage)]
        if not found:
            return None
        for f in found:
            if not f.value.fields:
                f.used = True
        return found[-1].value

    def messages(self, name: str) -> list["TextMessage"]:
        """Every sub-message ``name`` (a repeated message field)."""
        out = []
        for f in self.entries(name):
            if isinstance(f.value, TextMessage):
                if not f.value.fields:
                    f.used = True
                out.append(f.value)
        return out

    def oneof(self) -> "tuple[str, TextMessage] | None":
        """``(name, message)`` of the first sub-message (a ``oneof`` such as the optimizer kind)."""
        for f in self.fields:
            if isinstance(f.value, TextMessage):
                if not f.value.fields:
                    f.used = True
                return f.name, f.value
        return None

    def mark_used(self) -> None:
        """Mark every leaf below as used (a part read as a whole)."""
        for f in self.fields:
            f.used = True
            if isinstance(f.value, TextMessage):
                f.value.mark_used()

    def unused_leaves(self) -> Iterator[tuple[str, Any, int]]:
        """``(dotted path, value, line)`` of each scalar (or empty message) nobody read."""
        for f in self.fields:
            path = f"{self.path}.{f.name}" if self.path else f.name
            if isinstance(f.value, TextMessage) and f.value.fields:
                yield from f.value.unused_leaves()
            elif not f.used:
                yield path, ("{}" if isinstance(f.value, TextMessage) else f.value), f.line


# --------------------------------------------------------------------------- tokenizer

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)[fF]?(?![\w.]))
  | (?P<word>[-+]?[A-Za-z_][\w.]*)
  | (?P<punct>[{}<>:\[\],;])
""", re.VERBOSE)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "\\": "\\", "'": "'", '"': '"', "?": "?"}
_UNTERMINATED = re.compile(r"""['"]""")


@dataclass
class _Token:
    kind: str
    text: str
    line: int


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    line, pos = 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            ch = text[pos]
            if _UNTERMINATED.match(ch):
                raise TextFormatError(line, f"unterminated string starting with {text[pos:pos + 20]!r}")
            raise TextFormatError(line, f"unexpected character {ch!r}")
        kind = m.lastgroup or ""
        if kind == "newline":
            line += 1
        elif kind not in ("space", "comment"):
            out.append(_Token(kind, m.group(), line))
        pos = m.end()
    return out


def _unquote(token: _Token) -> str:
    body, out, i = token.text[1:-1], [], 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1:]).group()  # type: ignore[union-attr]
            out.append(chr(int(digits, 8)))
            i += 1 + len(digits)
        elif nxt in "xX" and (hexa := re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])):
            out.append(chr(int(hexa.group(), 16)))
            i += 2 + len(hexa.group())
        else:
            raise TextFormatError(token.line, f"unknown escape \\{nxt} in {token.text}")
    return "".join(out)


def _number(token: _Token) -> int | float:
    text = token.text
    if re.fullmatch(r"[-+]?0[xX][0-9a-fA-F]+", text):
        return int(text, 16)
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    return float(text.rstrip("fF"))


_SPECIAL = {"inf": math.inf, "infinity": math.inf, "nan": math.nan}


# --------------------------------------------------------------------------- parser


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        tok = self.peek()
        if tok is None:
            last = self.tokens[-1].line if self.tokens else 1
            raise TextFormatError(last, "unexpected end of file (a '}' or a value is missing)")
        self.pos += 1
        return tok

    def message(self, path: str, line: int, close: str | None, depth: int) -> TextMessage:
        if depth > MAX_DEPTH:
            raise TextFormatError(line, f"messages nested more than {MAX_DEPTH} deep")
        msg = TextMessage(path=path, line=line)
        while True:
            tok = self.peek()
            if tok is None:
                if close is not None:
                    raise TextFormatError(self.tokens[-1].line if self.tokens else line,
                                          f"'{path}' opened on line {line} is never closed (missing '{close}')")
                return msg
            if close is not None and tok.kind == "punct" and tok.text == close:
                self.pos += 1
                return msg
            if tok.kind != "word" or tok.text[0] in "+-":
                raise TextFormatError(tok.line, f"expected a field name, found {tok.text!r}")
            self.pos += 1
            name = tok.text
            sub = f"{path}.{name}" if path else name
            colon = self._accept(":")
            nxt = self.peek()
            if nxt is not None and nxt.kind == "punct" and nxt.text == "[":
                if not colon:
                    raise TextFormatError(nxt.line, f"'{name}': a list needs a ':' before '['")
                self.pos += 1
                for value in self._list(sub, depth):
                    msg.fields.append(Field(name, value, tok.line))
            else:
                msg.fields.append(Field(name, self._value(sub, tok, colon, depth), tok.line))
            self._accept(",") or self._accept(";")

    def _accept(self, text: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == "punct" and tok.text == text:
            self.pos += 1
            return True
        return False

    def _value(self, path: str, name_tok: _Token, colon: bool, depth: int) -> Any:
        tok = self.take()
        if tok.kind == "punct" and tok.text in "{<":
            return self.message(path, tok.line, "}" if tok.text == "{" else ">", depth + 1)
        if not colon:
            raise TextFormatError(tok.line, f"'{name_tok.text}': expected ':' or '{{' after the field name, "
                                            f"found {tok.text!r}")
        return self._scalar(tok, name_tok.text)

    def _scalar(self, tok: _Token, name: str) -> Any:
        if tok.kind == "string":
            parts = [_unquote(tok)]
            while (nxt := self.peek()) is not None and nxt.kind == "string":
                parts.append(_unquote(self.take()))
            return "".join(parts)
        if tok.kind == "number":
            return _number(tok)
        if tok.kind == "word":
            sign, word = (-1.0 if tok.text[0] == "-" else 1.0), tok.text.lstrip("+-")
            if word.lower() in _SPECIAL:
                return sign * _SPECIAL[word.lower()]
            if tok.text[0] in "+-":
                raise TextFormatError(tok.line, f"'{name}': {tok.text!r} is not a number")
            return Identifier(word)
        raise TextFormatError(tok.line, f"'{name}': expected a value, found {tok.text!r}")

    def _list(self, path: str, depth: int) -> list[Any]:
        values: list[Any] = []
        if self._accept("]"):
            return values
        while True:
            tok = self.take()
            if tok.kind == "punct" and tok.text in "{<":
                values.append(self.message(path, tok.line, "}" if tok.text == "{" else ">", depth + 1))
            else:
                values.append(self._scalar(tok, path.rsplit(".", 1)[-1]))
            if self._accept("]"):
                return values
            if not self._accept(","):
                bad = self.peek()
                raise TextFormatError(bad.line if bad else tok.line,
                                      f"'{path}': expected ',' or ']' in the list, found {bad.text if bad else 'end of file'!r}")


def parse(text: str) -> TextMessage:
    """Parse text-format ``text`` into a :class:`TextMessage` (raises :class:`TextFormatError`)."""
    return _Parser(_tokens(text)).message("", 1, None, 0)


def read_text_file(path: str | os.PathLike[str], what: str, error: type[MaskRCNNError], example: str,
                   missing: str) -> str:
    """The text of ``path`` (a ``what`` such as "label map"); every problem is one ``error`` line
    naming the file: ``missing`` says what to pass when it does not exist, ``example`` shows the format."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {what} not found; {missing}")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise error(f"{path}: not a text file; a {what} is text such as {example}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
