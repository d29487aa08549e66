"""`warmline eval sheet`: a blinded rating sheet of two tiny models, filled in by a real browser.

Headless Chromium (Debian's `chromium` and `chromium-driver`, as tests/test_browser.py) opens the
generated page from disk, rates every item, presses "Save my ratings", and `warmline eval
ratings` reads the downloaded file back with the win rate the test's answers imply. The tests
without a browser check what the page may and may not contain, and the crisis filter.
"""

from __future__ import annotations

import functools
import json
import re
import time
from html import escape as html_escape
from pathlib import Path

import pytest
from conftest import CHROMEDRIVER, chromium_options, needs_chromium
from typer.testing import CliRunner

from warmline.cli import app
from warmline.evaluation.sheet import RUBRIC, everyday_prompts
from warmline.safety import SafetyGate

# The gate on its lexicon alone (the classifier is tested in test_safety.py; training it here
# would only slow this file down).
LEXICON_ONLY = functools.partial(SafetyGate, use_classifier=False)
QUICK = ("-n", "8", "--max-new-tokens", "12")  # short replies: the page, not the prose, is tested
FEELINGS = ["lonely", "tired", "anxious", "sad", "stressed", "angry", "lost", "numb"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_llama_dir) -> Path:
    """A finished one-stage run of the tiny Llama (its held-out prompts join the sheet's)."""
    from warmline.recipe import load_recipe
    from warmline.training.train import train_recipe

    tmp = tmp_path_factory.mktemp("sheet-run")
    rows = [
        {
            "text": f"Human: I feel {FEELINGS[i % 8]} about my week, day {i}.\n"
            f"Assistant: Feeling {FEELINGS[i % 8]} is hard. What helps you?"
        }
        for i in range(16)
    ]
    (tmp / "talk.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp / "tiny.yaml").write_text(
        f"name: sheetrun-alpha\nbase_model: {tiny_llama_dir}\noutput_dir: {tmp / 'runs'}\nsystem_prompt: Be kind.\n"
        f"stages:\n  - {{name: talk, source: {tmp / 'talk.jsonl'}, validation_fraction: 0.25, epochs: 1,"
        " learning_rate: 3.0e-3, max_length: 64}\n"
        "training: {micro_batch_size: 4, global_batch_size: 4, save_steps: 100, logging_steps: 1, "
        "precision: fp32, warmup_ratio: 0.0}\n"
    )
    train_recipe(load_recipe(tmp / "tiny.yaml"))
    return tmp / "runs" / "sheetrun-alpha"


def make_sheet(*args: str) -> dict:
    """`warmline eval sheet ARGS` (lexicon-only gate); returns the paths it printed and the key."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("warmline.safety.SafetyGate", LEXICON_ONLY)
        result = CliRunner().invoke(app, ["eval", "sheet", *args])
    assert result.exit_code == 0, result.output
    sheet = Path(re.search(r"^sheet: (\S+)", result.stdout, re.M).group(1))
    key = Path(re.search(r"^key: +(\S+)", result.stdout, re.M).group(1))
    return {"sheet": sheet, "key": key, "stdout": result.stdout, "key_data": json.loads(key.read_text())}


@pytest.fixture(scope="module")
def sheet(run_dir, tiny_llama_dir, tmp_path_factory) -> dict:
    """The fine-tuned run against the model it started from (both with a 600-token vocabulary:
    sampling from GPT-2's 50,257 is slow on a busy 2-core machine)."""
    out = tmp_path_factory.mktemp("sheet-out")
    return make_sheet(str(run_dir), str(tiny_llama_dir), *QUICK, "--seed", "3", "--out", str(out))


def test_the_sheet_never_holds_the_key_or_the_model_names(sheet, run_dir, tiny_llama_dir):
    html = sheet["sheet"].read_text(encoding="utf-8")
    key = sheet["key_data"]
    assert key["models"] == [str(run_dir), str(tiny_llama_dir)]
    for name in (
        str(run_dir),
        run_dir.name,
        str(tiny_llama_dir),
        tiny_llama_dir.name,
        "sheetrun",
        sheet["key"].name,
    ):
        assert name not in html, name
    assert "held-out" not in html and '"A":' not in html  # neither the sources nor the order
    assert sheet["key"].parent not in sheet["sheet"].parents or sheet["sheet"].parent != sheet["key"].parent
    assert sheet["sheet"].parent.name == "for-raters" and list(sheet["sheet"].parent.iterdir()) == [
        sheet["sheet"]
    ]
    assert sheet["key"].stat().st_mode & 0o777 == 0o600
    # Self-contained: nothing is fetched from anywhere.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "default-src 'none'" in html
    assert "AI-generated replies" in html and key["sheet_id"] in html


def test_the_sheet_has_every_item_with_both_replies_and_the_rubric(sheet):
    html = sheet["sheet"].read_text(encoding="utf-8")
    key = sheet["key_data"]
    assert len(key["items"]) == 8 and html.count('<section class="item"') == 8
    for d in RUBRIC:
        assert html_escape(d.title) in html and html_escape(d.question) in html
    assert "no diagnosis, no medication advice" in html
    sources = {item["source"] for item in key["items"]}
    assert "everyday" in sources and "held-out talk" in sources  # both kinds of prompt, by default
    everyday = {p.conversation[0]["content"] for p in everyday_prompts()}
    orders = set()
    for item in key["items"]:
        assert set(item["replies"]) == set(key["models"])
        assert item["source"] != "everyday" or item["prompt"][0]["content"] in everyday
        orders.add(item["A"])
        assert f'id="item-{item["item"]}"' in html
    assert orders == set(key["models"])  # each model is A somewhere: the order is mixed
    assert f"{len(key['items'])} items from {key['candidates']} candidate prompts" in sheet["stdout"]


def test_crisis_prompts_are_left_out(tmp_path, tiny_llama_dir, run_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "# a comment\nI feel nervous before my driving test.\nI want to end my life tonight.\n"
        "My flatmate never cleans up and I don't know how to bring it up.\n"
    )
    made = make_sheet(
        str(tiny_llama_dir), str(run_dir), "--prompts", str(prompts), *QUICK, "--out", str(tmp_path / "s")
    )
    html = made["sheet"].read_text(encoding="utf-8")
    assert "1 dropped as crisis prompts" in made["stdout"] and made["key_data"]["dropped_crisis"] == 1
    assert "end my life" not in html
    assert "driving test" in html and "flatmate" in html and len(made["key_data"]["items"]) == 2


def test_two_equal_models_are_refused(tmp_path, tiny_llama_dir):
    result = CliRunner().invoke(app, ["eval", "sheet", str(tiny_llama_dir), str(tiny_llama_dir)])
    assert result.exit_code == 2 and "two different models" in result.stderr


@pytest.fixture
def browser(tmp_path: Path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = chromium_options(webdriver, tmp_path)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)}
    )
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


@needs_chromium
def test_a_rater_fills_in_the_sheet_in_a_browser_and_the_ratings_read_back(sheet, browser, tmp_path):
    from selenium.webdriver.common.by import By

    key = sheet["key_data"]
    model_a, model_b = key["models"]
    # The rater prefers model_a on all but the last two items: one win for model_b, one tie.
    plan = {item["item"]: model_a for item in key["items"]}
    items = sorted(plan)
    plan[items[-2]], plan[items[-1]] = model_b, "tie"
    browser.get(sheet["sheet"].resolve().as_uri())
    assert "AI-generated replies" in browser.find_element(By.ID, "ai-note").text

    # Saving without a rater id is refused with a message, and downloads nothing.
    browser.find_element(By.ID, "save").click()
    assert "rater id" in browser.find_element(By.ID, "status").text
    assert list(browser.downloads.iterdir()) == []

    browser.find_element(By.ID, "rater-id").send_keys("rater-7")
    for item in key["items"]:
        side_of = {item["A"]: "A", item["B"]: "B"}
        for d in RUBRIC:
            for model, score in ((model_a, 4), (model_b, 2)):
                name = f"{item['item']}-{d.name}-{side_of[model]}"
                browser.find_element(By.CSS_SELECTOR, f'input[name="{name}"][value="{score}"]').click()
        winner = plan[item["item"]]
        choice = "tie" if winner == "tie" else side_of[winner]
        browser.find_element(
            By.CSS_SELECTOR, f'input[name="{item["item"]}-preference"][value="{choice}"]'
        ).click()
    browser.find_element(By.CSS_SELECTOR, f'textarea[name="{items[0]}-comment"]').send_keys("A felt warmer.")
    browser.find_element(By.ID, "save").click()

    saved = None
    for _ in range(100):  # wait for the download to land; not a timing assertion
        done = [p for p in browser.downloads.iterdir() if p.suffix == ".json"]
        if done:
            saved = done[0]
            break
        time.sleep(0.1)
    assert saved is not None, f"nothing downloaded: {list(browser.downloads.iterdir())}"
    assert saved.name == f"ratings-{key['sheet_id']}-rater-7.json"
    assert "every message is rated" in browser.find_element(By.ID, "status").text
    data = json.loads(saved.read_text())
    assert data["rater_id"] == "rater-7" and data["sheet_id"] == key["sheet_id"]
    assert model_a not in saved.read_text() and model_b not in saved.read_text()  # still blind

    out = tmp_path / "summary"
    result = CliRunner().invoke(
        app, ["eval", "ratings", str(saved), "--key", str(sheet["key"]), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "ratings.json").read_text())
    n = len(items)
    a, b = summary["win_rates"][model_a], summary["win_rates"][model_b]
    assert (a["wins"], a["losses"], a["ties"]) == (n - 2, 1, 1)
    assert a["win_rate"] == pytest.approx((n - 2) / (n - 1)) and b["win_rate"] == pytest.approx(1 / (n - 1))
    assert summary["complete_judgements"] == n
    for d in RUBRIC:
        assert summary["dimension_means"][model_a][d.name] == {"mean": 4.0, "n": n}
        assert summary["dimension_means"][model_b][d.name] == {"mean": 2.0, "n": n}
    assert summary["comments"] == [{"item": items[0], "rater": "rater-7", "comment": "A felt warmer."}]
    assert f"| `{model_a}` | {n - 2} | 1 | 1 | 0 | {(n - 2) / (n - 1):.2f} |" in result.stdout
