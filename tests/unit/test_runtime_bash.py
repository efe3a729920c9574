"""The in-container runtime (envserver/runtime/server.py) run as a local subprocess, spoken to over its protocol.

Runs under the host python3 and under Python 3.8 (the oldest image python we support): tests/conftest.py finds a 3.8
wherever it is installed; with none, the py38 cases skip with the reason, and fail under CI (CI=true).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import python38_or_unavailable

SERVER = Path(__file__).resolve().parents[2] / "envserver" / "runtime" / "server.py"


class Runtime:
    def __init__(self, python: str, cwd: str, *extra: str):
        self.proc = subprocess.Popen(
            [python, "-u", str(SERVER), "--cwd", cwd, *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.next_id = 0

    def raw(self, line: bytes) -> dict:
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def call(self, op: str, **args) -> dict:
        self.next_id += 1
        resp = self.raw(json.dumps({"id": self.next_id, "op": op, "args": args}).encode())
        assert resp["id"] == self.next_id
        return resp

    def bash(self, command: str, **args) -> dict:
        resp = self.call("bash", command=command, **args)
        assert resp["ok"], resp
        return resp["result"]

    def close(self):
        if self.proc.poll() is None:
            try:
                self.call("shutdown")
                self.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - a runtime that does not shut down cleanly is killed
                self.proc.kill()
        self.proc.stderr.close()
        self.proc.stdout.close()
        self.proc.stdin.close()


@pytest.fixture(params=["host", "py38"])
def rt(request, tmp_path):
    r = Runtime(sys.executable if request.param == "host" else python38_or_unavailable(), str(tmp_path))
    yield r
    r.close()


@pytest.fixture
def rt_host(tmp_path):
    r = Runtime(sys.executable, str(tmp_path))
    yield r
    r.close()


def test_ping_and_persistence(rt, tmp_path):
    ping = rt.call("ping")["result"]
    assert ping["protocol"] == 2 and ping["pid"] == rt.proc.pid and ping["signed"] is False
    r = rt.bash('pwd; mkdir sub && cd sub && export FOO=bar; f() { echo "f:$1"; }; sleep 30 & echo started')
    assert r["status"] == "completed" and r["exit_code"] == 0
    assert r["output"].startswith(str(tmp_path) + "\n") and "started" in r["output"]
    assert r["cwd"] == str(tmp_path / "sub")
    r = rt.bash("echo $FOO; f x; pwd; jobs | grep -c sleep; echo $TERM $PAGER $GIT_PAGER; (exit 3)")
    assert r["output"] == "bar\nf:x\n%s\n1\ndumb cat cat\n" % (tmp_path / "sub")
    assert r["exit_code"] == 3 and r["cwd"] == str(tmp_path / "sub")
    assert rt.bash("cat /proc/$$/oom_score_adj")["output"].strip() == "1000"


def test_multiline_heredoc_and_syntax_error(rt):
    r = rt.bash("cat <<'EOF'\nline1\n  $HOME\nEOF\nfor i in 1 2; do\n  echo $i\ndone\nprintf no-newline")
    assert r["output"] == "line1\n  $HOME\n1\n2\nno-newline" and r["exit_code"] == 0
    r = rt.bash("echo 'unterminated")
    assert r["status"] == "completed" and r["exit_code"] == 2
    assert "unexpected EOF" in r["output"] and ".envserver-rt" not in r["output"]
    assert rt.bash("echo ok")["output"] == "ok\n"


def test_hard_timeout_keeps_shell(rt):
    rt.bash("export KEEP=1")
    r = rt.bash("echo before; sleep 1000", timeout=2)
    # the 2 s timeout, not the end of `sleep 1000`, ended the command
    assert r["status"] == "hard_timeout" and "before" in r["output"] and "timed out after 2 seconds" in r["note"]
    r = rt.bash("echo $KEEP")
    assert r["output"] == "1\n" and r["status"] == "completed"


def test_hard_timeout_sigint_ignored(rt_host):
    """A program that ignores Ctrl-C is SIGKILLed together with its descendants."""
    cmd = (
        "python3 -c 'import signal,subprocess,time; signal.signal(signal.SIGINT, signal.SIG_IGN); "
        'subprocess.Popen(["sleep", "777"], start_new_session=True); time.sleep(1000)\''
    )
    rt_host.bash("sleep 555 &")
    r = rt_host.bash(cmd, timeout=1)
    assert r["status"] == "hard_timeout" and "killed" in r["note"]
    assert rt_host.bash("pgrep -x -f 'sleep 777' || echo none")["output"] == "none\n"
    assert "sleep 555" in rt_host.bash("jobs")["output"]  # background jobs are not the foreground job
    assert rt_host.bash("echo alive")["output"] == "alive\n"


def test_no_output_timeout_then_interrupt(rt):
    r = rt.bash("echo partial; sleep 1000", no_output_timeout=1)
    assert r["status"] == "no_output_timeout" and r["output"] == "partial\n" and r["exit_code"] is None
    r = rt.bash("echo new")
    assert r["status"] == "busy" and "NOT executed" in r["note"]
    r = rt.bash("", is_input=True, no_output_timeout=0.5)
    assert r["status"] == "no_output_timeout"
    r = rt.bash("C-c", is_input=True)
    assert r["status"] == "completed" and r["exit_code"] == 130
    assert rt.bash("echo works")["output"] == "works\n"
    r = rt.bash("", is_input=True)
    assert r["note"].startswith("ERROR: No previous running command")


def test_input_to_read_and_python(rt):
    r = rt.bash("read -p 'name? ' x; echo \"got:$x\"", no_output_timeout=1)
    assert r["status"] == "no_output_timeout" and r["output"] == "name? "
    r = rt.bash("alice", is_input=True)
    assert r["status"] == "completed" and r["output"] == "got:alice\n"
    r = rt.bash('python3 -c \'print("v=" + input("> "))\'', no_output_timeout=1)
    assert r["status"] == "no_output_timeout"
    r = rt.bash("42", is_input=True)
    assert r["status"] == "completed" and r["output"].endswith("v=42\n")


def test_truncation_100mb_and_binary(rt):
    # Streaming 100 MB through the truncating window must finish: the command's own timeout is a hang detector,
    # generous on purpose (it takes a few seconds even on a loaded 2-core machine); how fast is not asserted.
    r = rt.bash("yes | head -c 100000000; echo; echo END", max_output_chars=1000, timeout=120)
    assert r["status"] == "completed" and r["exit_code"] == 0
    assert r["output"].startswith("y\ny\n") and r["output"].endswith("y\n\nEND\n")
    assert r["truncated_chars"] == 100000005 - 1000
    assert f"[... {r['truncated_chars']} characters (" in r["output"] and len(r["output"]) < 1200
    r = rt.bash("head -c 100000 /dev/urandom; echo; echo done")
    assert r["status"] == "completed" and r["output"].endswith("done\n")
    assert rt.bash("echo fine")["output"] == "fine\n"


def test_endless_output_hard_timeout_bounded_memory(rt_host):
    r = rt_host.bash("yes", timeout=3, max_output_chars=200)
    assert r["status"] == "hard_timeout" and r["truncated_chars"] > 1000000
    with open(f"/proc/{rt_host.proc.pid}/status") as status:
        rss_kb = int(next(ln for ln in status if ln.startswith("VmHWM")).split()[1])
    assert rss_kb < 100000
    assert rt_host.bash("echo ok")["output"] == "ok\n"


@pytest.mark.parametrize("cmd", ["cd /; export X=1; exit 4", "kill -9 $$"])
def test_shell_death_restarts(rt, tmp_path, cmd):
    r = rt.bash(cmd)
    assert r["status"] == "shell_restarted" and "new shell" in r["note"]
    assert r["exit_code"] == (4 if "exit" in cmd else 137)
    r = rt.bash('pwd; echo "x=$X"')
    assert r["output"] == f"{tmp_path}\nx=\n" and r["status"] == "completed"


def test_exit_with_background_job_holding_pty(rt_host, tmp_path):
    r = rt_host.bash("sleep 600 & exit")
    assert r["status"] == "shell_restarted"
    assert rt_host.bash("echo back")["output"] == "back\n"


def test_bad_requests_never_crash(rt):
    assert rt.raw(b"not json")["id"] is None
    assert rt.raw(b"\xff\xfe")["kind"] == "bad_request"
    assert rt.raw(b"[1, 2]")["id"] is None
    for (
        op,
        args,
    ) in [
        ("nope", {}),
        ("bash", {}),
        ("bash", {"command": 3}),
        ("bash", {"command": "x", "timeout": "1"}),
        ("bash", {"command": "x", "is_input": "yes"}),
        ("bash", {"command": "x", "timeout": -1}),
        ("exec", {"argv": "ls"}),
        ("exec", {"argv": []}),
        ("bash", {"command": "x", "max_output_chars": True}),
    ]:
        resp = rt.call(op, **args)
        assert not resp["ok"] and resp["kind"] == "bad_request", (op, args, resp)
    assert rt.raw(b'{"id": "s", "op": "bash", "args": 5}')["kind"] == "bad_request"
    resp = rt.call("exec", argv=["/nonexistent/prog"])
    assert not resp["ok"] and resp["kind"] == "internal"
    assert rt.call("ping")["ok"]


def test_exec(rt, tmp_path):
    r = rt.call("exec", argv=["sh", "-c", "pwd; cat; echo err >&2; exit 5"], cwd=str(tmp_path), stdin="in\n")
    assert r["result"] == {"exit_code": 5, "timed_out": False, "stdout": f"{tmp_path}\nin\n", "stderr": "err\n"}
    r = rt.call("exec", argv=["sh", "-c", "head -c 100000 /dev/zero; printf '\\377'"], max_output_bytes=10)["result"]
    assert r["stdout"] == "\0" * 10 and r["exit_code"] == 0
    r = rt.call("exec", argv=["sh", "-c", "printf '\\377ok'; sleep 100"], timeout=0.5)["result"]
    assert r["timed_out"] and r["exit_code"] is None and r["stdout"] == "\ufffdok"


def test_init_script_and_stdout_hygiene(tmp_path):
    r = Runtime(
        sys.executable, str(tmp_path), "--init-script", "export INITED=yes; echo noise", "--max-output-chars", "50"
    )
    try:
        assert r.call("ping")["ok"]
        res = r.bash("echo $INITED; seq 1 1000")
        assert res["output"].startswith("yes\n1\n") and res["truncated_chars"] > 0
        assert r.bash("exit")["status"] == "shell_restarted"
        assert r.bash("echo $INITED")["output"] == "yes\n"
    finally:
        r.close()
    assert r.proc.returncode == 0


def test_prompt_changes_do_not_pollute(rt):
    rt.bash("PS1='(testbed) \\u$ '; PS2='> '")
    assert rt.bash("echo x")["output"] == "x\n"


def test_fork_failure_is_reported_and_recovered(tmp_path, monkeypatch):
    """When fork() fails (EAGAIN under a pids limit) the session reports it in the note and retries later."""
    sys.path.insert(0, str(SERVER.parent))
    try:
        import bash_session
    finally:
        sys.path.remove(str(SERVER.parent))
    s = bash_session.BashSession(str(tmp_path))
    try:
        s.start()
        real = os.forkpty

        def no_fork():
            raise OSError(11, "Resource temporarily unavailable")

        monkeypatch.setattr(os, "forkpty", no_fork)
        r = s.run("exit 1")
        assert r["status"] == "shell_restarted" and "could not be started" in r["note"]
        r = s.run("echo hi")
        assert r["status"] == "shell_restarted" and "NOT run" in r["note"] and "Resource" in r["note"]
        monkeypatch.setattr(os, "forkpty", real)
        r = s.run("echo hi")
        assert r["status"] == "completed" and r["output"] == "hi\n"
    finally:
        s.close()


def test_timeout_of_shell_builtin_loop_ignoring_sigint(rt_host, tmp_path):
    """Bash itself is the foreground job and ignores Ctrl-C: it is killed and replaced, the runtime carries on."""
    r = rt_host.bash("trap '' INT; while true; do :; done", timeout=1)
    assert r["status"] == "hard_timeout" and "new shell" in r["note"]
    assert rt_host.bash("pwd")["output"] == f"{tmp_path}\n"


def test_exec_redirect_and_lone_surrogate(rt):
    rt.bash("exec 3>&1 >/dev/null 2>&1")
    assert rt.bash("echo hidden")["output"] == ""
    assert rt.bash("exec >&3 2>&3; echo '\ud800'")["output"] == "?\n"


def test_signed_responses(rt, tmp_path):
    """After a ping with a key every response is MARK + HMAC-SHA256(key, JSON) + space + JSON; the key is set once
    (a ping the agent injects into the runtime's stdin cannot change it). The host's FRAME_MARK is the runtime's."""
    import hashlib
    import hmac

    from envserver.runtime_client import FRAME_MARK

    key = bytes(range(32))

    def signed(request: dict) -> dict:
        rt.proc.stdin.write(json.dumps(request).encode() + b"\n")
        rt.proc.stdin.flush()
        line = rt.proc.stdout.readline().rstrip(b"\n")
        assert line.startswith(FRAME_MARK), line[:80]
        mac, _, payload = line[len(FRAME_MARK) :].partition(b" ")
        assert hmac.compare_digest(mac, hmac.new(key, payload, hashlib.sha256).hexdigest().encode())
        return json.loads(payload)

    assert signed({"id": "a0", "op": "ping", "args": {"key": key.hex()}})["result"]["signed"]
    assert signed({"id": "a1", "op": "bash", "args": {"command": "echo hi"}})["result"]["output"] == "hi\n"
    assert signed({"id": "a2", "op": "ping", "args": {"key": "00" * 32}})["result"]["signed"]
    # The second key was ignored: the next frame still carries the first key's MAC (checked inside signed()).
    assert signed({"id": "a3", "op": "bash", "args": {"command": "echo again"}})["ok"]
