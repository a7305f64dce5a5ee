"""The pinned environment (requirements.lock, peer_mmdet/requirements.lock) and the report's check
of it (dynrcnn.rundir.environment): the lock covers what pyproject.toml asks for, holds a matching
torch / torchvision pair, and a differing version is named."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from dynrcnn.rundir import environment as env

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
PEER_LOCK = ROOT / "peer_mmdet" / "requirements.lock"

#: the extras the lock resolves (tools/update_lock.sh); every other extra is named here, so a new
#: extra is either locked or left out on purpose
LOCKED_EXTRAS = {"test", "fast"}
UNLOCKED_EXTRAS = {"tensorboard", "notebook"}


def _requirements(lines) -> list[Requirement]:
    out = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _assert_covered(reqs: list[Requirement], pins: dict[str, str], source: str) -> None:
    missing = [str(r) for r in reqs if env.canonical_name(r.name) not in pins]
    assert not missing, f"{source}: not in the lock: {missing} (run make lock)"
    outside = [f"{r} (lock {pins[env.canonical_name(r.name)]})" for r in reqs
               if not r.specifier.contains(pins[env.canonical_name(r.name)], prereleases=True)]
    assert not outside, f"{source}: the locked version is outside the range: {outside} (run make lock)"


def test_lock_covers_every_runtime_dependency():
    project, pins = _pyproject(), env.parse_lock(LOCK)
    _assert_covered(_requirements(project["dependencies"]), pins, "dependencies")
    extras = project["optional-dependencies"]
    assert LOCKED_EXTRAS | UNLOCKED_EXTRAS <= set(extras)
    # every extra but the ones left out on purpose (wandb's is inside test's)
    for name in sorted(set(extras) - UNLOCKED_EXTRAS):
        _assert_covered(_requirements(extras[name]), pins, f"extra {name}")


def test_lock_says_its_platform_and_pins_with_hashes():
    text = LOCK.read_text()
    assert "Linux x86-64" in text and "3.11" in text
    body = [line for line in text.splitlines() if line and not line.startswith("#")]
    pinned = [line for line in body if "==" in line]
    assert len(pinned) == len(env.parse_lock(LOCK)) > 50
    assert all(line.rstrip().endswith("\\") for line in pinned), "a pin without --hash lines"


def test_lock_pins_a_matching_torch_torchvision_pair():
    pins = env.parse_lock(LOCK)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"
    assert env.torchvision_matches(pins["torch"], pins["torchvision"]) is True


@pytest.mark.parametrize("torch_version, torchvision_version, expected", [
    ("2.14.1", "0.29.1", True), ("2.14.0+cpu", "0.29.0+cpu", True), ("2.13.0", "0.28.0", True),
    ("2.9.1", "0.24.1", True), ("2.2.0", "0.17.0", True),
    ("2.14.1", "0.28.0", False), ("2.13.0", "0.29.1", False), ("2.9.1", "0.25.0", False),
    ("1.7.0", "0.8.0", None),
])
def test_torchvision_pairs_of_the_readme_table(torch_version, torchvision_version, expected):
    assert env.torchvision_matches(torch_version, torchvision_version) is expected


def test_peer_lock_covers_its_inputs_and_agrees_with_the_main_lock():
    peer, main = env.parse_lock(PEER_LOCK), env.parse_lock(LOCK)
    for name in ("requirements.txt", "runtime.txt"):
        lines = (ROOT / "peer_mmdet" / name).read_text().splitlines()
        _assert_covered(_requirements(lines), peer, f"peer_mmdet/{name}")
    differ = {n: (v, main[n]) for n, v in peer.items() if n in main and v != main[n]}
    assert not differ, f"peer_mmdet/requirements.lock differs from requirements.lock: {differ} (make lock)"
    assert "opencv-python" not in peer  # the GUI build mmengine asks for; the peer runs the headless one


def test_lock_mismatches_names_the_one_wrong_version(tmp_path):
    numpy_version, pytest_version = env.installed_version("numpy"), env.installed_version("pytest")
    fake = tmp_path / "requirements.lock"
    fake.write_text(
        "# a lock of three packages, one at another version\n"
        f"numpy==0.0.1 \\\n    --hash=sha256:{'0' * 64}\n    # via dynrcnn\n"
        f"pytest=={pytest_version}\n"
        f"Pillow=={env.installed_version('pillow')}\n"
    )
    mismatches = env.lock_mismatches(fake)
    assert mismatches == [env.Mismatch("numpy", numpy_version, "0.0.1")]
    sentence = env.environment_sentence(mismatches)
    assert sentence == f"ran with versions other than the lock: numpy {numpy_version} (lock 0.0.1)"


def test_lock_mismatches_orders_numeric_packages_first_and_names_missing_ones(tmp_path):
    fake = tmp_path / "requirements.lock"
    fake.write_text("aaa-not-installed==1.0\nzzz-not-installed==2.0\ntorch==0.0.1\n")
    mismatches = env.lock_mismatches(fake)
    assert [m.name for m in mismatches] == ["torch", "aaa-not-installed", "zzz-not-installed"]
    assert mismatches[1].installed is None
    sentence = env.environment_sentence(mismatches)
    assert "aaa-not-installed not installed (lock 1.0)" in sentence
    many = [env.Mismatch(f"p{i}", "1", "2") for i in range(env.SENTENCE_LIMIT + 3)]
    assert env.environment_sentence(many).endswith(" and 3 more")


def test_sentences_for_a_matching_or_absent_lock(tmp_path):
    assert env.environment_sentence([]) == "ran with the locked environment (requirements.lock)"
    assert "not found" in env.environment_sentence(None)
    fake = tmp_path / "requirements.lock"
    fake.write_text(f"numpy=={env.installed_version('numpy')}\n")
    assert env.lock_mismatches(fake) == []


def test_numeric_versions_name_the_packages_and_the_cpu_path():
    versions = env.numeric_versions()
    assert set(env.NUMERIC_PACKAGES) <= set(versions)
    assert versions["torch"] and versions["numpy"] and versions["pillow"]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if not versions["cpu_bf16"]:
        assert versions["numeric_path"] == "fp32"
    elif " amx_bf16" in flags:
        assert versions["numeric_path"] == "bf16 (AMX)"
    elif " avx512_bf16" in flags:
        assert versions["numeric_path"] == "bf16 (AVX512-BF16)"
    assert env.numeric_versions(amp="none")["numeric_path"] == "fp32"
    record = env.environment_record(LOCK)
    assert record["lock"] == "requirements.lock" and record["sentence"].startswith("ran with")
    assert record["versions"]["torch"] == versions["torch"]
