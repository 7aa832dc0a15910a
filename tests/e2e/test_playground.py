"""The playground in a real headless Chromium against two models on the real CPU engine: an answer
streams into the page event by event (counted as it arrives, not read at the end), with its time to
first token and tokens per second; compare mode streams one prompt to both models side by side;
the figures shown are the ones recorded."""
from __future__ import annotations

import uuid

import pytest
from playwright.sync_api import expect

from serving import deployments
from serving.choices import State
from serving.models import PlaygroundCall, ServeModel
from tests.conftest import login_in_browser
from tests.e2e.test_serving_real_engine import real_gantry  # noqa: F401 — the fixture: a real head and a ticker

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# Counts every change to an answer's text as it happens, one per streamed event; watching the whole
# page from before the prompt is sent, since the answer's element only exists once the form is answered.
WATCH = """() => {
  window.__pieces = {};
  new MutationObserver((records) => {
    for (const r of records) {
      const id = r.target.id || (r.target.parentElement && r.target.parentElement.id) || "";
      if (id.endsWith("-text")) { window.__pieces[id] = (window.__pieces[id] || 0) + 1; }
    }
  }).observe(document.body, {childList: true, characterData: true, subtree: true});
}"""


def wait_for(keys, state, timeout_s=420):
    """Until every model is in `state`: the fixture's ticker reconciles meanwhile, as beat would."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        states = {k: ServeModel.objects.get(model_key=k).state for k in keys}
        if all(s == state for s in states.values()):
            return
        assert State.FAILED not in states.values(), states
        assert time.monotonic() < deadline, states
        time.sleep(1)


@pytest.fixture
def two_models(real_gantry, alice):
    """Two RUNNING models of alice's; deleted (and waited for) even when the test fails, since the
    head is shared and other modules count the models it serves."""
    made = [deployments.submit_spec(alice, f"model_id: chat-{uuid.uuid4().hex[:6]}\nmodel_source: $HOME/common/hf/tiny-llama\n")[0] for _ in range(2)]
    keys = [m.model_key for m in made]
    try:
        wait_for(keys, State.RUNNING)
        yield made
    finally:
        for model in made:
            model = ServeModel.objects.get(pk=model.pk)
            if model.state not in (State.DELETING, State.DELETED):
                deployments.request_delete(model, alice)
        wait_for(keys, State.DELETED, timeout_s=180)


def test_an_answer_streams_token_by_token_and_compare_shows_two(page, live_server, alice, bob, two_models, test_output):
    first, second = two_models

    login_in_browser(page, live_server.url, "alice")
    page.goto(f"{live_server.url}/serving/{first.model_key}")
    page.click("#open-playground")
    page.fill("#id_prompt", "Tell me about Ray")
    page.fill("#id_max_tokens", "24")
    page.evaluate(WATCH)
    page.click("#send")
    text = page.locator("#answer-1-text")
    stats = page.locator("#answer-1-stats")
    expect(stats).to_contain_text("tokens/s", timeout=60_000)
    pieces = page.evaluate("window.__pieces['answer-1-text'] || 0")
    call = PlaygroundCall.objects.get(model_key=first.model_key)
    assert call.completion_tokens and call.completion_tokens > 1 and not call.error
    # Each token its own change of the page (a few may share one delta, and so one change).
    assert pieces >= call.completion_tokens // 2, f"{pieces} changes for {call.completion_tokens} tokens: the answer came in one piece"
    assert len(text.inner_text()) > 0
    assert stats.locator("[data-ttft-ms]").get_attribute("data-ttft-ms") == str(call.ttft_ms)
    assert "curl -N" in page.locator("#answer-1 details").text_content()
    page.screenshot(path=test_output / "playground-answer.png", full_page=True)

    page.select_option("#id_compare", second.model_key)
    page.click("#send")
    for pane in ("#answer-1", "#answer-2"):
        expect(page.locator(f"{pane}-stats")).to_contain_text("tokens/s", timeout=60_000)
    models = [page.locator(p).get_attribute("data-model") for p in ("#answer-1", "#answer-2")]
    assert models == [first.model_id, second.model_id]
    assert PlaygroundCall.objects.filter(user=alice).count() == 3
    page.screenshot(path=test_output / "playground-compare.png", full_page=True)

    page.context.clear_cookies()
    login_in_browser(page, live_server.url, "bob")
    assert page.goto(f"{live_server.url}/serving/{first.model_key}/playground").status == 404

