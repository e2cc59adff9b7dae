"""The web views in a real browser: Debian's chromium, headless, driven by selenium through
chromedriver, against a real collector process on SQLite and on PostgreSQL.

A known data set is stored through the collector's ingest hook with chosen reception days
(crash reports in crashprobe's layout, klogscanner's oops payloads, MCE events, heartbeats,
and a record whose payload and platform hold markup and escape sequences); each view must
show the numbers that data set implies, filters and paging must select what they say, the
never-guilty list edited in the page must regroup the crashes at once, and the hostile
record must stay inert.  Each view is saved as a screenshot (build/test-artifacts/views/,
or $TEST_ARTIFACTS/views/).
"""

from __future__ import annotations

import collections
import datetime
import os
import shutil
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
from collector_support import http_request, post_headers, record_fields, temporary_postgres
from views_dataset import (
    PROGRAMS,
    crash_payload,
    crash_stub,
    mce_payload,
    oops_reports,
    record,
    store_records,
)

from telemetry import headers as H
from telemetry_collector.launch import RunningCollector, make_token, start_collector

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--hide-scrollbars")
DAY = 86400
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "build" / "test-artifacts"))
EVIL_PAYLOAD = ("<script>window.__pwned = 1</script><img src=x onerror=\"window.__pwned = 2\">\n"
                "\x1b[31mred\x1b[0m \x1b]0;title\x07 \u202eevil\u202c \x01 end\n")
EVIL_PLATFORM = "<img src=x onerror=window.__pwned=3>|Evil|1"

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install ./collector[test])")
from selenium.webdriver.common.by import By  # noqa: E402


def _day(n: int) -> str:
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=n)).isoformat()


@dataclass
class Known:
    """The data set and what it implies."""

    first_day: int
    records: list

    @property
    def period(self) -> str:
        return f"from={_day(self.first_day)}&to={_day(self.first_day + 2)}"

    def count(self, **where: object) -> int:
        return sum(all(getattr(r, k) == v for k, v in where.items()) for r in self.records)

    def builds(self) -> collections.Counter:
        return collections.Counter(r.build for r in self.records)


def known_data() -> Known:
    b = (int(time.time()) // DAY) - 3
    at = [b * DAY + 3600, (b + 1) * DAY + 3600, (b + 2) * DAY + 3600]
    vim = crash_payload("/usr/bin/vim", PROGRAMS["/usr/bin/vim"][0])
    journald = crash_payload("/usr/lib/systemd/systemd-journald", PROGRAMS["/usr/lib/systemd/systemd-journald"][0])
    firefox = crash_payload("/usr/bin/firefox", PROGRAMS["/usr/bin/firefox"][0])
    oops = {p.split("\n")[1]: (c, s, p) for c, s, p in oops_reports()}
    warn = next(v for k, v in oops.items() if "preempt_notifier_register" in k)
    watchdog = next(v for k, v in oops.items() if "dev_watchdog" in k)
    hello, clr = "org.clearlinux/hello/world", "org.clearlinux/crash/clr"
    rows = [
        (hello, "hello\n", 0, "m01", "41000", 1), (hello, "hello\n", 0, "m02", "41000", 1),
        (hello, "hello\n", 0, "m03", "41000", 1), (hello, "hello\n", 2, "m01", "41000", 1),
        (hello, "hello\n", 1, "m04", "41010", 1), (hello, "hello\n", 1, "m04", "41010", 1),
        (hello, "hello\n", 2, "m05", "41010", 1), (hello, "hello\n", 0, "m06", "bookworm", 1),
        (hello, "hello\n", 1, "m07", "9", 1), (hello, "hello\n", 2, "m08", "12.4", 1),
        (clr, vim, 0, "m01", "41000", 3), (clr, vim, 1, "m02", "41000", 3), (clr, vim, 2, "m02", "41010", 3),
        (clr, journald, 0, "m03", "41000", 3), (clr, journald, 1, "m04", "41010", 3),
        (clr, firefox, 2, "m05", "41010", 3),
        ("org.clearlinux/crash/error", crash_stub("/usr/bin/sudo"), 1, "m06", "bookworm", 4),
        (warn[0], warn[2], 0, "m01", "41000", warn[1]), (warn[0], warn[2], 1, "m04", "41010", warn[1]),
        (watchdog[0], watchdog[2], 2, "m05", "41010", watchdog[1]),
        ("org.clearlinux/mce/corrected", mce_payload(1, 7, "8c00004000010091", "MEMORY CONTROLLER RD_CHANNEL1_ERR"),
         1, "m07", "9", 1),
        ("org.clearlinux/mce/corrected", mce_payload(2, 5, "9c0000000000011a", "CACHE L2 DATA READ ERR"), 2, "m07", "9", 1),
    ]
    records = [record(c, p, received=at[d] + i, machine=m, build=bld, severity=sev)
               for i, (c, p, d, m, bld, sev) in enumerate(rows)]
    records.append(record("org.clearlinux/test/evil", EVIL_PAYLOAD, received=at[2] + 500, machine="m09", build="41010",
                          platform=EVIL_PLATFORM))
    return Known(b, records)


@dataclass
class Site:
    collector: RunningCollector
    known: Known
    admin: str
    reader: str
    store: str
    database: str

    @property
    def url(self) -> str:
        return self.collector.url


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def site(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"views-{request.param}")
    known = known_data()
    with _database(request.param, tmp) as database:
        assert store_records(database, known.records) == len(known.records)
        reader = make_token(database, "reader", scope="read")
        collector = start_collector(database, log_path=str(tmp / "collector.log"),
                                    args=["--machine-rate", "0", "--address-rate", "0"])
        try:
            yield Site(collector, known, collector.token or "", reader, request.param, database)
        finally:
            collector.stop()


class _database:
    def __init__(self, kind: str, tmp: Path):
        self.kind, self.tmp, self._pg = kind, tmp, None

    def __enter__(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite:///{self.tmp}/records.db"
        self._pg = temporary_postgres()
        pg = self._pg.__enter__()
        return pg.create_database()

    def __exit__(self, *exc: object) -> None:
        if self._pg is not None:
            self._pg.__exit__(*exc)


@pytest.fixture(scope="module")
def browser():
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make venv as root installs them)")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}", "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.execute_cdp_cmd("Network.enable", {})
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


class Page:
    def __init__(self, driver, site: Site):
        self.d, self.site = driver, site
        self.as_token(site.admin)

    def as_token(self, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.d.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": headers})

    def open(self, path: str) -> None:
        self.d.get(self.site.url + path)
        self.styled()

    def follow(self, element) -> None:
        """Click a link or a submit button and wait for the page it leads to."""
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        old = self.d.find_element(By.TAG_NAME, "html")
        # Clicked by the page's own event (not chromedriver's pointer), which cannot trip over
        # the navigation it starts.
        self.d.execute_script("arguments[0].click()", element)
        WebDriverWait(self.d, 10).until(expected_conditions.staleness_of(old))
        self.styled()

    def styled(self) -> None:
        """Wait until the stylesheet applies (the page's layout is then final)."""
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(self.d, 10).until(lambda d: d.execute_script(
            "return document.readyState === 'complete' && getComputedStyle(document.body).marginTop === '0px'"))

    def text(self, css: str) -> str:
        return self.d.find_element(By.CSS_SELECTOR, css).text

    def all(self, css: str) -> list:
        return self.d.find_elements(By.CSS_SELECTOR, css)

    def table(self, table_id: str) -> list[list[str]]:
        rows = self.all(f"#{table_id} tbody tr")
        return [[cell.text for cell in row.find_elements(By.TAG_NAME, "td")] for row in rows]

    def heading(self) -> str:
        return self.text("h1")

    def screenshot(self, name: str) -> None:
        """The whole page, as one image."""
        import base64

        folder = ARTIFACTS / "views" / self.site.store
        folder.mkdir(parents=True, exist_ok=True)
        metrics = self.d.execute_cdp_cmd("Page.getLayoutMetrics", {})
        size = metrics["cssContentSize"]
        shot = self.d.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000), "scale": 1}})
        (folder / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))

    def not_pwned(self) -> None:
        assert self.d.execute_script("return window.__pwned === undefined")


@pytest.fixture
def page(browser, site):
    p = Page(browser, site)
    p.d.set_window_size(1280, 1000)
    return p


def numbers(rows: list[list[str]]) -> dict[str, int]:
    return {r[0]: int(r[1].replace(",", "")) for r in rows}


# --- the views ---------------------------------------------------------------------------

def test_index_links_every_view(page):
    page.open("/")  # the reference's redirect, to the index
    assert page.d.current_url.endswith("/telemetryui")
    assert page.heading() == "Views"
    names = [a.text for a in page.all("ul.views a")]
    assert names == ["Records", "Builds", "Stats", "Crashes", "Kernel", "Population", "MCE"]
    assert [a.text for a in page.all("header nav a")] == names
    assert "Signed in as" in page.text("footer")
    page.screenshot("index")


def test_records_paging_and_filters(page):
    known = page.site.known
    page.open("/telemetryui/records?limit=10")
    first = [int(r[0]) for r in page.table("records-table")]
    assert len(first) == 10 and first == sorted(first, reverse=True)
    page.screenshot("records")
    page.follow(page.d.find_element(By.ID, "older"))
    second = [int(r[0]) for r in page.table("records-table")]
    assert len(second) == 10 and max(second) < min(first)
    page.follow(page.d.find_element(By.ID, "older"))
    third = [int(r[0]) for r in page.table("records-table")]
    assert len(first + second + third) == len(known.records) and not page.all("#older")
    page.follow(page.d.find_element(By.ID, "newer"))
    assert [int(r[0]) for r in page.table("records-table")] == second
    # the filter form: classification prefix, severity, build; then a time range
    page.open("/telemetryui/records")
    form = page.d.find_element(By.ID, "record-filters")
    form.find_element(By.NAME, "classification").send_keys("org.clearlinux/crash/*")
    page.follow(form.find_element(By.CSS_SELECTOR, "button[type=submit]"))
    rows = page.table("records-table")
    assert len(rows) == known.count(severity=3) + known.count(severity=4)
    assert all(r[2].startswith("org.clearlinux/crash/") for r in rows)
    assert "classification=org.clearlinux%2Fcrash%2F*" in page.d.current_url  # a bookmark
    page.open("/telemetryui/records?build=41010&severity=3")
    assert len(page.table("records-table")) == 3
    day = known.first_day + 1
    page.open(f"/telemetryui/records?from={_day(day)}T00:00&to={_day(day)}T23:59:59")
    rows = page.table("records-table")
    assert len(rows) == sum(r.ts_reception // DAY == day for r in known.records)
    assert {r[1][:10] for r in rows} == {_day(day)}
    page.open("/telemetryui/records?severity=9")
    assert "severity must be 1 to 4" in page.text(".message.error")


def test_record_with_markup_and_escapes_is_inert(page):
    page.open("/telemetryui/records?classification=org.clearlinux/test/evil")
    rows = page.table("records-table")
    assert len(rows) == 1 and rows[0][7] == EVIL_PLATFORM  # the platform, as text
    page.follow(page.d.find_element(By.LINK_TEXT, rows[0][0]))
    page.not_pwned()
    payload = page.d.find_element(By.ID, "payload")
    shown = payload.text
    assert "<script>window.__pwned = 1</script>" in shown and "onerror=" in shown
    assert "\\x1b[31mred\\x1b[0m" in shown and "\\x1b]0;title\\x07" in shown
    assert "\\u202eevil\\u202c" in shown and "\\x01 end" in shown
    assert "\x1b" not in shown and "\u202e" not in shown
    assert not page.all("#payload script, #payload img")
    assert len(payload.find_elements(By.CSS_SELECTOR, "span.ctl")) == 7
    page.screenshot("record")
    page.open("/telemetryui/stats?" + page.site.known.period)  # the platform chart and table
    page.not_pwned()
    assert EVIL_PLATFORM in [r[0] for r in page.table("platforms-table")]


def test_builds(page):
    known = page.site.known
    page.open("/telemetryui/builds?" + known.period)
    rows = page.table("builds-table")
    assert [r[0] for r in rows] == ["9", "12.4", "41000", "41010", "bookworm"]  # numbers, then by appearance
    assert numbers(rows) == dict(known.builds())
    assert len(page.all("svg.chart rect.bar")) == 5
    page.screenshot("builds")
    page.open(f"/telemetryui/builds?from={_day(known.first_day + 1)}&to={_day(known.first_day + 1)}")
    assert numbers(page.table("builds-table")) == dict(collections.Counter(
        r.build for r in known.records if r.ts_reception // DAY == known.first_day + 1))


def test_stats(page):
    known = page.site.known
    page.open("/telemetryui/stats?" + known.period)
    classes = page.table("classifications-table")
    assert {r[0]: int(r[1]) for r in classes} == dict(collections.Counter(r.classification for r in known.records))
    assert classes[0][0] == "org.clearlinux/hello/world" and classes[0][2] == f"{100 * 10 / 23:.1f}%"
    assert {r[0]: int(r[1]) for r in page.table("platforms-table")} == dict(
        collections.Counter(r.host_type for r in known.records))
    assert len(page.all("svg.chart.bars")) == 2
    page.screenshot("stats")


def test_population(page):
    known = page.site.known
    page.open("/telemetryui/population?" + known.period)
    expected = {b: len({r.machine_id for r in known.records if r.build == b}) for b in known.builds()}
    assert numbers(page.table("population-table")) == expected
    assert "rotate every 3 days" in page.text("#population-note")
    page.screenshot("population")
    middle = known.first_day + 1  # m01 on 41000 was seen the day before and the day after: not in it
    page.open(f"/telemetryui/population?from={_day(middle)}&to={_day(middle)}")
    assert numbers(page.table("population-table")) == {
        b: len({r.machine_id for r in known.records if r.build == b and r.ts_reception // DAY == middle})
        for b in {r.build for r in known.records if r.ts_reception // DAY == middle}}


def groups(page) -> dict[str, tuple[int, int, str]]:
    out = {}
    for li in page.all("#groups > li"):
        guilty = li.find_element(By.CSS_SELECTOR, ".guilty").text
        count = int(li.find_element(By.CSS_SELECTOR, ".count").text)
        machines = int(li.find_element(By.CSS_SELECTOR, ".machines").text)
        builds = li.find_element(By.CSS_SELECTOR, ".builds").text
        out[guilty] = (count, machines, builds)
    return out


VIM = "vim_free() - [/usr/bin/vim]"
JOURNALD = "journal_file_append_entry() - [/usr/lib64/systemd/libsystemd-shared-254.so]"


def test_crashes_grouped_by_guilty_frame(page):
    page.open("/telemetryui/crashes?" + page.site.known.period)
    assert groups(page) == {
        VIM: (3, 2, "41000 (2), 41010 (1)"),
        JOURNALD: (2, 2, "41000 (1), 41010 (1)"),
        "??? (+0x11d3) - [/usr/lib64/firefox/libxul.so]": (1, 1, "41010 (1)"),
        "(no backtrace) - [/usr/bin/sudo]": (1, 1, "bookworm (1)"),
    }
    first = page.all("#groups > li")[0]
    first.find_element(By.TAG_NAME, "summary").click()
    example = first.find_element(By.CSS_SELECTOR, "pre.backtrace").text
    assert example.startswith("#0 raise() - [/usr/lib64/libc.so.6]") and "#6 vim_free() - [/usr/bin/vim]" in example
    assert "__poll" not in example  # the crashing thread only
    page.screenshot("crashes")
    page.follow(first.find_element(By.LINK_TEXT, "Records of this group"))
    assert len(page.table("records-table")) == 3


def test_editing_the_never_guilty_list_regroups_at_once(page):
    site = page.site
    period = "/telemetryui/crashes?" + site.known.period
    page.open(period)
    page.follow(page.all("#groups > li")[0].find_element(By.CSS_SELECTOR, "form button"))  # "vim_free is never guilty"
    assert "stack changed group" in page.text("#saved")
    now = groups(page)
    assert VIM not in now and now["ex_bunload() - [/usr/bin/vim]"] == (3, 2, "41000 (2), 41010 (1)")
    assert "vim_free" in page.d.find_element(By.NAME, "entries").get_attribute("value").split("\n")
    # a record arriving now is grouped by the edited list, as it arrives
    answer = post_headers(site.url, record_fields(**{H.CLASSIFICATION: "org.clearlinux/crash/clr", H.SEVERITY: "3"}),
                          crash_payload("/usr/bin/vim", PROGRAMS["/usr/bin/vim"][0], pid=777).encode())
    assert answer.status == 201
    page.open("/telemetryui/crashes")
    assert groups(page)["ex_bunload() - [/usr/bin/vim]"][0] >= 1
    # the whole list, edited in the text area
    page.open(period)
    area = page.d.find_element(By.NAME, "entries")
    area.clear()
    area.send_keys("abort\nraise\n[bad\n")
    page.follow(page.d.find_element(By.ID, "save-list"))
    assert "no function before the module" in page.text("#list-error") or "line 3" in page.text("#list-error")
    area = page.d.find_element(By.NAME, "entries")
    area.clear()
    area.send_keys("abort\nraise\n")
    page.follow(page.d.find_element(By.ID, "save-list"))
    now = groups(page)
    assert now["__libc_message() - [/usr/lib64/libc.so.6]"] == (3, 2, "41000 (2), 41010 (1)")
    assert now["__assert_fail_base() - [/usr/lib64/libc.so.6]"] == (2, 2, "41000 (1), 41010 (1)")
    page.follow(page.d.find_element(By.ID, "reset-list"))
    assert groups(page)[VIM] == (3, 2, "41000 (2), 41010 (1)")
    assert page.text("#never-guilty .tag") == "shipped default"
    # a reader sees the list, cannot change it
    page.as_token(site.reader)
    page.open(period)
    assert not page.all("#never-guilty-form") and "vim_free" not in page.text("#never-guilty-list")
    page.as_token(site.admin)


def test_kernel_grouped_by_first_meaningful_function(page):
    page.open("/telemetryui/kernel?" + page.site.known.period)
    assert groups(page) == {
        "preempt_notifier_register - [kernel]": (2, 2, "41000 (1), 41010 (1)"),
        "dev_watchdog - [kernel]": (1, 1, "41010 (1)"),
    }
    page.screenshot("kernel")


def test_mce_plugin_view(page):
    page.open("/telemetryui/mce?" + page.site.known.period)
    assert page.heading() == "MCE"
    assert numbers(page.table("mce-banks")) == {"7": 1, "5": 1}
    assert numbers(page.table("mce-statuses")) == {"0x8c00004000010091": 1, "0x9c0000000000011a": 1}
    assert sum(numbers(page.table("mce-days")).values()) == 2
    page.screenshot("mce")


@pytest.mark.parametrize("path", ["records", "records/1", "crashes", "stats", "builds"])
def test_phone_width(page, path):
    """390 px wide: nothing runs off the page; wide tables and charts scroll in their box."""
    page.d.set_window_size(390, 844)
    page.open(f"/telemetryui/{path}?{page.site.known.period}" if "/" not in path else f"/telemetryui/{path}")
    width = page.d.execute_script("return document.documentElement.clientWidth")
    assert page.d.execute_script("return document.documentElement.scrollWidth") <= width
    if path in ("records", "crashes"):
        page.screenshot(f"{path}-phone")


# --- what a browser is told, and refused -----------------------------------------------------

def test_credentials_headers_and_forged_posts(site):
    url = site.url
    answer = http_request(url, "GET", "/telemetryui/records")
    assert answer.status == 401 and "Basic" in answer.headers["www-authenticate"]
    assert b"token add" in answer.body and answer.headers["content-type"].startswith("text/html")
    ok = http_request(url, "GET", "/telemetryui/crashes", [("Authorization", f"Bearer {site.reader}")])
    assert ok.status == 200
    assert "default-src 'none'" in ok.headers["content-security-policy"]
    assert ok.headers["x-frame-options"] == "DENY" and ok.headers["cache-control"] == "no-store"
    for path in ("/telemetryui/stats?days=0", "/telemetryui/records/x"):
        assert http_request(url, "GET", path, [("Authorization", f"Bearer {site.reader}")]).status == 400
    assert http_request(url, "GET", "/telemetryui/records/999999", [("Authorization", f"Bearer {site.reader}")]).status == 404
    form = urllib.parse.urlencode({"action": "save", "entries": "abort"}).encode()
    post = [("Content-Type", "application/x-www-form-urlencoded")]
    host = urllib.parse.urlsplit(url).netloc
    # a reader may not change the list; an admin's browser may not be made to by another site
    assert http_request(url, "POST", "/telemetryui/crashes/never-guilty",
                        [*post, ("Authorization", f"Bearer {site.reader}")], form).status == 403
    forged = http_request(url, "POST", "/telemetryui/crashes/never-guilty",
                          [*post, ("Authorization", f"Bearer {site.admin}"), ("Origin", "http://evil.example")], form)
    assert forged.status == 403 and b"own pages" in forged.body
    assert site.collector.stats()["refused"]["cross_site_form"] >= 1  # counted (and logged)
    cross = http_request(url, "POST", "/telemetryui/kernel/never-guilty",
                         [*post, ("Authorization", f"Bearer {site.admin}"), ("Sec-Fetch-Site", "cross-site")], form)
    assert cross.status == 403
    same = http_request(url, "POST", "/telemetryui/kernel/never-guilty",
                        [*post, ("Authorization", f"Bearer {site.admin}"), ("Origin", f"http://{host}")],
                        urllib.parse.urlencode({"action": "reset"}).encode())
    assert same.status == 303 and same.headers["location"].startswith("/telemetryui/kernel?saved=")
