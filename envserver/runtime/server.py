"""In-container runtime: one long-lived process per session speaking JSON lines on stdin/stdout (PROTOCOL.md).

Hand-written on the standard library only because the host copies it into arbitrary task images and runs it with
the image's own python3 (>= 3.8); nothing can be installed there. Usage:

    python3 -u server.py --cwd DIR [--init-script S] [--max-output-chars N] [--hard-timeout S]
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import platform
import selectors
import subprocess
import sys
import tempfile
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy checks this directory as the envserver.runtime package; the container runs it flat
    from envserver.runtime import bash_session, process_tree
else:
    import bash_session
    import process_tree

PROTOCOL = 2
FRAME_MARK = b"\x1e"  # ASCII record separator: never in a JSON line (ensure_ascii escapes it)


class BadRequest(Exception):
    pass


def _arg(args: dict, name: str, types, default=None, required: bool = False):
    if name not in args or (args[name] is None and not required):
        if required:
            raise BadRequest(f"missing argument {name!r}")
        return default
    value = args[name]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise BadRequest(f"argument {name!r} has the wrong type (bool)")
    if not isinstance(value, types):
        raise BadRequest(f"argument {name!r} has the wrong type ({type(value).__name__})")
    return value


def _positive(args: dict, name: str, types, default):
    value = _arg(args, name, types, default)
    if value is not None and value <= 0:
        raise BadRequest(f"argument {name!r} must be positive")
    return value


def _popen(argv, cwd, stdin) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=cwd, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def run_exec(argv, cwd=None, timeout=60.0, stdin=None, max_output_bytes=50000000) -> dict:
    """Run argv directly; keep at most max_output_bytes of each stream (draining the rest); kill on timeout."""
    if stdin:
        with tempfile.TemporaryFile() as fin:  # a file: no deadlock on big stdin
            fin.write(stdin.encode("utf-8", "replace"))
            fin.seek(0)
            proc = _popen(argv, cwd, fin)
    else:
        proc = _popen(argv, cwd, subprocess.DEVNULL)
    out, err = proc.stdout, proc.stderr
    assert out is not None and err is not None  # both are pipes
    out_fd, err_fd = out.fileno(), err.fileno()
    bufs: dict[int, list[bytes]] = {out_fd: [], err_fd: []}
    sizes = {out_fd: 0, err_fd: 0}
    sel = selectors.DefaultSelector()
    for f in (out, err):
        sel.register(f, selectors.EVENT_READ)
    deadline, timed_out = time.monotonic() + timeout, False
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            process_tree.kill_tree(lambda p, info: info[2] == proc.pid or p == proc.pid)
            break
        for key, _ in sel.select(min(left, 1.0)):
            data = os.read(key.fd, 65536)
            if not data:
                sel.unregister(key.fileobj)
            elif sizes[key.fd] < max_output_bytes:
                bufs[key.fd].append(data[: max_output_bytes - sizes[key.fd]])
                sizes[key.fd] += len(bufs[key.fd][-1])
    sel.close()
    out.close()
    err.close()
    try:
        code = proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process_tree.kill_tree(lambda p, info: p == proc.pid)
        code = proc.wait()
    return {
        "exit_code": None if timed_out else code,
        "timed_out": timed_out,
        "stdout": b"".join(bufs[out_fd]).decode("utf-8", "replace"),
        "stderr": b"".join(bufs[err_fd]).decode("utf-8", "replace"),
    }


class Server:
    def __init__(self, opts):
        self.opts = opts
        self.session = bash_session.BashSession(opts.cwd, opts.init_script, opts.max_output_chars, opts.hard_timeout)
        self.editor, self.stopping = None, False
        self.key = None  # set by the first ping that carries one; from then on every response is signed
        try:
            self.session.start()
        except OSError as e:  # retried by the first bash op
            self.session._kill_shell()
            sys.stderr.write(f"runtime: could not start bash: {e}\n")

    def op_ping(self, args):
        key = args.get("key")
        if key is not None and self.key is None:  # set once: a request the agent injects cannot change it
            if not isinstance(key, str):
                raise BadRequest("argument 'key' must be a hex string")
            try:
                self.key = bytes.fromhex(key)
            except ValueError:
                raise BadRequest("argument 'key' must be a hex string")
        return {
            "pid": os.getpid(),
            "python": platform.python_version(),
            "protocol": PROTOCOL,
            "signed": self.key is not None,
        }

    def op_bash(self, args):
        return self.session.run(
            _arg(args, "command", str, required=True),
            is_input=_arg(args, "is_input", bool, False),
            timeout=_positive(args, "timeout", (int, float), None),
            no_output_timeout=_positive(args, "no_output_timeout", (int, float), 30.0),
            max_output_chars=_positive(args, "max_output_chars", int, None),
        )

    def op_edit(self, args):
        if self.editor is None:
            try:
                if TYPE_CHECKING:  # as for bash_session above
                    from envserver.runtime import editor
                else:
                    import editor
            except ImportError as e:
                raise RuntimeError(f"the editor module is not available: {e}")
            self.editor = editor.Editor()
        return self.editor.run(args)

    def op_exec(self, args):
        argv = _arg(args, "argv", list, required=True)
        if not argv or not all(isinstance(a, str) for a in argv):
            raise BadRequest("argument 'argv' must be a non-empty list of strings")
        return run_exec(
            argv,
            cwd=_arg(args, "cwd", str),
            timeout=_positive(args, "timeout", (int, float), 60.0),
            stdin=_arg(args, "stdin", str),
            max_output_bytes=_positive(args, "max_output_bytes", int, 50000000),
        )

    def op_shutdown(self, args):
        self.stopping = True
        return {}

    def handle(self, line: bytes):
        try:
            req = json.loads(line.decode("utf-8"))
        except ValueError as e:
            return {"id": None, "ok": False, "error": f"undecodable request line: {e}", "kind": "bad_request"}
        if not isinstance(req, dict):
            return {"id": None, "ok": False, "error": "a request must be a JSON object", "kind": "bad_request"}
        rid, op, args = req.get("id"), req.get("op"), req.get("args", {})
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        try:
            if handler is None:
                raise BadRequest(f"unknown op {op!r}")
            if args is None:
                args = {}
            if not isinstance(args, dict):
                raise BadRequest("'args' must be an object")
            return {"id": rid, "ok": True, "result": handler(args)}
        except BadRequest as e:
            return {"id": rid, "ok": False, "error": str(e), "kind": "bad_request"}
        except Exception as e:  # noqa: BLE001 - the runtime outlives a failing op; the host gets the reason
            return {"id": rid, "ok": False, "error": f"{type(e).__name__}: {e}", "kind": "internal"}

    def frame(self, data: bytes) -> bytes:
        """A response line: plain JSON until a key is set, then MARK + HMAC-SHA256(key, JSON) + space + JSON. The
        agent is root in the same container and can write into this process's stdout: the host drops any line whose
        MAC does not check, and the mark lets it find a true frame behind junk written without a newline."""
        if self.key is None:
            return data + b"\n"
        mac = hmac.new(self.key, data, hashlib.sha256).hexdigest().encode("ascii")
        return FRAME_MARK + mac + b" " + data + b"\n"

    def serve(self, inp, out) -> None:
        for line in inp:
            if not line.strip():
                continue
            resp = self.handle(line)
            try:
                data = json.dumps(resp, ensure_ascii=True)
            except (TypeError, ValueError) as e:
                data = json.dumps({"id": None, "ok": False, "error": f"unencodable response: {e}", "kind": "internal"})
            out.write(self.frame(data.encode("ascii")))
            out.flush()
            if self.stopping:
                break
        self.session.close()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cwd", default="/")
    p.add_argument("--init-script", default=None)
    p.add_argument("--max-output-chars", type=int, default=30000)
    p.add_argument("--hard-timeout", type=float, default=120.0)
    opts = p.parse_args(argv)
    # Responses go to a private copy of stdout; fd 1 becomes stderr so nothing else can corrupt the stream.
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    bash_session.REAP_ALL = True
    Server(opts).serve(sys.stdin.buffer, out)
    sys.exit(0)


if __name__ == "__main__":
    main()
