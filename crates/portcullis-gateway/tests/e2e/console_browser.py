"""The operator console in a real browser: Debian's chromium, headless,
driven by Playwright for Python (the system browser; Playwright's own
browser download is never used).

Run by crates/portcullis-gateway/tests/console.rs against a real gateway:

    CONSOLE_URL   the ops listener, e.g. http://127.0.0.1:9090
    PUBLIC_URL    the public listener
    ADMIN_KEY     an admin API key (portcullis admin bootstrap)
    USERNAME      a user that exists (the API key step creates a key for it)
    ARTIFACTS     where the screenshots go (each page at 1280 px and 390 px)

Exits 0 when every step passed; prints each step as it goes.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from playwright.sync_api import expect, sync_playwright

CONSOLE = os.environ["CONSOLE_URL"].rstrip("/")
PUBLIC = os.environ["PUBLIC_URL"].rstrip("/")
ADMIN_KEY = os.environ["ADMIN_KEY"]
USERNAME = os.environ["USERNAME"]
PASSWORD = os.environ["PASSWORD"]
ARTIFACTS = os.environ["ARTIFACTS"]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

WIDTHS = {"1280": {"width": 1280, "height": 900}, "390": {"width": 390, "height": 844}}
BANNED_IP = "203.0.113.7"
SEEN_IP = "203.0.113.9"


def step(text):
    print(f"--- {text}", flush=True)


def public(path, ip, bearer=None, headers=None, body=None):
    """A request through the gateway's public listener from client `ip`
    (the gateway trusts 127.0.0.1's X-Forwarded-For): (status, problem
    code), or (status, JSON answer) for a 2xx POST."""
    req = urllib.request.Request(PUBLIC + path, headers={"X-Forwarded-For": ip, **(headers or {})})
    if bearer:
        req.add_header("Authorization", f"Bearer {bearer}")
    if body is not None:
        req.data = json.dumps(body).encode()
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, (json.load(r) if body is not None else None)
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            code = json.loads(body).get("code")
        except ValueError:
            code = None
        return e.code, code


def audit_has(ip, code):
    """Whether the audit log (through the admin API) holds a refusal of
    `ip` with `code`."""
    query = urllib.parse.urlencode({"ip": ip, "code": code, "limit": 1})
    req = urllib.request.Request(
        f"{CONSOLE}/admin/audit?{query}", headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return bool(json.load(r).get("events"))


def eventually(what, check, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def screenshots(page, name):
    """`name` at each width, light (`NAME-WIDTH.png`) and dark (`NAME-dark-WIDTH.png`)."""
    for scheme, suffix in (("light", ""), ("dark", "-dark")):
        page.emulate_media(color_scheme=scheme)
        for label, size in WIDTHS.items():
            page.set_viewport_size(size)
            page.wait_for_timeout(150)
            path = os.path.join(ARTIFACTS, f"{name}{suffix}-{label}.png")
            page.screenshot(path=path, full_page=True)
    page.emulate_media(color_scheme="light")
    page.set_viewport_size(WIDTHS["1280"])


def goto(page, name, ready):
    page.click(f'nav a[data-page="{name}"]')
    expect(page.locator("#page")).to_have_attribute("data-page", name)
    expect(page.locator(ready).first).to_be_visible()


def confirm(page, label):
    dialog = page.locator("dialog#dialog")
    expect(dialog).to_be_visible()
    dialog.get_by_role("button", name=label).click()
    expect(dialog).to_be_hidden()


def main():
    os.makedirs(ARTIFACTS, exist_ok=True)
    csp_violations = []
    page_errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        context = browser.new_context(viewport=WIDTHS["1280"], color_scheme="light")
        page = context.new_page()
        page.on(
            "console",
            lambda m: csp_violations.append(m.text)
            if "Content Security Policy" in m.text or "Content-Security-Policy" in m.text
            else None,
        )
        page.on("pageerror", lambda e: page_errors.append(str(e)))

        step("the sign-in page")
        page.goto(CONSOLE + "/console/")
        expect(page.locator("#sign-in")).to_be_visible()
        expect(page.locator("#nav")).to_be_hidden()
        screenshots(page, "sign-in")

        step("a wrong key is refused")
        page.fill("#admin-key", "pck_not_a_real_key")
        page.click("#sign-in-form button[type=submit]")
        expect(page.locator("#sign-in-error")).to_contain_text("not a valid admin API key")

        step("sign in with the admin key")
        page.fill("#admin-key", ADMIN_KEY)
        page.click("#sign-in-form button[type=submit]")
        expect(page.locator("#nav")).to_be_visible()
        expect(page.locator("#page")).to_have_attribute("data-page", "live")
        cookies = context.cookies()
        session = [c for c in cookies if c["name"] == "portcullis_console"]
        assert session, cookies
        assert session[0]["httpOnly"] and session[0]["sameSite"] == "Strict", session
        assert ADMIN_KEY not in json.dumps(cookies), "the key never reaches the browser"
        expect(page.locator("#live-status")).to_contain_text("live", timeout=10000)
        # Decisions made before the console opened come from the audit log.
        expect(page.locator("#live-status")).to_contain_text("history from the audit log")
        expect(page.locator("#live-table tr", has_text="/open/history/0").first).to_be_visible()

        step("a request through the gateway appears live")
        status, _ = public("/open/seen-live", SEEN_IP)
        assert status == 200, status
        row = page.locator("#live-table tr", has_text="/open/seen-live")
        expect(row.first).to_be_visible(timeout=10000)
        expect(row.first).to_contain_text(SEEN_IP)
        expect(row.first).to_contain_text("allowed")

        step("pause holds the table; the filter narrows it")
        page.click("#live-pause")
        expect(page.locator("#live-pause")).to_have_attribute("aria-pressed", "true")
        public("/open/while-paused", SEEN_IP)
        page.wait_for_timeout(700)
        expect(page.locator("#live-table", has_text="/open/while-paused")).to_have_count(0)
        page.click("#live-pause")
        expect(page.locator("#live-table tr", has_text="/open/while-paused").first).to_be_visible(
            timeout=10000
        )
        public("/api/refused-live", SEEN_IP)
        expect(page.locator("#live-table tr", has_text="/api/refused-live").first).to_be_visible(
            timeout=10000
        )
        status, _ = public("/trial/dry-run-live", SEEN_IP)
        assert status == 200, "a dry-run route lets the request through"
        dry = page.locator("#live-table tr", has_text="/trial/dry-run-live").first
        expect(dry).to_be_visible(timeout=10000)
        expect(dry).to_contain_text("dry-run would refuse")
        page.select_option("#live-decision", "refused")
        expect(page.locator("#live-table tr", has_text="/open/seen-live")).to_have_count(0)
        expect(page.locator("#live-table tr", has_text="/api/refused-live").first).to_be_visible()
        page.select_option("#live-decision", "")
        page.wait_for_timeout(300)
        screenshots(page, "live")

        step("ban an IP: its next request is refused")
        goto(page, "threats", "#ban-form")
        page.fill("#ban-target", BANNED_IP)
        page.fill("#ban-minutes", "5")
        page.fill("#ban-reason", "console e2e")
        page.click("#ban-form button[type=submit]")
        lift = page.locator(f'button[data-lift="ip:{BANNED_IP}"]')
        expect(lift).to_be_visible()
        status, code = public("/open/after-ban", BANNED_IP)
        assert (status, code) == (403, "anomaly.banned"), (status, code)
        status, _ = public("/open/other-client", SEEN_IP)
        assert status == 200, "the ban is on that IP only"
        # The page counts refusals from the audit log when it loads: wait
        # until the refusal is written (the audit queue may lag on a busy
        # machine), then reload.
        eventually("the banned request in the audit log", lambda: audit_has(BANNED_IP, "anomaly.banned"), timeout=15.0)
        page.reload()
        expect(page.locator("#nav")).to_be_visible()
        expect(page.locator("#page")).to_have_attribute("data-page", "threats")
        expect(page.locator(".tops")).to_contain_text(BANNED_IP, timeout=10000)
        screenshots(page, "threats")

        step("lift the ban: the IP gets through again")
        page.locator(f'button[data-lift="ip:{BANNED_IP}"]').click()
        confirm(page, "Lift")
        expect(page.locator(f'button[data-lift="ip:{BANNED_IP}"]')).to_have_count(0)
        status, _ = eventually(
            "the lifted ban to stop refusing",
            lambda: (lambda r: r if r[0] == 200 else None)(public("/open/after-lift", BANNED_IP)),
        )
        assert status == 200

        step("revoke a user's session; disable and enable the user")
        login = {"username": USERNAME, "password": PASSWORD}
        status, tokens = public("/auth/login", SEEN_IP, body=login)
        assert status == 200, (status, tokens)
        access = tokens["access_token"]
        assert public("/api/as-user", SEEN_IP, bearer=access)[0] == 200
        goto(page, "people", "#user-search-form")
        page.fill("#user-search", USERNAME[:2])
        page.click("#user-search-form button[type=submit]")
        page.get_by_role("button", name=USERNAME, exact=True).click()
        revoke_session = page.locator("table.sessions button[data-revoke-session]")
        expect(revoke_session).to_have_count(1)
        revoke_session.click()
        expect(revoke_session).to_have_count(0)
        eventually(
            "the revoked session's token to be refused",
            lambda: public("/api/as-user", SEEN_IP, bearer=access)[0] == 401,
        )
        page.click("#user-toggle")
        confirm(page, "Disable")
        expect(page.locator("#user-detail h3")).to_contain_text("disabled")
        assert public("/auth/login", SEEN_IP, body=login)[0] != 200, "a disabled user cannot log in"
        page.click("#user-toggle")
        expect(page.locator("#user-detail h3")).to_contain_text("active")
        assert public("/auth/login", SEEN_IP, body=login)[0] == 200, "enabled again"

        step("create an API key (shown once) and revoke it")
        expect(page.locator("#new-key-form")).to_be_visible()
        page.fill("#new-key-name", "console-e2e")
        page.click("#new-key-form button[type=submit]")
        secret = page.locator("#new-key-shown code.secret")
        expect(secret).to_be_visible()
        key = secret.inner_text().strip()
        assert key.startswith("pck_"), key
        expect(page.locator("#new-key-shown")).to_contain_text("shown once")
        expect(page.locator("#new-key-shown button", has_text="Copy")).to_be_visible()
        status, code = public("/api/with-new-key", SEEN_IP, bearer=key)
        assert status == 200, (status, code)
        screenshots(page, "people")
        key_id = page.get_attribute("#new-key-shown", "data-key-id")
        assert key_id, "the created key's id is shown"
        page.locator(f'button[data-revoke-key="{key_id}"]').click()
        confirm(page, "Revoke")
        expect(page.locator("table.api-keys")).to_contain_text("revoked")
        eventually(
            "the revoked key to be refused",
            lambda: public("/api/with-new-key", SEEN_IP, bearer=key)[1] == "auth.invalid_api_key",
        )

        step("create an app (secret shown once) and rotate its secret")
        page.fill("#new-app-name", "billing")
        page.fill("#new-app-perms", "invoices.read")
        page.click("#new-app-form button[type=submit]")
        first = page.locator("#new-app-secret code.secret")
        expect(first).to_be_visible()
        app_id = page.get_attribute("#new-app-secret", "data-app-id")
        old_secret = first.inner_text().strip()
        as_app = lambda secret: public(  # noqa: E731
            "/api/as-app", SEEN_IP, headers={"X-App-Id": app_id, "X-App-Secret": secret}
        )
        assert as_app(old_secret)[0] == 200, as_app(old_secret)
        page.fill("#rotate-grace", "0")
        page.click("#rotate-app-form button[type=submit]")
        confirm(page, "Rotate")
        rotated = page.locator("#rotated-secret code.secret")
        expect(rotated).to_be_visible()
        new_secret = rotated.inner_text().strip()
        assert new_secret and new_secret != old_secret
        assert as_app(new_secret)[0] == 200, as_app(new_secret)
        eventually("the old secret to be refused", lambda: as_app(old_secret)[0] == 401)
        screenshots(page, "apps")

        step("signing keys")
        goto(page, "keys", "#keys-box")
        with urllib.request.urlopen(CONSOLE + "/openapi.json", timeout=10) as r:
            paths = json.load(r)["paths"]
        assert "/admin/keys/rotate" in paths, "the key rotation API is documented"
        expect(page.locator("#rotate-key")).to_be_enabled()
        page.click("#rotate-key")
        confirm(page, "Rotate")
        expect(page.locator("#rotate-result")).to_contain_text("published", timeout=10000)
        new_kid = page.locator("#rotate-result").inner_text().split()[2]
        expect(page.locator("#keys-box")).to_contain_text(new_kid, timeout=10000)
        # One rotation at a time: a second one is refused until the first activates.
        page.click("#rotate-key")
        confirm(page, "Rotate")
        expect(page.locator("#rotate-result")).to_contain_text("already pending", timeout=10000)
        screenshots(page, "keys")

        step("explain: the running gateway's decision, step by step")
        goto(page, "explain", "#explain-form")
        page.fill("#explain-target", "/open/x")
        page.fill("#explain-ip", SEEN_IP)
        page.click("#explain-form button[type=submit]")
        report = page.locator("#explain-report")
        expect(report).to_be_visible(timeout=10000)
        expect(report).to_contain_text("anonymous_allowed")
        expect(report).to_contain_text("echo")
        screenshots(page, "explain")

        step("audit: query, page, open an event")
        goto(page, "audit", "#audit-form")
        page.fill("#q-ip", BANNED_IP)
        page.select_option("#q-limit", "25")
        page.click("#audit-form button[type=submit]")
        rows = page.locator("#audit-results tbody tr.clickable")
        expect(rows.first).to_be_visible(timeout=10000)
        expect(page.locator("#audit-results")).to_contain_text("anomaly.banned")
        rows.first.focus()
        page.keyboard.press("Enter")
        dialog = page.locator("dialog#dialog")
        expect(dialog).to_be_visible()
        expect(dialog).to_contain_text("client_ip")
        expect(dialog).to_contain_text(BANNED_IP)
        screenshots(page, "audit-event")
        dialog.get_by_role("button", name="Close").click()
        page.fill("#q-ip", "")
        page.select_option("#q-limit", "25")
        page.click("#audit-form button[type=submit]")
        expect(page.locator("#audit-next")).to_be_visible(timeout=10000)
        first_page = page.locator("#audit-results tbody").inner_text()
        page.click("#audit-next")
        expect(page.locator("#audit-results")).not_to_have_text(first_page)
        expect(page.get_by_role("button", name="Previous page")).to_be_visible()
        screenshots(page, "audit")

        step("config")
        goto(page, "config", "#config-text")
        expect(page.locator("#config-text")).to_contain_text("[server]")
        expect(page.locator("#config-text")).to_contain_text('"api_key"')
        expect(page.locator("#config-text")).to_contain_text("trusted_proxies")
        expect(page.locator("#config-loaded-at")).not_to_have_text("—")
        screenshots(page, "config")

        step("keyboard: the nav is reachable with Tab")
        page.keyboard.press("Home")
        page.locator("body").focus()
        reached = set()
        for _ in range(12):
            page.keyboard.press("Tab")
            reached.add(page.evaluate("document.activeElement && document.activeElement.textContent"))
        assert {"Live", "Threats", "Audit", "Config"} <= reached, reached

        step("sign out: the cookie no longer opens anything")
        page.click("#sign-out")
        expect(page.locator("#sign-in")).to_be_visible()
        r = page.request.get(CONSOLE + "/console/api/session")
        assert r.status == 401, r.status
        r = page.request.get(CONSOLE + "/console/api/admin/users")
        assert r.status == 401, r.status

        browser.close()
    assert not csp_violations, csp_violations
    assert not page_errors, page_errors
    print(f"screenshots in {ARTIFACTS}", flush=True)
    print("console browser test: ok", flush=True)


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"FAILED: {e}", flush=True)
        sys.exit(1)
