"""The environment `make test` built is exactly requirements-cpu.lock (README "Install"). A resolver that drifts,
a hand-installed upgrade or a lock edited without `make` fails here with the packages named, before it can break
something far away (an unlocked transformers once pulled in a package our folders shadowed). In any other
environment (your own venv, a GPU machine, `make test-latest`) the check is skipped, with the reason."""
import hashlib
import importlib.metadata
import os
import re
import sys

import pytest
from packaging.utils import canonicalize_name

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCK = os.path.join(REPO, "requirements-cpu.lock")
MARKER = os.path.join(sys.prefix, "embedx-lock.sha256")  # written by the Makefile after installing the lock
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def pins(text):
    """``{canonical name: version}`` of every ``name==version`` line of a pip-compile lock."""
    matches = (PIN.fullmatch(line.split("#")[0].strip()) for line in text.splitlines())
    return {canonicalize_name(m.group(1)): m.group(2) for m in matches if m}


def installed():
    return {canonicalize_name(d.metadata["Name"]): d.version for d in importlib.metadata.distributions()}


def differences(locked, have):
    """One line per locked package that is missing or at another version."""
    return [f"{name}: locked {v}, installed {have.get(name, 'nothing')}" for name, v in sorted(locked.items())
            if have.get(name) != v]


def test_pins_parse_every_requirement_line():
    text = "# header\nfoo-bar==1.2.0\n    # via x\ntorch==2.13.0+cpu\n    # via\n    #   y\n"
    assert pins(text) == {"foo-bar": "1.2.0", "torch": "2.13.0+cpu"}
    assert differences({"foo-bar": "1.2.0", "torch": "2.13.0+cpu"}, {"foo-bar": "1.3.0"}) == [
        "foo-bar: locked 1.2.0, installed 1.3.0", "torch: locked 2.13.0+cpu, installed nothing"]


def test_the_lock_pins_every_package_exactly():
    with open(LOCK) as fh:
        text = fh.read()
    reqs = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert reqs and all(PIN.fullmatch(ln) for ln in reqs), [ln for ln in reqs if not PIN.fullmatch(ln)]
    locked = pins(text)
    assert locked["torch"].endswith("+cpu"), "the CPU lock must hold torch's CPU build"
    assert not [n for n in locked if n.startswith("nvidia-")], "no CUDA runtime packages in the CPU lock"
    assert "setuptools" in locked, "the build backend is locked too (the project installs --no-build-isolation)"


def test_installed_versions_equal_the_lock():
    if not os.path.exists(MARKER):
        pytest.skip(f"not the environment `make test` built from the lock (no {MARKER})")
    with open(LOCK, "rb") as fh:
        data = fh.read()
    with open(MARKER) as fh:
        built_from = fh.read().strip()
    assert built_from == hashlib.sha256(data).hexdigest(), (
        "requirements-cpu.lock changed since this venv was built from it: run `make test` (it reinstalls)")
    diff = differences(pins(data.decode()), installed())
    assert not diff, ("installed packages differ from requirements-cpu.lock (rebuild: rm -rf .venv && make test; "
                      "or `make lock` if the change is intended):\n  " + "\n  ".join(diff))


if __name__ == "__main__":  # `make test-latest`: what the newest releases differ in from the lock
    with open(LOCK) as fh:
        lines = differences(pins(fh.read()), installed())
    print("\n".join("  " + ln for ln in lines) or "  nothing")
