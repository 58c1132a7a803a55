"""One run at a time in a run directory: the `pave train` driver holds OUT/run.lock for the run's whole life, so that a
second run into the same --out is refused instead of interleaving checkpoints, resuming from the other's and
overwriting its final/.

The lock is an exclusive flock (filelock) on OUT/.run.lock: the kernel releases it when the holder dies, however it
dies, so a dead run on this host never blocks the next one. Beside it, OUT/run.lock names the holder (pid, host,
start time) for the message a second run prints, with a heartbeat the holder rewrites every HEARTBEAT_S. flock does
not reach across hosts on every shared filesystem (NFS mounted with `nolock`, some FUSE mounts), so a run that gets
the flock still refuses while run.lock names another host whose heartbeat is younger than STALE_S; an older one is
a dead run's, taken over with a warning. (Hosts' clocks are assumed to agree within STALE_S.)

On an object store (training/rundir.py) there is no flock: run.lock itself is the lock, created exclusively (a
conditional PUT, featurestore's Files.create_json: of two racing runs one creates it, the other is refused). A
run.lock whose heartbeat is older than STALE_S is a dead run's: it is removed and created again, exclusively, so
that of two runs taking over the same stale lock one wins.
"""
import json
import logging
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

from filelock import FileLock, Timeout

from training.config import ConfigError
from training.rundir import RunDir

HOLDER = "run.lock"
HEARTBEAT_S = 30.0
STALE_S = 300.0
log = logging.getLogger(__name__)


class RunInUse(ConfigError):
    """Another run holds the run directory."""


class RunLock:
    def __init__(self, out: RunDir | Path):
        self.run = RunDir.of(out)
        self.out, self.files = self.run.url, self.run.files
        self.flock = None if self.run.remote else FileLock(self.run.path / f".{HOLDER}", timeout=0)
        self.me = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now().isoformat(" ", "seconds")}
        self.stopped = threading.Event()

    def __enter__(self) -> "RunLock":
        previous = self.claim_flock() if self.flock else self.claim_object()
        if previous:  # its flock is free (this host) or its heartbeat stopped: it is not running
            log.warning("%s: taking over the lock of a run that is no longer running (%s)", self.out,
                        describe(previous))
        threading.Thread(target=self.keep_beating, name="run-lock-heartbeat", daemon=True).start()
        return self

    def claim_flock(self) -> dict | None:
        """Take the flock, then write run.lock; the previous holder's record, if any."""
        try:
            self.flock.acquire()
        except Timeout:
            raise RunInUse(self.refusal(self.holder())) from None
        previous = self.holder()
        if previous and previous.get("host") != self.me["host"] and self.age(previous) < STALE_S:
            self.flock.release()
            raise RunInUse(self.refusal(previous))
        self.beat()
        return previous

    def claim_object(self) -> dict | None:
        """Create run.lock exclusively, after removing a stale one; the stale holder's record, if any."""
        previous = None
        if not self.files.create_json(HOLDER, self.record()):
            previous = self.holder()
            if previous is None or self.age(previous) < STALE_S:  # None: removed by its run this instant
                raise RunInUse(self.refusal(previous))
            self.files.remove(HOLDER)
            if not self.files.create_json(HOLDER, self.record()):  # another run took it over first
                raise RunInUse(self.refusal(self.holder()))
        return previous

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.files.remove(HOLDER)
        if self.flock:
            self.flock.release()

    def holder(self) -> dict | None:
        try:
            return self.files.read_json(HOLDER)
        except (OSError, ValueError):  # none, or being rewritten this instant
            return None

    def record(self) -> dict:
        return {**self.me, "heartbeat": time.time()}

    def beat(self) -> None:
        self.files.put_json(HOLDER, self.record())  # atomic: a reader sees the old or the new holder, never half

    def keep_beating(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            self.beat()

    @staticmethod
    def age(holder: dict) -> float:
        return time.time() - holder.get("heartbeat", 0)

    def refusal(self, holder: dict | None) -> str:
        who = f"run {describe(holder)}, heartbeat {self.age(holder):.0f} s ago" if holder else "another run"
        return f"--out {self.out} is in use by {who}; wait for it to finish or stop it, or train into another --out"


def describe(holder: dict) -> str:
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"
