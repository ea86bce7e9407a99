"""Reads the subset of PHP that Tuleap's config files are written in, as PHP would.

Tuleap loads ``local.inc`` and ``redis.inc`` with PHP's ``include``. tuitop has no PHP, so
this module lexes, parses and evaluates the statements such files hold and gives the
variables the same values PHP would (real ``php`` is the oracle in the tests):

* ``<?php`` / ``?>`` and the text around them (a ``#!`` first line is skipped, as PHP does);
  ``//``, ``#`` and ``/* */`` comments;
* ``$name = value;`` and the compound ``.= += -= *= /= %=``, also nested (``$a = $b = 1``);
* single- and double-quoted strings with PHP's escapes and ``$var`` / ``{$var}`` /
  ``${var}`` interpolation; ``b'...'`` binary strings;
* integers (decimal, ``0x``, ``0o`` and leading-``0`` octal, ``0b``, ``_`` separators,
  overflow to float), floats, ``true``/``false``/``null`` in any case;
* ``.`` concatenation, ``+ - * / %``, unary ``- + !``, parentheses, earlier variables;
* ``getenv('NAME')``, ``define('NAME', value)`` and the constants it defines, and a few
  built-in constants (``PHP_EOL``, ``__DIR__`` ...).

Anything else (other function calls, ``include``, arrays, classes, control flow) is refused
with a :class:`~tuitop.errors.ConfigError` that gives file, line and column, as is every
syntax error, at the line ``php -l`` reports (unless a construct outside the subset comes
first: tuitop stops there, php parses on). The whole file is parsed before any of it is
evaluated, as PHP compiles a file before running it.

Values are PHP's: ``bytes`` for strings (PHP strings are byte strings), ``int``, ``float``,
``bool`` and ``None`` for null. Each file runs in a scope of its own, as Tuleap's
``ConfigValueFileProvider`` includes each file inside a function; constants are shared.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from tuitop.errors import ConfigError

PhpValue = bytes | int | float | bool | None

PHP_INT_MAX = 2**63 - 1
PHP_INT_MIN = -(2**63)

_LABEL_START = r"A-Za-z_\x80-\U0010ffff"
_LABEL = re.compile(rf"[{_LABEL_START}][{_LABEL_START}0-9]*")
_OPEN_TAG = re.compile(r"<\?(php(?=[ \t\r\n]|\Z)|=)", re.IGNORECASE)
_LNUM = r"[0-9]+(?:_[0-9]+)*"
_DNUM = rf"(?:(?:{_LNUM})?\.{_LNUM}|{_LNUM}\.(?:{_LNUM})?)"
_NUMBER_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("hex", re.compile(r"0[xX][0-9a-fA-F]+(?:_[0-9a-fA-F]+)*")),
    ("bin", re.compile(r"0[bB][01]+(?:_[01]+)*")),
    ("oct", re.compile(r"0[oO][0-7]+(?:_[0-7]+)*")),
    ("float", re.compile(rf"(?:{_LNUM}|{_DNUM})[eE][+-]?{_LNUM}")),
    ("float", re.compile(_DNUM)),
    ("dec", re.compile(_LNUM)),
)
_OPERATORS = sorted(
    (
        "**=", "??=", "===", "!==", "<=>", "...", "<<=", ">>=",
        ".=", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=",
        "==", "!=", "<>", "<=", ">=", "&&", "||", "??", "->", "?->", "::", "++", "--", "**",
        "<<", ">>", "=>",
        "=", ";", ".", "(", ")", ",", "+", "-", "*", "/", "%", "!", "?", ":", "[", "]",
        "{", "}", "<", ">", "&", "|", "^", "~", "@", "\\",
    ),
    key=len,
    reverse=True,
)  # fmt: skip
_ASSIGN_OPS = {"=": "", ".=": ".", "+=": "+", "-=": "-", "*=": "*", "/=": "/", "%=": "%"}
_BINARY_PRECEDENCE = {".": 1, "+": 2, "-": 2, "*": 3, "/": 3, "%": 3}
# PHP operators outside the subset ("==", "??", "[", "@", "{"...): where the parser expected
# something else, they mean valid PHP that tuitop does not support, rather than a typo.
_UNSUPPORTED_OPERATORS = (
    frozenset(_OPERATORS) - set(_ASSIGN_OPS) - set(_BINARY_PRECEDENCE) - {";", "(", ")", ",", "!"}
)
_CAST = re.compile(
    r"\([ \t]*(?:int|integer|bool|boolean|float|double|real|string|binary|array|object|unset)"
    r"[ \t]*\)",
    re.IGNORECASE,
)
# PHP keywords an admin might try in a config file: refused by name, not as a puzzle.
_KEYWORDS = frozenset(
    "abstract and array as break callable case catch class clone const continue declare "
    "default do echo else elseif empty enddeclare endfor endforeach endif endswitch endwhile "
    "enum eval exit die extends final finally fn for foreach function global goto if "
    "implements include include_once instanceof insteadof interface isset list match "
    "namespace new or print private protected public readonly require require_once return "
    "static switch throw trait try unset use var while xor yield".split()
)
_NAMED_WORDS = frozenset(("true", "false", "null", "getenv", "define"))
"""Bare words an error may name (besides the keywords): no secret is spelled so."""
_SUPERGLOBALS = frozenset(
    "GLOBALS _SERVER _GET _POST _COOKIE _FILES _ENV _REQUEST _SESSION".split()
)
# Magic constants that are empty outside a class, function or namespace, as in a config file.
_EMPTY_MAGIC_CONSTANTS = frozenset(
    "__class__ __function__ __method__ __namespace__ __trait__".split()
)
_SIMPLE_ESCAPES = {
    "n": b"\n", "t": b"\t", "r": b"\r", "v": b"\v", "e": b"\x1b", "f": b"\f",
    "\\": b"\\", "$": b"$", '"': b'"',
}  # fmt: skip
_WHITESPACE = b" \t\n\r\v\f"
_DIGITS = frozenset("0123456789")
_LONG_MIN_DIGITS = b"9223372036854775808"
_NUMERIC_PREFIX = re.compile(
    rb"[ \t\n\r\v\f]*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
)


@dataclass(frozen=True)
class Token:
    """One lexical token; ``offset`` indexes the decoded source text, ``end`` is past it."""

    kind: str  # var string interp deferred int float ident op close eof
    value: object
    offset: int
    end: int = 0


@dataclass(frozen=True)
class Diagnostic:
    """A warning PHP would print while running the file (the file is still used)."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: warning: {self.message}"


@dataclass(frozen=True)
class Origin:
    """Where a variable got its value: the file and the place of the assignment."""

    path: str
    line: int
    column: int


@dataclass
class FileScope:
    """What one file defines: its variables in assignment order, and where each was set."""

    variables: dict[str, PhpValue] = field(default_factory=dict)
    origins: dict[str, Origin] = field(default_factory=dict)
    warnings: list[Diagnostic] = field(default_factory=list)


class _Source:
    """The file's text with line/column lookup; bytes survive as surrogate escapes."""

    def __init__(self, data: bytes, path: str) -> None:
        self.text = data.decode("utf-8", "surrogateescape")
        self.path = path
        # PHP counts a lone "\r" as a line break too (old Mac files), for __LINE__ and errors,
        # except on a shebang line, which it skips as one line up to its "\n".
        shebang_end = self.text.find("\n") if self.text.startswith("#!") else -1
        self._line_starts = [0] + [
            m.end() for m in re.finditer("\r\n|\r|\n", self.text) if m.end() > shebang_end
        ]

    def position(self, offset: int) -> tuple[int, int]:
        lo, hi = 0, len(self._line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._line_starts[mid] <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1, offset - self._line_starts[lo] + 1

    def error(self, offset: int, reason: str) -> ConfigError:
        line, column = self.position(offset)
        return ConfigError(self.path, line, column, reason)

    def raw(self, start: int, end: int) -> bytes:
        return self.text[start:end].encode("utf-8", "surrogateescape")


def _accumulate(digits: str, base: int) -> float:
    # PHP turns an overflowing hex/octal/binary literal into a float by accumulating
    # digit by digit in a double (zend_hex_strtod & co.); do the same, rounding included.
    # zend_oct_strtod and zend_bin_strtod compute "value * base + c - '0'" with c the digit's
    # character: the code is added, then 48 taken away, each step rounding on its own
    # (0b1 followed by 63 zeros is 2**63 - 1024, not 2**63).
    value = 0.0
    for digit in digits:
        if base == 16:
            value = value * base + int(digit, base)
        else:
            value = value * base + ord(digit) - ord("0")
    return value


class _Lexer:
    """Turns source text into tokens on demand, so errors come out in file order."""

    def __init__(self, source: _Source) -> None:
        self.src = source
        self.text = source.text
        self.pos = 0
        self.in_php = False
        if self.text.startswith("#!"):
            # PHP skips a shebang line, also in included files: a "<?php" on it is text. The
            # line ends at "\n" only (a lone "\r" does not end it), or at the end of the file.
            newline = self.text.find("\n")
            self.pos = len(self.text) if newline < 0 else newline + 1

    def tokens(self) -> Iterator[Token]:
        while True:
            token = self._next()
            yield token
            if token.kind == "eof":
                return

    def _next(self) -> Token:
        text = self.text
        while True:
            if not self.in_php:
                match = _OPEN_TAG.search(text, self.pos)
                if match is None:
                    self.pos = len(text)
                    return Token("eof", None, len(text))
                if match.group(1) == "=":
                    raise self.src.error(match.start(), "the '<?=' echo tag is not supported")
                self.pos = match.end()
                if text.startswith("\r\n", self.pos):
                    self.pos += 2
                elif self.pos < len(text):
                    self.pos += 1
                self.in_php = True
            self._skip_space_and_comments()
            if self.pos >= len(text):
                return Token("eof", None, len(text))
            start = self.pos
            if text.startswith("?>", start):
                self.pos += 2
                if text.startswith("\r\n", self.pos):
                    self.pos += 2
                elif text.startswith("\n", self.pos):
                    self.pos += 1
                self.in_php = False
                return Token("close", "?>", start)
            return self._token(start)

    def _skip_space_and_comments(self) -> None:
        text = self.text
        while self.pos < len(text):
            char = text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif char == "#" and text.startswith("#[", self.pos):
                raise self.src.error(self.pos, "PHP attributes '#[...]' are not supported")
            elif char == "#" or text.startswith("//", self.pos):
                end = self.pos
                while end < len(text) and text[end] not in "\r\n":
                    if text.startswith("?>", end):
                        break
                    end += 1
                self.pos = end
            elif text.startswith("/*", self.pos):
                end = text.find("*/", self.pos + 2)
                if end < 0:
                    line, _ = self.src.position(self.pos)
                    raise self.src.error(self.pos, f"unterminated comment starting line {line}")
                self.pos = end + 2
            else:
                return

    def _variable_name(self, name: str, offset: int) -> str:
        # $this and the superglobals are not variables of the file's scope: PHP refuses to
        # assign $this, and $_SERVER & co. live outside the function Tuleap includes in.
        if name == "this":
            raise self.src.error(offset, "$this is not supported: config files have no object")
        if name in _SUPERGLOBALS:
            raise self.src.error(offset, f"the superglobal ${name} is not supported")
        return name

    def _token(self, start: int) -> Token:
        text = self.text
        char = text[start]
        if char == "$":
            match = _LABEL.match(text, start + 1)
            if match is None:
                # A "$" of its own is a token for PHP ("$ $a" is a variable variable): the
                # parser looks at what follows, and a syntax error is on that token's line.
                self.pos = start + 1
                return Token("op", "$", start, start + 1)
            self.pos = match.end()
            return Token("var", self._variable_name(match.group(), start), start)
        if char in "bB" and start + 1 < len(text) and text[start + 1] in "'\"":
            self.pos = start + 1
            return self._string(start + 1, start)
        if char in "'\"":
            return self._string(start, start)
        if char == "`":
            raise self.src.error(start, "shell commands in backticks are not supported")
        if char == "(" and _CAST.match(text, start):
            # PHP lexes "(int)" as one token, spaces and tabs inside included.
            raise self.src.error(start, "type casts such as (int) are not supported")
        if text.startswith("<<<", start):
            raise self.src.error(start, "heredoc and nowdoc strings are not supported")
        # ASCII digits only: str.isdigit() also takes "²" or "٣", which PHP reads as names.
        if char in _DIGITS or (char == "." and text[start + 1 : start + 2] in _DIGITS):
            return self._number(start)
        match = _LABEL.match(text, start)
        if match is not None:
            self.pos = match.end()
            return Token("ident", match.group(), start)
        for operator in _OPERATORS:
            if text.startswith(operator, start):
                self.pos = start + len(operator)
                return Token("op", operator, start)
        raise self.src.error(start, f"unexpected character {char!r}")

    def _number(self, start: int) -> Token:
        best_kind, best_end = "", start
        for kind, pattern in _NUMBER_PATTERNS:
            match = pattern.match(self.text, start)
            if match is not None and match.end() > best_end:
                best_kind, best_end = kind, match.end()
        self.pos = best_end
        literal = self.text[start:best_end].replace("_", "")
        if best_kind == "float":
            return Token("float", float(literal), start)
        if best_kind == "dec" and len(literal) > 1 and literal[0] == "0":
            if any(digit in "89" for digit in literal):
                raise self.src.error(start, "invalid numeric literal (a leading 0 means octal)")
            best_kind, digits = "oct", literal[1:]
        elif best_kind in ("hex", "bin", "oct"):
            digits = literal[2:]
        else:
            digits = literal
        base = {"dec": 10, "hex": 16, "oct": 8, "bin": 2}[best_kind]
        value = int(digits, base)
        if value <= PHP_INT_MAX:
            return Token("int", value, start)
        if base == 10:
            return Token("float", float(digits), start)
        return Token("float", _accumulate(digits.lstrip("0"), base), start)

    def _string(self, quote_at: int, token_start: int) -> Token:
        if self.text[quote_at] == "'":
            return self._single_quoted(quote_at, token_start)
        if self._plain_double_quoted(quote_at):
            return self._double_quoted(quote_at, token_start)
        # A string with "$name" in it, or without an end, PHP lexes as a '"' token first:
        # where no value may come, the syntax error is there; where one may, an error comes
        # from the string's content (or the end of the file). The parser decides which,
        # raising the error this token holds.
        try:
            return self._double_quoted(quote_at, token_start)
        except ConfigError as error:
            self.pos = len(self.text)
            return Token("deferred", error, token_start, token_start + 1)

    def _plain_double_quoted(self, quote_at: int) -> bool:
        """Whether the string closes before any "$name", "${" or "{$" (PHP's first scan)."""
        text = self.text
        pos = quote_at + 1
        while pos < len(text):
            char = text[pos]
            if char == "\\":
                pos += 2
                continue
            if char == '"':
                return True
            if char == "$" and (text.startswith("{", pos + 1) or _LABEL.match(text, pos + 1)):
                return False
            if char == "{" and text.startswith("$", pos + 1):
                return False
            pos += 1
        return False

    def _single_quoted(self, quote_at: int, token_start: int) -> Token:
        text = self.text
        pos = quote_at + 1
        out: list[str] = []
        while True:
            if pos >= len(text):
                raise self.src.error(quote_at, 'unterminated string: no closing "\'"')
            char = text[pos]
            if char == "'":
                break
            if char == "\\" and pos + 1 < len(text) and text[pos + 1] in "'\\":
                out.append(text[pos + 1])
                pos += 2
                continue
            out.append(char)
            pos += 1
        self.pos = pos + 1
        value = "".join(out).encode("utf-8", "surrogateescape")
        return Token("string", value, token_start, self.pos)

    def _double_quoted(self, quote_at: int, token_start: int) -> Token:
        text = self.text
        pos = quote_at + 1
        parts: list[bytes | tuple[str, int]] = []
        chunk = bytearray()

        def flush() -> None:
            if chunk:
                parts.append(bytes(chunk))
                chunk.clear()

        while True:
            if pos >= len(text):
                # PHP reads the rest of the file as the string and then misses its end:
                # the error is on the last line, where php -l puts it.
                raise self.src.error(pos, "unterminated string: no closing '\"'")
            char = text[pos]
            if char == '"':
                break
            if char == "\\" and pos + 1 < len(text):
                value, pos = self._escape(pos)
                chunk += value
                continue
            if char == "$" and _LABEL.match(text, pos + 1):
                flush()
                name, pos = self._simple_interpolation(pos)
                parts.append(name)
                continue
            if text.startswith("{$", pos) or text.startswith("${", pos):
                flush()
                name, pos = self._braced_interpolation(pos)
                parts.append(name)
                continue
            chunk += char.encode("utf-8", "surrogateescape")
            pos += 1
        flush()
        self.pos = pos + 1
        if all(isinstance(part, bytes) for part in parts):
            value = b"".join(p for p in parts if isinstance(p, bytes))
            return Token("string", value, token_start, self.pos)
        return Token("interp", tuple(parts), token_start, self.pos)

    def _escape(self, pos: int) -> tuple[bytes, int]:
        text = self.text
        code = text[pos + 1]
        if code in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[code], pos + 2
        octal = re.compile(r"[0-7]{1,3}").match(text, pos + 1)
        if octal is not None:
            return bytes([int(octal.group(), 8) & 0xFF]), octal.end()
        hexa = re.compile(r"[xX]([0-9A-Fa-f]{1,2})").match(text, pos + 1)
        if hexa is not None:
            return bytes([int(hexa.group(1), 16)]), hexa.end()
        # In "\u{$a}", "{$" starts an interpolation: PHP ends the escape's segment there.
        if code == "u" and text.startswith("{", pos + 2) and not text.startswith("$", pos + 3):
            end = text.find("}", pos + 3)
            digits = text[pos + 3 : end] if end > 0 else ""
            if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise self.src.error(pos, "invalid UTF-8 codepoint escape sequence")
            codepoint = int(digits, 16)
            if codepoint > 0x10FFFF:
                raise self.src.error(pos, "invalid UTF-8 codepoint escape sequence: too large")
            return chr(codepoint).encode("utf-8", "surrogatepass"), end + 1
        # Unknown escapes keep their backslash; the next character is never special.
        return ("\\" + code).encode("utf-8", "surrogateescape"), pos + 2

    def _simple_interpolation(self, pos: int) -> tuple[tuple[str, int], int]:
        match = _LABEL.match(self.text, pos + 1)
        assert match is not None
        end = match.end()
        if self.text.startswith("[", end):
            raise self.src.error(end, "array offsets in strings are not supported")
        for arrow in ("->", "?->"):
            if self.text.startswith(arrow, end) and _LABEL.match(self.text, end + len(arrow)):
                raise self.src.error(end, "object properties in strings are not supported")
        return (self._variable_name(match.group(), pos), pos), end

    def _braced_interpolation(self, pos: int) -> tuple[tuple[str, int], int]:
        match = _LABEL.match(self.text, pos + 2)
        if match is None or not self.text.startswith("}", match.end()):
            raise self.src.error(pos, "only {$name} and ${name} are supported in strings")
        return (self._variable_name(match.group(), pos), pos), match.end() + 1


# --- syntax tree -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Node:
    offset: int


@dataclass(frozen=True)
class _Literal(_Node):
    value: PhpValue


@dataclass(frozen=True)
class _Interpolated(_Node):
    parts: tuple[bytes | tuple[str, int], ...]


@dataclass(frozen=True)
class _Variable(_Node):
    name: str


@dataclass(frozen=True)
class _Assign(_Node):
    name: str
    operator: str  # "" for plain "=", else the binary operator of ".=", "+=" ...
    expr: _Node


@dataclass(frozen=True)
class _Unary(_Node):
    operator: str
    operand: _Node


@dataclass(frozen=True)
class _Binary(_Node):
    operator: str
    left: _Node
    right: _Node


@dataclass(frozen=True)
class _Call(_Node):
    function: str  # lower case
    args: tuple[_Node, ...]


@dataclass(frozen=True)
class _Constant(_Node):
    name: str


_FUNCTION_ARITY = {"getenv": (1, 2), "define": (2, 3)}


def _describe(token: Token) -> str:
    """What a token is, in words; never a string's contents (it may be a secret)."""
    if token.kind == "eof":
        return "end of file"
    if token.kind == "var":
        return f"variable ${token.value}"
    if token.kind in ("string", "interp", "deferred"):
        return "a string"
    if token.kind in ("int", "float"):
        return "a number"
    if token.kind == "ident":
        # A bare word may be a secret whose quotes were forgotten ($redis_password = s3cr3t;)
        if str(token.value).lower() in _KEYWORDS | _NAMED_WORDS:
            return f"'{token.value}'"
        return "a bare word (a string needs its quotes)"
    return f"'{token.value}'"


class _Parser:
    def __init__(self, source: _Source) -> None:
        self.src = source
        self._tokens = _Lexer(source).tokens()
        self._lookahead: list[Token] = []
        # PHP lists a scope's variables in the order they first appear in the source.
        self.variable_order: dict[str, None] = {}
        self._argument_start = -1  # offset of the first token of the current call argument

    def _peek(self, ahead: int = 0) -> Token:
        while len(self._lookahead) <= ahead:
            token = next(self._tokens)
            if token.kind == "var":
                self.variable_order.setdefault(str(token.value))
            elif token.kind == "interp":
                for part in token.value:  # type: ignore[attr-defined]
                    if isinstance(part, tuple):
                        self.variable_order.setdefault(part[0])
            self._lookahead.append(token)
        return self._lookahead[ahead]

    def _take(self) -> Token:
        token = self._peek()
        self._lookahead.pop(0)
        return token

    def _is_op(self, token: Token, *ops: str) -> bool:
        return token.kind == "op" and token.value in ops

    def _fail(self, token: Token, expected: str) -> ConfigError:
        # "(" never follows a value in the subset; in PHP it calls the value ($f(), 'f'()).
        unsupported_operator = token.kind == "op" and (
            token.value in _UNSUPPORTED_OPERATORS or token.value == "("
        )
        if unsupported_operator or (
            token.kind == "ident" and str(token.value).lower() in _KEYWORDS
        ):
            return self.src.error(
                token.offset,
                f"'{token.value}' is not supported in tuitop config files "
                "(only assignments, getenv() and define())",
            )
        # php -l puts the error where the unexpected token ends: for a string over several
        # lines, on its last line (at the closing quote).
        offset = token.end - 1 if token.kind == "string" else token.offset
        return self.src.error(offset, f"expected {expected}, found {_describe(token)}")

    def statements(self) -> list[_Node]:
        result: list[_Node] = []
        while True:
            token = self._peek()
            if token.kind == "eof":
                return result
            if token.kind == "close" or self._is_op(token, ";"):
                self._take()
                continue
            result.append(self._expression(0))
            end = self._peek()
            if end.kind == "close" or self._is_op(end, ";"):
                self._take()
                continue
            raise self._fail(end, "';'")

    def _expression(self, min_precedence: int) -> _Node:
        left = self._unary()
        while True:
            token = self._peek()
            precedence = _BINARY_PRECEDENCE.get(str(token.value)) if token.kind == "op" else None
            if precedence is None or precedence < min_precedence:
                return left
            self._take()
            right = self._expression(precedence + 1)
            left = _Binary(token.offset, str(token.value), left, right)

    def _unary(self) -> _Node:
        token = self._peek()
        if self._is_op(token, "-", "+", "!"):
            self._take()
            return _Unary(token.offset, str(token.value), self._unary())
        return self._primary()

    def _primary(self) -> _Node:
        token = self._take()
        if token.kind == "deferred":
            assert isinstance(token.value, ConfigError)
            raise token.value
        if token.kind in ("string", "int", "float"):
            return _Literal(token.offset, token.value)  # type: ignore[arg-type]
        if token.kind == "interp":
            return _Interpolated(token.offset, token.value)  # type: ignore[arg-type]
        if token.kind == "var":
            following = self._peek()
            if following.kind == "op" and following.value in _ASSIGN_OPS:
                self._take()
                operator = _ASSIGN_OPS[str(following.value)]
                return _Assign(token.offset, str(token.value), operator, self._expression(0))
            if self._is_op(following, "[", "->", "?->", "::", "++", "--"):
                raise self.src.error(
                    following.offset,
                    f"'{following.value}' is not supported: config values are plain scalars",
                )
            return _Variable(token.offset, str(token.value))
        if self._is_op(token, "$"):
            following = self._peek()
            if following.kind == "var" or self._is_op(following, "$", "{"):
                raise self.src.error(token.offset, "variable variables are not supported")
            raise self._fail(following, "a variable name after '$'")
        if self._is_op(token, "("):
            inner = self._expression(0)
            closing = self._take()
            if not self._is_op(closing, ")"):
                raise self._fail(closing, "')'")
            return inner
        if token.kind == "ident":
            name = str(token.value)
            lowered = name.lower()
            if lowered in ("true", "false", "null"):
                return _Literal(token.offset, {"true": True, "false": False}.get(lowered))
            if lowered in _KEYWORDS:
                raise self._fail(token, "a value")
            if self._is_op(self._peek(), "("):
                return self._call(token, lowered)
            if lowered == "__line__" and token.offset == self._argument_start:
                # An argument may be named ("__LINE__: 1"), so PHP reads the next token
                # before it takes __LINE__ as a constant, and gives it that token's line.
                return _Constant(self._peek().offset, name)
            return _Constant(token.offset, name)
        raise self._fail(token, "a value")

    def _call(self, name: Token, function: str) -> _Node:
        if function not in _FUNCTION_ARITY:
            raise self.src.error(
                name.offset,
                f"function {name.value}() is not supported in tuitop config files "
                "(only getenv() and define())",
            )
        self._take()  # "("
        args: list[_Node] = []
        while not self._is_op(self._peek(), ")"):
            self._argument_start = self._peek().offset
            args.append(self._expression(0))
            separator = self._peek()
            if self._is_op(separator, ","):
                self._take()
            elif not self._is_op(separator, ")"):
                raise self._fail(separator, "',' or ')'")
        self._take()
        if function == "getenv" and not args:
            raise self.src.error(
                name.offset, "getenv() returns the whole environment without a name: not supported"
            )
        return _Call(name.offset, function, tuple(args))


# --- values ----------------------------------------------------------------------------


def php_type(value: PhpValue) -> str:
    """PHP's name for the type of ``value`` (as in its error messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "string"


def php_float_to_string(value: float) -> str:
    """A float as PHP writes it in a string (``precision`` = 14): ``1.0E+25``, ``0.3``."""
    if math.isnan(value):
        return "NAN"
    if math.isinf(value):
        return "INF" if value > 0 else "-INF"
    text = f"{value:.14G}"
    if "E" not in text:
        return text
    mantissa, exponent = text.split("E")
    if "." not in mantissa:
        mantissa += ".0"
    sign = "-" if exponent.startswith("-") else "+"
    return f"{mantissa}E{sign}{exponent.lstrip('+-').lstrip('0') or '0'}"


def to_php_string(value: PhpValue) -> bytes:
    """PHP's ``(string)`` conversion."""
    if isinstance(value, bytes):
        return value
    if value is None or value is False:
        return b""
    if value is True:
        return b"1"
    if isinstance(value, int):
        return str(value).encode()
    return php_float_to_string(value).encode()


def to_php_bool(value: PhpValue) -> bool:
    """PHP's ``(bool)`` conversion: ``''``, ``'0'``, 0, 0.0 and null are false."""
    if isinstance(value, bytes):
        return value not in (b"", b"0")
    return bool(value)


def _numeric_prefix(value: bytes) -> tuple[int | float, bool, bool]:
    """Returns (number, whole string is numeric, has a numeric prefix) as PHP 8 reads it."""
    match = _NUMERIC_PREFIX.match(value)
    if match is None:
        return 0, False, False
    literal = match.group().strip(_WHITESPACE)
    number: int | float
    if b"." in literal or b"e" in literal.lower():
        number = float(literal)
    else:
        number = int(literal)
        digits = literal.lstrip(b"+-").lstrip(b"0")
        if len(digits) == 19:
            # PHP's is_numeric_string decides with strcmp() from the digits to the end of the
            # string, trailing text included: "-9223372036854775808" alone is an int, but
            # followed by anything (a space even) a float; "9223372036854775807x" is an int.
            rest = value[match.end() - len(digits) :]
            negative_min = rest == _LONG_MIN_DIGITS and literal.startswith(b"-")
            if not (rest < _LONG_MIN_DIGITS or negative_min):
                number = float(literal)
        elif not PHP_INT_MIN <= number <= PHP_INT_MAX:
            number = float(literal)
    whole = value[match.end() :].strip(_WHITESPACE) == b""
    return number, whole, True


def to_php_int(value: PhpValue) -> int:
    """PHP's ``(int)`` cast (``(int) '12abc'`` is 12, ``(int) 'abc'`` is 0), also what ``%``
    makes of its operands.

    Beyond the int range a numeric string saturates (``'1e19'`` is PHP_INT_MAX) but a float
    wraps modulo 2**64 (``1e19`` is -8446744073709551616); INF and NAN give 0 either way.
    """
    if isinstance(value, bytes):
        number, _, _ = _numeric_prefix(value)
        if isinstance(number, int):
            return number
        if not math.isfinite(number):
            return 0
        if not -(2.0**63) <= number < 2.0**63:
            # zend_dval_to_lval_cap, which PHP uses for strings.
            return PHP_INT_MAX if number > 0 else PHP_INT_MIN
        return int(number)
    if isinstance(value, float):
        if not math.isfinite(value):
            return 0
        # zend_dval_to_lval: an out-of-range float keeps its low 64 bits, as a signed int.
        wrapped = int(value) % 2**64
        return wrapped - 2**64 if wrapped > PHP_INT_MAX else wrapped
    return int(value or 0)


def _checked_int(result: int, as_float: Callable[[], float]) -> int | float:
    return result if PHP_INT_MIN <= result <= PHP_INT_MAX else as_float()


class PhpInterpreter:
    """Runs config files one after the other; constants persist across files.

    ``environ`` is what ``getenv()`` reads (default: the process environment).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ
        self.constants: dict[str, PhpValue] = {}

    def run_file(self, path: str) -> FileScope:
        """Reads and runs ``path``; raises ConfigError (also for an unreadable file)."""
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise ConfigError(path, 0, 0, f"cannot read: {error.strerror}") from None
        return self.run(data, path)

    def run(self, data: bytes, path: str) -> FileScope:
        """Parses all of ``data``, then runs it in a fresh scope."""
        source = _Source(data, path)
        parser = _Parser(source)
        statements = parser.statements()
        run = _Run(self, source)
        for statement in statements:
            if isinstance(statement, _Variable):
                continue  # PHP compiles "$a;" to nothing: no read, no warning
            run.evaluate(statement)
        variables = run.scope.variables
        run.scope.variables = {
            name: variables[name] for name in parser.variable_order if name in variables
        }
        return run.scope


class _Run:
    """The evaluation of one file."""

    def __init__(self, interpreter: PhpInterpreter, source: _Source) -> None:
        self.interpreter = interpreter
        self.src = source
        self.scope = FileScope()

    def warn(self, node: _Node, message: str) -> None:
        line, column = self.src.position(node.offset)
        self.scope.warnings.append(Diagnostic(self.src.path, line, column, message))

    def evaluate(self, node: _Node) -> PhpValue:
        if isinstance(node, _Literal):
            return node.value
        if isinstance(node, _Variable):
            return self.read_variable(node.name, node)
        if isinstance(node, _Interpolated):
            return b"".join(
                part
                if isinstance(part, bytes)
                else to_php_string(self.read_variable(part[0], _Node(part[1])))
                for part in node.parts
            )
        if isinstance(node, _Assign):
            value = self.evaluate(node.expr)
            if node.operator:
                current = self.read_variable(node.name, node)
                value = self.binary(node, node.operator, current, value)
            self.scope.variables[node.name] = value
            line, column = self.src.position(node.offset)
            self.scope.origins[node.name] = Origin(self.src.path, line, column)
            return value
        if isinstance(node, _Unary):
            operand = self.evaluate(node.operand)
            if node.operator == "!":
                return not to_php_bool(operand)
            # PHP compiles -x as x * -1 and +x as x * 1 (errors and overflow included).
            return self.binary(node, "*", operand, -1 if node.operator == "-" else 1)
        if isinstance(node, _Binary):
            if isinstance(node.left, _Variable):
                # PHP reads a plain variable operand only when the operator runs, after the
                # right operand: with $a = 1, "$a + ($a = 2)" is 4 and "$u . ($u = 'x')" is
                # 'xx' without a warning.
                right = self.evaluate(node.right)
                left = self.evaluate(node.left)
            else:
                left = self.evaluate(node.left)
                right = self.evaluate(node.right)
            return self.binary(node, node.operator, left, right)
        if isinstance(node, _Call):
            return self.call(node)
        if isinstance(node, _Constant):
            return self.constant(node)
        raise AssertionError(f"unknown node {node!r}")

    def read_variable(self, name: str, node: _Node) -> PhpValue:
        if name in self.scope.variables:
            return self.scope.variables[name]
        self.warn(node, f"undefined variable ${name}")
        return None

    def constant(self, node: _Constant) -> PhpValue:
        name = node.name
        lowered = name.lower()
        if lowered in _EMPTY_MAGIC_CONSTANTS:
            return b""
        if lowered == "__line__":
            return self.src.position(node.offset)[0]
        if lowered == "__file__":
            return os.path.realpath(self.src.path).encode("utf-8", "surrogateescape")
        if lowered == "__dir__":
            real = os.path.realpath(self.src.path)
            return os.path.dirname(real).encode("utf-8", "surrogateescape")
        if name in self.interpreter.constants:
            return self.interpreter.constants[name]
        if name in _BUILTIN_CONSTANTS:
            return _BUILTIN_CONSTANTS[name]
        raise self.src.error(
            node.offset,
            # Never named: it may be a secret whose quotes were forgotten.
            "undefined constant (a string needs its quotes; tuitop supports only the "
            "constants of define() and a few of PHP's: PHP_EOL, PHP_INT_MAX, "
            "DIRECTORY_SEPARATOR...)",
        )

    def call(self, node: _Call) -> PhpValue:
        args = [self.evaluate(arg) for arg in node.args]
        # A runtime error in PHP (ArgumentCountError), after the arguments are evaluated: a
        # syntax error further down the file is reported first.
        low, high = _FUNCTION_ARITY[node.function]
        if not low <= len(args) <= high:
            raise self.src.error(
                node.offset, f"{node.function}() takes {low} to {high} arguments, not {len(args)}"
            )
        if node.function == "getenv":
            if args[0] is None:
                raise self.src.error(
                    node.offset, "getenv(null) returns the whole environment: not supported"
                )
            # The C getenv() PHP calls stops at a NUL byte.
            wanted = to_php_string(args[0]).split(b"\0")[0]
            value = self.interpreter.environ.get(wanted.decode("utf-8", "surrogateescape"))
            return False if value is None else value.encode("utf-8", "surrogateescape")
        name = to_php_string(args[0]).decode("utf-8", "surrogateescape")
        if len(args) == 3 and to_php_bool(args[2]):
            self.warn(
                node,
                "define(): argument #3 ($case_insensitive) is ignored since declaration of "
                "case-insensitive constants is no longer supported",
            )
        # true, false and null are constants to PHP, in any case.
        builtin = name in _BUILTIN_CONSTANTS or name.lower() in ("true", "false", "null")
        if name in self.interpreter.constants or builtin:
            self.warn(node, f"constant {name} already defined")
            return False
        self.interpreter.constants[name] = args[1]
        return True

    def number(self, node: _Node, value: PhpValue) -> int | float:
        """An operand of an arithmetic operator as a number (its type already checked)."""
        if isinstance(value, bytes):
            number, whole, _ = _numeric_prefix(value)
            if not whole:
                self.warn(node, "a non-numeric value encountered")
            return number
        if value is None:
            return 0
        return int(value) if isinstance(value, bool) else value

    def binary(self, node: _Node, operator: str, left: PhpValue, right: PhpValue) -> PhpValue:
        if operator == ".":
            return to_php_string(left) + to_php_string(right)
        for operand in (left, right):
            if isinstance(operand, bytes) and not _numeric_prefix(operand)[2]:
                raise self.src.error(
                    node.offset,
                    f"unsupported operand types: {php_type(left)} {operator} {php_type(right)}",
                )
        a = self.number(node, left)
        b = self.number(node, right)
        if operator == "%":
            # From the operands as written: a string and a float of the same value convert
            # differently once beyond the int range (see to_php_int).
            divisor = to_php_int(right)
            if divisor == 0:
                raise self.src.error(node.offset, "modulo by zero")
            dividend = to_php_int(left)
            if divisor == -1:
                return 0
            remainder = abs(dividend) % abs(divisor)
            return -remainder if dividend < 0 else remainder
        if operator == "/":
            if b == 0:
                raise self.src.error(node.offset, "division by zero")
            if isinstance(a, int) and isinstance(b, int) and a % b == 0:
                return _checked_int(a // b, lambda: float(a) / float(b))
            return float(a) / float(b)
        if isinstance(a, int) and isinstance(b, int):
            exact = {"+": a + b, "-": a - b, "*": a * b}[operator]
            return _checked_int(exact, lambda: _float_op(operator, float(a), float(b)))
        return _float_op(operator, float(a), float(b))


def _float_op(operator: str, a: float, b: float) -> float:
    if operator == "+":
        return a + b
    if operator == "-":
        return a - b
    return a * b


_BUILTIN_CONSTANTS: dict[str, PhpValue] = {
    "PHP_EOL": b"\n",
    "PHP_INT_MAX": PHP_INT_MAX,
    "PHP_INT_MIN": PHP_INT_MIN,
    "PHP_INT_SIZE": 8,
    "PHP_FLOAT_EPSILON": 2.220446049250313e-16,
    "PHP_FLOAT_MAX": 1.7976931348623157e308,
    "PHP_FLOAT_MIN": 2.2250738585072014e-308,
    "DIRECTORY_SEPARATOR": b"/",
    "PATH_SEPARATOR": b":",
    "INF": math.inf,
    "NAN": math.nan,
}
