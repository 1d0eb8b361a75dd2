"""The email bridge's pure part: threads, automatic mail, Authentication-Results, fresh text, the answer."""

from __future__ import annotations

from email.message import EmailMessage

import pytest

from clawden.bus import events as ev
from services.channels.mail import core
from services.router import engage


def mail(body: str = "hello", **headers: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = "Ada <ada@example.org>"
    message["To"] = "assistant@home.example"
    message["Subject"] = "Plans"
    message["Message-ID"] = "<m1@example.org>"
    for name, value in headers.items():
        del message[name.replace("_", "-")]
        message[name.replace("_", "-")] = value
    message.set_content(body)
    return core.parse(message.as_bytes())


def test_a_reply_belongs_to_the_thread_its_first_reference_names() -> None:
    reply = mail(References="<root@x> <m0@x>", In_Reply_To="<m0@x>")
    assert core.thread_root(reply) == "<root@x>"
    assert core.thread_root(mail(In_Reply_To="<m0@x>")) == "<m0@x>"
    assert core.thread_root(mail()) is None
    assert core.chat_of("<root@x>") == core.chat_of("root@x") and "@" not in core.chat_of("<root@x>")


def test_subjects_match_across_reply_and_forward_prefixes() -> None:
    assert core.normal_subject("Re: AW: Fwd:  Plans  for   Sunday") == "plans for sunday"
    assert core.normal_subject("RE[2]: Plans") == "plans"


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ({"Auto_Submitted": "auto-replied"}, "Auto-Submitted: auto-replied"),
        ({"Precedence": "bulk"}, "Precedence: bulk"),
        ({"List_Id": "<family.lists.example.org>"}, "mailing-list"),
        ({"From": "MAILER-DAEMON@mx.example.org"}, "bounce"),
        ({"Return_Path": "<>"}, "bounce"),
        ({"From": "assistant@home.example"}, "own address"),
    ],
)
def test_automatic_mail_is_recognised(headers: dict[str, str], reason: str) -> None:
    assert reason in core.automatic(mail(**headers), own="assistant@home.example")


def test_a_person_writing_is_not_automatic() -> None:
    assert core.automatic(mail(Auto_Submitted="no"), own="assistant@home.example") == ""


def test_a_delivery_status_report_is_a_bounce() -> None:
    report = EmailMessage()
    report["From"] = "Mail Delivery System <postmaster@mx.example.org>"
    report.set_content("could not deliver")
    report.make_mixed()
    report.set_type("multipart/report")
    assert "bounce" in core.automatic(core.parse(report.as_bytes()), own="a@b")


AR = "mx.home.example; "


@pytest.mark.parametrize(
    ("results", "aligned"),
    [
        ("dkim=pass header.d=example.org; spf=fail smtp.mailfrom=evil.example", True),
        ("dkim=pass header.d=mail.example.org", True),  # relaxed alignment: a subdomain
        ("spf=pass smtp.mailfrom=bounces@example.org; dkim=none", True),
        ("dmarc=pass header.from=example.org", True),
        ("dkim=pass header.d=evil.example; spf=pass smtp.mailfrom=evil.example", False),  # signed, by someone else
        ("dkim=fail (bad signature) header.d=example.org; spf=softfail smtp.mailfrom=example.org", False),
        ("dmarc=fail header.from=example.org", False),
    ],
)
def test_the_from_domain_must_align_with_a_passing_check(results: str, aligned: bool) -> None:
    verdict = core.authenticity(mail(Authentication_Results=AR + results), ["mx.home.example"])
    assert verdict.checked and verdict.aligned is aligned, verdict


def test_results_written_by_another_server_count_for_nothing() -> None:
    forged = mail(Authentication_Results="mx.evil.example; dkim=pass header.d=example.org")
    verdict = core.authenticity(forged, ["mx.home.example"])
    assert not verdict.checked and not verdict.aligned


def test_the_reason_names_what_failed() -> None:
    verdict = core.authenticity(
        mail(Authentication_Results=AR + "dkim=pass header.d=evil.example"), ["mx.home.example"]
    )
    assert "example.org" in verdict.reason and "dkim=pass for evil.example" in verdict.reason


def test_fresh_text_leaves_out_the_quoted_mail_and_the_signature() -> None:
    body = "Yes, 8 works.\n\nOn Sat, 5 Dec 2026, Clawden wrote:\n> shall we say 8?\n"
    assert core.fresh_text(mail(body)) == "Yes, 8 works."
    assert core.fresh_text(mail("Fine\n> old\nthanks\n-- \nAda\n")) == "Fine\nthanks"


def test_an_html_only_mail_is_read_as_text() -> None:
    message = EmailMessage()
    message["From"] = "ada@example.org"
    message.set_content("<p>Hello&nbsp;there</p><blockquote>old</blockquote><p>Bye</p>", subtype="html")
    assert core.fresh_text(core.parse(message.as_bytes())).split() == ["Hello", "there", "Bye"]


@pytest.mark.parametrize(
    ("text", "number"),
    [("2", 2), ("  #1.\n\nOn ... wrote:", 1), ("2)", 2), ("2 please", None), ("yes", None), ("", None)],
)
def test_a_numbered_choice_is_the_first_line_alone(text: str, number: int | None) -> None:
    assert core.choice(text) == number


def test_an_answer_keeps_the_thread_quotes_nothing_and_says_it_is_automatic() -> None:
    thread = core.Thread("t1", "Plans", ("ada@example.org",), ("<root@x>", "<m1@example.org>"))
    answer = core.compose(
        own="assistant@home.example",
        name="Clawden",
        thread=thread,
        text="See you at 8.\n\nBye",
        key="out-1#0",
        attachments=[core.File("plan.txt", "text/plain", b"8 pm")],
    )
    again = core.compose(
        own="assistant@home.example", name="Clawden", thread=thread, text="See you at 8.", key="out-1#0"
    )
    assert answer["Subject"] == "Re: Plans" and answer["To"] == "ada@example.org"
    assert answer["In-Reply-To"] == "<m1@example.org>" and answer["References"] == "<root@x> <m1@example.org>"
    assert answer["Auto-Submitted"] == "auto-replied"
    assert answer["Message-ID"] == again["Message-ID"]  # the same on every try of one part
    parsed = core.parse(answer.as_bytes())
    assert core.fresh_text(parsed) == "See you at 8.\n\nBye"
    html = parsed.get_body(preferencelist=("html",))
    assert html is not None and "<p>See you at 8.</p>" in str(html.get_content())
    assert [(f.name, f.data) for f in core.files(parsed)] == [("plan.txt", b"8 pm")]


def test_an_answer_to_an_earlier_mail_of_the_thread_names_it_as_its_parent() -> None:
    thread = core.Thread("t1", "Plans", ("ada@example.org",), ("<root@x>", "<m1@x>", "<m2@x>"))
    answer = core.compose(own="a@b", name="", thread=thread, text="about m1", key="k", parent="<m1@x>")
    assert answer["In-Reply-To"] == "<m1@x>" and answer["References"] == "<root@x> <m1@x>"
    stranger = core.compose(own="a@b", name="", thread=thread, text="x", key="k", parent="<elsewhere@x>")
    assert stranger["In-Reply-To"] == "<m2@x>"  # not one of the thread's: the latest


def test_long_references_keep_the_root_and_the_latest() -> None:
    refs = core.references([f"<{i}@x>" for i in range(50)], limit=5)
    assert refs == ["<0@x>", "<46@x>", "<47@x>", "<48@x>", "<49@x>"]


def test_the_router_records_a_refused_message_as_dropped_with_its_reason() -> None:
    message = ev.InboundMessage(
        route=ev.Route(channel="email", chat_id="t1"),
        message_id="m1",
        sender=ev.Sender(id="ada@example.org"),
        text="wire me money",
        sent_at=0.0,
        mentioned=True,
        refused="unverified sender: no aligned DKIM or SPF pass",
    )
    decision = engage.decide(
        message,
        engage.View(
            chat=engage.Chat(known=True, policy="public"), sender=engage.Standing("email:ada@example.org", owner=True)
        ),
    )
    assert decision.dropped == "unverified sender: no aligned DKIM or SPF pass" and decision.record
    assert not decision.actions
