#!/usr/bin/env python3
"""Drives the operator's dashboard in headless Chromium: token, route, live chart, divergence
diff, and a rollback through the confirmation dialog.

    python dashboard.py --url http://127.0.0.1:PORT/ --route orders --token TOKEN \
        --screenshots DIR [--user NAME] [--diff-path /price]

Needs `selenium` 4.x (pip) and Debian's /usr/bin/chromium and /usr/bin/chromedriver. Prints one
JSON line on success; on failure saves DIR/failure.png and DIR/console.log and exits 1.
"""
import argparse
import json
import os
import sys

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

WAIT_SECONDS = 30
REASON = "rolled back from the browser test"


class StepFailed(Exception):
    pass


def css_string(value):
    """`value` as a quoted CSS string, for attribute selectors."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def start_browser():
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def wait_for(driver, what, condition, timeout=WAIT_SECONDS):
    """Waits (bounded) until `condition(driver)` is truthy and returns it; else raises naming `what`."""
    def probe(d):
        try:
            return condition(d)
        except WebDriverException:  # stale or not yet there: the page re-renders every 2 s
            return False
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(probe)
    except WebDriverException as e:
        raise StepFailed(f"timed out after {timeout}s waiting for {what}") from e


def find(driver, selector):
    return driver.find_elements(By.CSS_SELECTOR, selector)


def text_of(driver, selector):
    found = find(driver, selector)
    return found[0].text.strip() if found else ""


def visible(driver, selector):
    found = [e for e in find(driver, selector) if e.is_displayed()]
    return found[0] if found else None


def click(driver, element):
    """Clicks `element` after centring it (the page's header is sticky)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def most_points(driver, selector):
    return max((int(p.get_attribute("data-points") or 0) for p in find(driver, selector)), default=0)


def read_console(driver, kept):
    """Appends the browser console's new entries to `kept` (reading them empties the browser's)."""
    kept.extend(driver.get_log("browser"))
    return kept


def run(driver, args, shots, console):
    """The steps; each `yield` names the step that starts, for the failure message."""
    route = f"[data-route={css_string(args.route)}]"
    out = {}

    def shot(name):
        path = os.path.join(args.screenshots, name)
        driver.save_screenshot(path)
        shots.append(path)

    yield "1: open the page, meet the 401, give the token"
    driver.get(args.url)
    wait_for(driver, "the token field (#token) after a 401", lambda d: visible(d, "#token")).send_keys(args.token)
    find(driver, "#token-save")[0].click()
    if args.user:
        user = find(driver, "#user")[0]
        user.clear()
        user.send_keys(args.user + Keys.ENTER)  # kept on change, sent as X-Cutover-User

    yield f"2: route {args.route} appears"
    phase = f"{route} .phase"
    out["phase_before"] = wait_for(driver, f"{phase} with a text", lambda d: text_of(d, phase))
    if not find(driver, f"{route} svg.chart"):  # several routes: it starts collapsed
        click(driver, find(driver, phase)[0])
    shot("1-route.png")

    yield "3: the latency chart draws a series with >= 2 points"
    latency = f'{route} svg.chart[data-chart="latency"] path.series'
    out["points"] = wait_for(driver, f"{latency} with data-points >= 2",
                             lambda d: most_points(d, latency) >= 2 and most_points(d, latency))

    yield "4: a divergence sample opens the side-by-side diff"
    click(driver, wait_for(driver, f"{route} .divergence", lambda d: visible(d, f"{route} .divergence")))
    wait_for(driver, "#diff to open", lambda d: visible(d, "#diff .diff-legacy"))
    if args.diff_path:
        for pane in ("diff-legacy", "diff-new"):
            marked = f"#diff .{pane} .diff-path[data-path={css_string(args.diff_path)}]"
            wait_for(driver, marked, lambda d, marked=marked: find(d, marked))
    shot("2-diff.png")
    find(driver, "#diff-close")[0].click()
    wait_for(driver, "#diff to close", lambda d: not visible(d, "#diff .diff-legacy"))

    yield "5: rollback through the confirmation dialog"
    rollback = f'{route} button[data-action="rollback"]'
    click(driver, wait_for(driver, rollback, lambda d: visible(d, rollback)))
    wait_for(driver, "#confirm-reason in the dialog", lambda d: visible(d, "#confirm-reason")).send_keys(REASON)
    find(driver, "#confirm-ok")[0].click()
    result = wait_for(driver, "#result with the answer", lambda d: "sending" not in text_of(d, "#result") and visible(d, "#result"))
    if "200" not in result.text:
        raise StepFailed(f"#result says: {result.text}")
    wait_for(driver, f"{phase} to read rolled_back", lambda d: text_of(d, phase) == "rolled_back")
    out["phase_after"] = "rolled_back"
    shot("3-rolled-back.png")

    yield "6: no JavaScript errors in the console"
    errors = [e["message"] for e in read_console(driver, console)  # the 401s before the token are expected
              if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]]
    if errors:
        raise StepFailed("console errors:\n" + "\n".join(errors))
    out["screenshots"] = list(shots)
    print(json.dumps(out), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--route", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--screenshots", required=True)
    parser.add_argument("--user")
    parser.add_argument("--diff-path")
    args = parser.parse_args()
    os.makedirs(args.screenshots, exist_ok=True)

    try:
        driver = start_browser()
    except WebDriverException as e:
        sys.exit(f"dashboard test failed at step 0: start Chromium through /usr/bin/chromedriver: {e}")
    shots, console, step = [], [], "0: start the browser"
    try:
        for step in run(driver, args, shots, console):
            pass
    except Exception as e:  # any failure: evidence, then a clear message naming the step
        try:
            driver.save_screenshot(os.path.join(args.screenshots, "failure.png"))
            with open(os.path.join(args.screenshots, "console.log"), "w") as f:
                for entry in read_console(driver, console):
                    f.write(f"{entry.get('level')} {entry.get('message')}\n")
        except WebDriverException:
            pass
        print(f"dashboard test failed at step {step}: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
