"""``google.api.http`` path templates: parsing, matching a request path, and the OpenAPI
form of a template.

Grammar (google/api/http.proto)::

    Template = "/" Segments [ Verb ] ;
    Segments = Segment { "/" Segment } ;
    Segment  = "*" | "**" | LITERAL | Variable ;
    Variable = "{" FieldPath [ "=" Segments ] "}" ;
    Verb     = ":" LITERAL ;

Matching works on the raw (still percent-encoded) path, so an encoded ``/`` can never
split a segment; captured values are percent-decoded afterwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

__all__ = ["PathTemplate", "TemplateError"]


class TemplateError(ValueError):
    """A path template that does not follow the grammar, or a captured value that is not
    valid percent-encoded UTF-8."""


@dataclass(frozen=True, slots=True)
class _Variable:
    field_path: str
    segments: tuple[str, ...]  # literals, "*" or "**"


_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_LITERAL = re.compile(r"^[A-Za-z0-9._~!$&'()+,;=@-]+$")


@dataclass(frozen=True)
class PathTemplate:
    """One parsed template. ``parts`` holds literal segments, ``*``/``**`` and variables."""

    text: str
    parts: tuple[str | _Variable, ...]
    verb: str
    _regex: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        if not text.startswith("/"):
            raise TemplateError(f"{text!r}: a template starts with '/'")
        body, verb = text[1:], ""
        # The verb follows the last ':' that is outside braces.
        depth, cut = 0, -1
        for i, char in enumerate(body):
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            elif char == ":" and depth == 0:
                cut = i
        if cut >= 0:
            body, verb = body[:cut], body[cut + 1 :]
            if not _LITERAL.match(verb):
                raise TemplateError(f"{text!r}: bad verb {verb!r}")
        parts: list[str | _Variable] = []
        for token in _split_segments(body, text):
            if token.startswith("{"):
                inner = token[1:-1]
                field_path, _, pattern = inner.partition("=")
                if not re.fullmatch(
                    r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", field_path
                ):
                    raise TemplateError(f"{text!r}: bad field path {field_path!r}")
                segments = tuple(pattern.split("/")) if pattern else ("*",)
                for segment in segments:
                    _check_segment(segment, text)
                parts.append(_Variable(field_path, segments))
            else:
                _check_segment(token, text)
                parts.append(token)
        return cls(text, tuple(parts), verb, re.compile(_regex_of(parts, verb)))

    @property
    def literal_path(self) -> str | None:
        """The one path this template matches when it has no variables or wildcards
        (checked against its own expression), else None."""
        if any(not isinstance(p, str) or p in ("*", "**") for p in self.parts):
            return None
        path = self.text
        return path if self._regex.fullmatch(path) is not None else None

    @property
    def variables(self) -> tuple[str, ...]:
        """The field paths the template binds, in order."""
        return tuple(p.field_path for p in self.parts if isinstance(p, _Variable))

    def matches(self, raw_path: str) -> bool:
        """Whether ``raw_path`` has this template's shape (values not decoded)."""
        return self._regex.fullmatch(raw_path) is not None

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The decoded value of each variable when ``raw_path`` (percent-encoded, without
        the query) matches, else None. Raises TemplateError for undecodable values."""
        found = self._regex.fullmatch(raw_path)
        if found is None:
            return None
        values: dict[str, str] = {}
        for index, field_path in enumerate(self.variables):
            raw = found.group(f"v{index}")
            try:
                values[field_path] = unquote(raw, errors="strict")
            except UnicodeDecodeError:
                raise TemplateError(
                    f"path parameter {field_path!r} is not valid percent-encoded UTF-8"
                ) from None
        return values

    def openapi(self) -> tuple[str, list[tuple[str, str, str]]]:
        """The OpenAPI path and its parameters ``(name, field_path, prefix)``.

        OpenAPI path parameters cannot hold a ``/``, so a variable such as
        ``{name=collections/*}`` becomes ``collections/{collectionsId}``: each wildcard is
        its own parameter, named after the literal before it. A wildcard with no literal
        of its own before it (``{label.resource=*/*}``) is named after the field in
        lowerCamelCase (``labelResource``: OpenAPI tools read dots in a parameter name as
        nesting), numbered from the second one on, so that every name stays unique."""
        out: list[str] = []
        params: list[tuple[str, str, str]] = []
        used: set[str] = set()
        for part in self.parts:
            if isinstance(part, str):
                out.append(part)
                continue
            previous = ""
            for segment in part.segments:
                if segment in ("*", "**"):
                    base = f"{previous}Id" if previous else _camel(part.field_path)
                    name, number = base, 1
                    while name in used:
                        number += 1
                        name = f"{base}{number}"
                    used.add(name)
                    params.append((name, part.field_path, previous))
                    out.append("{" + name + "}")
                    previous = ""
                else:
                    out.append(segment)
                    previous = segment
        path = "/" + "/".join(out) + (f":{self.verb}" if self.verb else "")
        return path, params


def _camel(field_path: str) -> str:
    """``label.resource_name`` -> ``labelResourceName``."""
    words = field_path.replace(".", "_").split("_")
    return words[0] + "".join(word[:1].upper() + word[1:] for word in words[1:])


def _split_segments(body: str, text: str) -> list[str]:
    tokens: list[str] = []
    current = ""
    depth = 0
    for char in body:
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise TemplateError(f"{text!r}: unbalanced braces")
        if char == "/" and depth == 0:
            tokens.append(current)
            current = ""
        else:
            current += char
    if depth != 0:
        raise TemplateError(f"{text!r}: unbalanced braces")
    tokens.append(current)
    if any(token == "" for token in tokens):
        raise TemplateError(f"{text!r}: empty segment")
    return tokens


def _check_segment(segment: str, text: str) -> None:
    if segment not in ("*", "**") and not _LITERAL.match(segment):
        raise TemplateError(f"{text!r}: bad segment {segment!r}")


def _segment_regex(segment: str) -> str:
    if segment == "*":
        return r"[^/]+"
    if segment == "**":
        return r"[^/]+(?:/[^/]+)*"
    return re.escape(segment)


def _regex_of(parts: list[str | _Variable], verb: str) -> str:
    pieces: list[str] = []
    index = 0
    for part in parts:
        if isinstance(part, str):
            pieces.append(_segment_regex(part))
        else:
            inner = "/".join(_segment_regex(s) for s in part.segments)
            pieces.append(f"(?P<v{index}>{inner})")
            index += 1
    return "/" + "/".join(pieces) + (":" + re.escape(verb) if verb else "")
