"""Shared fixtures. Nothing here needs ../shared or the network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from sortline.edge_runtime.learning.enroll import EXAMPLES_FILE, write_examples
from sortline.edge_runtime.model.bundle import SIGNING_KEY_ENV, Bundle, DecisionPolicy, Manifest, write_bundle
from sortline.edge_runtime.model.choice import CHECK_FILE, write_check_set
from sortline.edge_runtime.model.embedder import OnnxEmbedder
from sortline.edge_runtime.model.fusion import FusionSpec, LabeledItem, fit_fusion_head
from sortline.edge_runtime.model.preprocess import InputSpec, preprocess_views
from sortline.hardware.sim.avocado import CLASSES, TAPS_PER_ITEM, make_fruit, render_views, tap_series
from sortline.hardware.sim.checkout import Catalog, CheckoutScenario

SPEC = InputSpec(size=32, views=4)
EXITS = {"A": 1, "external": 2, "internal": 3, "both": 3}


FIXTURES = Path(__file__).parent / "fixtures"

# -- each test once, where it can run ------------------------------------------------------------
# `make test` runs the station's tests in the edge install (no torch, no onnx, no OpenVINO) with
# --record-passed, then the whole suite in the desktop install with --skip-passed: what passed in
# the edge install is not run twice; what it skipped (the demo, the browsers, OpenVINO) runs here.
# The runtime tests run in both: which runtimes exist is what they check. (pytest reads these
# options only when it is given tests/ on its command line, as the Makefile does.)
RUN_IN_BOTH = ("tests/test_runtimes.py",)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sortline")
    group.addoption("--record-passed", metavar="FILE", help="write the ids of the tests that passed to FILE")
    group.addoption("--skip-passed", metavar="FILE",
                    help="deselect the tests that FILE (another install's --record-passed) lists as passed")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    path = config.getoption("--skip-passed")
    if not path:
        return
    try:
        passed = set(Path(path).read_text().splitlines())  # one id a line (an id may hold spaces)
    except OSError as exc:
        raise pytest.UsageError(f"--skip-passed {path}: {exc}") from exc
    skip = [item for item in items if item.nodeid in passed and not item.nodeid.startswith(RUN_IN_BOTH)]
    if skip:
        config.hook.pytest_deselected(items=skip)
        ids = {item.nodeid for item in skip}
        items[:] = [item for item in items if item.nodeid not in ids]


_PASSED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        _PASSED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--record-passed")
    if path:
        Path(path).write_text("\n".join(_PASSED) + "\n")


@pytest.fixture(autouse=True, scope="session")
def _signing_key(tmp_path_factory: pytest.TempPathFactory):
    """demo, fit and export sign with $SORTLINE_SIGNING_KEY: the tests' own key, never the user's."""
    os.environ[SIGNING_KEY_ENV] = str(tmp_path_factory.mktemp("keys") / "signing.key")
    yield


def tiny_backbone_onnx(channels: int = 4) -> Path:
    """A real conv net as an ONNX graph (conv 3×3 → ReLU → conv 3×3 stride 2 → ReLU → GAP, 16
    wide), written by fixtures/make_tiny_onnx.py."""
    return FIXTURES / f"tiny-{channels}ch.onnx"


def _items(scenario, count: int) -> list[LabeledItem]:
    return [LabeledItem(scenario.label(i), scenario.render(i, scenario.frame_px, scenario.views),
                        list(scenario.readings(i, 0))) for i in range(count)]


def make_tiny_bundle(out: Path, work: Path, labeled_fruit: int = 120, retrained: bool = False) -> Bundle:
    """A bundle whose head is fitted on the tiny backbone's embeddings of simulated fruit
    (``retrained``: on the same net with other weights, as a retrain leaves it)."""

    onnx_path = FIXTURES / "tiny-4ch-retrained.onnx" if retrained else tiny_backbone_onnx(4)
    embedder = OnnxEmbedder(onnx_path, SPEC)
    items = []
    for i in range(labeled_fruit):
        fruit = make_fruit(i, seed=77, label=i % 4 if i < 16 else None)  # every class present
        items.append(LabeledItem(fruit.label, render_views(fruit), tap_series(fruit)))
    fitted = fit_fusion_head(embedder, items, CLASSES, FusionSpec.for_sensor("taps", TAPS_PER_ITEM))
    head, fusion = fitted.head, fitted.fusion
    manifest = Manifest(
        name="tiny-test",
        input=SPEC,
        embedding_dim=16,
        labels=CLASSES,
        decision=DecisionPolicy(EXITS, safe_exit=0, min_confidence=0.4),
        fusion=fusion,
        metrics={"note": "test fixture"},
    )
    check = write_check_set(work / CHECK_FILE, np.concatenate([preprocess_views(item.views, SPEC)
                                                               for item in items[:8]]))
    examples = write_examples(work / EXAMPLES_FILE, fitted.features, fitted.targets, CLASSES)
    return write_bundle(out, manifest, onnx_path, head, extra_files={CHECK_FILE: check, EXAMPLES_FILE: examples})


def make_tiny_checkout_bundle(out: Path, work: Path, labeled_items: int = 150, products: int = 6) -> Bundle:
    """A checkout bundle: the tiny backbone on RGB, its head fitted on drawn products and their
    weights from the scale."""

    scenario = CheckoutScenario(Catalog.procedural(products), seed=78)
    spec = InputSpec.for_channels(scenario.channels, 32, views=scenario.views)
    onnx_path = tiny_backbone_onnx(3)
    items = _items(scenario, labeled_items)
    fitted = fit_fusion_head(OnnxEmbedder(onnx_path, spec), items, scenario.classes,
                             FusionSpec.for_sensor("scale", scenario.readings_expected))
    head, fusion = fitted.head, fitted.fusion
    manifest = Manifest(
        name="tiny-checkout-test",
        input=spec,
        embedding_dim=16,
        labels=scenario.classes,
        decision=DecisionPolicy({name: 1 for name in scenario.classes}, safe_exit=0, min_confidence=0.3),
        fusion=fusion,
        metrics={"note": "test fixture"},
    )
    return write_bundle(out, manifest, onnx_path, head)


DETECT_SPEC = InputSpec.for_channels(("r", "g", "b"), size=32)


def make_tiny_detector_bundle(out: Path) -> Bundle:
    """An RGB bundle without a head on the stride-8 tiny detector (both model outputs, any
    input size): what ``sortline detect`` needs."""
    manifest = Manifest(name="tiny-detector", input=DETECT_SPEC, embedding_dim=64, labels=(),
                        decision=DecisionPolicy({}, safe_exit=0), fusion=FusionSpec.for_sensor("none", 0, ("mean",)),
                        metrics={"note": "test fixture"})
    return write_bundle(out, manifest, FIXTURES / "tiny-detector-3ch.onnx", None)


@pytest.fixture(scope="session")
def tiny_detector_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    return make_tiny_detector_bundle(tmp_path_factory.mktemp("detector") / "bundle")


@pytest.fixture(scope="session")
def tiny_checkout_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    work = tmp_path_factory.mktemp("tiny-checkout")
    return make_tiny_checkout_bundle(work / "bundle", work)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    work = tmp_path_factory.mktemp("tiny")
    return make_tiny_bundle(work / "bundle", work)


def chromium_browser(width: int = 1100, height: int = 900):
    """Debian's chromium, headless, driven by selenium; skipped where it is not installed (but
    CI must have it: .ci/run installs it)."""
    import os
    import shutil

    webdriver = pytest.importorskip("selenium.webdriver")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (.ci/run does)")
        pytest.skip("Debian's chromium and chromium-driver are not installed")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


# Names that a CSV, a recording, a bundle or an operator may hand the pages: markup, quotes and
# entities; each must be shown as the text it is, never run (tests/test_api.py, test_station_fit.py).
HOSTILE_NAMES = (
    '<img src=x id=injected onerror="document.body.dataset.pwned=1">',
    '"><svg id=injected2 onload="document.body.dataset.pwned=2">',
    "Tom & 'Jerry' &amp; </td></tr><b id=injected3>bold</b>",
)


def assert_nothing_injected(browser) -> None:
    """No element the hostile names carry exists in the page, and none of their handlers ran."""
    from selenium.webdriver.common.by import By

    for marker in ("injected", "injected2", "injected3", "injected4"):
        assert browser.find_elements(By.ID, marker) == [], f"#{marker} is in the page's DOM"
    assert browser.execute_script("return document.body.dataset.pwned") is None
