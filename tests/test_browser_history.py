"""The "Over training" view in a real browser: `streamlit run` on a freshly trained checkpoint with its
history; open the inspector's tab, switch the view on, and step back through the epochs."""

import numpy as np
import pytest
from PIL import Image

from app.loadtest import make_driver, start_server, stop_server
from test_browser import _artifacts, pytestmark  # noqa: F401  (the same skip rule)
from test_training_view import trained  # noqa: F401  (a tiny model trained 3 epochs, with its history)


@pytest.fixture
def server(trained, tmp_path):  # noqa: F811
    out, folder = trained
    proc, url = start_server({"AR_CHECKPOINT": str(out), "AR_CACHE_DIR": str(tmp_path / "cache")},
                             tmp_path / "streamlit.log")
    yield url, tmp_path
    stop_server(proc)


def test_over_training_view_steps_through_epochs_in_a_browser(server):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    url, tmp = server
    image = tmp / "upload.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(image)
    browser = make_driver()
    wait = WebDriverWait(browser, 90)
    body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731
    try:
        browser.get(url)
        wait.until(lambda d: "Upload an image" in body(d))
        browser.find_element(By.XPATH, "//*[@data-testid='stFileUploader'][.//*[contains(., 'Images (PNG')]]"
                                       "//input[@type='file']").send_keys(str(image))
        wait.until(lambda d: "tab laid out in" in body(d))
        browser.find_element(By.XPATH, "//*[@role='tab'][contains(., 'Over training')]").click()
        toggle = "//label[contains(., 'Show the probe images over training')]"
        wait.until(lambda d: d.find_elements(By.XPATH, toggle))
        browser.find_element(By.XPATH, toggle).click()

        def maps_figure(d):
            imgs = d.find_elements(By.CSS_SELECTOR, "[data-testid='stImage'] img, [data-testid='stImageContainer'] img")
            done = [i for i in imgs if d.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i)]
            return done[-1].get_attribute("src") if done else None

        wait.until(lambda d: "p(true class = " in body(d) and maps_figure(d))
        assert "The probe images themselves are not stored with the model" in body(browser)
        before = maps_figure(browser)
        slider = ".st-key-inspect_history_epoch "
        thumb = lambda: browser.find_element(By.CSS_SELECTOR, slider + "input[type='range']")  # noqa: E731
        epoch = lambda: thumb().get_attribute("aria-valuetext")  # noqa: E731
        assert epoch() == "3"  # the last epoch
        browser.execute_script("arguments[0].focus()", thumb())  # a keyboard user's tab stop
        ActionChains(browser).send_keys(Keys.HOME).perform()  # back to the first epoch
        wait.until(lambda d: maps_figure(d) and maps_figure(d) != before)
        assert epoch() == "1"
        assert not browser.find_elements(By.CSS_SELECTOR, "[data-testid='stException']")
        assert "Traceback" not in body(browser)
        browser.save_screenshot(str(_artifacts() / "browser-over-training.png"))
    except Exception:
        browser.save_screenshot(str(_artifacts() / "browser-over-training-failure.png"))
        (_artifacts() / "browser-over-training-failure.html").write_text(browser.page_source)
        raise
    finally:
        browser.quit()
