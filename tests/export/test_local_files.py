"""The local files (export/local_files.py): no symlink followed, no file of another user or writable
by others written to, the directory 0700 whatever the umask, one line per problem, a size cap with
rotation; and the report at exit reading only this run within a bound (report/otlp.read_run).

Runs as root in CI (files of "another user" are made with chown) and as a normal user."""

from __future__ import annotations

import json
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from hms_otel_agent.export.local_files import LineWriter
from hms_otel_agent.export.otlp_json import METRICS_FILE, TRACES_FILE, OtlpJsonFileSpanExporter
from hms_otel_agent.local_paths import ROTATED_FILES, FileMark, files_oldest_first
from hms_otel_agent.report.otlp import expand_paths, read_run

OTHER_UID = 65534  # nobody


@pytest.fixture
def warnings(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="hms_otel")
    logger = logging.getLogger("hms_otel")
    old = logger.propagate
    logger.propagate = True  # the agent's handler may have turned propagation off
    yield caplog
    logger.propagate = old


def spans(exporter: OtlpJsonFileSpanExporter, count: int = 1, name: str = "GET /x") -> list:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for _ in range(count):
        with tracer.start_as_current_span(name):
            pass
    return list(memory.get_finished_spans())


def other_users_file(path: Path, mode: int = 0o644) -> None:
    path.write_text("")
    os.chmod(path, mode)
    if os.geteuid() == 0:
        os.chown(path, OTHER_UID, OTHER_UID)


def test_a_planted_symlink_is_not_followed_one_line_and_the_agent_goes_on(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "local"
    directory.mkdir(mode=0o700)
    target = tmp_path / "victim.txt"
    target.write_text("precious\n")
    (directory / TRACES_FILE).symlink_to(target)
    exporter = OtlpJsonFileSpanExporter(str(directory))
    batch = spans(exporter, 3)
    assert exporter.export(batch) is SpanExportResult.FAILURE
    assert exporter.export(batch) is SpanExportResult.FAILURE
    assert target.read_text() == "precious\n"
    refused = [m for m in warnings.messages if "not writing telemetry" in m]
    assert refused == [
        f"hms-otel: not writing telemetry to {directory / TRACES_FILE}: "
        "it is a symbolic link; the agent goes on without it"
    ]


@pytest.mark.parametrize(
    ("mode", "owned_by_other", "why"),
    [
        (0o666, False, "writable by other users (mode 0666)"),
        (0o620, False, "writable by other users (mode 0620)"),
        (0o600, True, f"owned by uid {OTHER_UID}, not by this user"),
    ],
)
def test_a_file_of_another_user_or_writable_by_others_is_refused(
    tmp_path: Path, warnings: pytest.LogCaptureFixture, mode: int, owned_by_other: bool, why: str
) -> None:
    if owned_by_other and os.geteuid() != 0:
        pytest.skip("making a file of another user needs root")  # CI runs as root
    directory = tmp_path / "local"
    directory.mkdir(mode=0o700)
    planted = directory / TRACES_FILE
    if owned_by_other:
        other_users_file(planted, mode)
    else:
        planted.write_text("")
        os.chmod(planted, mode)
    exporter = OtlpJsonFileSpanExporter(str(directory))
    for _ in range(3):
        assert exporter.export(spans(exporter)) is SpanExportResult.FAILURE
    assert planted.read_text() == ""
    [line] = [m for m in warnings.messages if "not writing telemetry" in m]
    assert why in line and str(planted) in line and "Traceback" not in line


def test_hard_links_fifos_and_other_users_directories_are_refused(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    fifo_dir = tmp_path / "fifo"
    fifo_dir.mkdir(mode=0o700)
    os.mkfifo(fifo_dir / TRACES_FILE, 0o600)
    assert not LineWriter(str(fifo_dir / TRACES_FILE), 10_000).write("x")  # did not block

    link_dir = tmp_path / "link"
    link_dir.mkdir(mode=0o700)
    victim = tmp_path / "victim"
    victim.write_text("")
    os.chmod(victim, 0o600)
    os.link(victim, link_dir / TRACES_FILE)
    assert not LineWriter(str(link_dir / TRACES_FILE), 10_000).write("x")
    assert victim.read_text() == ""

    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    if os.geteuid() == 0:
        os.chown(shared, OTHER_UID, OTHER_UID)
    assert not LineWriter(str(shared / TRACES_FILE), 10_000).write("x")
    assert not (shared / TRACES_FILE).exists()
    lines = [m for m in warnings.messages if "not writing telemetry" in m]
    assert len(lines) == 3, lines
    assert "FIFO" in lines[0] and "2 hard links" in lines[1]
    assert str(shared) in lines[2] and ("owned by uid" in lines[2] or "writable by other users" in lines[2])


def test_the_directory_is_created_0700_whatever_the_umask_and_an_own_loose_one_tightened(
    tmp_path: Path,
) -> None:
    old = os.umask(0)
    try:
        created = tmp_path / "a" / "b" / "local"
        assert LineWriter(str(created / TRACES_FILE), 10_000).write("{}")
        for path in (created, created.parent, created.parent.parent):
            assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
        assert stat.S_IMODE((created / TRACES_FILE).stat().st_mode) == 0o600
        loose = tmp_path / "loose"
        loose.mkdir()
        os.chmod(loose, 0o775)  # an older version under umask 002
        assert LineWriter(str(loose / TRACES_FILE), 10_000).write("{}")
        assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    finally:
        os.umask(old)


def test_a_failing_write_is_one_warning_then_one_line_when_it_works_again(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    writer = LineWriter(str(blocker / "local" / METRICS_FILE), 10_000)
    for _ in range(5):
        assert not writer.write("{}")
    failing = [m for m in warnings.messages if "cannot write telemetry" in m]
    assert len(failing) == 1 and "Not a directory" in failing[0], warnings.messages
    blocker.unlink()
    assert writer.write("{}")
    assert writer.write("{}")
    assert [m for m in warnings.messages if m.startswith("hms-otel: writing telemetry")] == [
        f"hms-otel: writing telemetry to {blocker / 'local' / METRICS_FILE} works again"
    ]


def test_rotation_keeps_the_files_under_the_cap_and_drops_the_oldest(
    tmp_path: Path, warnings: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / TRACES_FILE
    writer = LineWriter(str(path), 40_000)  # files of 10 000 bytes
    line = json.dumps({"n": "x" * 990})  # 1000 bytes with its newline
    for index in range(205):
        assert writer.write(line.replace("x", chr(97 + index % 26), 1))
    files = files_oldest_first(str(path))
    assert [Path(f).name for f in files] == [
        "traces.3.jsonl",
        "traces.2.jsonl",
        "traces.1.jsonl",
        "traces.jsonl",
    ]
    assert sum(os.path.getsize(f) for f in files) <= 40_000 + 1000
    assert all(os.path.getsize(f) <= 10_000 for f in files)
    rotations = [m for m in warnings.messages if "rotated to traces.1.jsonl" in m]
    assert len(rotations) == 205 * 1000 // 10_000
    assert (
        sum("the oldest, traces.3.jsonl, was dropped" in m for m in rotations)
        == len(rotations) - ROTATED_FILES
    )
    # Readers see every file, oldest first.
    assert expand_paths([str(tmp_path)]) == files


def line_of(run: str, index: int) -> str:
    request = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "hms.run.id", "value": {"stringValue": run}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "t"},
                        "spans": [
                            {
                                "traceId": f"{index + 1:032x}",
                                "spanId": f"{index + 1:016x}",
                                "name": f"span {index}",
                                "kind": 2,
                                "startTimeUnixNano": "1",
                                "endTimeUnixNano": "2",
                                "attributes": [],
                            }
                        ],
                    }
                ],
            }
        ]
    }
    return json.dumps(request)


def test_read_run_starts_where_the_run_began_and_stops_at_its_bound(tmp_path: Path) -> None:
    path = tmp_path / TRACES_FILE
    writer = LineWriter(str(path), 10**9)
    for index in range(50):
        writer.write(line_of("old", index))
    mark = FileMark.of(str(path))
    for index in range(50, 80):
        writer.write(line_of("old" if index % 2 else "new", index))
    result = read_run(str(path), "new", mark)
    assert sorted(s.name for s in result.spans) == [f"span {i}" for i in range(50, 80, 2)]
    assert result.read_bytes == os.path.getsize(path) - mark.size  # nothing before the mark
    assert not result.stopped_early

    size = len(line_of("new", 60)) + 1
    capped = read_run(str(path), "new", mark, max_bytes=size * 4 + 10)
    assert capped.stopped_early == "it read the first 0 MB of this run"
    assert len(capped.spans) == 2  # lines 50..53: two of this run
    assert read_run(str(path), "new", mark, max_seconds=0).stopped_early


def test_read_run_follows_the_run_into_rotated_files(tmp_path: Path) -> None:
    path = tmp_path / TRACES_FILE
    writer = LineWriter(str(path), 4 * 2000)  # files of ~2000 bytes: a few lines each
    for index in range(3):
        writer.write(line_of("old", index))
    mark = FileMark.of(str(path))
    for index in range(3, 9):
        writer.write(line_of("new", index))
    assert len(files_oldest_first(str(path))) > 1
    result = read_run(str(path), "new", mark)
    assert sorted(s.name for s in result.spans) == [f"span {i}" for i in range(3, 9)]
    assert not result.start_rotated_away
    for index in range(9, 60):  # the file the run began in is rotated away
        writer.write(line_of("new", index))
    later = read_run(str(path), "new", mark)
    assert later.start_rotated_away
    assert {s.name for s in later.spans} >= {"span 59"}


SCRIPT = """
import time
from opentelemetry import trace
tracer = trace.get_tracer("t")
for _ in range(40):
    with tracer.start_as_current_span("work"):
        pass
    time.sleep(0.01)
"""


@pytest.mark.parametrize("fault", ["unwritable", "full"])
def test_a_failing_local_dir_is_one_line_per_file_and_no_traceback(tmp_path: Path, fault: str) -> None:
    """Under hms-otel-run, traces and metrics exported many times into a directory that cannot be
    created (a path under a regular file) or onto a full disk (RLIMIT_FSIZE: writes fail with EFBIG)."""
    import resource
    import signal
    import subprocess
    import sys

    from harness.processes import hermetic_env, venv_executable

    blocker = tmp_path / "file"
    blocker.write_text("")
    local = blocker / "local" if fault == "unwritable" else tmp_path / "local"
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    env = hermetic_env(
        {
            "HMS_OTEL_LOCAL_DIR": str(local),
            "OTEL_BSP_SCHEDULE_DELAY": "20",
            "OTEL_METRIC_EXPORT_INTERVAL": "50",
            "HMS_OTEL_REPORT": "false",
        }
    )

    def no_room() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))

    result = subprocess.run(
        [venv_executable("hms-otel-run"), sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=no_room if fault == "full" else None,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr
    failing = [line for line in result.stderr.splitlines() if "cannot write telemetry" in line]
    assert sorted(line.split(" to ")[1].split(" (")[0] for line in failing) == [
        str(local / METRICS_FILE),
        str(local / TRACES_FILE),
    ], result.stderr
