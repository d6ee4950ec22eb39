"""One benchmark command: every workload, ours against its baseline in the same run.

    .venv/bin/python bench/run.py [--quick] [--json PATH] [--only pickup,docker,...]
                                  [--database-url postgres://postgres@127.0.0.1:5432/postgres]

Ours and the baseline take turns (A, B, A, B ...) in each round, and each ratio is printed
as min / median / max over the rounds. Times are what a user sees: from the client's call
to the job seen claimed, running or finished (not from queued_at). Each workload runs in a
fresh PostgreSQL database (a copy of one migrated template), all dropped at the end.
Baselines: Procrastinate (installed into var/bench/procrastinate-venv on first use), the
Docker SDK's minimum and `docker run --rm`. `--quick` takes under three minutes.
"""

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import ours
from baselines import dcm_venv, docker_direct, procrastinate_venv
from common import (
    clone_jobs,
    cpu_seconds,
    database_url,
    drop_postgres,
    fresh_postgres,
    machine,
    rss_mib,
    setup_django,
    stop,
    summary,
    use_database,
    wait_for,
)
from report import Report, ms

# Our worker does about 30 zero-length jobs/s on the 2-core machine, and a `true` container
# takes about 0.6 s here: --quick keeps to few of each to stay under three minutes.
PROFILES = {
    "quick": {
        "rounds": 3,
        "pickup_jobs": 8,
        "throughput_jobs": 60,
        "count_jobs": 60,
        "docker_seq": 4,
        "docker_c8": 8,
        "dcm_seq": 1,
        "claims": 10,
        "rss": (50, 500),
    },
    "full": {
        "rounds": 5,
        "pickup_jobs": 40,
        "throughput_jobs": 400,
        "count_jobs": 400,
        "docker_seq": 20,
        "docker_c8": 40,
        "dcm_seq": 5,
        "claims": 50,
        "rss": (500, 5000),
    },
}
WORKLOADS = ["pickup", "throughput", "counts", "docker", "backlog", "rss"]
PREFIX = "cm_bench"
DCM = "django-container-manager 1.0.14"


@dataclass
class Bench:
    server: str  # any database url on the server: each workload's database is named here
    profile: dict
    scratch: Path
    report: Report
    databases: list[str]
    notes: list[str] = field(default_factory=list)

    def database(self, name: str, migrated: bool = True) -> str:
        """A fresh database for one workload: ours (a copy of the migrated template, with
        Django pointed at it) or, ``migrated=False``, an empty one for a baseline."""
        from django.db import connections

        connections.close_all()  # a template cannot be copied while anyone is connected
        url = database_url(self.server, f"{PREFIX}_{name}")
        fresh_postgres(url, template=f"{PREFIX}_template" if migrated else None)
        self.databases.append(url)
        if migrated:
            use_database(url)
        return url

    def procrastinate(self, name: str) -> str:
        url = self.database(name, migrated=False)
        procrastinate_venv.driver(url, self.marks, "schema")
        return url

    @property
    def marks(self) -> Path:
        return self.scratch / "marks"


def say(*parts) -> None:
    print(*parts, flush=True)


def pickup(bench: Bench) -> None:
    rounds, jobs = bench.profile["rounds"], bench.profile["pickup_jobs"]
    say(f"\n== pickup: {jobs} jobs one at a time to an idle worker, x {rounds} (mock executor)")
    pg = bench.procrastinate("procrastinate_pickup")
    bench.database("pickup")
    host = ours.mock_host()
    workers = ours.start_workers(host)
    mine, theirs = [], []
    try:
        workers += procrastinate_venv.start_workers(pg, bench.marks, 1)
        for turn in range(rounds):
            mine.append(ours.pickup(host, jobs))
            theirs.append(procrastinate_venv.driver(pg, bench.marks, "pickup", "--jobs", str(jobs)))
            say(
                f"  round {turn + 1}: commit -> claimed: ours {ms(mine[-1]['claimed_ms'])}; "
                f"Procrastinate {ms(theirs[-1]['claimed_ms'])}"
            )
    finally:
        stop(*workers)

    def pooled(runs, key):
        return [value for run in runs for value in run[key]]

    def per_round(runs, key, index):
        return [summary(run[key])[index] for run in runs]

    report = bench.report
    claimed, their_claimed = pooled(mine, "claimed_ms"), pooled(theirs, "claimed_ms")
    running, their_running = pooled(mine, "running_ms"), pooled(theirs, "running_ms")
    report.value("pickup_pg_median_ms", summary(claimed)[0], "ms", summary(their_claimed)[0])
    report.value("pickup_pg_p95_ms", summary(claimed)[1], "ms", summary(their_claimed)[1])
    report.value("running_pg_median_ms", summary(running)[0], "ms", summary(their_running)[0])
    for name, key, index, what in [
        ("pickup_ratio_vs_procrastinate", "claimed_ms", 0, "commit -> claimed, median"),
        ("pickup_p95_ratio_vs_procrastinate", "claimed_ms", 1, "commit -> claimed, p95"),
        ("running_ratio_vs_procrastinate", "running_ms", 0, "commit -> running, median"),
    ]:
        mine_, theirs_ = per_round(mine, key, index), per_round(theirs, key, index)
        report.ratio(
            name,
            mine_,
            theirs_,
            row=(
                f"pickup, {what}",
                f"{statistics.median(mine_):.1f} ms",
                f"Procrastinate {statistics.median(theirs_):.1f} ms",
            ),
        )


def throughput(bench: Bench) -> None:
    rounds, jobs = bench.profile["rounds"], bench.profile["throughput_jobs"]
    for count in (1, 4):
        say(
            f"\n== throughput: {jobs} zero-length jobs queued at once, {count} worker(s), "
            f"x {rounds}"
        )
        pg = bench.procrastinate(f"procrastinate_tp{count}")
        bench.database(f"throughput_{count}w")
        host = ours.mock_host()
        template = ours.held_template(host)
        mine, theirs = ours.start_workers(host, count), []
        rate, their_rate, cpu, their_cpu = [], [], [], []
        try:
            theirs = procrastinate_venv.start_workers(pg, bench.marks, count)
            for turn in range(rounds):
                before = sum(cpu_seconds(w.pid) for w in mine)
                rate.append(jobs / ours.drain(template, jobs))
                cpu.append((sum(cpu_seconds(w.pid) for w in mine) - before) * 1000 / jobs)
                before = sum(cpu_seconds(w.pid) for w in theirs)
                answer = procrastinate_venv.driver(
                    pg, bench.marks, "throughput", "--jobs", str(jobs)
                )
                their_rate.append(jobs / answer["seconds"])
                their_cpu.append((sum(cpu_seconds(w.pid) for w in theirs) - before) * 1000 / jobs)
                say(
                    f"  round {turn + 1}: ours {rate[-1]:.0f} jobs/s, {cpu[-1]:.1f} CPU ms/job; "
                    f"Procrastinate {their_rate[-1]:.0f} jobs/s, {their_cpu[-1]:.1f} CPU ms/job"
                )
        finally:
            stop(*mine, *theirs)
        median = statistics.median
        bench.report.value(
            f"throughput_{count}w_jobs_per_s", median(rate), "jobs/s", median(their_rate)
        )
        bench.report.ratio(
            f"throughput_{count}w_ratio_vs_procrastinate",
            rate,
            their_rate,
            lower=False,
            row=(
                f"throughput, {count} worker(s), {jobs} jobs",
                f"{median(rate):.0f} jobs/s",
                f"Procrastinate {median(their_rate):.0f} jobs/s",
            ),
        )
        bench.report.ratio(
            f"cpu_per_job_{count}w_ratio_vs_procrastinate",
            cpu,
            their_cpu,
            row=(
                f"  worker CPU per job, {count} worker(s)",
                f"{median(cpu):.1f} ms",
                f"Procrastinate {median(their_cpu):.1f} ms",
            ),
        )


def counts(bench: Bench) -> None:
    """Statements and new connections per job, counted inside the worker (count_settings)."""
    jobs = bench.profile["count_jobs"]
    say(f"\n== database work per job: {jobs} zero-length jobs, one worker (mock executor)")
    bench.database("counts")
    host = ours.mock_host()
    template = ours.held_template(host)
    path = bench.scratch / "counts.json"
    env = {"DJANGO_SETTINGS_MODULE": "bench.count_settings", "BENCH_COUNTS_FILE": str(path)}
    (worker,) = ours.start_workers(host, env=env)

    def snapshot():
        path.unlink(missing_ok=True)
        worker.send_signal(signal.SIGUSR1)
        wait_for(path.exists, timeout=10, interval=0.01)
        return json.loads(path.read_text())

    try:
        idle_from = snapshot()
        time.sleep(3)
        start = snapshot()
        seconds = ours.drain(template, jobs)
        end = snapshot()
    finally:
        stop(worker)
    idle = (start["statements"] - idle_from["statements"]) / 3
    statements = (end["statements"] - start["statements"]) / jobs
    connections = (end["connections"] - start["connections"]) / jobs
    say(
        f"  {statements:.1f} statements and {connections:.2f} new connections per job "
        f"(in {seconds:.1f} s; an idle worker sends {idle:.1f} statements/s, included)"
    )
    before = start["by_statement"]
    sent = {sql: n - before.get(sql, 0) for sql, n in end["by_statement"].items()}
    for sql, n in sorted(sent.items(), key=lambda item: -item[1])[:12]:
        if n:
            say(f"    {n / jobs:5.2f}/job  {sql}")
    bench.report.value("statements_per_job", statements, "statements/job")
    bench.report.value("connections_per_job", connections, "connections/job")
    bench.report.value("idle_statements_per_s", idle, "statements/s")
    bench.report.rows.append(("SQL statements per job (worker)", f"{statements:.1f}", "-", "-"))
    bench.report.rows.append(
        ("new DB connections per job (worker)", f"{connections:.2f}", "-", "-")
    )


def docker(bench: Bench) -> None:
    profile, direct = bench.profile, docker_direct
    rounds, seq, many = profile["rounds"], profile["docker_seq"], profile["docker_c8"]
    image, command = direct.IMAGE, direct.COMMAND
    say(f"\n== Docker: {seq} x `true` one after another, {many} at concurrency 8; x {rounds}")
    bench.database("docker")
    host = ours.docker_host()
    client = direct.sdk_client()
    workers = ours.start_workers(host, 1, "--max-concurrent", "8")
    # Each side: (label, one by one: ms of each, at concurrency 8: wall seconds).
    sides = {
        "ours": (
            "ours",
            lambda: [ours.docker_one(host, image, command) for _ in range(seq)],
            lambda: ours.docker_many(host, image, command, many),
        ),
        "sdk": (
            "Docker SDK minimum",
            lambda: direct.each_ms(direct.sdk_once, seq, client),
            lambda: direct.wall_s(direct.sdk_once, many, 8, client),
        ),
        "docker_run": (
            "docker run --rm",
            lambda: direct.each_ms(direct.docker_run_once, seq),
            lambda: direct.wall_s(direct.docker_run_once, many, 8),
        ),
    }
    runs = {key: ([], []) for key in sides}
    try:
        if dcm := start_dcm(bench, profile["dcm_seq"], many):
            workers.append(dcm.pop("worker"))
            sides["dcm"] = tuple(dcm.values())
            runs["dcm"] = ([], [])
        # Not timed: the first container of a run pays for cold caches, on every side.
        ours.docker_one(host, image, command)
        direct.sdk_once(client)
        direct.docker_run_once()
        for turn in range(rounds):
            for key, (_, one_by_one, _) in sides.items():
                runs[key][0].append(one_by_one())
            for key, (_, _, at_8) in sides.items():
                runs[key][1].append(at_8())
            say(
                f"  round {turn + 1}: one by one, median ms: "
                + ", ".join(f"{key} {statistics.median(runs[key][0][-1]):.0f}" for key in sides)
                + "; x8, wall s: "
                + ", ".join(f"{key} {runs[key][1][-1]:.2f}" for key in sides)
            )
    finally:
        stop(*workers)
        client.close()
    report = bench.report
    median = {key: [statistics.median(run) for run in runs[key][0]] for key in sides}
    pooled = {key: [v for run in runs[key][0] for v in run] for key in sides}
    report.value(
        "docker_seq_median_ms", summary(pooled["ours"])[0], "ms", summary(pooled["sdk"])[0]
    )
    for key, (label, _, _) in list(sides.items())[1:]:
        report.ratio(
            f"docker_seq_ratio_vs_{key}",
            median["ours"],
            median[key],
            row=(f"Docker, `true` one by one, vs {label}", ms(pooled["ours"]), ms(pooled[key])),
        )
    for key, (label, _, _) in list(sides.items())[1:]:
        report.ratio(
            f"docker_c8_ratio_vs_{key}",
            runs["ours"][1],
            runs[key][1],
            row=(
                f"Docker, {many} x `true`, 8 at once (wall), vs {label}",
                f"{statistics.median(runs['ours'][1]):.2f} s",
                f"{statistics.median(runs[key][1]):.2f} s",
            ),
        )


def start_dcm(bench: Bench, seq: int, many: int) -> dict | None:
    """django-container-manager's worker and client calls, or None (said why) when it
    cannot be had: it is the last baseline, and the others do not depend on it."""
    try:
        dcm_venv.ensure_venv()
        url = bench.database("dcm", migrated=False)
        dcm_venv.driver(url, "setup")
        worker = dcm_venv.start_worker(url)
    except Exception as error:  # noqa: BLE001 - reported, and the run goes on
        bench.notes.append(f"{DCM}: left out ({error})")
        say(f"  {bench.notes[-1]}")
        return None
    try:
        dcm_venv.driver(url, "seq", "--jobs", "1")  # not timed: it works, caches are warm
    except Exception as error:  # noqa: BLE001
        stop(worker)
        bench.notes.append(f"{DCM}: left out ({error})")
        say(f"  {bench.notes[-1]}")
        return None
    bench.notes.append(
        f"{DCM}: on the Docker workloads only, with --legacy-mode (its default queue mode "
        "completes no job), polling at 1 s (its shortest), launching up to 8 jobs a turn"
    )
    return {
        "worker": worker,
        "label": "django-container-manager (legacy mode)",
        "one_by_one": lambda: dcm_venv.driver(url, "seq", "--jobs", str(seq))["ms"],
        "at_8": lambda: dcm_venv.driver(url, "many", "--jobs", str(many))["seconds"],
    }


def backlog(bench: Bench) -> None:
    """One claim with 100,000 queued jobs against 1,000: two databases, used in turn by
    this process (claim_jobs for one job, as a worker's turn calls it)."""
    from django.db import connection

    from container_manager.models import ContainerJob, Worker

    rounds, claims = bench.profile["rounds"], bench.profile["claims"]
    sizes = (1_000, 100_000)
    say(
        f"\n== backlog: a claim with {sizes[1]:,} queued vs {sizes[0]:,}, "
        f"{claims} claims x {rounds}"
    )
    places = {}
    for size in sizes:
        url = bench.database(f"backlog_{size}")
        host = ours.mock_host()
        clone_jobs(ours.held_template(host), size, notify=False)  # nobody listens here
        with connection.cursor() as cursor:
            cursor.execute(f"ANALYZE {ContainerJob._meta.db_table}")
        worker = Worker.objects.create(hostname="bench", pid=os.getpid())
        places[size] = (url, host.pk, worker.pk)

    def claim_ms(size) -> float:
        url, host_pk, worker_pk = places[size]
        use_database(url)
        return statistics.median(ours.claim_times(host_pk, worker_pk, claims))

    small, large = [], []
    for turn in range(rounds):
        small.append(claim_ms(sizes[0]))
        large.append(claim_ms(sizes[1]))
        say(
            f"  round {turn + 1}: {large[-1]:.2f} ms per claim with {sizes[1]:,} queued, "
            f"{small[-1]:.2f} ms with {sizes[0]:,}"
        )
    median = statistics.median
    bench.report.value("backlog_claim_100k_ms", median(large), "ms", median(small))
    bench.report.ratio(
        "backlog_claim_ratio_100k_vs_1k",
        large,
        small,
        row=(
            "one claim, 100,000 queued vs 1,000",
            f"{median(large):.2f} ms",
            f"{median(small):.2f} ms (1,000 queued)",
        ),
    )


def rss(bench: Bench) -> None:
    first, total = bench.profile["rss"]
    say(f"\n== worker memory: RSS after {total:,} zero-length jobs vs after {first:,} (mock)")
    bench.database("rss")
    host = ours.mock_host()
    template = ours.held_template(host)
    (worker,) = ours.start_workers(host)
    try:
        idle = rss_mib(worker.pid)
        seconds = ours.drain(template, first)
        after_first = rss_mib(worker.pid)
        seconds += ours.drain(template, total - first)
        after_total = rss_mib(worker.pid)
    finally:
        stop(worker)
    say(
        f"  idle {idle:.1f} MiB; after {first:,} jobs {after_first:.1f} MiB; "
        f"after {total:,} {after_total:.1f} MiB ({total / seconds:.0f} jobs/s)"
    )
    report = bench.report
    # Named as the issue names them whatever the profile; the unit says what was counted.
    report.value("worker_rss_5000_mib", after_total, f"MiB after {total} jobs", after_first)
    ratio = after_total / after_first
    report.value(
        "worker_rss_ratio_5000_vs_500", ratio, f"x ({total} vs {first} jobs)", after_first, ratio
    )
    report.rows.append(
        (
            f"worker RSS after {total:,} jobs vs {first:,}",
            f"{after_total:.1f} MiB",
            f"{after_first:.1f} MiB",
            f"{after_total / after_first:.2f} (one worker, one round)",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs and rounds (< 3 min)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures here")
    parser.add_argument("--only", help=f"a comma-separated subset of {','.join(WORKLOADS)}")
    parser.add_argument(
        "--database-url",
        default="postgres://postgres@127.0.0.1:5432/postgres",
        help="the PostgreSQL server to use; the bench's databases are created there",
    )
    args = parser.parse_args()
    chosen = args.only.split(",") if args.only else WORKLOADS
    if unknown := set(chosen) - set(WORKLOADS):
        parser.error(f"--only: no workload {', '.join(sorted(unknown))}")
    started = time.monotonic()
    about = machine(args.database_url)
    say(f"machine: {about}")
    version = procrastinate_venv.ensure_venv()
    say(
        f"baselines: Procrastinate {version} (own virtualenv), Docker SDK, docker run --rm, "
        f"{DCM} (own virtualenv and project, Docker workloads only)"
    )
    template = database_url(args.database_url, f"{PREFIX}_template")
    setup_django(fresh_postgres(template))
    profile = PROFILES["quick" if args.quick else "full"]
    report = Report()
    with tempfile.TemporaryDirectory(prefix="cm-bench-") as scratch:
        bench = Bench(args.database_url, profile, Path(scratch), report, [template])
        bench.notes += [
            "ratios are ours / baseline, one per round, as min / median / max",
            "Procrastinate: `claimed` is its `started` event (todo -> doing), `running` the "
            "task's first line; its workers run 4 jobs at once, as ours do (MAX_CONCURRENT_JOBS)",
        ]
        try:
            for name in chosen:
                began = time.monotonic()
                globals()[name](bench)
                say(f"  ({name}: {time.monotonic() - began:.0f} s)")
        finally:
            from django.db import connections

            connections.close_all()
            for url in bench.databases:
                drop_postgres(url)
    say(f"\n{report.table()}")
    for note in bench.notes:
        say(f"note: {note}")
    say(f"machine: {about}")
    say(f"{'quick' if args.quick else 'full'} run: {time.monotonic() - started:.0f} s")
    if args.json:
        report.write_json(args.json)
        say(f"figures written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
