"""Hostile inputs against the real CLI and a real engine: each must be refused with a sentence, fast.

Sibling of bench/abuse.py (which attacks the engine's sockets). Each case here runs `int8wb ...`
in a child process, or sends one request to a real `int8wb engine`, with a time limit (10 s), and
records whether it was refused as it should be: exit 2 (or an error event of kind `bad_input` or
`model_load`) with no traceback, or, for inputs that are strange but valid, ended cleanly (exit 0
or 2, within 30 s: they run a small scan, as the controls do); how long it took; the child's peak resident memory (os.wait4's ru_maxrss for a CLI child,
the engine's VmHWM for a request). The groups:

- corpora: no blank lines, 100 MB of NUL bytes (sparse), 100 MB without whitespace, a directory,
  a FIFO nobody writes to, /dev/zero, a path of 100,000 characters;
- GGUF headers, mutated from a tiny model's own GGUF export: a tensor count of 2^64-1, a tensor
  offset of 2^64-32 and of 1, embedding_length 10^6, block_count 2^32-1, a key length of 2^60;
- configs: num_hidden_layers 10^6, JSON nested 100,000 deep, intermediate_size unlike the weights;
- request sizes sent to the engine: bench_decode's copy (twice the machine's memory), batch, new
  and prompt tokens; evaluate's window and batch; scan's sequence length; the sweep's tokens;
- `export --overwrite` over an export the user added a file to (the file must survive), and
  `sensitivity --target nan`.

It prints one row per case and the counts; exit 0 when every case went as expected.

    .venv/bin/python bench/abuse_inputs.py [--timeout 10] [--run-timeout 30] [--only WORD] [--json]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The repository root, for tests.support.tiny_models (which makes the tiny model).
sys.path.insert(0, str(ROOT))

REFUSED, HANDLED = "refused", "handled"  # exit 2 / bad_input only; or exit 0 or 2, cleanly
REFUSAL_KINDS = ("bad_input", "model_load")
MIB = 2**20


@dataclass
class Case:
    group: str
    name: str
    expect: str
    argv: list[str] | None = None  # an `int8wb` command line, or
    request: tuple[str, dict] | None = None  # one engine request
    check_after: Callable[[], str | None] | None = None  # what went wrong afterwards, if anything


@dataclass
class Outcome:
    case: Case
    ended: str  # "exit N", "bad_input", "result", "timed out", "killed by SIGKILL"...
    seconds: float
    peak_mb: float
    message: str = ""
    problems: list[str] = field(default_factory=list)

    @property
    def as_expected(self) -> bool:
        return not self.problems


# --- the inputs ---------------------------------------------------------------------------------------


def write_corpora(folder: Path) -> dict[str, str]:
    folder.mkdir()
    no_blank_lines = folder / "no-blank-lines.txt"
    line = "the quick brown fox jumps over the lazy dog and keeps running along the river bank\n"
    no_blank_lines.write_text(line * 120_000)  # 10 MB, one paragraph
    sparse = folder / "sparse.txt"
    with open(sparse, "wb") as handle:
        handle.truncate(100 * 10**6)  # 100 MB of NUL bytes that take no disk
    solid = folder / "no-whitespace.txt"
    with open(solid, "wb") as handle:
        for _ in range(100):
            handle.write(b"x" * 10**6)
    fifo = folder / "fifo"
    os.mkfifo(fifo)
    return {
        "no blank lines (10 MB)": str(no_blank_lines),
        "100 MB of NUL bytes (sparse)": str(sparse),
        "100 MB without whitespace": str(solid),
        "a directory": str(folder),
        "a FIFO nobody writes to": str(fifo),
        "/dev/zero": "/dev/zero",
        "a path of 100,000 characters": "/" + "a/" * 50_000,
    }


def gguf_offsets(path: Path) -> dict[str, int]:
    """Byte offsets, in a GGUF file, of the header fields the mutations change."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    arch = str(reader.fields["general.architecture"].contents())

    def value_offset(name: str) -> int:
        entry = reader.fields[name]
        return entry.offset + sum(part.nbytes for part in entry.parts[:-1])

    first_key = next(f for name, f in reader.fields.items() if not name.startswith("GGUF."))
    tensor = reader.tensors[0].field
    return {
        "tensor_count": 8,  # after the magic and the version
        "first_key_length": first_key.offset,
        "first_tensor_offset": tensor.offset + sum(part.nbytes for part in tensor.parts[:-1]),
        "embedding_length": value_offset(f"{arch}.embedding_length"),
        "block_count": value_offset(f"{arch}.block_count"),
    }


GGUF_MUTATIONS = {  # name: (field, value, bytes)
    "tensor count 2^64-1": ("tensor_count", 2**64 - 1, 8),
    "a tensor's offset 2^64-32": ("first_tensor_offset", 2**64 - 32, 8),
    "a tensor's offset 1": ("first_tensor_offset", 1, 8),
    "embedding_length 10^6": ("embedding_length", 10**6, 4),
    "block_count 2^32-1": ("block_count", 2**32 - 1, 4),
    "a key length of 2^60": ("first_key_length", 2**60, 8),
}


def mutated_ggufs(source: Path, folder: Path) -> dict[str, str]:
    folder.mkdir()
    offsets, paths = gguf_offsets(source), {}
    for i, (name, (where, value, size)) in enumerate(GGUF_MUTATIONS.items()):
        path = folder / f"mutated-{i}.gguf"
        data = bytearray(source.read_bytes())
        data[offsets[where] : offsets[where] + size] = value.to_bytes(size, "little")
        path.write_bytes(bytes(data))
        paths[name] = str(path)
    return paths


def hostile_configs(model: Path, folder: Path) -> dict[str, str]:
    folder.mkdir()
    config = json.loads((model / "config.json").read_text())
    variants = {
        "num_hidden_layers 10^6": json.dumps({**config, "num_hidden_layers": 10**6}),
        "JSON nested 100,000 deep": '{"a": ' * 100_000 + "1" + "}" * 100_000,
        "intermediate_size unlike the weights": json.dumps(
            {**config, "intermediate_size": 2 * config["intermediate_size"]}
        ),
    }
    paths = {}
    for i, (name, text) in enumerate(variants.items()):
        copy = folder / f"config-{i}"
        shutil.copytree(model, copy)
        (copy / "config.json").write_text(text)
        paths[name] = str(copy)
    return paths


def machine_memory_mib() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB


def make_models(workdir: Path) -> None:
    """The tiny model, its GGUF export and an earlier export the user added NOTES.md to. Run in a child
    process (`--make-models`): a child forked later starts with its parent's peak memory as its own."""
    from int8wb.engine.process.session import Session
    from int8wb.engine.task import Task
    from tests.support.tiny_models import save_tiny_llama

    model = save_tiny_llama(workdir / "tiny-llama")
    session = Session()
    session.load_model({"model": str(model), "device": "cpu"}, Task())
    session.quantize({"methods": ["vectorwise", "q8_0"], "threshold": 6.0}, Task())
    session.export({"method": "q8_0", "format": "gguf-q8_0", "out": str(workdir / "gguf")}, Task())
    session.export({"method": "vectorwise", "out": str(workdir / "earlier-export")}, Task())
    (workdir / "earlier-export" / "NOTES.md").write_text("what I found")


def cases(workdir: Path) -> list[Case]:
    """Every case, with the files they read made in `workdir` (the tiny model and its exports included)."""
    subprocess.run([sys.executable, __file__, "--make-models", str(workdir)], check=True, capture_output=True)
    model, earlier = workdir / "tiny-llama", workdir / "earlier-export"
    tiny = ["--model", str(model), "--device", "cpu", "--quiet"]
    small_scan = ["--tokens", "64", "--seq-len", "32"]
    ordinary = workdir / "ordinary.txt"
    ordinary.write_text("A few plain sentences of English.\n\nAnother paragraph follows here.\n" * 200)
    found = [
        Case(
            "corpus",
            "an ordinary text of 14 KB (control)",
            HANDLED,
            ["scan", *tiny, *small_scan, "--corpus", str(ordinary)],
        )
    ]
    for name, path in write_corpora(workdir / "corpora").items():
        expect = HANDLED if name.startswith(("no blank", "100 MB")) else REFUSED
        found.append(Case("corpus", name, expect, ["scan", *tiny, *small_scan, "--corpus", path]))
    gguf = workdir / "gguf" / "model-q8_0.gguf"
    found.append(
        Case(
            "gguf", "the unmutated tiny GGUF (control)", HANDLED, ["scan", "--model", str(gguf), *tiny[2:], *small_scan]
        )
    )
    for name, path in mutated_ggufs(gguf, workdir / "ggufs").items():
        found.append(Case("gguf", name, REFUSED, ["scan", "--model", path, *tiny[2:], *small_scan]))
    for name, path in hostile_configs(model, workdir / "configs").items():
        found.append(Case("config", name, REFUSED, ["scan", "--model", path, *tiny[2:], *small_scan]))

    def notes_kept() -> str | None:
        kept = (earlier / "NOTES.md").is_file() and (earlier / "NOTES.md").read_text() == "what I found"
        return None if kept else "the user's NOTES.md is gone"

    overwrite = ["export", *tiny, "--method", "vectorwise", "--out", str(earlier), "--overwrite"]
    found.append(
        Case("export", "--overwrite over an export holding the user's NOTES.md", REFUSED, overwrite, None, notes_kept)
    )
    sweep = ["--tokens", "128", "--holdout-tokens", "64", "--window", "32", "--calibration-tokens", "64"]
    found.append(Case("sensitivity", "--target nan", REFUSED, ["sensitivity", *tiny, *sweep, "--target", "nan"]))
    memory = machine_memory_mib()
    for name, request in {
        f"bench_decode copy_mib {memory:,} (2 buffers: twice this machine's memory)": (
            "bench_decode",
            {"copy_mib": memory},
        ),
        "bench_decode batch 10^12": ("bench_decode", {"batch": 10**12}),
        "bench_decode new_tokens 10^9": ("bench_decode", {"new_tokens": 10**9}),
        "bench_decode prompt_tokens 10^9": ("bench_decode", {"prompt_tokens": 10**9}),
        "evaluate window 10^9": ("evaluate", {"window": 10**9}),
        "scan seq_len 10^9": ("scan", {"seq_len": 10**9}),
        "sensitivity tokens 10^9": ("sensitivity", {"method": "vectorwise", "tokens": 10**9, "window": 64}),
    }.items():
        found.append(Case("request size", name, REFUSED, request=request))
    found.append(
        Case(
            "request size",
            "evaluate batch_size 10^12 (capped by the windows)",
            HANDLED,
            request=("evaluate", {"batch_size": 10**12, "tokens": 256, "window": 64}),
        )
    )
    return found


# --- running them ---------------------------------------------------------------------------------------


def int8wb_command() -> list[str]:
    script = Path(sys.executable).with_name("int8wb")
    return [str(script)] if script.exists() else [sys.executable, "-m", "int8wb.engine.cli"]


def run_cli(case: Case, timeout_s: float) -> Outcome:
    """The command in a session of its own (killed whole at the time limit), reaped by os.wait4 for its rusage.

    ru_maxrss is the child's own peak: the bench imports no torch, so the fork it starts from is small."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        child = subprocess.Popen(
            [*int8wb_command(), *case.argv], stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )
        timer = threading.Timer(timeout_s, os.killpg, (child.pid, signal.SIGKILL))
        timer.start()
        _, status, usage = os.wait4(child.pid, 0)
        timer.cancel()
        child.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    code = child.returncode
    ended = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
    if code == -signal.SIGKILL and seconds >= timeout_s:
        ended = f"timed out ({timeout_s:g} s)"
    lines = [line for line in stderr.splitlines() if line.strip()]
    outcome = Outcome(case, ended, seconds, usage.ru_maxrss / 1024, lines[-1][:160] if lines else "")
    if "Traceback" in stderr:
        outcome.problems.append("a traceback")
    allowed = ("exit 2",) if case.expect == REFUSED else ("exit 0", "exit 2")
    if ended not in allowed:
        outcome.problems.append(f"{ended}, expected {' or '.join(allowed)}")
    return outcome


class EngineUnderTest:
    """A real local engine with the tiny model loaded (and quantized), asked one request at a time."""

    def __init__(self, model: Path) -> None:
        from int8wb.engine.link.client import EngineClient

        self.client = EngineClient()
        self.client.start_local(timeout_s=120)
        self.client.call("load_model", {"model": str(model), "device": "cpu"}, timeout_s=120)
        self.client.call("quantize", {"methods": ["weight-only"]}, timeout_s=120)

    def peak_mb(self) -> float:
        with open(f"/proc/{self.client.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def run(self, case: Case, timeout_s: float) -> Outcome:
        from int8wb.engine.link.connection import EngineError

        request_type, params = case.request
        started = time.monotonic()
        try:
            self.client.call(request_type, params, timeout_s=timeout_s)
            ended, message = "result", ""
        except EngineError as exc:
            ended, message = exc.kind, str(exc).splitlines()[0][:160] if str(exc) else ""
        except concurrent.futures.TimeoutError:
            ended, message = f"timed out ({timeout_s:g} s)", ""
            self._wait_until_free()
        outcome = Outcome(case, ended, time.monotonic() - started, self.peak_mb(), message)
        allowed = REFUSAL_KINDS if case.expect == REFUSED else (*REFUSAL_KINDS, "result")
        if ended not in allowed:
            outcome.problems.append(f"{ended}, expected {' or '.join(allowed)}")
        return outcome

    def _wait_until_free(self, timeout_s: float = 120) -> None:
        self.client.cancel()
        deadline = time.monotonic() + timeout_s
        while self.client.active_job is not None and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self.client.close()


def run(timeout_s: float, run_timeout_s: float, only: str | None) -> list[Outcome]:
    """`timeout_s` for what must be refused; `run_timeout_s` for what may run (a scan of 64 tokens on the tiny
    model takes 6 to 20 s from the start of its process on a busy 2-core machine)."""
    workdir = Path(tempfile.mkdtemp(prefix="int8wb-abuse-inputs-"))
    os.environ["INT8WB_CACHE_DIR"] = str(workdir / "cache")  # GGUF conversions of the children go here
    os.environ["PYTHONPATH"] = str(ROOT)
    try:
        todo = [case for case in cases(workdir) if only is None or only.lower() in f"{case.group} {case.name}".lower()]
        outcomes = [
            run_cli(case, timeout_s if case.expect == REFUSED else run_timeout_s)
            for case in todo
            if case.argv is not None
        ]
        requests = [case for case in todo if case.request is not None]
        if requests:
            engine = EngineUnderTest(workdir / "tiny-llama")
            try:
                outcomes += [engine.run(case, timeout_s) for case in requests]
            finally:
                engine.close()
        for outcome in outcomes:
            problem = outcome.case.check_after() if outcome.case.check_after else None
            if problem:
                outcome.problems.append(problem)
        return outcomes
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds each case may take (default 10)")
    parser.add_argument(
        "--run-timeout", type=float, default=30.0, help="seconds a case that may run takes (default 30)"
    )
    parser.add_argument("--only", default=None, help="run only the cases whose group or name holds this text")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--make-models", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_models is not None:
        make_models(args.make_models)
        return 0
    started = time.monotonic()
    outcomes = run(args.timeout, args.run_timeout, args.only)
    wrong = [o for o in outcomes if not o.as_expected]
    if args.json:
        rows = [
            {
                "group": o.case.group,
                "case": o.case.name,
                "expected": o.case.expect,
                "ended": o.ended,
                "seconds": round(o.seconds, 2),
                "peak_mb": round(o.peak_mb, 1),
                "message": o.message,
                "problems": o.problems,
            }
            for o in outcomes
        ]
        print(json.dumps({"cases": rows, "not_as_expected": len(wrong)}, indent=1))
        return 1 if wrong else 0
    print(f"{'':4} {'group':<13} {'case':<58} {'ended':<18} {'s':>5} {'peak MB':>8}")
    for o in outcomes:
        mark = "ok" if o.as_expected else "NOT"
        print(f"{mark:4} {o.case.group:<13} {o.case.name[:58]:<58} {o.ended:<18} {o.seconds:5.1f} {o.peak_mb:8.0f}")
        detail = "; ".join(o.problems) if o.problems else o.message
        if detail:
            print(f"{'':19}{detail[:140]}")
    print(
        f"{len(outcomes)} cases: {len(outcomes) - len(wrong)} as expected, {len(wrong)} NOT "
        f"({time.monotonic() - started:.0f} s in all)"
    )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
