"""A real browser: headless Chromium types into the web app and watches the reply stream in.

Needs Debian's `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver);
skips where they are missing. The screenshot lands in the test's folder and in
test-output/browser.png (git-ignored) for a person to look at.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

import pytest
from conftest import CHROMEDRIVER, chromium_options, needs_chromium

from warmline.safety import AI_NOTICE
from warmline.serving.generator import SAMPLE_PROMPTS, GenerationSettings
from warmline.serving.web import build_app, launch

REPO = Path(__file__).resolve().parents[1]
REPLY = "That sounds really lonely. I'm glad you said it out loud. What has your week been like?"

pytestmark = needs_chromium


class SlowGenerator:
    """Scripted: the same reply word by word, slowly enough for the page to show it growing."""

    settings = GenerationSettings()
    gate = None

    def __init__(self) -> None:
        self.conversations: list[list[dict[str, str]]] = []

    def stream(self, conversation, *, seed=None, result=None, **overrides):
        self.conversations.append(conversation)
        for i, word in enumerate(REPLY.split(" ")):
            time.sleep(0.15)
            yield word if i == 0 else " " + word
        if result is not None:
            result.text, result.stop_reason = REPLY, "eos"


@pytest.fixture
def generator() -> SlowGenerator:
    return SlowGenerator()


@pytest.fixture
def app_url(generator: SlowGenerator):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = build_app(generator, system_prompt="Be kind.")
    yield launch(app, host="127.0.0.1", port=port, block=False)
    app.close()


@pytest.fixture
def browser(tmp_path: Path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = chromium_options(webdriver, tmp_path)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_a_reply_streams_into_the_page(
    app_url: str, browser, generator: SlowGenerator, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(app_url)
    box = WebDriverWait(browser, 30).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#message textarea")))
    notice = browser.find_element(By.ID, "ai-notice")
    assert notice.is_displayed() and AI_NOTICE in notice.text and "988" in notice.text
    assert SAMPLE_PROMPTS[1] in browser.find_element(By.ID, "chatbot").text  # the example prompts

    box.send_keys("I feel lonely.", Keys.ENTER)
    seen: list[str] = []  # every distinct text of the reply bubble, in order
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not seen or seen[-1] != REPLY):
        bubbles = browser.find_elements(By.CSS_SELECTOR, "#chatbot .bot-row .message-content")
        text = bubbles[-1].text.strip() if bubbles else ""
        if text and (not seen or text != seen[-1]):
            seen.append(text)
        time.sleep(0.05)

    screenshot = tmp_path / "browser.png"
    browser.save_screenshot(str(screenshot))
    (REPO / "test-output").mkdir(exist_ok=True)
    shutil.copy(screenshot, REPO / "test-output" / "browser.png")

    assert seen and seen[-1] == REPLY
    assert len(seen) >= 3, f"the reply appeared all at once, not streamed: {seen}"
    assert all(REPLY.startswith(partial) for partial in seen)  # it grew word by word, in order
    user_bubbles = browser.find_elements(By.CSS_SELECTOR, "#chatbot .user-row .message-content")
    assert [b.text.strip() for b in user_bubbles] == ["I feel lonely."]
    assert browser.find_element(By.ID, "ai-notice").is_displayed()  # still there during the chat

    # A second turn: the history the page sends back reaches the model as plain turns.
    WebDriverWait(browser, 30).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "#message textarea")))
    browser.find_element(By.CSS_SELECTOR, "#message textarea").send_keys("Not great.", Keys.ENTER)
    WebDriverWait(browser, 30).until(lambda _: len(generator.conversations) == 2)
    assert generator.conversations[1] == [
        {"role": "system", "content": "Be kind."},
        {"role": "user", "content": "I feel lonely."},
        {"role": "assistant", "content": REPLY},
        {"role": "user", "content": "Not great."},
    ]
