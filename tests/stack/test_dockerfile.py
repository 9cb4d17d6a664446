"""The Dockerfile builds the sample app the way README.md installs the package, and runs it under
the agent; .dockerignore keeps what that install needs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from .stackfiles import DOCKERFILE, DOCKERIGNORE, ROOT, compose

CANONICAL_INSTALL = "pip install '.[demo]'"


def instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [
        (m.group(1).upper(), m.group(2).strip())
        for m in re.finditer(r"^\s*([A-Za-z]+)\s+(.*)$", text, flags=re.M)
        if not m.group(0).lstrip().startswith("#")
    ]


def extras(spec: str) -> tuple[str, frozenset[str]]:
    """'.[demo]' -> ('.', {'demo'})"""
    m = re.fullmatch(r"([^\[\]]+)(?:\[([^\]]*)\])?", spec.strip("'\""))
    assert m, spec
    return m.group(1), frozenset(e.strip() for e in (m.group(2) or "").split(",") if e.strip())


def pip_installs(text: str) -> list[str]:
    """The targets of every `pip install` command (flags dropped)."""
    targets = []
    for m in re.finditer(r"pip install ([^\n&;|`]+)", text):
        targets += [w for w in shlex.split(m.group(1)) if not w.startswith("-")]
    return targets


def test_the_image_installs_the_source_tree_with_the_demo_extra_as_readme_says() -> None:
    steps = instructions()
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    installed = [extras(t) for t in pip_installs(runs)]
    assert (".", frozenset({"demo"})) in installed, f"the Dockerfile must run {CANONICAL_INSTALL}"
    assert CANONICAL_INSTALL in runs
    copy = [i for i, (op, arg) in enumerate(steps) if op == "COPY" and arg.split()[0] == "."]
    install = [i for i, (op, arg) in enumerate(steps) if op == "RUN" and "pip install" in arg]
    assert copy and install and copy[0] < install[0], "the source tree is copied before the install"

    readme = ROOT / "README.md"
    if readme.exists():
        demo = [extras(t) for t in pip_installs(readme.read_text()) if "demo" in t]
        if demo:  # README's demo install: same extras, from the source tree in the image
            assert any(e == frozenset({"demo"}) and (p == "." or p == "hms-otel-agent") for p, e in demo), (
                demo
            )


def test_the_image_runs_the_sample_app_under_the_agent() -> None:
    steps = dict(instructions())
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", steps["FROM"]), steps["FROM"]
    cmd = " ".join(shlex.split(re.fullmatch(r"\[(.*)\]", steps["CMD"]).group(1)))
    assert re.search(
        r"python -m hms_otel_agent\.sample migrate --noinput && "
        r"python -m hms_otel_agent\.sample seed_hms && "
        r"exec hms-otel-run -- gunicorn hms_otel_agent\.sample\.wsgi -b 0\.0\.0\.0:8000 -w 2",
        cmd,
    ), cmd
    assert (ROOT / "hms_otel_agent" / "sample" / "wsgi.py").exists()
    assert (ROOT / "hms_otel_agent" / "sample" / "__main__.py").exists()
    assert (ROOT / "hms_otel_agent" / "sample" / "hms" / "management" / "commands" / "seed_hms.py").exists()
    assert steps["USER"] not in ("root", "0")
    assert "HEALTHCHECK" in steps and "/health/" in steps["HEALTHCHECK"]
    assert steps["EXPOSE"] == "8000"


def test_the_demo_extra_provides_what_the_image_runs() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    demo = re.search(r"^demo = \[\n(.*?)\n\]", pyproject, flags=re.M | re.S).group(1)
    for package in ("Django", "psycopg", "redis", "gunicorn"):
        assert re.search(rf'"{package}[\[>=<]', demo), f"the demo extra has no {package}"
    assert 'hms-otel-run = "hms_otel_agent.launch.run:main"' in pyproject


def test_compose_builds_the_image_from_this_dockerfile() -> None:
    app = compose()["services"]["app"]
    assert app["build"] == {"context": ".", "dockerfile": "Dockerfile"}
    assert app["platform"] == "linux/amd64"  # pgserver (demo extra) has x86_64 wheels only


def ignored(path: str, patterns: list[str]) -> bool:
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        regex = re.escape(pat).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*")
        if re.fullmatch(regex + "(/.*)?", path):
            result = not negate
    return result


def test_dockerignore_keeps_the_package_and_drops_the_rest() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for needed in (
        "pyproject.toml",
        "README.md",
        "LICENSE",
        "hms_otel_agent/__init__.py",
        "hms_otel_agent/sample/wsgi.py",
        "hms_otel_agent/launch/bootstrap/sitecustomize.py",
    ):
        assert not ignored(needed, patterns), f"{needed} must reach the build"
    for dropped in (
        ".git/HEAD",
        "tests/conftest.py",
        ".venv/bin/python",
        "venv311/bin/python",
        "hms_otel_agent/__pycache__/x.pyc",
        "hms_otel_agent.egg-info/PKG-INFO",
        ".ci/run",
    ):
        assert ignored(dropped, patterns), f"{dropped} should not be in the build context"
    assert Path(ROOT / "hms_otel_agent" / "launch" / "bootstrap" / "sitecustomize.py").exists()
