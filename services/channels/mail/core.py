"""The pure part of the email bridge: what a received mail is (a thread, a sender, automatic or not,
vouched for or not, its fresh text and files), and the reply that goes back, as an EmailMessage."""

from __future__ import annotations

import hashlib
import html
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses, make_msgid, parseaddr

_PARSER = BytesParser(policy=policy.default)
# Subject prefixes mail clients add for replies and forwards, in a few languages (AW: German, SV: Nordic…).
_PREFIX = re.compile(r"^\s*((re|fwd?|aw|sv|vs|antw|wg|tr)(\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_MSGID = re.compile(r"<[^<>\s]+>")
# Where a client starts quoting the mail it answers: "On <date>, <someone> wrote:" and the like.
_QUOTE_INTRO = re.compile(
    r"^\s*(on\s.+wrote:|am\s.+schrieb.*:|le\s.+a écrit\s*:|-{2,}\s*original message\s*-{2,})\s*$", re.IGNORECASE
)
_CHOICE = re.compile(r"^\s*#?(\d{1,2})\s*[).]?\s*$")


def parse(raw: bytes) -> EmailMessage:
    message = _PARSER.parsebytes(raw)
    assert isinstance(message, EmailMessage)  # policy.default builds EmailMessage
    return message


def header(message: EmailMessage, name: str) -> str:
    value = message.get(name)
    return "" if value is None else str(value).strip()


def address(value: str) -> str:
    """The bare, lower-cased address in a From/To value ("" when there is none)."""
    return parseaddr(value)[1].strip().lower()


def addresses(values: Iterable[str]) -> list[str]:
    return [a.strip().lower() for _, a in getaddresses(list(values)) if "@" in a]


def domain(addr: str) -> str:
    return addr.rpartition("@")[2].lower()


def message_ids(value: str) -> list[str]:
    """The ids in a References or In-Reply-To header, brackets kept."""
    return _MSGID.findall(value)


def bare(msgid: str) -> str:
    return msgid.strip().strip("<>")


def normal_subject(subject: str) -> str:
    return " ".join(_PREFIX.sub("", subject).split()).lower()


def chat_of(root: str) -> str:
    """A thread's chat id: a short hash of its first message's id, never containing '@' (a bare address
    as a chat id means "start a new thread to this address")."""
    return "t" + hashlib.sha256(bare(root).encode()).hexdigest()[:20]


def thread_root(message: EmailMessage) -> str | None:
    """The first message of the thread this one belongs to, as its headers say (None: it starts one, or
    its client kept no thread headers, when the subject is all there is to go by)."""
    refs = message_ids(header(message, "References"))
    if refs:
        return refs[0]
    parent = message_ids(header(message, "In-Reply-To"))
    return parent[0] if parent else None


# --- automatic mail: never answered ---------------------------------------------------------------------


def automatic(message: EmailMessage, *, own: str) -> str:
    """Why this mail must never wake an agent (an auto-reply, a bounce, list mail, our own), or ""."""
    sender = address(header(message, "From"))
    if sender == own:
        return "mail from the assistant's own address"
    auto = header(message, "Auto-Submitted").lower()
    if auto and auto != "no":
        return f"automatic mail (Auto-Submitted: {auto})"
    precedence = header(message, "Precedence").lower()
    if precedence in ("bulk", "list", "junk", "auto_reply"):
        return f"automatic mail (Precedence: {precedence})"
    if header(message, "List-Id") or header(message, "List-Unsubscribe"):
        return f"mailing-list mail ({header(message, 'List-Id') or 'List-Unsubscribe'})"
    for name in ("X-Autoreply", "X-Autorespond", "X-Auto-Response"):
        if header(message, name):
            return f"automatic mail ({name})"
    if message.get_content_type() == "multipart/report" or header(message, "Return-Path") == "<>":
        return "a bounce (delivery status notification)"
    local = sender.partition("@")[0]
    if local in ("mailer-daemon", "postmaster") or not sender:
        return f"a bounce (from {sender or 'an empty sender'})"
    return ""


# --- who sent it: Authentication-Results (RFC 8601) -------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    checked: bool  # a trusted Authentication-Results header was there
    aligned: bool
    reason: str


def _results(value: str) -> tuple[str, list[tuple[str, str, dict[str, str]]]]:
    """authserv-id and [(method, result, {property: value})] of one Authentication-Results header."""
    value = re.sub(r"\([^()]*\)", " ", value)  # comments
    head, _, rest = value.partition(";")
    out = []
    for clause in rest.split(";"):
        words = clause.split()
        if not words or "=" not in words[0]:
            continue
        method, _, result = words[0].partition("=")
        props = {}
        for word in words[1:]:
            key, eq, val = word.partition("=")
            if eq:
                props[key.lower()] = val.strip('"').lower()
        out.append((method.lower(), result.lower(), props))
    return head.strip().split()[0].lower() if head.strip() else "", out


def _aligned(d: str, from_domain: str) -> bool:
    """Relaxed alignment (DMARC): the same domain, or one a subdomain of the other."""
    return bool(d) and (d == from_domain or from_domain.endswith("." + d) or d.endswith("." + from_domain))


def authenticity(message: EmailMessage, trusted: Sequence[str]) -> Verdict:
    """Does the From domain align with a passing DKIM signature or SPF check, as the mail server that took
    the mail recorded it? Only Authentication-Results headers that name a trusted server count: anyone
    can write one into a mail."""
    from_domain = domain(address(header(message, "From")))
    wanted = {t.lower() for t in trusted}
    found = [
        r
        for value in message.get_all("Authentication-Results") or []
        for server, results in [_results(str(value))]
        if server in wanted
        for r in results
    ]
    if not found:
        return Verdict(False, False, "no Authentication-Results from a trusted server")
    seen = []
    for method, result, props in found:
        if method == "dmarc":
            if result == "pass":
                return Verdict(True, True, "dmarc=pass")
            seen.append(f"dmarc={result}")
        elif method == "dkim":
            d = props.get("header.d", "") or domain(props.get("header.i", ""))
            if result == "pass" and _aligned(d, from_domain):
                return Verdict(True, True, f"dkim=pass for {d}")
            seen.append(f"dkim={result}" + (f" for {d}" if d else ""))
        elif method == "spf":
            mailfrom = props.get("smtp.mailfrom", "")
            d = domain(mailfrom) if "@" in mailfrom else mailfrom
            if result == "pass" and _aligned(d, from_domain):
                return Verdict(True, True, f"spf=pass for {d}")
            seen.append(f"spf={result}" + (f" for {d}" if d else ""))
    return Verdict(True, False, f"From domain {from_domain} has no aligned DKIM or SPF pass ({', '.join(seen)})")


# --- what it says ---------------------------------------------------------------------------------------


def _html_text(markup: str) -> str:
    markup = re.sub(r"(?is)<(script|style|blockquote)\b.*?</\1>", " ", markup)
    markup = re.sub(r"(?i)<br\s*/?>|</p>|</div>", "\n", markup)
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


def fresh_text(message: EmailMessage) -> str:
    """What the sender wrote in this mail: the plain-text part (else the HTML one as text), without the
    quoted mail it answers (the thread's earlier mails are already in the agent's conversation)."""
    body = message.get_body(preferencelist=("plain", "html"))
    if body is None:
        return ""
    try:
        text = str(body.get_content())
    except (LookupError, UnicodeError):  # a charset Python does not know: its bytes as UTF-8, best effort
        payload = body.get_payload(decode=True)
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else ""
    if body.get_content_type() == "text/html":
        text = _html_text(text)
    lines: list[str] = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if _QUOTE_INTRO.match(line):
            break
        if line.startswith(">"):
            continue
        if line.rstrip() == "--":  # the signature separator
            break
        lines.append(line.rstrip())
    return "\n".join(lines).strip()


def choice(text: str) -> int | None:
    """A reply that picks a numbered choice: its first non-empty line is just the number."""
    for line in text.split("\n"):
        if line.strip():
            match = _CHOICE.match(line)
            return int(match.group(1)) if match else None
    return None


@dataclass(frozen=True)
class File:
    name: str
    mime: str
    data: bytes


def files(message: EmailMessage) -> list[File]:
    out = []
    for part in message.iter_attachments():
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            continue
        out.append(File(part.get_filename() or "attachment", part.get_content_type(), data))
    return out


# --- what goes back -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Thread:
    """What the bridge keeps of a thread to answer in it."""

    chat_id: str
    subject: str
    to: tuple[str, ...]  # who the answer goes to
    references: tuple[str, ...]  # ids of the thread's mails, oldest first (the first is the root)


def message_id_for(key: str, own: str) -> str:
    """The same Message-ID on every try of one outbound part: a resend after a lost answer is one mail."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@{domain(own) or 'clawden.invalid'}>"


def references(thread: Sequence[str], limit: int = 20) -> list[str]:
    """The References of an answer: the root and the latest ids (RFC 5322 lets long ones be trimmed)."""
    ids = list(dict.fromkeys(thread))
    return ids if len(ids) <= limit else [ids[0], *ids[-(limit - 1) :]]


def html_part(text: str) -> str:
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    body = "".join(f"<p>{html.escape(p).replace(chr(10), '<br>')}</p>\n" for p in paragraphs)
    return f"<!DOCTYPE html>\n<html><body>\n{body}</body></html>\n"


def compose(
    *,
    own: str,
    name: str,
    thread: Thread,
    text: str,
    key: str,
    attachments: Sequence[File] = (),
    parent: str | None = None,
) -> EmailMessage:
    """An answer in the thread: its headers keep the thread, it quotes nothing, it says it is automatic
    (RFC 3834, so other robots do not answer it), plain text with a simple HTML alternative. It answers the
    thread's latest mail, or `parent` where that is one of the thread's."""
    out = EmailMessage()
    out["From"] = f"{name} <{own}>" if name else own
    out["To"] = ", ".join(thread.to)
    subject = thread.subject.strip() or "(no subject)"
    out["Subject"] = subject if not thread.references or _PREFIX.match(subject) else f"Re: {subject}"
    out["Message-ID"] = message_id_for(key, own) if key else make_msgid(domain=domain(own))
    if thread.references:
        chain = list(thread.references)
        if parent in chain:
            chain = chain[: chain.index(parent) + 1]
        refs = references(chain)
        out["In-Reply-To"] = refs[-1]
        out["References"] = " ".join(refs)
    out["Auto-Submitted"] = "auto-replied"
    out["X-Auto-Response-Suppress"] = "All"  # Exchange's out-of-office replies stay away too
    out.set_content(text)
    out.add_alternative(html_part(text), subtype="html")
    for file in attachments:
        maintype, _, subtype = file.mime.partition("/")
        out.add_attachment(
            file.data, maintype=maintype or "application", subtype=subtype or "octet-stream", filename=file.name
        )
    return out
