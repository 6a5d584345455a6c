"""netrc text: lossless parse, merge of exactly one entry for our host, render. Pure.

Parsing never fails and keeps every byte (comments, ``macdef`` bodies, other hosts, ``default``),
so a merged file differs from its source only in the entry for our host. Pure: the file on disk
is ``nix_job.cache.netrc_file``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from nix_job.core.secret import NETRC_LOGIN

_SPACE = " \t\r\n"
_KEYWORDS = frozenset({"machine", "default", "login", "password", "account", "macdef"})
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t"}

#: The user name in our entry. Attic ignores it (it reads the token after the colon).
LOGIN = NETRC_LOGIN


@dataclass(frozen=True, slots=True, kw_only=True)
class Trivia:
    """Text between entries (comments, blank lines, stray tokens), kept verbatim."""

    text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NetrcEntry:
    """One ``machine NAME`` or ``default`` block; ``text`` is its verbatim source."""

    machine: str | None  # None for the `default` block
    login: str | None
    password: str | None = field(repr=False)
    account: str | None = field(repr=False)
    text: str = field(repr=False)


Item = Trivia | NetrcEntry


@dataclass(frozen=True, slots=True, kw_only=True)
class Netrc:
    """A parsed netrc: ``render(parse(text)) == text`` for every text."""

    items: tuple[Item, ...]
    open_macdef: bool  # the text ends inside a macdef body with no terminating blank line
    dangling: bool  # the text ends with a keyword still waiting for its value

    @property
    def entries(self) -> tuple[NetrcEntry, ...]:
        return tuple(item for item in self.items if isinstance(item, NetrcEntry))


@dataclass(slots=True)
class _Token:
    start: int
    end: int
    value: str


class _Lexer:
    """curl's netrc tokens: whitespace-separated words, optionally double-quoted with escapes."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def next(self) -> _Token | None:
        text, n = self.text, len(self.text)
        pos = self.pos
        while pos < n and text[pos] in _SPACE:
            pos += 1
        if pos >= n:
            self.pos = n
            return None
        start = pos
        if text[pos] == '"':
            pos += 1
            chars: list[str] = []
            while pos < n and text[pos] not in '"\n':  # curl reads quotes within a line
                if text[pos] == "\\" and pos + 1 < n and text[pos + 1] != "\n":
                    pos += 1
                    chars.append(_ESCAPES.get(text[pos], text[pos]))
                else:
                    chars.append(text[pos])
                pos += 1
            pos = min(pos + 1, n)  # the closing quote, when there is one
            self.pos = pos
            return _Token(start, pos, "".join(chars))
        while pos < n and text[pos] not in _SPACE:
            pos += 1
        self.pos = pos
        return _Token(start, pos, text[start:pos])

    def skip_line(self) -> int:
        """Move past the end of the current line; return the new position."""
        newline = self.text.find("\n", self.pos)
        self.pos = len(self.text) if newline < 0 else newline + 1
        return self.pos

    def skip_macdef_body(self) -> tuple[int, bool]:
        """Skip the rest of the macdef line and its body, up to the empty line that ends it.

        Returns the position of that line's end (so it stays with the macro) and whether the
        body was left open by the end of the text. Like curl, a line whose first character is
        CR or LF ends the macro; whatever follows that character is read as tokens again.
        """
        self.skip_line()
        text = self.text
        while self.pos < len(text):
            if text[self.pos] == "\n":
                self.pos += 1
                return self.pos - 1, False
            if text[self.pos] == "\r":
                self.pos += 1
                return self.pos, False
            self.skip_line()
        return self.pos, True


@dataclass(slots=True)
class _Block:
    start: int
    machine: str | None
    fields: dict[str, str] = field(default_factory=dict)


def parse(text: str) -> Netrc:
    """Split ``text`` into entries and the trivia around them. Never raises.

    An entry runs from its ``machine``/``default`` keyword to the end of the line holding its
    last token (or its macdef's closing empty line); comments and blank lines after that belong
    to the trivia before the next entry, so removing an entry keeps the comments around it.
    """
    lexer = _Lexer(text)
    items: list[Item] = []
    cursor = 0  # start of text not yet assigned to an item
    block: _Block | None = None
    last_end = 0  # end of the last significant token (or macdef body) of the current block
    open_macdef = False
    dangling = False

    def close(upto: int) -> None:
        """End the current block (or head trivia) just before ``upto``."""
        nonlocal cursor
        newline = text.find("\n", last_end, upto)
        split = upto if newline < 0 else newline + 1
        if block is None:
            if split > cursor and last_end > 0:
                items.append(Trivia(text=text[cursor:split]))
                cursor = split
        else:
            items.append(
                NetrcEntry(
                    machine=block.machine,
                    login=block.fields.get("login"),
                    password=block.fields.get("password"),
                    account=block.fields.get("account"),
                    text=text[block.start : split],
                )
            )
            cursor = split

    while (token := lexer.next()) is not None:
        keyword = token.value.lower() if text[token.start] != '"' else ""
        if keyword not in _KEYWORDS:
            if text[token.start] == "#":
                lexer.skip_line()  # a comment runs to the end of the line
            else:
                last_end = token.end  # a stray word: kept verbatim, ignored like curl does
            continue
        if keyword in ("machine", "default"):
            close(token.start)
            if cursor < token.start:
                items.append(Trivia(text=text[cursor : token.start]))
                cursor = token.start
            block = _Block(start=token.start, machine=None)
            last_end = token.end
            if keyword == "machine":
                name = lexer.next()
                block.machine = name.value if name is not None else ""
                last_end = name.end if name is not None else token.end
                dangling = name is None
            continue
        if keyword == "macdef":
            # The rest of the macdef line (the name) is ignored; the body starts on the next.
            last_end, open_macdef = lexer.skip_macdef_body()
            continue
        value = lexer.next()
        if value is None:
            last_end = token.end
            dangling = True
            break
        last_end = value.end  # login, password or account: meaningful only inside a block
        if block is not None:
            block.fields.setdefault(keyword, value.value)

    close(len(text))
    if cursor < len(text):
        items.append(Trivia(text=text[cursor:]))
    return Netrc(items=tuple(items), open_macdef=open_macdef, dangling=dangling)


def render(netrc: Netrc) -> str:
    return "".join(item.text for item in netrc.items)


def lookup(netrc: Netrc, host: str) -> NetrcEntry | None:
    """The entry curl (hence Nix) uses for ``host``: the first matching machine, or a
    ``default`` block if one comes first. (Exact for entries with login and password; curl
    versions differ on entries without a login, which is why ours always has one.)"""
    wanted = host.lower()
    for entry in netrc.entries:
        if entry.machine is None or entry.machine.lower() == wanted:
            return entry
    return None


def token_problem(value: str) -> str | None:
    """Why ``value`` cannot be written as a bare netrc word, or None. Never echoes the value."""
    if not value:
        return "is empty"
    if any(c in _SPACE or ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        return "contains whitespace or control characters"
    if value.startswith(('"', "#")):
        return 'starts with `"` or `#`, which netrc readers treat specially'
    return None


def entry_text(*, host: str, password: str, login: str = LOGIN) -> str:
    """One host-only entry (no port: curl matches netrc machines by host name) with a login.

    Attic ignores the user name of Basic credentials and takes the part after the colon as the
    token. The login line is there for curl: entries without one are skipped or lost when
    another entry follows (curl/curl#9148 in 7.83, curl/curl#15767 in 8.11.1, and measured on
    Debian's 7.88.1), while ``machine``/``login``/``password`` stops curl at the first match.
    """
    for what, value in (("host", host), ("login", login), ("password", password)):
        if (why := token_problem(value)) is not None:
            raise ValueError(f"netrc {what} {why}")
    return f"machine {host}\nlogin {login}\npassword {password}\n"


def merge(netrc: Netrc, *, host: str, password: str, login: str = LOGIN) -> Netrc:
    """Replace every entry for ``host`` (case-insensitive, as curl compares) by exactly one
    entry of ours, keeping all other entries, ``default`` blocks and trivia as they were.

    Ours takes the place of the first old one, or of the first ``default`` block if that comes
    earlier (curl stops there); without either it goes before the first entry, so no existing
    entry gets a new successor (curl versions that lose password-only entries followed by
    another entry would otherwise lose the user's). With no entries at all it goes at the end,
    ending an unterminated macdef first and giving a dangling keyword an empty value, so that
    neither swallows our ``machine``.
    """
    text = entry_text(host=host, password=password, login=login)
    ours = NetrcEntry(machine=host, login=login, password=password, account=None, text=text)
    wanted = host.lower()

    def is_ours(item: Item) -> bool:
        return (
            isinstance(item, NetrcEntry)
            and item.machine is not None
            and item.machine.lower() == wanted
        )

    items = list(netrc.items)
    entries = [(i, item) for i, item in enumerate(items) if isinstance(item, NetrcEntry)]
    index = next((i for i, entry in entries if is_ours(entry) or entry.machine is None), None)
    if index is None:
        index = entries[0][0] if entries else len(items)
    kept_before = [item for item in items[:index] if not is_ours(item)]
    kept_after = [item for item in items[index:] if not is_ours(item)]
    before = "".join(item.text for item in kept_before)
    newline = "" if not before or before.endswith("\n") else "\n"
    if kept_after:
        separator = newline  # e.g. a comment or a word ends the text before ours
    elif netrc.open_macdef:
        separator = newline + "\n"  # a macro body runs until an empty line
    elif netrc.dangling:
        separator = (" " if newline else "") + '""\n'  # junk keyword: curl ignores it anyway
    else:
        separator = newline
    inserted: list[Item] = [Trivia(text=separator)] if separator else []
    return Netrc(
        items=(*kept_before, *inserted, ours, *kept_after),
        open_macdef=netrc.open_macdef and bool(kept_after),
        dangling=netrc.dangling and bool(kept_after),
    )
