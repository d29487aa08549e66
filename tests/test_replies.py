"""What a person sees when the safety layer acts: the fixed reply per kind and language, the
helplines per locale (each with a source), the AI notice on its 3-hour schedule, and the crisis
counts an operator exports (`--safety-counts`, `warmline safety report`)."""

from __future__ import annotations

import csv
import io
import json
import re
import socket
import stat
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from warmline import cli
from warmline.safety import AI_NOTICE, SafetyGate, screen_output
from warmline.safety.levels import LANGUAGES, REPLY_KINDS, Assessment, RiskLevel
from warmline.safety.notice import NOTICE_INTERVAL_S, REMINDER, SessionNotice, SessionNotices, strip_notice
from warmline.safety.replies import (
    KIND_LINES,
    crisis_reply,
    load_replies,
    load_table,
    packaged_resources_path,
    resources_note,
)
from warmline.safety.report import CountsWriter, read_counts, write_counts

KINDS = [kind for kind, _ in REPLY_KINDS]
# One category per kind, as the detector reports it (levels.REPLY_KINDS maps it back).
CATEGORY_OF = {kind: sorted(members)[0] for kind, members in REPLY_KINDS}
# A country whose lines a reply in each language should give when the locale names it.
COUNTRY_OF = {"en": "uk", "es": "es", "fr": "fr", "de": "de", "pt": "br", "it": "it"}
runner = CliRunner()


def assessment(kind: str, language: str = "en", level: str = "elevated", *extra: str) -> Assessment:
    return Assessment(level=RiskLevel(level), categories=[CATEGORY_OF[kind], *extra], language=language)


def paragraphs(reply: str) -> list[str]:
    return reply.split("\n\n")


# ------------------------------------------------------------------ every kind, every language


@pytest.mark.parametrize("level", ["elevated", "imminent"])
@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_renders_in_every_language_with_that_locales_lines(
    kind: str, language: str, level: str
) -> None:
    table = load_table()
    texts = load_replies()[language]["kinds"][kind]
    case = assessment(kind, language, level)
    assert case.reply_kind == kind
    country = table.locales[COUNTRY_OF[language]]

    known = crisis_reply(case, country.key)
    unknown = crisis_reply(case, None)
    for reply in (known, unknown):
        opening = texts["imminent"] if level == "imminent" and "imminent" in texts else texts["opening"]
        assert reply.startswith(opening.split("{emergency}")[0]), "the reply is in the message's language"
        assert texts["closing"].split("{emergency}")[0] in reply
        assert "{" not in reply and "}" not in reply, "every placeholder is filled"
        assert reply == crisis_reply(case, country.key if reply is known else None), "deterministic"
        # Screened as strictly as a reply to a conversation at risk: no method, dose or place.
        verdict = screen_output(reply, assessment=case)
        assert "method_details" not in verdict.reasons and "medication_dose" not in verdict.reasons, reply
    # Known country: its own line for this kind (or its crisis line), and its emergency number.
    wanted = country.lines(*KIND_LINES[kind])[0]
    assert wanted.contact in known and country.emergency in known
    assert "findahelpline.com" in known  # for anyone outside that country
    # Unknown country: findahelpline.com first, then lines labelled with their country.
    first_line = next(line for line in unknown.splitlines() if line.startswith("- "))
    assert "findahelpline.com" in first_line
    for listed in table.countries_for(language) if kind != "violence_request" else []:
        assert f"- {listed.name_in(language)}: " in unknown


@pytest.mark.parametrize("language", [lang for lang in LANGUAGES if lang != "en"])
def test_non_english_replies_do_not_fall_back_to_english(language: str) -> None:
    english = load_replies()["en"]["kinds"]
    for kind in KINDS:
        reply = crisis_reply(assessment(kind, language), None)
        assert english[kind]["opening"][:30] not in reply and english[kind]["closing"][:30] not in reply


@pytest.mark.parametrize("language", LANGUAGES)
def test_imminent_suicide_reply_leads_with_the_emergency_number(language: str) -> None:
    country = load_table().locales[COUNTRY_OF[language]]
    elevated = crisis_reply(assessment("suicide", language, "elevated"), country.key)
    imminent = crisis_reply(assessment("suicide", language, "imminent"), country.key)
    assert country.emergency in paragraphs(imminent)[0]
    assert country.emergency not in paragraphs(elevated)[0]
    assert imminent != elevated


def test_an_unknown_language_gets_the_english_reply() -> None:
    assert crisis_reply(assessment("suicide", "nl"), "us") == crisis_reply(assessment("suicide", "en"), "us")


# ------------------------------------------------------------------------- the right reply


@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("locale", ["us", "uk", None])
def test_a_violence_request_gets_a_refusal_never_the_suicide_reply(language: str, locale: str | None) -> None:
    refusal = crisis_reply(assessment("violence_request", language), locale)
    suicide_texts = load_replies()[language]["kinds"]["suicide"]
    assert refusal != crisis_reply(assessment("suicide", language), locale)
    for part in ("opening", "imminent", "intro", "closing"):
        assert suicide_texts[part].split("{emergency}")[0][:40] not in refusal
    # The main message is the refusal: no helpline in it, and no talk of suicide or self-harm.
    main = paragraphs(refusal)[0]
    assert not re.search(r"\d{3}", main)
    assert not re.search(r"suic|self-harm|end(ing)? your life", main, re.IGNORECASE)
    listed = [line for line in refusal.splitlines() if line.startswith("- ")]
    assert len(listed) == (1 if locale is None else 2)  # one support line and/or findahelpline.com


def test_a_violence_request_at_imminent_risk_is_still_the_refusal() -> None:
    reply = crisis_reply(assessment("violence_request", "en", "imminent"), "us")
    assert reply.startswith("I can't help with anything meant to hurt someone.")


def test_intrusive_thoughts_get_perinatal_lines_and_no_judgement() -> None:
    us = crisis_reply(assessment("intrusive_thoughts"), "us")
    uk = crisis_reply(assessment("intrusive_thoughts"), "uk")
    assert "does not mean you will act on them" in us and "not a bad person" in us
    assert "1-833-852-6262" in us and "1-800-944-4773" in us  # the maternal mental health lines
    assert "NHS 111" in uk and "health visitor" in uk
    for reply in (us, uk):
        assert not re.search(r"\b(dangerous|monster|sick|police|report you)\b", reply, re.IGNORECASE)
    imminent = crisis_reply(assessment("intrusive_thoughts", "en", "imminent"), "us")
    assert "somewhere safe" in paragraphs(imminent)[0] and "911" in paragraphs(imminent)[0]


@pytest.mark.parametrize(
    ("locale", "language", "expected"),
    [
        ("us", "en", "1-800-422-4453"),
        ("uk", "en", "0800 1111"),
        ("es", "es", "900 20 20 10"),
        ("fr", "fr", "119"),
        ("de", "de", "116 111"),
        ("it", "it", "19696"),
        ("br", "pt", "Disque 100"),
    ],
)
def test_a_young_person_disclosing_abuse_gets_child_protection_lines(
    locale: str, language: str, expected: str
) -> None:
    reply = crisis_reply(assessment("child_abuse", language), locale)
    child_lines = paragraphs(reply)[1].splitlines()[1]  # the first line listed
    assert expected in child_lines


def test_abuse_reply_lists_the_abuse_line_before_the_crisis_line() -> None:
    reply = crisis_reply(assessment("abuse"), "uk")
    assert reply.index("0808 2000 247") < reply.index("116 123") and "not your fault" in reply


def test_a_suicide_reply_that_also_discloses_abuse_lists_the_abuse_lines_too() -> None:
    reply = crisis_reply(assessment("suicide", "en", "elevated", "harm_from_others"), "us")
    assert reply.startswith("Thank you for telling me.") and "1-800-799-7233" in reply and "988" in reply


def test_eating_disorder_reply_gives_the_eating_disorder_line_and_refuses_pro_ed_help() -> None:
    us = crisis_reply(assessment("eating_disorder"), "us")
    uk = crisis_reply(assessment("eating_disorder"), "uk")
    assert "1-888-375-7767" in us and "988" in us
    assert "0808 801 0677" in uk
    assert "can't help with restricting, purging or losing weight" in us


def test_third_party_reply_says_what_to_do_and_who_to_call() -> None:
    reply = crisis_reply(assessment("third_party"), "ie")
    assert "worried about someone" in reply and "ask them directly" in reply
    assert "116 123" in reply and "112 or 999" in reply


# ---------------------------------------------------------------------------- locale choice


@pytest.mark.parametrize(
    ("locale", "language", "expected", "absent"),
    [
        ("fr-CA", "fr", "988", "3114"),  # the locale wins over the language
        ("fr", "en", "3114", "988"),
        ("pt-BR", "pt", "188", "808 24 24 24"),
        ("pt", "pt", "808 24 24 24", "188"),
        ("de-AT", "de", "142", "0800 111 0 111"),
        ("de_CH", "de", "143", "0800 111 0 111"),
        ("es-MX", "es", "800 911 2000", "024"),
        ("en-AU", "en", "13 11 14", "988"),
    ],
)
def test_a_known_locale_wins(locale: str, language: str, expected: str, absent: str) -> None:
    reply = crisis_reply(assessment("suicide", language), locale)
    assert expected in reply and absent not in reply


@pytest.mark.parametrize("locale", [None, "", "auto", "default", "nz"])
def test_a_spanish_message_with_no_known_country_gets_no_number_as_if_certain(locale: str | None) -> None:
    reply = crisis_reply(assessment("suicide", "es"), locale)
    listed = [line for line in reply.splitlines() if line.startswith("- ")]
    assert "findahelpline.com" in listed[0]
    assert "- España: Línea 024: 024" in reply and "- México: Línea de la Vida: 800 911 2000" in reply
    # Every number given is labelled with its country; the emergency numbers too.
    assert all(line.startswith(("- España:", "- México:", "- Estados Unidos:")) for line in listed[1:-1])
    assert listed[-1].startswith("- Peligro inmediato: número de emergencias de tu país (")
    assert "España 112" in reply and "México 911" in reply


def test_distress_note_follows_locale_and_language() -> None:
    assert "116 123" in resources_note("uk") and "999" in resources_note("uk")
    spanish = resources_note(None, language="es")
    assert spanish.startswith("Si en algún momento") and "findahelpline.com" in spanish
    assert "3114" in resources_note("fr", language="fr")


# ------------------------------------------------------------------------------- resources


def test_every_resource_line_cites_its_source_and_says_it_is_unverified() -> None:
    raw = yaml.safe_load(packaged_resources_path().read_text(encoding="utf-8"))
    table = load_table()
    assert len(table.locales) >= 16
    for key, entry in table.locales.items():
        for line in entry.all_lines():
            assert re.fullmatch(r"https://[\w.-]+\.[a-z]{2,}(/[^\s]*)?", line.source), (key, line)
            assert line.verified is False, f"{key}: {line.name} is marked verified in the packaged file"
        for group, lines in raw["locales"][key].items():  # the YAML itself says so on every line
            if isinstance(lines, list) and lines and isinstance(lines[0], dict):
                assert all("source" in item and item.get("verified") is False for item in lines), (key, group)
    header = packaged_resources_path().read_text(encoding="utf-8").split("locales:")[0]
    assert "MUST VERIFY" in header
    for language in LANGUAGES:  # every language lists countries that exist in the file
        assert table.countries_for(language) and all(
            c.key in table.locales for c in table.countries_for(language)
        )


def test_a_reply_texts_file_missing_a_kind_fails_loudly(tmp_path: Path) -> None:
    data = load_replies()
    broken = {lang: dict(texts) for lang, texts in data.items()}
    broken["de"] = dict(
        broken["de"], kinds={k: v for k, v in data["de"]["kinds"].items() if k != "third_party"}
    )
    path = tmp_path / "replies.yaml"
    path.write_text(yaml.safe_dump(broken, allow_unicode=True), encoding="utf-8")
    with pytest.raises(ValueError, match=r"de\.kinds\.third_party\.opening"):
        load_replies(str(path))


# ------------------------------------------------------------------------------ AI notice


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ai_notice_says_it_is_an_ai_not_a_person_or_a_therapist() -> None:
    assert "an AI" in AI_NOTICE and "not a person" in AI_NOTICE and "not a therapist" in AI_NOTICE


def test_the_notice_comes_at_the_start_and_after_every_3_hours_of_use() -> None:
    clock = FakeClock()
    notice = SessionNotice(clock=clock)
    assert notice.due() == AI_NOTICE  # the session starts
    assert notice.due() is None
    clock.now += NOTICE_INTERVAL_S - 1
    assert notice.due() is None
    clock.now += 1
    repeat = notice.due()
    assert repeat is not None and repeat.startswith(REMINDER) and repeat.endswith(AI_NOTICE)
    clock.now += NOTICE_INTERVAL_S / 2
    assert notice.due() is None
    clock.now += NOTICE_INTERVAL_S / 2
    assert notice.due() is not None
    assert NOTICE_INTERVAL_S == 3 * 60 * 60


def test_sessions_have_their_own_schedules_and_idle_ones_are_forgotten() -> None:
    clock = FakeClock()
    notices = SessionNotices(clock=clock, forget_after_s=10 * NOTICE_INTERVAL_S)
    assert notices.due("a", shown_at_start=True) is None  # the page's banner was the first notice
    assert notices.due("b") == AI_NOTICE
    clock.now += NOTICE_INTERVAL_S
    assert notices.due("a") is not None and notices.due("b") is not None
    assert notices.due("c", shown_at_start=True) is None  # c's clock starts now, not at a's start
    clock.now += 11 * NOTICE_INTERVAL_S
    assert notices.due("c", shown_at_start=True) is None and len(notices) == 1  # a and b forgotten


class TwoHourGenerator:
    """A generator stub whose every reply takes two hours on the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.gate = None

    def stream(self, conversation, *, seed=None, result=None, **overrides):
        self.clock.now += 2 * 60 * 60
        text = f"reply to {conversation[-1]['content']}"
        if result is not None:
            result.text, result.stop_reason = text, "eos"
        yield text


def test_terminal_chat_repeats_the_notice_after_3_hours() -> None:
    from warmline.serving.chat import run_chat

    clock = FakeClock()
    stdin, stdout, stderr = io.StringIO("one\ntwo\nthree\n/quit\n"), io.StringIO(), io.StringIO()
    run_chat(
        TwoHourGenerator(clock),
        system_prompt=None,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        notice=SessionNotice(clock=clock),
    )
    err = stderr.getvalue()
    assert err.count(AI_NOTICE) == 2  # at the start (0 h) and before the third reply (4 h)
    assert err.index(REMINDER) > err.index(AI_NOTICE)
    assert AI_NOTICE not in stdout.getvalue()  # stdout keeps only the replies
    assert stdout.getvalue().splitlines() == ["reply to one", "reply to two", "reply to three"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_app_repeats_the_notice_after_3_hours_and_keeps_it_from_the_model() -> None:
    from gradio_client import Client

    from warmline.serving.web import build_app, launch

    clock = FakeClock()
    generator = TwoHourGenerator(clock)
    seen: list[list[dict]] = []
    stream = generator.stream

    def recording_stream(conversation, **kwargs):
        seen.append(list(conversation))
        yield from stream(conversation, **kwargs)

    generator.stream = recording_stream
    app = build_app(generator, system_prompt=None, locale="uk", notices=SessionNotices(clock=clock))
    url = launch(app, host="127.0.0.1", port=_free_port(), block=False)
    try:
        client = Client(url, verbose=False)
        first = client.predict("one", api_name="/chat")  # the banner was the first notice
        second = client.predict("two", api_name="/chat")  # 2 h
        third = client.predict("three", api_name="/chat")  # 4 h: due again
    finally:
        app.close()
    assert first == "reply to one" and second == "reply to two", (first, second, third)
    assert third.startswith(REMINDER) and third.endswith("\n\nreply to three") and AI_NOTICE in third
    assert strip_notice(third) == "reply to three"


def test_web_history_gives_the_model_the_reply_without_the_notice() -> None:
    from warmline.serving.web import history_to_conversation

    shown = f"{REMINDER} {AI_NOTICE}\n\nThat sounds hard."
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": shown}]
    assert history_to_conversation(history)[1]["content"] == "That sounds hard."


# ---------------------------------------------------------------------- crisis counts export


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_gate_counts_crisis_replies_per_kind_category_and_language_never_text() -> None:
    gate = SafetyGate(locale="uk", use_classifier=False)
    message = "I want to end my life tonight, I have it all planned"
    reply = gate.reply_for(gate.check_input(user(message)))
    assert reply is not None
    counts = gate.snapshot()
    assert counts["crisis_replies"] == 1 and counts["crisis_kind:suicide"] == 1
    assert counts["crisis_language:en"] == 1
    assert any(key.startswith("crisis_category:") for key in counts)
    assert not any(word in json.dumps(counts) for word in ("tonight", "planned", "life"))


def test_counts_file_is_owner_only_and_adds_up_over_runs(tmp_path: Path) -> None:
    path = tmp_path / "counts" / "safety.json"
    first = CountsWriter(
        path, lambda: {"crisis_replies": 2, "crisis_kind:suicide": 2}, interval_s=3600
    ).start()
    first.stop()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    started = read_counts(path)["started"]
    second = CountsWriter(
        path, lambda: {"crisis_replies": 1, "crisis_kind:abuse": 1}, interval_s=3600
    ).start()
    second.stop()
    data = read_counts(path)
    assert data["counts"] == {"crisis_replies": 3, "crisis_kind:suicide": 2, "crisis_kind:abuse": 1}
    assert data["started"] == started
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_safety_report_on_a_counts_file(tmp_path: Path) -> None:
    path = tmp_path / "safety.json"
    write_counts(
        path,
        {
            "assessments": 10,
            "level:none": 6,
            "level:distress": 1,
            "level:elevated": 2,
            "level:imminent": 1,
            "crisis_replies": 3,
            "crisis_replies:elevated": 2,
            "crisis_replies:imminent": 1,
            "crisis_kind:suicide": 2,
            "crisis_kind:violence_request": 1,
            "crisis_category:plan": 1,
            "crisis_category:violence_request": 1,
            "crisis_language:fr": 1,
            "crisis_language:en": 2,
            "distress_notes": 1,
        },
    )
    result = runner.invoke(cli.app, ["safety", "report", str(path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["crisis_replies"] == 3 and report["assessments"] == 10
    assert report["crisis_replies_by_kind"]["suicide"] == 2 and report["crisis_replies_by_kind"]["abuse"] == 0
    assert set(report["crisis_replies_by_kind"]) == set(KINDS)
    assert report["crisis_replies_by_language"] == {"en": 2, "es": 0, "fr": 1, "de": 0, "pt": 0, "it": 0}
    assert report["by_level"] == {"none": 6, "distress": 1, "elevated": 2, "imminent": 1}

    out = tmp_path / "report.csv"
    result = runner.invoke(cli.app, ["safety", "report", str(path), "--format", "csv", "--output", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(out.read_text(encoding="utf-8").splitlines()))
    assert {"group": "crisis_replies_by_kind", "name": "violence_request", "count": "1"} in rows
    assert {"group": "total", "name": "crisis_replies", "count": "3"} in rows
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_safety_report_on_a_file_that_is_not_a_counts_file_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "transcript.json"
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}), encoding="utf-8")
    result = runner.invoke(cli.app, ["safety", "report", str(path)])
    assert result.exit_code == 2 and "not a safety counts file" in result.stderr
    assert "Traceback" not in result.output
    missing = runner.invoke(cli.app, ["safety", "report", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "--safety-counts" in missing.stderr


def test_chat_with_safety_counts_writes_the_gates_counts(
    tmp_path: Path, tiny_llama_dir: Path, monkeypatch
) -> None:
    from warmline.serving.generator import Generator

    def load(model, locale, settings, fp16_decode=True):  # the real generator and gate, no classifier
        gate = SafetyGate(locale=locale, use_classifier=False)
        return Generator.from_pretrained(model, gate=gate, settings=settings, fp16_decode=fp16_decode)

    monkeypatch.setattr(cli, "_load_generator", load)
    counts = tmp_path / "counts.json"
    messages = "hello\nI want to kill myself\n/quit\n"
    result = runner.invoke(
        cli.app,
        ["chat", str(tiny_llama_dir), "--max-new-tokens", "4", "--safety-counts", str(counts)],
        input=messages,
    )
    assert result.exit_code == 0, result.output
    assert "findahelpline.com" in result.stdout  # no --locale: the country is not known
    data = read_counts(counts)
    assert data["counts"]["assessments"] == 2 and data["counts"]["crisis_replies"] == 1
    assert data["counts"]["crisis_kind:suicide"] == 1
    assert "kill" not in counts.read_text(encoding="utf-8")
    assert stat.S_IMODE(counts.stat().st_mode) == 0o600
