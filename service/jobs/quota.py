"""Each owner's queued and running jobs and instances, and the quota on them.

Reading them from MongoDB on every POST cost ~2 ms at 50 active jobs on the
embedded database (it reads every match), a fifth of a job's cost. So each process
reads an owner's count at most every `read_every_s`, and adds the jobs it reserved
since: a reservation is checked against the quota and counted in one step under a
lock, so concurrent requests of one owner in one process cannot all pass on one
reading. A reading drops the reservations whose insert finished before it began
(they are in it). Across processes the bound is approximate: each counts its own
reservations plus the last reading, so N processes may admit up to N readings' worth
of new jobs within `read_every_s`; jobs that ended since the last reading still count.
"""

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.errors import TooManyActive

Owner = str | None


@dataclass
class Reservation:
    owner: Owner
    jobs: int
    instances: int
    inserted_at: float | None = None  # monotonic time the insert finished


class InFlight:
    """In-flight (jobs, instances) per owner as this process knows them, with the quota."""

    MAX_OWNERS = 10_000

    def __init__(
        self,
        read: Callable[[Owner], tuple[int, int]],
        max_jobs: int,
        max_instances: int,
        read_every_s: Callable[[], float],
    ):
        """read: an owner's active (jobs, instances) from the database. A max of 0 is off."""
        self._read = read
        self.max_jobs = max_jobs
        self.max_instances = max_instances
        self._read_every_s = read_every_s
        self._lock = threading.Lock()
        # owner -> (when the reading began, jobs, instances)
        self._readings: dict[Owner, tuple[float, int, int]] = {}
        self._reservations: dict[Owner, list[Reservation]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.max_jobs or self.max_instances)

    def check(self, owner: Owner) -> None:
        """TooManyActive if the owner is at a quota already (before a request costs work)."""
        self._refresh(owner)
        with self._lock:
            self._check(*self._count(owner), 0, 0)

    def reserve(self, owner: Owner, jobs: int, instances: int) -> Reservation:
        """Count jobs in if the quota allows them (TooManyActive otherwise)."""
        with self._lock:
            self._check(*self._count(owner), jobs, instances)
            reservation = Reservation(owner, jobs, instances)
            self._reservations.setdefault(owner, []).append(reservation)
            return reservation

    def inserted(self, reservation: Reservation | None) -> None:
        """The reservation's jobs are stored (None: nothing was reserved)."""
        if reservation is not None:
            reservation.inserted_at = time.monotonic()

    def cancel(self, reservation: Reservation | None) -> None:
        """The insert failed: give the reservation back (None: nothing was reserved)."""
        if reservation is None:
            return
        with self._lock:
            held = self._reservations.get(reservation.owner, [])
            if reservation in held:
                held.remove(reservation)

    def forget(self) -> None:
        """Drop every reading: the next check of each owner reads the database."""
        with self._lock:
            self._readings.clear()

    def _refresh(self, owner: Owner) -> None:
        began = time.monotonic()
        reading = self._readings.get(owner)
        if reading is not None and began - reading[0] < self._read_every_s():
            return
        jobs, instances = self._read(owner)
        with self._lock:
            if len(self._readings) > self.MAX_OWNERS:
                self._readings.clear()
                self._reservations.clear()
            current = self._readings.get(owner)
            if current is not None and current[0] > began:
                return  # a newer reading landed meanwhile
            self._readings[owner] = (began, jobs, instances)
            self._reservations[owner] = [
                r
                for r in self._reservations.get(owner, [])
                if r.inserted_at is None or r.inserted_at >= began
            ]

    def _count(self, owner: Owner) -> tuple[int, int]:
        _, jobs, instances = self._readings.get(owner, (0.0, 0, 0))
        for reservation in self._reservations.get(owner, ()):
            jobs += reservation.jobs
            instances += reservation.instances
        return jobs, instances

    def _check(self, active_jobs: int, active_instances: int, jobs: int, instances: int) -> None:
        """TooManyActive if adding jobs and instances passes a quota (adding nothing: if a
        quota is reached already)."""
        if _exceeds(active_jobs, jobs, self.max_jobs):
            raise TooManyActive(
                "jobs", active_jobs, self.max_jobs, "SIBYL_MAX_ACTIVE_JOBS_PER_OWNER", jobs
            )
        if _exceeds(active_instances, instances, self.max_instances):
            raise TooManyActive(
                "instances",
                active_instances,
                self.max_instances,
                "SIBYL_MAX_ACTIVE_INSTANCES_PER_OWNER",
                instances,
            )


def _exceeds(active: int, adding: int, limit: int) -> bool:
    """Whether adding to active passes limit (0: no limit); adding nothing, whether active
    already reached it."""
    if not limit:
        return False
    return active + adding > limit if adding else active >= limit
