"""Child processes under a time limit: what keeps a hung kernel from taking the run.

A kernel that never returns blocks its process in the driver, beyond the reach of any
Python-level timeout. So every piece of GPU work of `verify` runs in a child process
of its own session (process group), and the parent kills the whole group when the
time is up: SIGTERM first, SIGKILL after a grace period, since a process stuck in a
CUDA call may ignore the first. The driver frees a killed process's context.

Two shapes of child:
  run_process  one command, one limit (the build, a pytest file, a sanitizer run);
  run_cases    a worker (rnnfast.verify.worker) that runs a list of cases and writes
               one JSON line per finished case on stdout. Each case has its own limit;
               a case that overruns it is TIMEOUT, and a fresh worker takes the cases
               after it, so a hang costs one case and the start of one process, not
               the run. A worker that dies mid-case costs that case (FAIL), the same way.
               run_cases_side_by_side: several such workers at once.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

KILL_GRACE_S = 3.0
# A case whose own limit ends within this of the stage's deadline had its whole time
# (the deadline was taken just before it started): silent until then, it is TIMEOUT,
# not SKIPPED.
DEADLINE_SLACK_S = 1.0
# Exit code of a worker that reported its case and wants a fresh process for the rest
# (after a CUDA error, which leaves the process's context unusable).
RESTART_EXIT_CODE = 75


@dataclass
class Finished:
    returncode: Optional[int]  # None when killed at the time limit
    output: str                # stdout and stderr, interleaved
    seconds: float

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def _spawn(command: list[str], env, cwd, stdout, stderr) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
                            env=env, cwd=cwd, text=True, start_new_session=True)


def kill_group(process: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """Ends the child and whatever it started in its process group: SIGTERM, SIGKILL
    after grace_s (at once for a child that has already exited)."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process, signal.SIGKILL)
    process.wait()


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the whole group has exited


def run_process(command: list[str], timeout_s: float, env=None, cwd=None) -> Finished:
    """Runs command to its end or for timeout_s at most (then kills its group)."""
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as output:
        process = _spawn(command, env, cwd, output, subprocess.STDOUT)
        try:
            returncode: Optional[int] = process.wait(timeout=max(0.0, timeout_s))
            kill_group(process, grace_s=0)  # leftovers of the group, if any
        except subprocess.TimeoutExpired:
            kill_group(process)
            returncode = None
        output.seek(0)
        return Finished(returncode, output.read(), time.monotonic() - started)


def _pump(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)  # end of output: the worker exited


def run_cases(command: list[str], cases: list[dict], case_timeout_s: float, deadline: float,
              env=None, cwd=None, startup_s: float = 0.0, log: Callable[[str], None] = lambda s: None,
              on_result: Callable[[dict], None] = lambda r: None) -> list[dict]:
    """Runs `cases` (dicts with a unique "id") through a worker, `command` + [JSON list
    of the cases still to run]; returns one result per case, in order.

    A result is the worker's JSON line for the case, or the case with "status" TIMEOUT
    (no line within case_timeout_s; the first case of each worker also gets startup_s),
    FAIL (the worker exited without reporting it) or SKIPPED (`deadline`, a
    time.monotonic() value, cut its time short, or came before it started). Anything
    else the worker prints goes to `log`.
    """
    results: dict[str, dict] = {}
    pending = list(cases)

    def record(result: dict) -> None:
        results[result["id"]] = result
        on_result(result)
        pending.pop(0)

    while pending and time.monotonic() < deadline:
        with tempfile.TemporaryFile("w+") as stderr:
            process = _spawn(command + [json.dumps(pending)], env, cwd, subprocess.PIPE, stderr)
            lines: queue.Queue = queue.Queue()
            threading.Thread(target=_pump, args=(process.stdout, lines), daemon=True).start()
            case_started, allowance = time.monotonic(), case_timeout_s + startup_s
            while pending:
                case = pending[0]
                try:
                    line = lines.get(timeout=max(0.0, min(case_started + allowance, deadline)
                                                 - time.monotonic()))
                except queue.Empty:
                    took = time.monotonic() - case_started
                    kill_group(process)
                    if deadline + DEADLINE_SLACK_S < case_started + allowance:
                        record({**case, "status": "SKIPPED", "seconds": took,
                                "error": f"stopped at the stage's time limit after {took:.0f} s"})
                    else:
                        record({**case, "status": "TIMEOUT", "seconds": took,
                                "error": f"no result within {allowance:.0f} s: worker killed"})
                    break
                if line is None:  # the worker exited
                    returncode = _wait(process)
                    if returncode != RESTART_EXIT_CODE:
                        record({**case, "status": "FAIL", "seconds": time.monotonic() - case_started,
                                "error": f"worker exited with code {returncode} before reporting "
                                         "this case (its output is in the log)"})
                    break
                result = parse_result_line(line)
                if result is None or result.get("id") != case["id"]:
                    log(line.rstrip("\n"))
                    continue
                record(result)
                case_started, allowance = time.monotonic(), case_timeout_s
            _wait(process)
            kill_group(process)
            while not lines.empty():  # what it printed after its last result
                line = lines.get()
                if line is not None:
                    log(line.rstrip("\n"))
            stderr.seek(0)
            text = stderr.read().rstrip("\n")
            if text.strip():
                log(text)
    for case in list(pending):
        record({**case, "status": "SKIPPED", "error": "not started: the stage's time limit came first"})
    return [results[case["id"]] for case in cases]


def run_cases_side_by_side(workers: int, command: list[str], cases: list[dict],
                           case_timeout_s: float, deadline: float,
                           log: Callable[[int], Callable[[str], None]] = lambda k: lambda s: None,
                           **kwargs) -> list[dict]:
    """run_cases over `workers` workers at once, case k to worker k % workers (so that
    each has a share of every kind of case, and a stage cut short loses the last ones of
    each); log(k) is worker k's log. The results in the order of `cases`."""
    shares = [cases[k::workers] for k in range(workers)]
    found: dict[str, dict] = {}

    def run(k: int) -> None:
        for result in run_cases(command, shares[k], case_timeout_s, deadline, log=log(k), **kwargs):
            found[result["id"]] = result

    threads = [threading.Thread(target=run, args=(k,), daemon=True) for k in range(workers) if shares[k]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [found[case["id"]] for case in cases]


def _wait(process: subprocess.Popen) -> Optional[int]:
    """The exit code of a worker that is done (None: still running after the grace period)."""
    try:
        return process.wait(timeout=KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        return None


def parse_result_line(line: str) -> Optional[dict]:
    """A worker's result line (a JSON object), or None for any other output."""
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
