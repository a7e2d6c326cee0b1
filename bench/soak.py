"""Soak test: a real ComfyUI runs many prompts in a row, some interrupted, some bad on purpose.

    COMFYUI_PATH=/path/to/ComfyUI python -m bench.soak [--prompts 200] [--json FILE]
    python -m bench.soak --server http://127.0.0.1:8188 [--pid PID]

Without ``--server`` it starts ComfyUI (``COMFYUI_PATH``) as a user's install runs it: the pack
copied into ``custom_nodes/`` of a fresh temporary base folder, listening on 127.0.0.1 only, and
stopped at the end (on Ctrl-C too). The prompts are the templates' API twins
(``workflows/api/``) with random seeds, 2 to 6 steps and similarities from 1 to 9. Every
``--interrupt-every``-th prompt is interrupted (``POST /interrupt``) once its sampler is running;
every ``--bad-every``-th is a bad prompt (a missing model, a mask of the wrong size, a NaN
similarity, an unknown node, a link of the wrong type), which counts as failed as expected only
when the server refused or failed it with a message naming the problem.

It prints succeeded / interrupted / failed as expected / failed unexpectedly, p50 and p95 latency
(queued to finished, over the prompts that succeeded) and the server's resident memory (Linux
``VmRSS``) after prompt 20 and at the end. Target: no unexpected failure, the server alive, RSS
growth below 5%; exit code 1 when it is missed, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import math
import os
import random
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from exemplar_core import node_ids
from exemplar_core.argtypes import non_negative_int, positive_int, positive_seconds
from exemplar_core.headless import (
    EXIT_USAGE,
    Client,
    HeadlessError,
    describe_failure,
    ends_prompt,
    find_node,
    open_websocket,
    prompt_events,
    wait_history,
)

from .common import REPO, host_harness, write_report

API_DIR = REPO / "workflows" / "api"
TEMPLATES = ("basic_exemplar_edit", "bezier_mask_demo", "similarity_sweep", "stock_ksampler_edit")
BAD_TEMPLATE = "basic_exemplar_edit"  # its Inpaint Sampler checks the mask's size
OUTPUT_PREFIX = "pbe_soak/"  # results go to a subfolder of the server's output folder
RSS_GROWTH_TARGET = 0.05

Outcome = Literal["succeeded", "interrupted", "failed as expected", "failed unexpectedly"]
OUTCOMES: tuple[Outcome, ...] = (
    "succeeded",
    "interrupted",
    "failed as expected",
    "failed unexpectedly",
)


@dataclass
class Result:
    """One prompt: what was sent, what came of it, queued-to-finished seconds, the message."""

    index: int
    kind: str  # a template name, "interrupt <template>" or "bad: <what>"
    outcome: Outcome
    seconds: float
    message: str = ""


@dataclass
class Soak:
    """The whole run's figures, as printed and written by ``--json``."""

    server: str
    prompts: int
    results: list[Result] = field(default_factory=list)
    rss_baseline_prompt: int = 0
    rss_baseline_mib: float | None = None
    rss_end_mib: float | None = None
    server_alive: bool = True
    stopped_early: str = ""

    def counts(self) -> dict[str, int]:
        counted = Counter(result.outcome for result in self.results)
        return {outcome: counted.get(outcome, 0) for outcome in OUTCOMES}

    def latency(self) -> dict[str, float | None]:
        seconds = sorted(r.seconds for r in self.results if r.outcome == "succeeded")
        return {"p50": percentile(seconds, 50), "p95": percentile(seconds, 95)}

    def rss_growth(self) -> float | None:
        if self.rss_baseline_mib is None or self.rss_end_mib is None:
            return None
        return self.rss_end_mib / self.rss_baseline_mib - 1.0

    def misses(self) -> list[str]:
        """Why the target was missed; empty when it was met."""
        missed = []
        unexpected = self.counts()["failed unexpectedly"]
        if unexpected:
            missed.append(f"{unexpected} unexpected failure(s)")
        if not self.server_alive:
            missed.append("the server died")
        if len(self.results) < self.prompts:
            missed.append(f"only {len(self.results)} of {self.prompts} prompts ran")
        growth = self.rss_growth()
        if growth is not None and growth >= RSS_GROWTH_TARGET:
            missed.append(f"RSS grew {growth:.1%} (target < {RSS_GROWTH_TARGET:.0%})")
        return missed


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[int(q) - 1]


def rss_mib(pid: int | None) -> float | None:
    """Resident memory of process ``pid`` in MiB from /proc (Linux); None when unknown."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# ------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------


def load_template(name: str) -> dict[str, Any]:
    return json.loads((API_DIR / f"{name}.json").read_text())


def vary(prompt: dict[str, Any], rng: random.Random, steps: int | None = None) -> str:
    """Random seeds, 2 to 6 steps (or ``steps``) and similarities in every sampler; results
    saved under OUTPUT_PREFIX. Returns what was chosen, for the log."""
    chosen_steps = steps if steps is not None else rng.randint(2, 6)
    similarity = round(rng.uniform(1.0, 9.0), 2)
    seed = rng.randrange(2**32)
    for node in prompt.values():
        inputs, kind = node["inputs"], node["class_type"]
        if "seed" in inputs:
            inputs["seed"] = seed
        if kind in (node_ids.INPAINT_SAMPLER, "KSampler"):
            inputs["steps"] = chosen_steps
        if kind == node_ids.INPAINT_SAMPLER and node["_meta"]["title"] == "sampler":
            inputs["similarity"] = similarity
        if kind == "KSampler":
            inputs["cfg"] = similarity  # the stock KSampler's name for the similarity
        if kind == "SaveImage":
            inputs["filename_prefix"] = OUTPUT_PREFIX + inputs["filename_prefix"]
    return f"seed {seed}, {chosen_steps} steps, similarity {similarity}"


def node_titled(prompt: dict[str, Any], title: str) -> dict[str, Any]:
    return prompt[find_node(prompt, title)]


MISSING_MODEL = "pbe-soak-no-such-model.safetensors"
UNKNOWN_NODE = node_ids.NODE_PREFIX + "NoSuchNode"
WRONG_SIZE_MASK = "soak_wrong_size_mask.png"


def bad_missing_model(prompt: dict[str, Any], mask_name: str) -> str:
    node_titled(prompt, "loader")["inputs"]["model_name"] = MISSING_MODEL
    return MISSING_MODEL


def bad_wrong_size_mask(prompt: dict[str, Any], mask_name: str) -> str:
    node_titled(prompt, "mask")["inputs"]["image"] = mask_name
    return "40x24"  # the message names the mask's size


def bad_nan_similarity(prompt: dict[str, Any], mask_name: str) -> str:
    node_titled(prompt, "sampler")["inputs"]["similarity"] = math.nan
    return "similarity"


def bad_unknown_node(prompt: dict[str, Any], mask_name: str) -> str:
    node_titled(prompt, "encode")["class_type"] = UNKNOWN_NODE
    return UNKNOWN_NODE


def bad_wrong_link_type(prompt: dict[str, Any], mask_name: str) -> str:
    source_image = [find_node(prompt, "source"), 0]
    node_titled(prompt, "sampler")["inputs"]["mask"] = source_image  # an IMAGE, not a MASK
    return "IMAGE"  # the message names the type it got


# name -> (edit the prompt, returning a word the server's message must contain)
BAD_PROMPTS = {
    "missing model": bad_missing_model,
    "mask of the wrong size": bad_wrong_size_mask,
    "NaN similarity": bad_nan_similarity,
    "unknown node class": bad_unknown_node,
    "IMAGE linked into a MASK input": bad_wrong_link_type,
}


def wrong_size_mask_png() -> bytes:
    """A 40x24 mask (white middle): the templates' source is 512x512."""
    from PIL import Image

    mask = Image.new("L", (40, 24), 0)
    mask.paste(255, (10, 6, 30, 18))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------
# Running one prompt
# ------------------------------------------------------------------------------------------


def follow(client: Client, ws, prompt_id: str, timeout: float, interrupt_node: str | None) -> None:
    """Read the server's events until ``prompt_id`` finished; with ``interrupt_node``, interrupt
    the prompt once that node reports progress. Raises HeadlessError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    sent = False
    try:
        for kind, data in prompt_events(ws, prompt_id):
            if interrupt_node and not sent and kind == "progress":
                if data.get("node") == interrupt_node:
                    client.interrupt(prompt_id)
                    sent = True
            if ends_prompt(kind, data):
                return
            if time.monotonic() > deadline:
                break
    except OSError as err:  # the socket's own timeout, or the server went away
        if time.monotonic() <= deadline:
            raise HeadlessError(f"the event stream broke off: {err}") from err
    raise HeadlessError(f"no result after {timeout:.0f} s")


def run_prompt(
    client: Client,
    prompt: dict[str, Any],
    timeout: float,
    interrupt_node: str | None = None,
    expect: str | None = None,
) -> tuple[Outcome, float, str]:
    """Queue ``prompt``, follow it to the end: (outcome, queued-to-finished seconds, message).
    expect: a bad prompt's word that the server's refusal or error must contain."""
    started = time.perf_counter()
    ws = open_websocket(client, timeout)
    try:
        try:
            prompt_id = client.queue(prompt)
        except HeadlessError as err:
            if err.code == EXIT_USAGE:  # the server cannot be reached
                raise
            # refused by validation (HTTP 400)
            return judge_failure(str(err), expect), time.perf_counter() - started, str(err)
        try:
            follow(client, ws, prompt_id, timeout, interrupt_node)
        except HeadlessError as err:
            try:
                client.interrupt(prompt_id)  # do not leave it running into the next prompt
            except (HeadlessError, OSError):
                pass
            return "failed unexpectedly", time.perf_counter() - started, str(err)
        seconds = time.perf_counter() - started
    finally:
        ws.close()
    status = wait_history(client, prompt_id, timeout, quiet=True).get("status", {})
    if status.get("status_str") == "success" and status.get("completed", True):
        if expect is not None:
            return "failed unexpectedly", seconds, "the server accepted and ran a bad prompt"
        note = "finished before the interrupt reached it" if interrupt_node else ""
        return "succeeded", seconds, note
    message = describe_failure(status)
    kinds = [kind for kind, _ in status.get("messages", [])]
    if "execution_interrupted" in kinds:
        if interrupt_node:
            return "interrupted", seconds, message
        return "failed unexpectedly", seconds, "interrupted without being asked: " + message
    return judge_failure(message, expect), seconds, message


def judge_failure(message: str, expect: str | None) -> Outcome:
    """A failure is expected only for a bad prompt, with a message that names the problem."""
    if expect is not None and expect.lower() in message.lower():
        return "failed as expected"
    return "failed unexpectedly"


# ------------------------------------------------------------------------------------------
# The soak
# ------------------------------------------------------------------------------------------


@dataclass
class SoakOptions:
    prompts: int = 200
    timeout: float = 120.0
    interrupt_every: int = 15
    bad_every: int = 25
    rss_after: int = 20
    seed: int = 0


def plan(options: SoakOptions) -> list[str]:
    """The kind of each prompt, 1-based order: "bad", "interrupt" or "template"."""
    kinds = []
    for index in range(1, options.prompts + 1):
        if options.bad_every and index % options.bad_every == 0:
            kinds.append("bad")
        elif options.interrupt_every and index % options.interrupt_every == 0:
            kinds.append("interrupt")
        else:
            kinds.append("template")
    return kinds


def soak(client: Client, pid: int | None, options: SoakOptions, log=print) -> Soak:
    """Run the prompts on the server at ``client.server``; ``pid`` is its process (RSS)."""
    rng = random.Random(options.seed)
    result = Soak(server=client.server, prompts=options.prompts)
    result.rss_baseline_prompt = min(options.rss_after, max(1, options.prompts // 2))
    templates = {name: load_template(name) for name in TEMPLATES}
    mask_name = client.upload_image(Path(WRONG_SIZE_MASK), wrong_size_mask_png())
    bad_names = list(BAD_PROMPTS)
    bad_count = 0
    for index, kind in enumerate(plan(options), start=1):
        expect = interrupt_node = None
        if kind == "bad":
            name = bad_names[bad_count % len(bad_names)]
            bad_count += 1
            prompt = copy.deepcopy(templates[BAD_TEMPLATE])
            vary(prompt, rng)
            expect = BAD_PROMPTS[name](prompt, mask_name)
            label, detail = f"bad: {name}", ""
        else:
            name = rng.choice(TEMPLATES) if kind == "template" else BAD_TEMPLATE
            prompt = copy.deepcopy(templates[name])
            # interrupted prompts get enough steps that the interrupt lands mid-sampling
            detail = vary(prompt, rng, steps=30 if kind == "interrupt" else None)
            label = name if kind == "template" else f"interrupt {name}"
            if kind == "interrupt":
                interrupt_node = find_node(prompt, "sampler")
        try:
            outcome, seconds, message = run_prompt(
                client, prompt, options.timeout, interrupt_node, expect
            )
        except (HeadlessError, OSError) as err:  # the server cannot be reached any more
            result.stopped_early = f"prompt {index}: {err}"
            log(f"{index:>4}/{options.prompts} {label}: stopped: {err}")
            break
        result.results.append(Result(index, label, outcome, round(seconds, 3), message))
        shown = f"{detail}: " if detail else ""
        note = f" ({message.splitlines()[0]})" if message and outcome != "interrupted" else ""
        log(f"{index:>4}/{options.prompts} {label}, {shown}{outcome} in {seconds:.2f} s{note}")
        if index == result.rss_baseline_prompt:
            result.rss_baseline_mib = rss_mib(pid)
    result.rss_end_mib = rss_mib(pid)
    try:
        client.get_json("/system_stats")
    except (HeadlessError, OSError, urllib.error.HTTPError):
        result.server_alive = False
    return result


def report(result: Soak) -> str:
    counts = result.counts()
    lines = [f"{'outcome':<24}{'prompts':>8}"]
    lines += [f"{outcome:<24}{count:>8}" for outcome, count in counts.items()]
    lines.append(f"{'total':<24}{sum(counts.values()):>8}")
    sent = Counter(r.kind[5:] for r in result.results if r.kind.startswith("bad: "))
    refused = Counter(
        r.kind[5:]
        for r in result.results
        if r.kind.startswith("bad: ") and r.outcome == "failed as expected"
    )
    if sent:
        lines.append(
            "bad prompts failed as expected: "
            + ", ".join(f"{name} {refused[name]}/{count}" for name, count in sent.items())
        )
    latency = result.latency()
    if latency["p50"] is None:
        lines.append("latency: no prompt succeeded")
    else:
        lines.append(
            f"latency, queued to finished (succeeded prompts): p50 {latency['p50']:.2f} s, "
            f"p95 {latency['p95']:.2f} s"
        )
    growth = result.rss_growth()
    if growth is None:
        lines.append("server RSS: unknown (Linux only; with --server pass --pid)")
    else:
        lines.append(
            f"server RSS: {result.rss_baseline_mib:.1f} MiB after prompt "
            f"{result.rss_baseline_prompt}, {result.rss_end_mib:.1f} MiB at the end: "
            f"{growth:+.1%} (target < {RSS_GROWTH_TARGET:.0%})"
        )
    lines.append(f"server alive at the end: {'yes' if result.server_alive else 'NO'}")
    if result.stopped_early:
        lines.append(f"stopped early at {result.stopped_early}")
    for r in result.results:
        if r.outcome == "failed unexpectedly":
            lines.append(f"unexpected: prompt {r.index} ({r.kind}): {r.message}")
    misses = result.misses()
    lines.append("target: " + ("met" if not misses else "MISSED: " + "; ".join(misses)))
    return "\n".join(lines)


def figures(result: Soak, options: SoakOptions) -> dict[str, Any]:
    """What ``--json`` writes (after the machine and the time): the figures and every prompt."""
    return {
        "options": asdict(options),
        "counts": result.counts(),
        "latency_seconds": result.latency(),
        "rss_mib": {
            "after_prompt": result.rss_baseline_prompt,
            "baseline": result.rss_baseline_mib,
            "end": result.rss_end_mib,
            "growth": result.rss_growth(),
        },
        "server_alive": result.server_alive,
        "target_met": not result.misses(),
        "misses": result.misses(),
        "results": [asdict(r) for r in result.results],
    }


# ------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--prompts", type=positive_int, default=200, help="how many prompts to run")
    p.add_argument(
        "--timeout", type=positive_seconds, default=120.0, help="seconds allowed per prompt"
    )
    p.add_argument(
        "--interrupt-every",
        type=non_negative_int,
        default=15,
        help="interrupt every Nth prompt (0: none)",
    )
    p.add_argument(
        "--bad-every",
        type=non_negative_int,
        default=25,
        help="every Nth prompt is a bad one (0: none)",
    )
    p.add_argument(
        "--rss-after",
        type=positive_int,
        default=20,
        help="the RSS baseline is read after this prompt (half the prompts when fewer than "
        "twice as many run)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the prompts' random choices")
    p.add_argument(
        "--server", help="soak this running ComfyUI (with the pack) instead of starting one"
    )
    p.add_argument("--pid", type=int, help="with --server: its process id, for the RSS figures")
    p.add_argument("--json", type=Path, help="also write the figures here (a new file)")
    return p


def check_arguments(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments together, or None (each number is checked by its
    argparse type)."""
    if args.json is not None and args.json.exists():
        return f"--json {args.json} already exists; name a new file (it is never replaced)"
    if args.pid is not None and args.server is None:
        return "--pid goes with --server (a started server's RSS is read without it)"
    if args.server is None and not os.environ.get("COMFYUI_PATH"):
        return (
            "set COMFYUI_PATH to a ComfyUI checkout (COMFYUI_PATH=/path/to/ComfyUI), or pass "
            "--server URL of a running ComfyUI with this pack"
        )
    return None


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Note Ctrl-C and SIGTERM while a server starts and raise KeyboardInterrupt once it is
    assigned and ours to stop, instead of leaving a half-started ComfyUI behind. (Noted, not
    blocked: a blocked signal mask would be inherited by the server.)"""
    received: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {signum: signal.signal(signum, lambda n, f: received.append(n)) for signum in held}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            raise KeyboardInterrupt


def run(args: argparse.Namespace, options: SoakOptions) -> Soak:
    """Start ComfyUI (unless ``--server``), soak it, stop it (also on KeyboardInterrupt)."""
    server = None
    with tempfile.TemporaryDirectory(prefix="pbe-soak-") as scratch:
        try:
            if args.server is None:
                # the host tests' launcher: the pack copied into custom_nodes/, 127.0.0.1 only
                pbe_host = host_harness()

                with signals_deferred():
                    print("starting ComfyUI as a user's install (127.0.0.1 only)", flush=True)
                    try:
                        server = pbe_host.start_user_install(Path(scratch))
                    except pbe_host.StartError as err:  # its log goes with the scratch folder
                        raise HeadlessError(
                            f"{err.summary()} (COMFYUI_PATH={pbe_host.COMFYUI_PATH})"
                        ) from None
                url, pid = server.url, server.process.pid
            else:
                url, pid = args.server.rstrip("/"), args.pid
            client = Client(url, timeout=min(args.timeout, 60.0))
            print(f"soak: {options.prompts} prompts on {url} (server pid {pid})", flush=True)
            result = soak(client, pid, options, log=lambda line: print(line, flush=True))
            if server is not None and server.process.poll() is not None:
                result.server_alive = False
            return result
        finally:
            if server is not None:
                server.stop()
                print(f"stopped the ComfyUI it started (pid {server.process.pid})", flush=True)


def _stop_on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # unwinds through the ``finally`` that stops the server


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = check_arguments(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    options = SoakOptions(
        prompts=args.prompts,
        timeout=args.timeout,
        interrupt_every=args.interrupt_every,
        bad_every=args.bad_every,
        rss_after=args.rss_after,
        seed=args.seed,
    )
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        result = run(args, options)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except HeadlessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    print()
    print(report(result))
    if args.json is not None:
        write_report(args.json, figures(result, options), replace=False)
    return 1 if result.misses() else 0


if __name__ == "__main__":
    sys.exit(main())
