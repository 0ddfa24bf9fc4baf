"""Test-session hooks: the tiers of tests/tiers.py as markers, and the fault-injection
suite's tally in the terminal summary."""

import json

import pytest

from tests.tiers import EXTENDED, HEAVY_FIRST, SLOW


def _matches(nodeid: str, key: str) -> bool:
    """``key`` names ``nodeid``: the same id, its file, or its function (any parameter)."""
    return nodeid == key or nodeid.startswith(key + "::") or nodeid.startswith(key + "[")


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(_matches(item.nodeid, k) for k in SLOW):
            item.add_marker(pytest.mark.slow)
        if item.nodeid in EXTENDED:
            item.add_marker(pytest.mark.extended)
    files = {item.nodeid.split("::")[0] for item in items}
    stale = sorted(k for k in SLOW | EXTENDED if k.split("::")[0] in files
                   and not any(_matches(item.nodeid, k) for item in items))
    if stale:
        raise pytest.UsageError(f"tests/tiers.py names tests that do not exist: {', '.join(stale)}")
    # The heaviest files first (tests/tiers.py HEAVY_FIRST), each file's tests kept in order.
    gone = [f for f in HEAVY_FIRST if not (config.rootpath / f).exists()]
    if gone:
        raise pytest.UsageError(f"tests/tiers.py HEAVY_FIRST names files that do not exist: {', '.join(gone)}")
    rank = {f: i for i, f in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


def pytest_terminal_summary(terminalreporter):
    """Sum the ``fault_injection`` properties the tests of tests/test_faults.py recorded
    (they travel with the reports, so this works under pytest-xdist too)."""
    faults: dict[str, int] = {}
    runs = matched = 0
    for reports in terminalreporter.stats.values():
        for rep in reports:
            if getattr(rep, "when", None) != "call":
                continue
            for name, value in getattr(rep, "user_properties", ()):
                if name == "fault_injection":
                    t = json.loads(value)
                    for k, v in t["faults"].items():
                        faults[k] = faults.get(k, 0) + v
                    runs += t["runs"]
                    matched += t["matched"]
    if runs:
        detail = ", ".join(f"{v} {k}" for k, v in sorted(faults.items()))
        terminalreporter.write_line(
            f"fault injection: {sum(faults.values())} faults injected ({detail}) in {runs} runs "
            f"of the main job; {matched} completed runs, all equal to the uninterrupted reference "
            f"summary")
