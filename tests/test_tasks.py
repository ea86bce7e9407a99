"""The task runner against real child processes: the stand-in ``tuleap`` (tests/bin) and
small shell commands. No pool here; tests/test_tasks_e2e.py runs them through the pool."""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from tests.pool import REPO, wait_until
from tuitop import tasks
from tuitop.config import mask_secrets
from tuitop.handlers import Job, RetryLater
from tuitop.log import TuleapFormatter
from tuitop.message import encode
from tuitop.tasks import (
    TASK_ENVIRONMENT,
    WORKER_MARKER,
    TaskCommand,
    TaskRunner,
    TaskStartError,
    sweep_leftovers,
    task_handler,
)

STANDIN = REPO / "tests" / "bin" / "tuleap"


@pytest.fixture
def records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "records"
    directory.mkdir()
    monkeypatch.setenv("TULEAP_STANDIN_RECORDS", str(directory))
    monkeypatch.setenv("PATH", f"{STANDIN.parent}:{os.environ['PATH']}")
    return directory


def runner(tmp_path: Path, **options: object) -> TaskRunner:
    command = TaskCommand.parse(
        f"{sys.executable} {STANDIN} queue:task-worker-process", str(tmp_path)
    )
    settings: dict[str, object] = {"time_limit": 30.0, "kill_grace": 1.0, **options}
    return TaskRunner(
        command,
        logger=logging.getLogger("tests.tasks"),
        worker_id="pool/0#1",
        **settings,  # type: ignore[arg-type]
    )


def message(message_id: str, **asked: object) -> bytes:
    return encode("tuleap.test", {"id": message_id, "standin": asked})


def started(records: Path, message_id: str) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in sorted(records.glob(f"{message_id}-*.start.json"))]


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_task_gets_the_exact_bytes_its_directory_and_tuleaps_environment(
    tmp_path: Path, records: Path
) -> None:
    # A message as PHP writes it: escaped slashes and non-ASCII as \\uXXXX, and big enough
    # that writing stdin and reading the output must go on together.
    raw = (
        b'{"event_name":"tuleap.git.hooks.post-receive","payload":{"id":"big",'
        b'"path":"a\\/b","name":"\\u00e9t\\u00e9","blob":"' + b"x" * 1_000_000 + b'"},'
        b'"_enqueue_ts":1764583200.123456,"_queued_total":0}'
    )
    outcome = runner(tmp_path).run(raw)
    assert outcome.ok, outcome.describe()
    [record] = started(records, "big")
    assert bytes.fromhex(str(record["stdin_hex"])) == raw
    assert record["cwd"] == str(tmp_path)
    assert record["argv"] == [str(STANDIN), "queue:task-worker-process"]
    env = record["env"]
    assert isinstance(env, dict)
    assert {k: env[k] for k in TASK_ENVIRONMENT} == TASK_ENVIRONMENT
    assert env[WORKER_MARKER] == "pool/0#1"
    assert record["pgid"] == record["pid"]  # a process group of its own


def test_exit_status_and_the_stderr_tail_are_reported_bounded(
    tmp_path: Path, records: Path
) -> None:
    noise = "".join(f"noise line {i}\n" for i in range(2000)) + "PHP Fatal error: the end\n"
    outcome = runner(tmp_path).run(message("fail", exit=3, stderr=noise))
    assert not outcome.ok
    assert outcome.returncode == 3
    assert outcome.describe().startswith("task exited with status 3 after ")
    assert outcome.last_line() == "PHP Fatal error: the end"
    assert len(outcome.stderr_tail.encode()) <= 4096
    assert outcome.stderr_tail.endswith("PHP Fatal error: the end\n")


def test_output_goes_to_the_log_line_by_line_and_bounded(
    tmp_path: Path, records: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tests.tasks")
    outcome = runner(tmp_path, log_limit=10_000).run(
        message("flood", stdout="hello\n", flood=1_000_000)
    )
    assert outcome.ok
    assert outcome.output_bytes == 1_000_006
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("task stdout: ")]
    assert lines[0] == "task stdout: hello"
    assert sum(len(line) - len("task stdout: ") + 1 for line in lines) <= 10_000
    assert any("more byte(s) not logged" in r.getMessage() for r in caplog.records)


def test_a_task_past_its_time_limit_is_killed_with_its_children(
    tmp_path: Path, records: Path
) -> None:
    began = time.monotonic()
    outcome = runner(tmp_path, time_limit=1.0).run(message("hang", hang=True, child=True))
    assert outcome.timed_out
    assert outcome.returncode == -signal.SIGTERM
    assert "time limit of 1 s" in outcome.describe()
    assert time.monotonic() - began < 5
    [record] = started(records, "hang")
    wait_until(lambda: gone(int(record["child_pid"])), 5, "the task's child to be killed")  # type: ignore[arg-type]


def test_a_task_that_ignores_sigterm_gets_sigkill_after_the_grace(
    tmp_path: Path, records: Path
) -> None:
    outcome = runner(tmp_path, time_limit=0.5, kill_grace=0.5).run(
        message("stubborn", hang=True, ignore_term=True)
    )
    assert outcome.timed_out
    assert outcome.returncode == -signal.SIGKILL


def test_cut_short_ends_a_task_early_and_says_why(tmp_path: Path, records: Path) -> None:
    task_runner = runner(tmp_path, time_limit=60.0, kill_grace=0.5)
    timer = threading.Timer(0.5, task_runner.cut_short, args=(0.2, "the pool is gone"))
    timer.start()
    outcome = task_runner.run(message("cut", hang=True))
    timer.join()
    assert not outcome.timed_out
    assert outcome.killed_because == "the pool is gone"


def test_cut_short_applies_to_a_task_started_after_it_too(tmp_path: Path, records: Path) -> None:
    # The pool went away just before the worker started its next task.
    task_runner = runner(tmp_path, time_limit=60.0, kill_grace=0.5)
    task_runner.cut_short(0.3, "the pool is gone")
    began = time.monotonic()
    outcome = task_runner.run(message("late", hang=True))
    assert outcome.killed_because == "the pool is gone"
    assert time.monotonic() - began < 5


def test_what_a_task_leaves_in_its_group_is_stopped_when_it_exits(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tests.tasks")
    command = TaskCommand.parse("sh -c 'sleep 300 & echo $!'", str(tmp_path))
    task_runner = TaskRunner(
        command, time_limit=30, logger=logging.getLogger("tests.tasks"), worker_id="p/0#1"
    )
    outcome = task_runner.run(b"{}")
    assert outcome.ok
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("task stdout")]
    left_behind = int(line.rpartition(" ")[2])
    wait_until(lambda: gone(left_behind), 5, "the sleep left behind to be stopped")
    assert any("left process(es) running" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("armed_by", ["setpriv", "preexec"])
def test_a_task_dies_with_its_worker(tmp_path: Path, records: Path, armed_by: str) -> None:
    if armed_by == "setpriv" and not tasks.death_signal_wrapper():
        pytest.skip("util-linux's setpriv has no --pdeathsig here")
    wrapper = "None" if armed_by == "setpriv" else "()"
    # A stand-in worker: a Python process running the task, then killed with SIGKILL.
    script = (
        "import logging, sys\n"
        "from tuitop.tasks import TaskCommand, TaskRunner\n"
        f"c = TaskCommand.parse({f'{sys.executable} {STANDIN} queue:task-worker-process'!r}, '.')\n"
        "r = TaskRunner(c, time_limit=60, logger=logging.getLogger(), worker_id='p/0#2',"
        f" wrapper={wrapper})\n"
        f"r.run({message('orphan', hang=True)!r})\n"
    )
    worker = psutil.Popen([sys.executable, "-c", script], cwd=REPO)
    try:
        [record] = wait_until(lambda: started(records, "orphan"), 10, "the task to start")
        worker.kill()
        worker.wait(5)
        wait_until(lambda: gone(int(record["pid"])), 5, "the task to die with its worker")  # type: ignore[arg-type]
    finally:
        if worker.is_running():
            worker.kill()


def test_sweep_kills_the_processes_of_workers_that_are_gone(tmp_path: Path) -> None:
    # Ids of this test's own: the sweep must not touch what other pools on this machine
    # run (every other id is said alive here).
    gone = f"gone-pool-{os.getpid()}/0#999999"
    environment = {**os.environ, WORKER_MARKER: gone}
    left = psutil.Popen(["sleep", "300"], env=environment, start_new_session=True)
    kept = psutil.Popen(["sleep", "300"], env={**os.environ, WORKER_MARKER: "live/0#1"})
    try:
        killed = sweep_leftovers(lambda worker_id: worker_id != gone, logging.getLogger())
        assert killed == 1
        left.wait(5)
        assert kept.is_running()
    finally:
        for process in (left, kept):
            if process.is_running():
                process.kill()
                process.wait(5)


def test_task_command_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="No closing quotation"):
        TaskCommand.parse("tuleap 'queue", str(tmp_path))
    with pytest.raises(ValueError, match="is empty"):
        TaskCommand.parse("   ", str(tmp_path))
    with pytest.raises(ValueError, match="not found on the PATH"):
        TaskCommand.parse("no-such-tuleap-command queue:task-worker-process", str(tmp_path))
    with pytest.raises(ValueError, match="not a directory"):
        TaskCommand.parse("true", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not an executable file"):
        TaskCommand.parse("./nothing-here", str(tmp_path))
    # A command that vanished after the check is said when a job runs.
    script = tmp_path / "task.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    task_runner = TaskRunner(
        TaskCommand.parse(str(script), str(tmp_path)),
        time_limit=5,
        logger=logging.getLogger(),
        worker_id="p/0#1",
    )
    script.unlink()
    if tasks.death_signal_wrapper():
        # setpriv starts, and says it cannot run the command.
        outcome = task_runner.run(b"{}")
        assert outcome.returncode == 127
        assert "failed to execute" in outcome.last_line()
    without_setpriv = TaskRunner(
        task_runner.command,
        time_limit=5,
        logger=logging.getLogger(),
        worker_id="p/0#1",
        wrapper=(),
    )
    with pytest.raises(TaskStartError, match="cannot start"):
        without_setpriv.run(b"{}")


def test_the_task_handler_says_done_or_retry_with_the_detail(tmp_path: Path, records: Path) -> None:
    handler = task_handler(runner(tmp_path, time_limit=1.0))
    pids: list[int] = []
    job = Job(None, logging.getLogger(), "p/0#1", None, "t", child_started=pids.append)  # type: ignore[arg-type]
    handler({}, Job(**{**job.__dict__, "raw": message("ok")}))
    assert pids[-1] == 0 and pids[0] > 0  # told the pid, then that it ended
    with pytest.raises(RetryLater) as failed:
        handler({}, Job(**{**job.__dict__, "raw": message("bad", exit=2, stderr="oops\n")}))
    assert failed.value.outcome == "failed"
    assert str(failed.value).endswith(": oops")
    assert failed.value.detail == "oops\n"
    with pytest.raises(RetryLater) as timed_out:
        handler({}, Job(**{**job.__dict__, "raw": message("slow", hang=True)}))
    assert timed_out.value.outcome == "timedout"


def test_tuleaps_command_is_the_default_where_tuleap_is_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli, root = tmp_path / "usr-bin-tuleap", tmp_path / "usr-share-tuleap"
    monkeypatch.setattr(tasks, "TULEAP_CLI", str(cli))
    monkeypatch.setattr(tasks, "TULEAP_SOURCE_ROOT", str(root))
    assert tasks.default_task_command() is None
    cli.touch()
    root.mkdir()
    assert tasks.default_task_command() == TaskCommand(
        ("tuleap", "queue:task-worker-process"), str(root)
    )


SECRET = "s3cret-redis-password-of-thirty-chars"


def test_a_secret_split_by_a_cut_is_masked_in_the_log_and_in_the_tail(tmp_path: Path) -> None:
    # The worker_log's own formatter, which masks every line, on a logger of this test's.
    log_file = tmp_path / "worker_log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(TuleapFormatter(lambda: (SECRET,)))
    logger = logging.getLogger("tests.tasks.masked")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    # A line longer than the 4 KiB a line may wait for its end, the secret across the
    # place where it is cut, written in two pieces; then a tail that begins in a secret.
    script = tmp_path / "task.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%05000d{SECRET[:10]}' 0 >&2; sleep 0.3; printf '{SECRET[10:]}\\n' >&2\n"
        f"printf 'x{SECRET}%04080d' 0 >&2\n"
        "exit 1\n"
    )
    script.chmod(0o755)
    task_runner = TaskRunner(
        TaskCommand.parse(str(script), str(tmp_path)),
        time_limit=10,
        logger=logger,
        worker_id="p/0#1",
        secrets=lambda: (SECRET,),
    )
    outcome = task_runner.run(b"{}")
    logger.removeHandler(handler)
    handler.close()
    logged = log_file.read_text()
    assert "task stderr: x***0000" in logged
    for piece in (SECRET, SECRET[:10], SECRET[10:], SECRET[-15:]):
        assert piece not in logged
        assert piece not in outcome.stderr_tail
    assert len(outcome.stderr_tail.encode()) <= 4096


@pytest.mark.parametrize("cut_at", [5, 10, 15, 22, 30])
def test_the_stderr_tail_never_begins_with_the_rest_of_a_secret(
    tmp_path: Path, cut_at: int
) -> None:
    # The tail is trimmed where it is, then masked: masking a later secret shortens it,
    # and the trim may have cut an earlier one.
    secret = "Sup3r-Secret-Passw0rd-x"
    later = "x" * 50 + secret + "y" * (4118 - cut_at - 50 - len(secret))
    (tmp_path / "stderr.txt").write_text("head " + secret + later + "\n")
    command = TaskCommand.parse("sh -c 'cat stderr.txt >&2; exit 1'", str(tmp_path))
    task_runner = TaskRunner(
        command,
        time_limit=10,
        logger=logging.getLogger("tests.tasks"),
        worker_id="p/0#1",
        secrets=lambda: (secret,),
    )
    tail = task_runner.run(b"").stderr_tail
    for length in range(5, len(secret) + 1):
        assert secret[:length] not in tail and secret[-length:] not in tail, (length, tail[:40])
    assert "***" in tail


def test_output_past_the_log_limit_is_only_counted(tmp_path: Path) -> None:
    # 50 MB of empty lines: counted once the limit is reached, not split line by line.
    command = TaskCommand.parse(
        'sh -c \'head -c 50000000 /dev/zero | tr "\\0" "\\n"\'', str(tmp_path)
    )
    task_runner = TaskRunner(
        command, time_limit=30, logger=logging.getLogger("tests.tasks"), worker_id="p/0#1"
    )
    began = time.monotonic()
    outcome = task_runner.run(b"")
    assert outcome.ok and outcome.output_bytes == 50_000_000
    assert time.monotonic() - began < 10


def test_a_secret_inside_another_is_masked_whole_across_a_cut(tmp_path: Path) -> None:
    # The Redis password begins with the relay's: a line cut past 4 KiB, the longer one
    # written across two writes. Neither may leave a piece of the other.
    longer, shorter = "Passw0rd-2024-redis!", "Passw0rd"
    script = tmp_path / "task.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"printf '%05000d token={longer[:12]}' 0 >&2; sleep 0.3\n"
        f"printf '{longer[12:]} more\\n' >&2; exit 1\n"
    )
    script.chmod(0o755)
    log_file = tmp_path / "worker_log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(TuleapFormatter(lambda: (longer, shorter)))
    logger = logging.getLogger("tests.tasks.nested")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    task_runner = TaskRunner(
        TaskCommand.parse(str(script), str(tmp_path)),
        time_limit=10,
        logger=logger,
        worker_id="p/0#1",
        secrets=lambda: (longer, shorter),
    )
    outcome = task_runner.run(b"")
    logger.removeHandler(handler)
    handler.close()
    for text in (log_file.read_text(), outcome.stderr_tail):
        assert "token=*** more" in text
        assert "2024" not in text and "redis!" not in text and shorter not in text


def test_secrets_that_overlap_are_masked_as_one() -> None:
    assert mask_secrets("x hunter2fast y", ["hunter2", "2fast"]) == "x *** y"
    assert mask_secrets("aPassw0rd-2024-redis!b", ["Passw0rd", "Passw0rd-2024-redis!"]) == "a***b"
    assert mask_secrets("no secret here", ["hunter2"]) == "no secret here"


def test_the_sweep_kills_the_task_processes_of_gone_workers_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """sweep_leftovers: a process whose TUITOP_WORKER names a worker that is gone is
    killed, and the sweep says how many. The worker id's pid is not a number, so that no
    other pool on this host (a test beside this one) takes it for gone and kills it first:
    each pool's sweep judges 'when unsure, alive'."""
    gone = f"sweep-test/0#gone-{os.getpid()}"
    env = {**os.environ, WORKER_MARKER: gone}
    leftover = psutil.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    wait_until(lambda: leftover.environ().get(WORKER_MARKER) == gone, 10, "its environment")
    # Not under "tuitop": a pool set up in this process (another test) stops its propagation.
    logger = logging.getLogger("test-sweep")
    with caplog.at_level(logging.WARNING, logger="test-sweep"):
        killed = tasks.sweep_leftovers(lambda worker_id: worker_id != gone, logger)
    assert killed == 1
    assert leftover.wait(10) == -signal.SIGKILL
    assert "Killed 1 task process(es) left by workers that are gone" in caplog.text
