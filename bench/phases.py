"""The measurements: one method per figure, each returning its numbers, its direct baseline
and a ``how`` that says how it was measured.

Order (``Bench.run``): submission with no pool running (the API has the machine), then
``tuning.workers`` pools for the end-to-end and added-latency figures, then one pool alone
on a queued backlog for the calls-in-flight figure, then memory.
"""

import os
import time
from typing import Any

from bench import runs
from bench.plan import Plan, cpu_ms_per_run, errors, load, progress, ratio, shifted
from bench.stats import summary
from bench.system import BenchSystem
from bench.target import BENCH_KEY, direct_body

LOADGEN = "1 load-generator process: asyncio on uvloop, raw HTTP/1.1 keep-alive sockets"
Figure = dict[str, Any]


#: The figures ``run`` can drive, in the order it drives them.
PHASES = frozenset({"submission", "end_to_end", "added_latency", "in_flight"})


class Bench:
    def __init__(self, system: BenchSystem, plan: Plan) -> None:
        self.system = system
        self.plan = plan
        self.target = system.target
        self.tuning = system.tuning

    # -- load specs --------------------------------------------------------------------------

    def via_api(self, latency_ms: float, **spec: Any) -> dict[str, Any]:
        return load(
            {
                "port": self.system.api_port,
                "path": "/v1/run",
                "headers": {"Authorization": f"Bearer {self.system.api_key}"},
                "body": self.target.run_body(latency_ms),
                "warmup_s": self.plan.warmup_s,
            }
            | spec
        )

    def direct(self, latency_ms: float, **spec: Any) -> dict[str, Any]:
        return load(
            {
                "port": self.system.fake_port,
                "path": "/v1/chat/completions",
                "headers": {"Authorization": f"Bearer {BENCH_KEY}"},
                "body": direct_body(latency_ms),
                "warmup_s": self.plan.warmup_s,
                "duration_s": self.plan.direct_s,
            }
            | spec
        )

    # -- the run -----------------------------------------------------------------------------

    def run(self, only: frozenset[str] = PHASES) -> dict[str, Figure]:
        """Every figure, or those named in ``only`` (memory comes with any of them)."""
        figures: dict[str, Figure] = {}
        progress(f"API pid {self.system.api.pid if self.system.api else '-'} (for py-spy)")
        if "submission" in only:
            figures["submission"] = {f"c{c}": self.submission(c) for c in (32, 128)}
        pool_rss: dict[str, float | None] = {}
        if only & {"end_to_end", "added_latency"}:
            progress(f"starting {self.tuning.workers} worker pools")
            self.system.start_workers(self.tuning.workers)
            self.system.wait_workers_ready()
            progress(f"  worker pids {[p.pid for p in self.system.workers.values()]}")
        if "end_to_end" in only:
            latencies = self.plan.e2e_latencies_ms
            figures["end_to_end"] = {f"{ms:g}ms": self.end_to_end(ms) for ms in latencies}
        if "added_latency" in only:
            figures["added_latency"] = {
                f"{rate:g}rps": self.added_latency(rate, duration)
                for rate, duration in (
                    (self.plan.slow_rate, self.plan.slow_s),
                    (self.plan.fast_rate, self.plan.fast_s),
                )
            }
        if self.system.workers:
            pool_rss = self.system.stop_workers()
        lone_rss = None
        if "in_flight" in only:
            figures["in_flight"] = self.in_flight()
            lone_rss = figures["in_flight"].pop("worker_rss_mib")
        figures["memory"] = self.memory(pool_rss, lone_rss)
        return figures

    # -- 1. submission -----------------------------------------------------------------------

    def submission(self, connections: int) -> Figure:
        progress(f"submission at {connections} connections")
        cpu = self.system.cpu()
        api = self.via_api(0, connections=connections, duration_s=self.plan.submit_s)
        cost = cpu_ms_per_run(cpu, self.system.cpu(), api["answered_2xx"])
        direct = self.direct(0, connections=connections)
        self.system.flush_queues()
        runs.delete_queued(self.system.engine)
        return {
            "how": (
                f"closed loop: {connections} keep-alive connections, each sending its next "
                f"POST /v1/run ({self.target.app}) when the last is answered, for "
                f"{self.plan.submit_s:g} s after a {self.plan.warmup_s:g} s warm-up; "
                f"{LOADGEN}; 1 API process (uvicorn, 1 event loop plus its thread pool for "
                "the sync route); no worker pool running, so the API has the machine. "
                "cpu_ms_per_run: the API process's CPU time (/proc) over the runs it accepted. "
                "Direct: the same loop POSTing the chat body straight to the fake at 0 ms."
            ),
            "runs_per_s": api["rps"],
            "cpu_ms_per_run": cost.get("api"),
            "latency_ms": api["latency_ms"],
            "errors": errors(api),
            "generator_cpu_share": api["generator_cpu_share"],
            "direct": {
                "requests_per_s": direct["rps"],
                "latency_ms": direct["latency_ms"],
                "generator_cpu_share": direct["generator_cpu_share"],
            },
            "ratio": {
                "runs_per_s": ratio(api["rps"], direct["rps"]),
                "p50": ratio(api["latency_ms"].get("p50"), direct["latency_ms"].get("p50")),
                "p99": ratio(api["latency_ms"].get("p99"), direct["latency_ms"].get("p99")),
            },
        }

    # -- 2. end to end -----------------------------------------------------------------------

    def end_to_end(self, latency_ms: float) -> Figure:
        progress(f"end to end, provider at {latency_ms:g} ms")
        self.system.fake_stats(reset=True)
        since, cpu = time.time(), self.system.cpu()
        connections = self.plan.e2e_connections
        api = self.via_api(
            latency_ms, connections=connections, duration_s=self.plan.e2e_s, warmup_s=0
        )
        progress("  waiting for every run to finish")
        left = self._wait_finished(since, latency_ms)
        done = runs.runs_since(self.system.engine, since)
        cost = cpu_ms_per_run(cpu, self.system.cpu(), len(done))
        peak = self._peak_in_flight(done)
        progress("  direct baseline")
        direct = self.direct(
            latency_ms,
            connections=max(connections, peak),
            duration_s=max(self.plan.direct_s, self.plan.warmup_s + 2 * latency_ms / 1000),
        )
        rate, window = self._steady_rate(done, since, latency_ms)
        return {
            "how": (
                f"closed loop of {connections} connections submitting runs whose provider call "
                f"takes {latency_ms:g} ms, for {self.plan.e2e_s:g} s; {LOADGEN}; "
                f"{self.tuning.workers} worker processes ({self.tuning.worker_threads} "
                f"threads, max_in_flight {self.tuning.max_in_flight} each) and 1 API process. "
                f"runs/s: runs that reached 'succeeded' in the store per second, counted by "
                f"their finished_at over the steady window ({window:g} s from warm-up + "
                "provider latency to the last submit); the system ran until every run was "
                "terminal. cpu_ms_per_run: CPU time (/proc) of the API and of all worker "
                "processes over the phase, per run. Direct: a closed loop straight to the fake "
                "at the same latency, with as many connections as the dispatcher held calls at "
                "the fake (min 32)."
            ),
            "runs_per_s": rate,
            "cpu_ms_per_run": cost,
            "submitted_per_s": api["rps"],
            "drain_runs_per_s": self._drain_rate(done),
            "runs": len(done),
            "succeeded": sum(1 for r in done if r.status == "succeeded"),
            "failed": sum(1 for r in done if r.status == "failed"),
            "unfinished": left,
            "submit_errors": errors(api),
            "submit_to_finish_ms": summary(
                [(r.finished - r.created) * 1000 for r in done if r.finished]
            ),
            "peak_calls_in_flight": peak,
            "direct": {"requests_per_s": direct["rps"], "connections": direct["connections"]},
            "ratio": {"runs_per_s": ratio(rate, direct["rps"])},
        }

    def _wait_finished(self, since: float, latency_ms: float) -> int:
        stall_s = self.plan.stall_s + latency_ms / 1000
        left = runs.wait_finished(self.system.engine, since, stall_s, self.plan.drain_timeout_s)
        if left:
            progress(f"  {left} runs did not finish (stranded); going on without them")
        return left

    def _peak_in_flight(self, done: list[runs.RunTimes]) -> int:
        if self.target.through_fake:
            return self.system.fake_stats()["peak_in_flight"]
        return runs.peak_overlap(
            [(r.started, r.finished) for r in done if r.started and r.finished]
        )

    def _steady_rate(
        self, done: list[runs.RunTimes], since: float, latency_ms: float
    ) -> tuple[float, float]:
        finished = [r.finished for r in done if r.status == "succeeded" and r.finished]
        if not finished:
            return 0.0, 0.0
        start = since + self.plan.warmup_s + latency_ms / 1000
        end = max(r.created for r in done)
        if end - start < max(2.0, 2 * latency_ms / 1000):  # no steady state (the quick run)
            return self._drain_rate(done), round(max(finished) - min(r.created for r in done), 3)
        count = sum(1 for t in finished if start <= t <= end)
        return round(count / (end - start), 1), round(end - start, 3)

    @staticmethod
    def _drain_rate(done: list[runs.RunTimes]) -> float:
        finished = [r.finished for r in done if r.status == "succeeded" and r.finished]
        if not finished:
            return 0.0
        span = max(finished) - min(r.created for r in done)
        return round(len(finished) / span, 1)

    # -- 3. added latency --------------------------------------------------------------------

    def added_latency(self, rate: float, duration: float) -> Figure:
        """Clients that submit with ``Prefer: wait`` and are answered once their run is over."""
        progress(f"added latency at {rate:g} runs/s")
        provider_ms = self.plan.added_latency_ms
        since = time.time()
        waiting = {"Authorization": f"Bearer {self.system.api_key}", "Prefer": "wait=60"}
        api = self.via_api(
            provider_ms, mode="open", rate=rate, duration_s=duration, keep_samples=True,
            headers=waiting,
        )  # fmt: skip
        left = self._wait_finished(since, provider_ms)
        stored = {r.id: r for r in runs.runs_since(self.system.engine, since)}
        answered = [(wall, ms, stored.get(run_id)) for wall, ms, status, run_id in api["samples"]
                    if status == 200 and run_id]  # fmt: skip
        direct = self.direct(provider_ms, mode="open", rate=rate, duration_s=duration)
        added = shifted(summary([ms for _, ms, _ in answered]), -provider_ms)
        in_store = [(r.finished - wall) * 1000 for wall, _, r in answered if r and r.finished]
        published = self.system.terminal_event_times([r.id for _, _, r in answered if r])
        announced = [(published[r.id] - wall) * 1000 for wall, _, r in answered
                     if r and r.id in published]  # fmt: skip
        direct_added = shifted(direct["latency_ms"], -provider_ms)
        return {
            "how": self._added_how(rate, duration),
            "added_ms": added,
            "store_added_ms": shifted(summary(in_store), -provider_ms),
            "event_added_ms": shifted(summary(announced), -provider_ms),
            "answered_over": len(answered),
            "answered_not_over": sum(1 for sample in api["samples"] if sample[2] == 202),
            "errors": errors(api),
            "unfinished": left,
            "direct": {"added_ms": direct_added, "latency_ms": direct["latency_ms"]},
            "ratio": {
                "total_p50": ratio(added.get("p50", 0) + provider_ms, direct["latency_ms"]["p50"]),
                "total_p99": ratio(added.get("p99", 0) + provider_ms, direct["latency_ms"]["p99"]),
            },
            "over_direct_ms": {
                q: round(added[q] - direct_added[q], 3) for q in ("p50", "p99") if q in added
            },
        }

    def _added_how(self, rate: float, duration: float) -> str:
        provider_ms = self.plan.added_latency_ms
        return (
            f"open loop: {rate:g} runs/s for {duration:g} s (first {self.plan.warmup_s:g} s "
            f"not counted), provider latency {provider_ms:g} ms; {LOADGEN}, a connection per "
            f"request in flight; {self.tuning.workers} worker processes and 1 API process. "
            "Each client submits with 'Prefer: wait=60' and is answered 200 once its run is "
            "over. added_ms: from the request's scheduled send time to that answer, minus the "
            f"provider's {provider_ms:g} ms, over the answers that were 200 (answered_over; a "
            "202 would mean the wait ran out). store_added_ms: scheduled send time to the run's "
            "finished_at in the store (same host clock); event_added_ms: to the moment its "
            "terminal event was published (the event's own time, from the run's stream): "
            "between the two is the worker's commit and publish, after it the API's wake and "
            "answer. Direct: the same open loop straight "
            f"to the fake; its added_ms is its latency minus {provider_ms:g} ms."
        )

    # -- 4. calls in flight ------------------------------------------------------------------

    def in_flight(self) -> Figure:
        backlog = self.plan.backlog or 2 * self.tuning.max_in_flight
        provider_ms = 1000.0
        self.system.fake_stats(reset=True)
        since = time.time()
        progress(f"calls in flight: queueing {backlog} runs")
        self.via_api(provider_ms, connections=32, count=backlog, warmup_s=0, duration_s=3600)
        started = time.time()
        progress("  starting 1 worker pool on the backlog")
        self.system.start_workers(1)
        self.system.wait_workers_ready()
        progress(f"  worker pid {[p.pid for p in self.system.workers.values()]}")
        left = self._wait_finished(since, provider_ms)
        done = runs.runs_since(self.system.engine, since)
        peak = self._peak_in_flight(done)
        worker_rss = self.system.stop_workers()
        self.system.fake_stats(reset=True)
        direct = self.direct(
            provider_ms,
            connections=self.tuning.max_in_flight,
            duration_s=max(self.plan.direct_s, self.plan.warmup_s + 2 * provider_ms / 1000),
        )
        direct_peak = self.system.fake_stats()["peak_in_flight"]
        claims = sorted(r.started for r in done if r.started)
        return {
            "how": (
                f"{backlog} runs whose provider call takes {provider_ms:g} ms queued first, "
                "then 1 worker process started alone (threads "
                f"{self.tuning.worker_threads}, max_in_flight {self.tuning.max_in_flight}); "
                + (
                    "peak: the most chat calls the fake held open at once."
                    if self.target.through_fake
                    else "peak: the most runs open at once by their started_at/finished_at "
                    "in the store (the simulated provider makes no network call)."
                )
                + " claims/s: runs claimed per second (store started_at) while the backlog "
                "lasted; runs/s: runs succeeded per second from the first claim. Direct: 1 "
                "load process holding max_in_flight connections to the fake."
            ),
            "peak_calls_in_flight": peak,
            "claims_per_s": self._claim_rate(claims),
            "runs_per_s": self._claimed_rate(done),
            "first_claim_after_start_s": round(claims[0] - started, 3) if claims else None,
            "runs": len(done),
            "succeeded": sum(1 for r in done if r.status == "succeeded"),
            "failed": sum(1 for r in done if r.status == "failed"),
            "unfinished": left,
            "direct": {"peak_calls_in_flight": direct_peak, "requests_per_s": direct["rps"]},
            "ratio": {"peak_calls_in_flight": ratio(peak, direct_peak)},
            "worker_rss_mib": next(iter(worker_rss.values()), None),
        }

    @staticmethod
    def _claimed_rate(done: list[runs.RunTimes]) -> float | None:
        """Runs finished per second from the first claim (the backlog was queued before)."""
        finished = [r.finished for r in done if r.status == "succeeded" and r.finished]
        started = [r.started for r in done if r.started]
        if not finished or not started or max(finished) <= min(started):
            return None
        return round(len(finished) / (max(finished) - min(started)), 1)

    @staticmethod
    def _claim_rate(claims: list[float]) -> float | None:
        if len(claims) < 2 or claims[-1] <= claims[0]:
            return None
        return round((len(claims) - 1) / (claims[-1] - claims[0]), 1)

    # -- 5. memory ---------------------------------------------------------------------------

    def memory(self, pool_rss: dict[str, float | None], lone_rss: float | None) -> Figure:
        return {
            "how": (
                "peak resident set size (VmHWM in /proc/<pid>/status) of each process over "
                "its whole life, read just before it was stopped (the API at the end of the "
                f"run). workers: the {self.tuning.workers} pools of the end-to-end and "
                "added-latency figures; in_flight_worker: the pool of the calls-in-flight "
                "figure. fake: the fake provider, for scale. ready_mib: each process's resident "
                "set (VmRSS) when it had just started, before any load."
            ),
            "api_mib": self.system.api_rss(),
            "worker_mib": pool_rss,
            "in_flight_worker_mib": lone_rss,
            "fake_mib": self.system.fake_rss(),
            "ready_mib": self.system.ready_rss,
            "cpus": os.cpu_count(),
        }
