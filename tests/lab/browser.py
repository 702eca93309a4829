"""A headless Chromium (Debian's ``chromium`` + ``chromium-driver``) inside a test
namespace, driven by selenium.

Network namespaces are per thread: every selenium call runs on one worker thread that
entered the namespace (``setns``) first, so chromedriver and Chromium (started from that
thread) and every connection selenium opens to chromedriver live in the namespace, and the
browser reaches what listens on the namespace's loopback. Chromium gets a fresh profile
under the test's directory and no background networking of its own.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.wait import WebDriverWait

from tests.lab.netns import Namespace

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--window-size=1280,900",
)  # fmt: skip


def _enter(ns: str) -> None:
    """Move this thread into network namespace ``ns``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
    finally:
        os.close(fd)


def _start(profile: Path) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))


class Browser:
    """One Chromium in ``ns``; ``close`` ends it (chromedriver ends Chromium by its PID)."""

    def __init__(self, ns: Namespace, workdir: Path) -> None:
        self._pool = ThreadPoolExecutor(1, initializer=_enter, initargs=(ns.name,))
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        self._driver = self._call(lambda: _start(profile))

    def _call(self, fn: Callable[[], T]) -> T:
        return self._pool.submit(fn).result(timeout=120)

    def open(self, url: str) -> str:
        """Load ``url``; the page's HTML as the browser holds it."""

        def go() -> str:
            self._driver.get(url)
            return self._driver.page_source

        return self._call(go)

    def text(self, css: str) -> list[str]:
        """The visible text of every element matching ``css`` on the current page."""
        return self._call(
            lambda: [e.text for e in self._driver.find_elements(By.CSS_SELECTOR, css)]
        )

    def attributes(self, css: str, name: str) -> list[str]:
        """Attribute ``name`` of every element matching ``css`` on the current page."""

        def go() -> list[str]:
            found = self._driver.find_elements(By.CSS_SELECTOR, css)
            return [e.get_attribute(name) or "" for e in found]

        return self._call(go)

    def fill(self, form: str, fields: dict[str, str]) -> None:
        """Type ``fields`` (by input name) into the inputs of the form matching ``form``."""

        def go() -> None:
            where = self._driver.find_element(By.CSS_SELECTOR, form)
            for name, value in fields.items():
                box = where.find_element(By.NAME, name)
                box.clear()
                box.send_keys(value)

        self._call(go)

    def click(self, css: str) -> str:
        """Click the element matching ``css``; the HTML of the page it leads to (once the
        old page is gone: a click returns before the form's answer has loaded)."""

        def go() -> str:
            old = self._driver.find_element(By.TAG_NAME, "html")
            self._driver.find_element(By.CSS_SELECTOR, css).click()
            WebDriverWait(self._driver, 30).until(staleness_of(old))
            return self._driver.page_source

        return self._call(go)

    def screenshot(self, path: Path) -> None:
        self._call(lambda: self._driver.save_screenshot(str(path)))

    def close(self) -> None:
        try:
            self._call(self._driver.quit)
        finally:
            self._pool.shutdown()
