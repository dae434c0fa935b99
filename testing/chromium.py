"""A real headless Chromium driven by selenium, for the web console's tests and its screenshots.

    with Chromium() as browser:                  # Debian's chromium + chromium-driver, a fresh profile
        browser.driver.get(url)
        browser.wait_css("#rows tr", timeout=2)  # every wait has a deadline, and a failure shows the page

Nothing is fetched from outside: the binaries are the Debian packages (`.ci/run` and `make setup` install
them), selenium is given both paths so its driver manager never runs, and the browser is told not to
phone home (no background networking, component updates, sync or first-run pages).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER_PATHS = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


class BrowserError(RuntimeError):
    pass


def find(names: tuple[str, ...], which: str) -> str | None:
    return next((p for p in names if Path(p).exists()), None) or shutil.which(which)


class Chromium:
    def __init__(self, width: int = 1600, height: int = 1000):
        self.binary = find(CHROMIUM_PATHS, "chromium")
        self.driver_path = find(DRIVER_PATHS, "chromedriver")
        if not self.binary or not self.driver_path:
            raise BrowserError("chromium and chromedriver are needed: 'apt-get install chromium chromium-driver' "
                               "(make setup does it as root)")
        self.size = (width, height)
        self.profile = Path(tempfile.mkdtemp(prefix="gg-chromium-"))
        self.driver = None

    def __enter__(self) -> "Chromium":
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        opts = webdriver.ChromeOptions()
        opts.binary_location = self.binary
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                    "--hide-scrollbars", f"--user-data-dir={self.profile}",
                    f"--window-size={self.size[0]},{self.size[1]}", "--lang=zh-CN"):
            opts.add_argument(arg)
        try:
            self.driver = webdriver.Chrome(service=Service(executable_path=self.driver_path), options=opts)
        except Exception as e:  # noqa: BLE001 - selenium raises several kinds; the message says what to do
            shutil.rmtree(self.profile, ignore_errors=True)
            raise BrowserError(f"chromium did not start ({e}); check 'chromium --version' and "
                               "'chromedriver --version' agree") from None
        self.driver.set_page_load_timeout(15)
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self.driver is not None:
            self.driver.quit()
            self.driver = None
        shutil.rmtree(self.profile, ignore_errors=True)

    def reset(self) -> None:
        """Leave the page (its event streams close) and forget cookies: between tests sharing this browser."""
        self.driver.get("about:blank")
        self.driver.delete_all_cookies()

    # --- waits that show what the page held when they fail ---------------------------------------
    def wait(self, pred, timeout: float, what: str):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            try:
                last = pred(self.driver)
            except Exception as e:  # noqa: BLE001 - a stale element while the page redraws: try again
                last = e
            if last and not isinstance(last, Exception):
                return last
            if time.monotonic() > deadline:
                body = self.driver.find_element("tag name", "body").text[:2000]
                raise TimeoutError(f"{what} not seen within {timeout} s (last: {last!r}); page "
                                   f"{self.driver.current_url} shows:\n{body}")
            time.sleep(0.02)

    def wait_css(self, css: str, timeout: float, text: str | None = None):
        def find(d):
            els = d.find_elements("css selector", css)
            return [e for e in els if text is None or text in e.text]
        return self.wait(find, timeout, f"{css!r}" + (f" with {text!r}" if text else ""))

    def click_css(self, css: str, timeout: float, text: str | None = None, inner: str | None = None) -> None:
        """Click the first element matching `css` (holding `text`; `inner`: the element inside it to click), found
        afresh on every try: a board row redrawn by a live update between finding and clicking is found again,
        never clicked stale (selenium's StaleElementReferenceException)."""
        def click(d):
            for e in d.find_elements("css selector", css):
                if text is None or text in e.text:
                    (e.find_element("css selector", inner) if inner else e).click()
                    return True
            return False
        self.wait(click, timeout, f"a click on {css!r}" + (f" with {text!r}" if text else "")
                  + (f" at {inner!r}" if inner else ""))

    def screenshot(self, path: str | Path, full_height: bool = True) -> Path:
        """A PNG of the page; `full_height`: the whole document in one image (DevTools capture beyond the
        viewport), else what the window shows."""
        import base64
        p = Path(path)
        if not full_height:
            self.driver.save_screenshot(str(p))
            return p
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        shot = self.driver.execute_cdp_cmd("Page.captureScreenshot", {
            "format": "png", "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000), "scale": 1}})
        p.write_bytes(base64.b64decode(shot["data"]))
        return p
