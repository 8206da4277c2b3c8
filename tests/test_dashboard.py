"""The dashboard in a real browser: Debian's chromium driven by Playwright (no browser download), over the
running Service on each backend, with data from a real relay run (mail through the relay to the scripted
upstream, DSNs and a complaint through the bounce MX). It asserts what a person sees: table rows, the charts'
data points and SES's lines, a message's story, and a suppression removed in the page gone from the store."""
from __future__ import annotations

import os
import shutil

import aiosmtplib
import pytest

from proxy.app import Service
from proxy.config import Address
from proxy.model import Correlation, Kind
from proxy.store import EventFilter, MessageFilter, SuppressionFilter
from tests.conftest import make_config
from tests.test_forged_feedback import arf, dsn
from tests.test_inbound import KEY, deliver

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]

try:
    from playwright.async_api import async_playwright
except ImportError:  # the `test` extra installs it
    async_playwright = None

pytestmark = [
    pytest.mark.skipif(async_playwright is None, reason="playwright is not installed (pip install -e '.[test]')"),
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason="chromium not found (Debian: apt-get install -y chromium; .ci/run installs it)"),
]


@pytest.fixture
async def browser():
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def svc(tmp_path, upstream, monkeypatch, store_url):
    """The Service with VERP, on each backend in turn; a parser bug on mails that ask for one (so that the
    bounce MX keeps a `failed` row to look at)."""
    from proxy.inbound import pipeline

    real_parse = pipeline.parse

    def parse(raw, *args, **kw):
        if b"X-Test-Parser-Bug: yes" in raw:
            raise RuntimeError("parser bug provoked by the test")
        return real_parse(raw, *args, **kw)

    monkeypatch.setattr(pipeline, "parse", parse)
    monkeypatch.setenv("BOUNCEPROXY_VERP_KEY", KEY)
    config = make_config(tmp_path, upstream.port, store_url=store_url,
                         inbound={"plain_addresses": ("bounces@bounces.test",)})
    async with Service(config) as service:
        yield service


async def send(svc: Service, sender: str, recipients: list[str], message_id: str) -> str:
    """Relay one message; returns its relay id."""
    smtp = aiosmtplib.SMTP(hostname=svc.relay_address[0], port=svc.relay_address[1], start_tls=False)
    await smtp.connect()
    try:
        await smtp.sendmail(sender, recipients, (f"From: {sender}\r\nMessage-ID: <{message_id}>\r\n"
                                                 "Subject: dashboard test\r\n\r\nhello\r\n").encode())
    except aiosmtplib.SMTPRecipientsRefused:
        pass  # a synchronous bounce for every recipient: recorded all the same
    await smtp.quit()
    (message,) = await svc.store.list_messages(MessageFilter(limit=1))  # the newest: this one
    assert message.recipients[0].address == recipients[0]
    return message.id


async def relay_run(svc: Service) -> dict:
    """Real traffic: accepted mail, a hard and a soft synchronous bounce, a complaint and a DSN naming a
    stranger through the bounce MX, and a mail the parser fails on."""
    ids = {
        "main": await send(svc, "app@shop.example", ["ok1@example.net", "ok2@example.net", "unknown1@example.net"],
                           "main@shop.example"),
        "grey": await send(svc, "app@shop.example", ["greylist1@example.net"], "grey@shop.example"),
        "news": await send(svc, "news@other.example", ["ok3@example.net"], "news@other.example"),
    }
    main = await svc.store.get_message(ids["main"])
    await deliver(svc, arf("ok1@example.net", "main@shop.example"), main.verp_token)
    await deliver(svc, dsn(["stranger@example.org"], message_id="main@shop.example"), main.verp_token)
    await deliver(svc, b"From: someone@example.org\r\nX-Test-Parser-Bug: yes\r\nSubject: ?\r\n\r\n?\r\n",
                  "bounces@bounces.test")
    return ids


async def open_dashboard(browser, svc: Service):
    page = await browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}") if msg.type == "error" else None)
    page.on("dialog", lambda dialog: dialog.accept())  # "Take ... off the suppression list?"
    await page.add_init_script("window.__csp = []; document.addEventListener('securitypolicyviolation', "
                               "(e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
    await page.goto("http://%s:%s/" % svc.api_address)
    await page.wait_for_selector("body[data-loads='1']", timeout=15000)
    return page, problems


async def rows(page, table: str) -> list[list[str]]:
    return await page.eval_on_selector_all(
        f"#{table} tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent.trim()))")


CHART_DATA = """() => {
  const out = {};
  for (const [name, chart] of Object.entries(window.bounceproxy.charts)) {
    out[name] = {labels: chart.data.labels, sets: Object.fromEntries(chart.data.datasets.map(s => [s.label, s.data]))};
  }
  return out;
}"""


async def test_the_dashboard_shows_a_real_relay_run(svc, browser):
    ids = await relay_run(svc)
    page, problems = await open_dashboard(browser, svc)

    # messages: every relayed message, newest first, with its status
    messages = await svc.store.list_messages(MessageFilter(limit=100))
    shown = await rows(page, "messages-table")
    assert [r[1] for r in shown] == [m.id for m in messages] and len(shown) == 3
    by_id = {r[1]: r for r in shown}
    assert by_id[ids["main"]][2] == "partial" and by_id[ids["main"]][3] == "app@shop.example"
    assert by_id[ids["main"]][4] == "ok1@example.net, ok2@example.net, unknown1@example.net"
    assert by_id[ids["grey"]][2] == "failed" and by_id[ids["news"]][2] == "sent"

    # the charts: the counts of the run per bucket, and the rates against SES's lines
    charts = await page.evaluate(CHART_DATA)
    assert set(charts) == {"volume", "bounces", "bounce-rate", "complaint-rate"}
    volume, bounces = charts["volume"]["sets"], charts["bounces"]["sets"]
    assert sum(volume["messages"]) == 3 and sum(volume["recipients"]) == 5
    events = [e.event for e in await svc.store.list_events(EventFilter(limit=1000))]
    counted = [e for e in events if e.correlation != Correlation.FOREIGN_RECIPIENT]
    assert sum(bounces["hard"]) == sum(1 for e in counted if e.kind == Kind.BOUNCE and e.bounce_type == "hard") == 1
    assert sum(bounces["soft"]) == sum(1 for e in counted if e.kind == Kind.BOUNCE and e.bounce_type == "soft") == 1
    assert sum(bounces["complaints"]) == 1
    rate = charts["bounce-rate"]["sets"]
    assert set(rate["SES review 5 %"]) == {5} and set(rate["SES pause 10 %"]) == {10}
    complaint = charts["complaint-rate"]["sets"]
    assert set(complaint["SES review 0.1 %"]) == {0.1} and set(complaint["SES pause 0.5 %"]) == {0.5}
    n = len(charts["volume"]["labels"])
    assert n == 24 or n == 25  # a day in hours
    for i in range(n):  # each rate point is that bucket's hard bounces (complaints) over its recipients
        rcpts = volume["recipients"][i]
        if rcpts == 0:
            assert rate["hard bounce rate %"][i] is None
        else:
            assert rate["hard bounce rate %"][i] == pytest.approx(100 * bounces["hard"][i] / rcpts, abs=0.01)
            assert complaint["complaint rate %"][i] == pytest.approx(100 * bounces["complaints"][i] / rcpts, abs=0.01)
    assert max(r for r in rate["hard bounce rate %"] if r is not None) > 5  # the run is above SES's review line

    # reputation per identity, rates coloured against the lines
    identities = {r[0]: r for r in await rows(page, "identities-table")}
    assert identities["shop.example"][1:6] == ["4", "1", "25.00 %", "1", "25.000 %"]
    assert identities["other.example"][1:4] == ["1", "0", "0.00 %"]
    assert await page.get_attribute("#identities-table tbody tr:first-child td:nth-child(4)", "class") == "t-hard"

    # to look at: the parse failure and the stranger a report named
    failures = await rows(page, "failures-table")
    assert len(failures) == 1 and "RuntimeError: parser bug provoked by the test" in failures[0][5]
    foreign = await rows(page, "foreign-table")
    assert [(r[3], r[4]) for r in foreign] == [("stranger@example.org", ids["main"])]

    # a message's story
    await page.click(f"#messages-table a[href='#message={ids['main']}']")
    await page.wait_for_selector("#story:not([hidden])")
    assert await page.text_content("#story-id") == ids["main"]
    story = await rows(page, "story-recipients")
    assert [(r[0], r[1]) for r in story] == [("ok1@example.net", "accepted"), ("ok2@example.net", "accepted"),
                                             ("unknown1@example.net", "rejected")]
    kinds = {(r[2], r[3]) for r in await rows(page, "story-events")}
    assert ("bounce", "unknown1@example.net") in kinds and ("complaint", "ok1@example.net") in kinds

    assert problems == [] and await page.evaluate("window.__csp") == []  # no error, nothing the CSP had to block


async def test_suppressions_searched_added_and_removed_in_the_page(svc, browser):
    await relay_run(svc)
    page, problems = await open_dashboard(browser, svc)
    listed = {s.address for s in await svc.store.list_suppressions(SuppressionFilter(limit=None))}
    assert "unknown1@example.net" in listed  # the relay's hard bounce suppressed it
    shown = await rows(page, "suppressions-table")
    assert {r[0] for r in shown} == listed

    await page.fill("#s-address", "Manual@Example.org")
    await page.fill("#s-reason", "asked us")
    await page.click("#s-add-form button[type=submit]")
    await page.wait_for_selector("#suppressions-table tr[data-address='manual@example.org']")
    added = await svc.store.get_suppression("", "manual@example.org")
    assert added is not None and added.reason == "asked us" and added.kind == "manual"

    await page.fill("#s-search", "unknown1")
    await page.click("#s-search-form button[type=submit]")
    await page.wait_for_function("() => document.querySelectorAll('#suppressions-table tbody tr').length === 1")
    assert [r[0] for r in await rows(page, "suppressions-table")] == ["unknown1@example.net"]

    await page.click("#suppressions-table tr[data-address='unknown1@example.net'] button.remove")
    await page.wait_for_selector("#suppressions-table tr[data-address='unknown1@example.net']", state="detached")
    assert await svc.store.get_suppression("", "unknown1@example.net") is None  # gone from the store
    assert await page.text_content("#note") == "removed unknown1@example.net"
    assert await svc.store.get_suppression("", "manual@example.org") is not None  # the other one stays

    await page.fill("#s-search", "")
    await page.click("#s-search-form button[type=submit]")
    await page.wait_for_selector("#suppressions-table tr[data-address='manual@example.org']")
    await page.click("#suppressions-table tr[data-address='manual@example.org'] button.remove")
    await page.wait_for_selector("#suppressions-table tr[data-address='manual@example.org']", state="detached")
    assert await svc.store.get_suppression("", "manual@example.org") is None
    assert problems == [] and await page.evaluate("window.__csp") == []


async def test_the_page_asks_for_the_token_beyond_loopback(tmp_path, upstream, monkeypatch, browser):
    """Beyond loopback the page loads without data, asks for the token, and then shows the log."""
    monkeypatch.setenv("BOUNCEPROXY_API_TOKEN", "page-token")
    config = make_config(tmp_path, upstream.port, api={"listen": Address("0.0.0.0", 0)})
    async with Service(config) as svc:
        await send(svc, "app@shop.example", ["ok1@example.net"], "tok@shop.example")
        page, problems = await open_dashboard(browser, svc)
        assert await page.is_visible("#auth")
        assert "token" in await page.text_content("#error")
        await page.fill("#token", "page-token")
        await page.click("#auth-form button[type=submit]")
        await page.wait_for_selector("body[data-loads='2']")
        assert len(await rows(page, "messages-table")) == 1 and await page.text_content("#error") == ""
        assert [p for p in problems if "401" not in p] == []  # the first, tokenless requests were refused
