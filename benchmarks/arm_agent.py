"""The device agent on 64-bit ARM (aarch64), under qemu-user emulation: does it install and work?

    sudo .venv/bin/python benchmarks/arm_agent.py      # -> benchmarks/results/arm_agent.json

Run as root on a Debian host; rerun at will (what it built is cached in
/var/cache/hatprof-arm, `--rebuild` starts over). The steps:

1. host packages: debootstrap, qemu-user-static and binfmt-support from Debian, if missing;
2. binfmt_misc: mounted if it is not, and qemu-aarch64 registered (flag F, so a chroot needs
   no copy of the emulator);
3. an arm64 Debian root of the host's release (`debootstrap --foreign`, then the second stage
   inside the root under qemu), with python3, python3-venv and python3-pip;
4. this repository copied into the root and installed there with `pip install .[agent]`
   (aarch64 wheels of onnxruntime, numpy and psutil from PyPI) into /opt/hatprof-venv;
5. the agent started inside the root (chroot, with /proc and /dev mounted, unmounted
   again at exit; not /sys, see `mounted`) on 127.0.0.1, a free port and a fresh token;
6. from the host: a devices.toml naming that agent, `hatprof measure --device arm64 ...`,
   then checks that the CSV rows were written and that the environment record (the
   .raw.jsonl sidecar and GET /v1/info) says aarch64.

Emulated timings mean nothing: the point is that the agent installs and measures. The
report holds each step's wall time, the versions seen inside the root, the rows measured,
and what broke on the way with its workaround. Not part of the test suite (root, network,
many minutes).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "benchmarks" / "results" / "arm_agent.json"
CACHE = Path("/var/cache/hatprof-arm")
MIRROR = "http://deb.debian.org/debian"
VENV = "/opt/hatprof-venv"      # inside the root
HOST_CA = "/etc/ssl/certs/hatprof-host-ca.crt"  # inside the root: the host's CA bundle, for pip
SOURCE = "/opt/hatprof-src"     # inside the root
RUN = "/tmp/hatprof-arm-run"    # inside the root: token, agent cache
BINFMT = Path("/proc/sys/fs/binfmt_misc")
# The kernel's binfmt_misc rule for aarch64 ELF executables (the one qemu-user-static ships).
AARCH64_RULE = (r":qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
                r":\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
                r":/usr/bin/qemu-aarch64-static:F")
CHROOT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
              "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_CERT": HOST_CA,
              "DEBIAN_FRONTEND": "noninteractive"}
VERSIONS_PY = ("import json, platform, numpy, onnxruntime, psutil; print(json.dumps({"
               "'machine': platform.machine(), 'python': platform.python_version(), "
               "'onnxruntime': onnxruntime.__version__, 'numpy': numpy.__version__, "
               "'psutil': psutil.__version__, 'providers': onnxruntime.get_available_providers()}))")

MEMORY_CAP_PY = ("import resource, numpy\nresource.setrlimit(resource.RLIMIT_AS, (256 << 20, 256 << 20))\n"
                 "try:\n    numpy.ones(512 << 20, dtype=numpy.uint8)\n    print('allocated')\n"
                 "except MemoryError:\n    print('refused')")


class StepFailed(RuntimeError):
    """A step could not be done; its message is the exact error seen."""


class Report:
    """Steps with their wall times, what broke and how it was worked around."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {"ok": False, "steps": [], "problems": []}

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict[str, Any]]:
        entry: dict[str, Any] = {"name": name, "status": "ok"}
        self.data["steps"].append(entry)
        print(f"[arm] {name} ...", flush=True)
        start = time.monotonic()
        try:
            yield entry
        except BaseException as exc:
            entry["status"] = "failed"
            entry["error"] = str(exc) or type(exc).__name__
            raise
        finally:
            entry["wall_s"] = round(time.monotonic() - start, 1)
            print(f"[arm] {name}: {entry['status']} in {entry['wall_s']} s", flush=True)

    def problem(self, what: str, workaround: str) -> None:
        print(f"[arm] problem: {what} -> {workaround}", flush=True)
        self.data["problems"].append({"what": what, "workaround": workaround})


def sh(cmd: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
       timeout: float = 3600) -> str:
    """Run a command; its output, or StepFailed with the command and the tail of its output."""
    done = subprocess.run(cmd, env=env, cwd=cwd, timeout=timeout, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, errors="replace")
    if done.returncode != 0:
        tail = "\n".join(done.stdout.strip().splitlines()[-15:])
        raise StepFailed(f"`{' '.join(cmd)}` exited {done.returncode}: {tail}")
    return done.stdout


def in_root(rootfs: Path, cmd: list[str], timeout: float = 3600) -> str:
    return sh(["chroot", str(rootfs), *cmd], env=CHROOT_ENV, timeout=timeout)


def host_packages(report: Report, entry: dict[str, Any]) -> None:
    wanted = {"debootstrap": "debootstrap", "qemu-aarch64-static": "qemu-user-static",
              "update-binfmts": "binfmt-support"}
    missing = sorted({pkg for tool, pkg in wanted.items() if shutil.which(tool) is None})
    entry["installed"] = missing
    if missing:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        sh(["apt-get", "update", "-q"], env=env)
        sh(["apt-get", "install", "-y", "-q", *missing], env=env)
    else:
        entry["status"] = "cached"
    entry["qemu"] = sh(["qemu-aarch64-static", "--version"]).splitlines()[0]
    entry["debootstrap"] = sh(["dpkg-query", "-W", "-f", "${Version}", "debootstrap"]).strip()


def binfmt(report: Report, entry: dict[str, Any]) -> None:
    if not (BINFMT / "register").exists():
        try:
            sh(["mount", "binfmt_misc", "-t", "binfmt_misc", str(BINFMT)])
        except StepFailed as exc:
            raise StepFailed(f"binfmt_misc cannot be mounted ({exc}); mounting it needs CAP_SYS_ADMIN "
                             "in the initial user namespace") from exc
        report.problem("binfmt_misc was not mounted (no systemd here to do it)",
                       f"mount binfmt_misc -t binfmt_misc {BINFMT}")
    rule = BINFMT / "qemu-aarch64"
    if not rule.exists():
        try:
            sh(["update-binfmts", "--enable", "qemu-aarch64"])
        except StepFailed:
            (BINFMT / "register").write_text(AARCH64_RULE)
        report.problem("qemu-aarch64 was not registered with binfmt_misc (binfmt-support's service "
                       "does not run without systemd)", "update-binfmts --enable qemu-aarch64")
    text = rule.read_text()
    if not text.startswith("enabled"):
        (rule).write_text("1")
        text = rule.read_text()
    entry["rule"] = {line.split(" ", 1)[0]: line.split(" ", 1)[-1] for line in text.splitlines()[1:]}
    if not text.startswith("enabled"):
        raise StepFailed(f"qemu-aarch64 binfmt rule is not enabled: {text!r}")


def debootstrap(report: Report, entry: dict[str, Any], cache: Path, suite: str, mirror: str) -> Path:
    rootfs, partial, built = cache / "rootfs", cache / "rootfs.partial", cache / "rootfs.json"
    entry["rootfs"] = str(rootfs)
    if (rootfs / "usr" / "bin" / "python3").exists():
        entry["status"] = "cached"
        if built.exists():
            entry["built"] = json.loads(built.read_text())
        return rootfs
    if partial.exists():
        unmount_all(partial)
        shutil.rmtree(partial)
    cache.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    sh(["debootstrap", "--foreign", "--arch=arm64", "--variant=minbase",
        "--include=python3,python3-venv,python3-pip,ca-certificates", suite, str(partial), mirror])
    entry["first_stage_s"] = round(time.monotonic() - start, 1)
    # With the F flag the kernel holds the emulator open; a copy inside also serves kernels without it.
    shutil.copy2("/usr/bin/qemu-aarch64-static", partial / "usr" / "bin" / "qemu-aarch64-static")
    start = time.monotonic()
    in_root(partial, ["/debootstrap/debootstrap", "--second-stage"])
    entry["second_stage_s"] = round(time.monotonic() - start, 1)
    partial.rename(rootfs)
    built.write_text(json.dumps({"suite": suite, "mirror": mirror, "first_stage_s": entry["first_stage_s"],
                                 "second_stage_s": entry["second_stage_s"],
                                 "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    return rootfs


def _mountpoints() -> list[str]:
    with open("/proc/self/mountinfo") as info:
        return [line.split()[4] for line in info]


def unmount_all(rootfs: Path) -> list[str]:
    """Unmount everything below the root, deepest first; the mount points that stayed."""
    prefix = str(rootfs.resolve()) + "/"
    for point in sorted((p for p in _mountpoints() if p.startswith(prefix)), key=len, reverse=True):
        if subprocess.run(["umount", point], stderr=subprocess.DEVNULL).returncode != 0:
            subprocess.run(["umount", "-l", point], stderr=subprocess.DEVNULL)
    return [p for p in _mountpoints() if p.startswith(prefix)]


@contextlib.contextmanager
def mounted(rootfs: Path, report: Report) -> Iterator[None]:
    """/proc and /dev inside the root (psutil reads /proc; Python needs /dev/urandom, /dev/shm).

    Not /sys: with it, `import onnxruntime` dies of SIGSEGV under qemu-user 7.2. Its cpuinfo
    library reads the CPU list from /sys and then parses /proc/cpuinfo as ARM's, but qemu 7.2
    does not emulate /proc/cpuinfo for aarch64, so it sees the host's x86 one. Without /sys,
    cpuinfo fails cleanly ("cpuinfo_initialize failed") and onnxruntime runs on.
    """
    unmount_all(rootfs)
    report.problem("`import onnxruntime` in the root crashed with 'qemu: uncaught target signal 11 "
                   "(Segmentation fault)' when /sys was mounted: onnxruntime's cpuinfo parses the host's "
                   "x86 /proc/cpuinfo (qemu-user 7.2 does not emulate it for aarch64) after /sys listed "
                   "the CPUs", "/sys left unmounted in the root: cpuinfo fails cleanly and onnxruntime "
                   "runs; the agent then reports no CPU frequency or governor (psutil finds no /sys)")
    try:
        sh(["mount", "-t", "proc", "proc", str(rootfs / "proc")])
        sh(["mount", "--rbind", "/dev", str(rootfs / "dev")])
        sh(["mount", "--make-rslave", str(rootfs / "dev")])
        yield
    finally:
        left = unmount_all(rootfs)
        if left:
            report.problem(f"still mounted after exit: {left}", "unmount by hand")


def install_agent(report: Report, entry: dict[str, Any], rootfs: Path) -> None:
    """The working tree (tracked and untracked, not ignored) into the root, pip-installed there
    unless the installed copy came from the same files."""
    listed = sh(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO).split("\0")
    files = sorted(name for name in listed if name and (REPO / name).is_file())
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + (REPO / name).read_bytes() + b"\0")
    stamp = rootfs / VENV.lstrip("/") / "hatprof-source.sha256"
    entry["source_sha256"] = digest.hexdigest()
    if stamp.exists() and stamp.read_text().strip() == digest.hexdigest():
        entry["status"] = "cached"
        return
    source = rootfs / SOURCE.lstrip("/")
    if source.exists():
        shutil.rmtree(source)
    for name in files:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    entry["files_copied"] = len(files)
    shutil.copy2("/etc/resolv.conf", rootfs / "etc" / "resolv.conf")
    # The root trusts Debian's CAs; a host behind a TLS-inspecting proxy trusts one more.
    host_ca = next(Path(p) for p in (os.environ.get("PIP_CERT"), os.environ.get("SSL_CERT_FILE"),
                                      "/etc/ssl/certs/ca-certificates.crt") if p and Path(p).is_file())
    shutil.copy2(host_ca, rootfs / HOST_CA.lstrip("/"))
    if host_ca.read_bytes() != (rootfs / "etc/ssl/certs/ca-certificates.crt").read_bytes():
        report.problem(f"the host trusts CAs that Debian's ca-certificates lacks ({host_ca}; here a "
                       "TLS-inspecting proxy): pip in the root failed with CERTIFICATE_VERIFY_FAILED",
                       f"the host's bundle copied into the root as {HOST_CA}, PIP_CERT pointing at it")
    if not (rootfs / VENV.lstrip("/") / "bin" / "python").exists():
        in_root(rootfs, ["python3", "-m", "venv", VENV])
    start = time.monotonic()
    out = in_root(rootfs, [f"{VENV}/bin/pip", "install", "--progress-bar", "off", f"{SOURCE}[agent]"])
    entry["pip_s"] = round(time.monotonic() - start, 1)
    entry["pip_tail"] = out.strip().splitlines()[-1:]
    stamp.write_text(digest.hexdigest() + "\n")


def versions(rootfs: Path) -> dict[str, Any]:
    found = json.loads(in_root(rootfs, [f"{VENV}/bin/python", "-c", VERSIONS_PY]).strip().splitlines()[-1])
    found["debian"] = (rootfs / "etc" / "debian_version").read_text().strip()
    found["pip"] = in_root(rootfs, [f"{VENV}/bin/pip", "--version"]).split()[1]
    return found


def memory_cap(report: Report, rootfs: Path) -> str:
    """Whether an RLIMIT_AS set inside the root holds: the agent's worker caps its memory that way."""
    verdict = in_root(rootfs, [f"{VENV}/bin/python", "-c", MEMORY_CAP_PY]).strip().splitlines()[-1]
    if verdict == "allocated":
        report.problem("an address-space limit (RLIMIT_AS, 256 MiB) set inside the root does not hold: "
                       "a 512 MiB array was allocated after it. qemu-user accepts setrlimit for RLIMIT_AS, "
                       "RLIMIT_DATA and RLIMIT_STACK without applying it (it would limit the emulator too), "
                       "so the worker's memory cap (--max-memory-mb) is a no-op under emulation",
                       "none needed for this check; the cap is tested natively by the suite")
    return verdict


def start_agent(rootfs: Path, log: Path, startup_s: float) -> tuple[subprocess.Popen, str]:
    """The agent inside the root on 127.0.0.1 and a free port, with a fresh token; (process, URL)."""
    run = rootfs / RUN.lstrip("/")
    if run.exists():
        shutil.rmtree(run)
    run.mkdir(parents=True)
    agent = ([f"{VENV}/bin/hatprof-agent"] if (rootfs / VENV.lstrip("/") / "bin" / "hatprof-agent").exists()
             else [f"{VENV}/bin/python", "-m", "device_agents.agent"])
    in_root(rootfs, [*agent, "token", "--out", f"{RUN}/token"])
    process = subprocess.Popen(
        ["chroot", str(rootfs), *agent, "serve", "--host", "127.0.0.1", "--port", "0",
         "--token-file", f"{RUN}/token", "--cache-dir", f"{RUN}/cache", "--time-limit", "3000"],
        env=CHROOT_ENV, stdout=subprocess.PIPE, stderr=log.open("w"), text=True, start_new_session=True)
    deadline = time.monotonic() + startup_s
    line = ""
    while time.monotonic() < deadline and process.poll() is None:
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            line = process.stdout.readline()
            if "listening on" in line:
                return process, line.split("listening on", 1)[1].strip()
    stop_agent(process)
    raise StepFailed(f"the agent did not start within {startup_s:.0f} s (stdout {line!r}; "
                     f"stderr: {log.read_text()[-2000:]!r})")


def stop_agent(process: subprocess.Popen) -> int | None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
    if process.stdout:
        process.stdout.close()
    return process.returncode


def agent_info(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(url + "/v1/info?threads=1", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


def measure(entry: dict[str, Any], url: str, token_file: Path, work: Path, samples: int) -> dict[str, Any]:
    inventory = work / "devices.toml"
    inventory.write_text(f'[devices.arm64]\nagents = ["{url}"]\ntoken_file = "{token_file}"\nthreads = 1\n')
    out = work / "arm.csv"
    for stale in (out, out.with_name("arm.raw.jsonl")):
        stale.unlink(missing_ok=True)
    cmd = [str(REPO / ".venv" / "bin" / "hatprof"), "measure", "--device", "arm64", "--inventory",
           str(inventory), "--space", "compact", "--samples", str(samples), "--runs", "6", "--rounds", "1",
           "--warmup", "1", "--fixed", "--out", str(out)]
    entry["command"] = " ".join(cmd)
    entry["why_fixed"] = ("the default converging protocol adds rounds until the label is within 1% (up to 30 "
                          "per architecture); emulated rounds take minutes and never settle, so a first try "
                          "ran 28 minutes without a row; --fixed times exactly the rounds asked for")
    entry["output_tail"] = sh(cmd, cwd=REPO).strip().splitlines()[-5:]
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    raw = out.with_name("arm.raw.jsonl")
    machines = sorted({json.loads(line)["environment"]["machine"]
                       for line in raw.read_text().splitlines() if line.strip()})
    entry["csv"] = str(out)
    return {"rows": rows, "sidecar_machines": machines}


def run(args: argparse.Namespace, report: Report) -> None:
    cache: Path = args.cache
    work = cache / "last-run"
    work.mkdir(parents=True, exist_ok=True)
    report.data["host"] = {"kernel": platform.release(), "machine": platform.machine(), "suite": args.suite,
                           "mirror": args.mirror, "cpus": os.cpu_count()}
    if args.rebuild and cache.exists():
        for name in ("rootfs", "rootfs.partial"):
            if (cache / name).exists():
                unmount_all(cache / name)
                shutil.rmtree(cache / name)
    with report.step("host packages") as entry:
        host_packages(report, entry)
    with report.step("binfmt_misc") as entry:
        binfmt(report, entry)
    with report.step("debootstrap arm64") as entry:
        rootfs = debootstrap(report, entry, cache, args.suite, args.mirror)
    with mounted(rootfs, report):
        with report.step("pip install .[agent] in the root") as entry:
            install_agent(report, entry, rootfs)
        with report.step("versions in the root") as entry:
            report.data["arm_versions"] = versions(rootfs)
            entry["machine"] = report.data["arm_versions"]["machine"]
        with report.step("memory cap in the root") as entry:
            entry["verdict"] = memory_cap(report, rootfs)
        with report.step("start the agent") as entry:
            process, url = start_agent(rootfs, work / "agent.log", args.startup_s)
            entry["url"] = url
        try:
            token_file = rootfs / RUN.lstrip("/") / "token"
            with report.step("GET /v1/info") as entry:
                info = agent_info(url, token_file.read_text().strip())
                env = info["environment"]
                entry.update(machine=env.get("machine"), cpu_model=env.get("cpu_model"),
                             platform=env.get("platform"))
                report.data["info_environment"] = env
                host_models = {line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                               .splitlines() if line.startswith("model name")}
                if env.get("cpu_model") and any(env["cpu_model"] in model for model in host_models):
                    report.problem(f"the environment record's cpu_model is the host's x86 CPU "
                                   f"({env['cpu_model']!r}): qemu-user 7.2 passes the host's /proc/cpuinfo "
                                   "through to aarch64 programs, and there is no /proc/device-tree",
                                   "none: an emulation artefact; `machine` says aarch64, and on a board "
                                   "the record reads the board's own files")
            with report.step("hatprof measure --device arm64") as entry:
                result = measure(entry, url, token_file, work, args.samples)
        finally:
            with report.step("stop the agent") as entry:
                entry["returncode"] = stop_agent(process)
                entry["agent_log_tail"] = (work / "agent.log").read_text().strip().splitlines()[-5:]
    rows = result["rows"]
    report.data["rows"] = rows
    report.data["checks"] = checks = {
        "rows_written": len(rows) == args.samples,
        "latencies_positive": all(float(r["latency_mean_encoder"]) > 0 and float(r["latency_mean_decoder"]) > 0
                                  for r in rows),
        "sidecar_says_aarch64": result["sidecar_machines"] == ["aarch64"],
        "info_says_aarch64": report.data["info_environment"].get("machine") == "aarch64",
    }
    report.data["ok"] = all(checks.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=CACHE, help="where the root and the last run are kept")
    parser.add_argument("--suite", default=_host_suite(), help="Debian release of the root (default: the host's)")
    parser.add_argument("--mirror", default=MIRROR)
    parser.add_argument("--samples", type=int, default=2, help="architectures to measure")
    parser.add_argument("--startup-s", type=float, default=600.0, help="seconds the emulated agent may take to start")
    parser.add_argument("--rebuild", action="store_true", help="discard the cached root first")
    parser.add_argument("--report", type=Path, default=REPORT)
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("run as root (debootstrap, chroot, mount)")
    report = Report()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the mounts come down on a kill too
    start = time.monotonic()
    try:
        run(args, report)
    except (StepFailed, OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
        report.data["error"] = str(exc)
        print(f"[arm] failed: {exc}", file=sys.stderr)
    finally:
        report.data["total_s"] = round(time.monotonic() - start, 1)
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report.data, indent=2) + "\n")
        print(f"[arm] report: {args.report} (ok: {report.data['ok']})")
    return 0 if report.data["ok"] else 1


def _host_suite() -> str:
    with open("/etc/os-release") as release:
        fields = dict(line.rstrip("\n").split("=", 1) for line in release if "=" in line)
    return fields.get("VERSION_CODENAME", "bookworm").strip('"')


if __name__ == "__main__":
    sys.exit(main())
