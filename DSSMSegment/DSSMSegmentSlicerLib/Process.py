"""A background process that runs :mod:`.Worker`, so that Slicer's GUI never waits for the network.

:class:`WorkerProcess` starts the child, and a reader thread moves each line it prints into a queue.
Nothing here touches Qt: the panel's ``qt.QTimer`` calls :meth:`WorkerProcess.poll`, which drains the
queue into :class:`ProcessEvent` objects, and tests call the same method in a loop. :meth:`cancel` kills
the whole process tree with psutil (``PythonSlicer`` is a launcher that starts the real Python as a
child, so killing only the direct child would leave the work running).
"""

from __future__ import annotations

import enum
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence

# How long cancel() waits for the killed processes to disappear.
KILL_TIMEOUT_SECONDS = 1.0
# Log lines kept to explain a crash that printed no error event.
LOG_TAIL_LINES = 20


class EventKind(enum.Enum):
    PROGRESS = "progress"  # stage and fraction (fraction may be None: stage changed, amount unknown)
    LOG = "log"  # a line the worker printed that is not an event
    FINISHED = "finished"  # the worker wrote its result
    FAILED = "failed"  # message says why; nothing was written


@dataclass(frozen=True)
class ProcessEvent:
    kind: EventKind
    stage: str = ""
    fraction: Optional[float] = None
    message: str = ""


class ProcessState(enum.Enum):
    NOT_STARTED = "not started"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"


class ProcessProtocol(Protocol):
    """What the panel needs of a running segmentation (tests give it a fake)."""

    state: ProcessState

    def start(self) -> None: ...

    def poll(self) -> List[ProcessEvent]: ...

    def cancel(self) -> None: ...


class WorkerProcess:
    """One run of a command that speaks the :mod:`.Worker` event protocol."""

    def __init__(self, command: Sequence[str], environment: Optional[Dict[str, str]] = None) -> None:
        self.command = list(command)
        self.environment = environment
        self.state = ProcessState.NOT_STARTED
        self._process: Optional[subprocess.Popen] = None
        self._lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self._reader: Optional[threading.Thread] = None
        self._errorMessage = ""
        self._logTail: List[str] = []

    # -----------------------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.state is not ProcessState.NOT_STARTED:
            raise RuntimeError("a WorkerProcess runs once; create a new one")
        options = {}
        if os.name == "nt":  # no console window flashing up on Windows
            options["creationflags"] = subprocess.CREATE_NO_WINDOW
        self._process = subprocess.Popen(
            self.command, env=self.environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1, **options)
        self.state = ProcessState.RUNNING
        self._reader = threading.Thread(target=self._readLines, name="DSSMSegment worker reader", daemon=True)
        self._reader.start()

    def _readLines(self) -> None:
        """Reader thread: every output line into the queue, then None once the output is closed."""
        for line in self._process.stdout:
            self._lines.put(line.rstrip("\r\n"))
        self._lines.put(None)

    # -----------------------------------------------------------------------------------------------------
    def poll(self) -> List[ProcessEvent]:
        """Events since the last call; the last one is FINISHED or FAILED when the run ended by itself.

        After :meth:`cancel` there are no more events: the caller knows that it cancelled.
        """
        events: List[ProcessEvent] = []
        while self.state is ProcessState.RUNNING:
            try:
                line = self._lines.get_nowait()
            except queue.Empty:
                break
            if line is None:
                events.append(self._finish())
            else:
                events.extend(self._parse(line))
        return events

    def wait(self, timeout: Optional[float] = None, interval: float = 0.05) -> List[ProcessEvent]:
        """Poll until the run ends (or ``timeout`` seconds pass); returns all events. For scripts and tests."""
        deadline = None if timeout is None else time.monotonic() + timeout
        events: List[ProcessEvent] = []
        while self.state is ProcessState.RUNNING and (deadline is None or time.monotonic() < deadline):
            events.extend(self.poll())
            time.sleep(interval)
        return events

    def _parse(self, line: str) -> List[ProcessEvent]:
        try:
            data = json.loads(line)
            kind = data["event"] if isinstance(data, dict) else None
        except (ValueError, KeyError):
            kind = None
        if kind == "progress":
            return [ProcessEvent(EventKind.PROGRESS, stage=str(data.get("stage", "")), fraction=data.get("fraction"))]
        if kind == "error":
            self._errorMessage = str(data.get("message", ""))
            return []
        if kind == "done":
            return [ProcessEvent(EventKind.LOG, message=f"finished on {data.get('device')} in {data.get('seconds')} s")]
        self._logTail = (self._logTail + [line])[-LOG_TAIL_LINES:]
        return [ProcessEvent(EventKind.LOG, message=line)]

    def _finish(self) -> ProcessEvent:
        """The output closed: wait for the exit status and turn it into the final event."""
        returnCode = self._process.wait()
        if returnCode == 0:
            self.state = ProcessState.FINISHED
            return ProcessEvent(EventKind.FINISHED)
        self.state = ProcessState.FAILED
        message = self._errorMessage or (
            f"the segmentation process stopped unexpectedly (exit status {returnCode}). Its last output:\n"
            + "\n".join(self._logTail))
        return ProcessEvent(EventKind.FAILED, message=message)

    # -----------------------------------------------------------------------------------------------------
    def cancel(self) -> None:
        """Kill the process and all its children; returns once they are gone (at most about a second)."""
        if self.state is not ProcessState.RUNNING:
            return
        import psutil

        self.state = ProcessState.CANCELLED
        try:
            parent = psutil.Process(self._process.pid)
            tree = parent.children(recursive=True) + [parent]
        except psutil.NoSuchProcess:
            tree = []
        for process in tree:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + KILL_TIMEOUT_SECONDS
        try:
            self._process.wait(timeout=KILL_TIMEOUT_SECONDS)  # reap our direct child, so that no zombie is left
        except subprocess.TimeoutExpired:
            pass  # a process stuck in the kernel; the loop below gives up at the same deadline
        while any(_alive(process) for process in tree) and time.monotonic() < deadline:
            time.sleep(0.01)

    @property
    def pid(self) -> Optional[int]:
        return self._process.pid if self._process else None


def _alive(process) -> bool:
    """Still running? A killed grandchild stays a zombie until its new parent reaps it: that counts as gone."""
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def workerEnvironment(moduleDirectory: str) -> Dict[str, str]:
    """This process's environment with the module folder first on ``PYTHONPATH`` (engine and worker)."""
    environment = dict(os.environ)
    paths = [moduleDirectory] + [p for p in environment.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment["PYTHONPATH"] = os.pathsep.join(paths)
    environment["PYTHONUNBUFFERED"] = "1"
    return environment


def workerCommand(python: str, model: str, inputPath: str, outputPath: str, steps: Optional[int],
                  device: str, testTimeAugmentation: bool = False, samples: int = 1,
                  uncertaintyPath: Optional[str] = None, findingsPath: Optional[str] = None,
                  name: Optional[str] = None) -> List[str]:
    """The command line that runs :mod:`.Worker` with ``python``."""
    command = [python, "-m", "DSSMSegmentSlicerLib.Worker", "--model", model, "--input", inputPath,
               "--output", outputPath, "--device", device]
    if steps is not None:
        command += ["--steps", str(int(steps))]
    if testTimeAugmentation:
        command.append("--tta")
    if samples != 1:
        command += ["--samples", str(int(samples))]
    if uncertaintyPath:
        command += ["--uncertainty", uncertaintyPath]
    if findingsPath:
        command += ["--findings", findingsPath]
    if name:
        command += ["--name", name]
    return command


def defaultPython() -> str:
    """Slicer's ``PythonSlicer`` launcher when running inside Slicer, else this interpreter."""
    import shutil

    return shutil.which("PythonSlicer") or sys.executable
