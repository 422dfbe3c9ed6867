"""What measuring through the device agent costs, and what a second agent buys.

    python benchmarks/bench_agent.py overhead   # -> benchmarks/results/agent_overhead.json
    python benchmarks/bench_agent.py fleet      # -> benchmarks/results/fleet_throughput.json

overhead: one compact SubTransformer (HAT's workload: seq_len 30, beam 5) timed in
`--pairs` rounds locally and as many through an agent on loopback (a separate process,
its worker pinned to the same CPU), the rounds alternating so drift hits both alike.
Reports the trimmed means and their ratio (target: within 2%), the same ratio between
the odd and even rounds of each side (the noise floor of this machine), and the wall time
of a remote round over the time inside its timed runs (HTTP, JSON and process hops).

fleet: `hatprof collect` of the same `--samples` architectures on a device with one
agent (pinned to one CPU) and on a device with two agents (one CPU each); the wall
times and the speedup. Artifacts are exported before either run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token-" + "b" * 24


def _spawn_agent(workdir: Path, cpus: str) -> tuple[subprocess.Popen, str]:
    workdir.mkdir(parents=True, exist_ok=True)
    token = workdir / "token"
    token.write_text(TOKEN)
    token.chmod(0o600)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "device_agents.agent", "serve", "--port", "0", "--token-file", str(token),
         "--cache-dir", str(workdir / "cache"), "--cpus", cpus],
        stdout=subprocess.PIPE, text=True, env=env)
    line = process.stdout.readline()
    if "listening on" not in line:
        process.kill()
        raise RuntimeError(f"agent did not start: {line!r}")
    return process, line.split("listening on", 1)[1].strip()


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    process.wait(30)
    process.stdout.close()


def _environment() -> dict:
    from profiler.metadata import cpu_model

    return {"cpu_model": cpu_model(), "logical_cores": os.cpu_count(), "load_avg": list(os.getloadavg())}


def overhead(args: argparse.Namespace) -> dict:
    from device_agents.client import RemoteTarget
    from profiler.artifacts import get_artifact
    from profiler.metadata import default_cpus
    from profiler.protocol import Measurement, RoundSpec
    from profiler.space import load_space
    from profiler.target import LocalTarget

    space = load_space("compact")
    arch = space.sample_many(1, args.seed)[0]
    artifact = get_artifact(arch, space, "onnx")
    cpu = max(default_cpus(1))
    with tempfile.TemporaryDirectory() as tmp:
        process, url = _spawn_agent(Path(tmp), str(cpu))
        try:
            remote = RemoteTarget(url, TOKEN, threads=1)
            local = LocalTarget(threads=1, cpus=[cpu])
            rounds: dict[str, list] = {"local": [], "remote": []}
            remote_wall, remote_timed = 0.0, 0.0
            spec = RoundSpec(seq_len=args.seq_len, beam=args.beam, warmup=args.warmup, runs=args.runs)
            remote.measure_round(artifact, "onnx", RoundSpec(seq_len=args.seq_len, beam=args.beam, warmup=1, runs=2))
            for _ in range(args.pairs):  # upload and worker start-up done above
                rounds["local"].append(local.measure_round(artifact, "onnx", spec))
                start = time.perf_counter()
                pair = remote.measure_round(artifact, "onnx", spec)
                remote_wall += time.perf_counter() - start
                remote_timed += (sum(pair.encoder.samples_ns) + sum(pair.decoder.samples_ns)) / 1e9
                rounds["remote"].append(pair)
            local.close()
        finally:
            _stop(process)
    latency = {}
    for side, pairs in rounds.items():
        parts = [Measurement.from_rounds([getattr(p, part) for p in pairs], 0.1) for part in ("encoder", "decoder")]
        latency[side] = {"trimmed_mean_ms": sum(m.trimmed_mean_ms for m in parts),
                         "encoder_ms": parts[0].trimmed_mean_ms, "decoder_ms": parts[1].trimmed_mean_ms,
                         "min_ms": sum(m.min_ms for m in parts),
                         "cv_decoder": parts[1].cv, "round_spread_decoder": parts[1].round_spread}
    ratio = latency["remote"]["trimmed_mean_ms"] / latency["local"]["trimmed_mean_ms"]
    # On a machine with bursts of foreign load the minimum is the stable estimate of the same cost.
    min_ratio = latency["remote"]["min_ms"] / latency["local"]["min_ms"]

    def total(pairs: list) -> float:
        return sum(Measurement.from_rounds([getattr(p, part) for p in pairs], 0.1).trimmed_mean_ms
                   for part in ("encoder", "decoder"))

    # The noise floor: the same comparison between the odd and even rounds of one side.
    noise = {side: total(pairs[1::2]) / total(pairs[0::2]) for side, pairs in rounds.items() if len(pairs) > 1}
    return {
        "benchmark": "agent_overhead", "arch_id": arch.arch_id, "cpu": cpu,
        "settings": {"runs": args.runs, "warmup": args.warmup, "pairs": args.pairs, "seq_len": args.seq_len,
                     "beam": args.beam},
        "latency": latency, "remote_over_local": ratio, "within_2_percent": abs(ratio - 1) <= 0.02,
        "remote_over_local_min": min_ratio, "min_within_2_percent": abs(min_ratio - 1) <= 0.02,
        "odd_over_even_rounds": noise,
        "remote_wall_over_timed": remote_wall / remote_timed,
        "environment": _environment(),
    }


def _collect_time(urls: list[str], archs, protocol, workdir: Path) -> float:
    from device_agents.client import RemoteTarget
    from device_agents.fleet import FleetDevice, collect
    from profiler.measure import MeasureJob
    from profiler.space import load_space

    device = FleetDevice("bench", [RemoteTarget(u, TOKEN, threads=1, name="bench") for u in urls], protocol)
    job = MeasureJob(space=load_space("compact"), protocol=protocol, interleave=1)
    start = time.perf_counter()
    reports = collect([device], archs, job, workdir)
    elapsed = time.perf_counter() - start
    if reports["bench"].failed or reports["bench"].measured != len(archs):
        raise RuntimeError(f"collection failed: {reports['bench']}")
    return elapsed


def fleet(args: argparse.Namespace) -> dict:
    from profiler.artifacts import get_artifact
    from profiler.protocol import RoundSpec, TimingProtocol
    from profiler.space import load_space

    space = load_space("compact")
    archs = space.sample_many(args.samples, args.seed)
    for arch in archs:
        get_artifact(arch, space, "onnx")
    protocol = TimingProtocol.hat(warmup=args.warmup, runs=args.runs, rounds=1, seq_len=args.seq_len, beam=args.beam)
    cpus = sorted(os.sched_getaffinity(0))[-2:]
    if len(cpus) < 2:
        raise SystemExit("the fleet benchmark needs two CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        agents = [_spawn_agent(tmp / f"agent{i}", str(cpu)) for i, cpu in enumerate(cpus)]
        try:
            from device_agents.client import RemoteTarget

            for _, url in agents:  # uploads and worker start-up are not what is compared
                warm = RemoteTarget(url, TOKEN, threads=1)
                for arch in archs:
                    warm.measure_round(get_artifact(arch, space, "onnx"), "onnx",
                                       RoundSpec(seq_len=args.seq_len, beam=args.beam, warmup=0, runs=1))
            one = _collect_time([agents[1][1]], archs, protocol, tmp / "one")
            two = _collect_time([url for _, url in agents], archs, protocol, tmp / "two")
        finally:
            for process, _ in agents:
                _stop(process)
    return {
        "benchmark": "fleet_throughput", "samples": len(archs), "cpus": cpus,
        "settings": {"runs": args.runs, "warmup": args.warmup, "seq_len": args.seq_len, "beam": args.beam},
        "one_agent_s": one, "two_agents_s": two, "speedup": one / two,
        "archs_per_s": {"one_agent": len(archs) / one, "two_agents": len(archs) / two},
        "environment": _environment(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="which", required=True)
    for name, runs, default_out in (("overhead", 100, "agent_overhead.json"),
                                    ("fleet", 30, "fleet_throughput.json")):
        p = sub.add_parser(name)
        p.add_argument("--runs", type=int, default=runs)
        p.add_argument("--warmup", type=int, default=5)
        p.add_argument("--seq-len", type=int, default=30)
        p.add_argument("--beam", type=int, default=5)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--out", type=Path, default=RESULTS / default_out)
    sub.choices["overhead"].add_argument("--pairs", type=int, default=4)
    sub.choices["fleet"].add_argument("--samples", type=int, default=6)
    args = parser.parse_args()
    result = overhead(args) if args.which == "overhead" else fleet(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
