"""Test-session hooks: the fault-injection suite's tally in the terminal summary."""

import json


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
