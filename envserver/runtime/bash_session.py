"""The persistent bash session behind the runtime's `bash` op (see PROTOCOL.md).

Hand-written on the standard library only because it runs inside arbitrary task images with the image's own
python3 (>= 3.8): no pexpect, no tmux, nothing to install. Bash runs interactively on a pty in its own session
(so job control, Ctrl-C and programs that want a terminal behave as in a terminal). Each command is written to a
private file and `source`d, so a multi-line command yields one prompt. Completion is detected by PROMPT_COMMAND
printing a marker that holds a per-session nonce, the exit code and $PWD; PS1/PS2 are kept empty.
Output is streamed through a head + tail window (output_window.py), so memory stays bounded however much a command
prints; a timed-out command's processes are killed as a tree (process_tree.py).
"""

from __future__ import annotations

import codecs
import errno
import fcntl
import os
import select
import shutil
import signal
import struct
import tempfile
import termios
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # mypy checks this directory as the envserver.runtime package; the container runs it flat
    from envserver.runtime.output_window import OutputWindow
    from envserver.runtime.process_tree import kill_tree
else:
    from output_window import OutputWindow
    from process_tree import kill_tree

KEYS = {"C-c": b"\x03", "C-d": b"\x04", "C-z": b"\x1a"}
COLS, ROWS = 120, 40
MAX_BATCH = 1 << 20
REAP_ALL = False  # the server sets it: orphans reparent to the runtime when it is PID 1, and zombies count as pids


class ShellDied(Exception):
    pass


class BashSession:
    def __init__(
        self, cwd: str, init_script: str | None = None, max_output_chars: int = 30000, hard_timeout: float = 120.0
    ):
        self.cwd0 = cwd if os.path.isdir(cwd) else "/"
        self.cwd = self.cwd0
        self.init_script = init_script
        self.max_output_chars = max_output_chars
        self.hard_timeout = hard_timeout
        self.pid: int | None = None  # negative once reaped by _alive, until _kill_shell cleans up
        self.fd: int | None = None  # the pty master while a shell runs
        self.running = False  # a command was sent and its marker has not come back yet
        self.exit_status: int | None = None
        self.dir = tempfile.mkdtemp(prefix=".envserver-rt-")
        self.cmd_path = os.path.join(self.dir, "cmd")

    # ---- process management ------------------------------------------------------------------------------------
    def start(self, init: bool = True) -> None:
        """Start bash (raises OSError when it cannot, e.g. fork() fails with EAGAIN) and run the init script."""
        nonce = os.urandom(8).hex()
        self.exit_status = None
        self.start_marker = f"\x1e__RT{nonce}:".encode()
        self.end_marker = f":{nonce}TR__\x1e".encode()
        rc = os.path.join(self.dir, "rc")
        self._ensure_dir()
        with open(rc, "w") as f:  # printf's arguments keep the marker from appearing verbatim in `declare -f`
            f.write(
                "unset HISTFILE PROMPT_COMMAND\nPS1=''; PS2=''\n"
                "__envserver_prompt() { local e=$? f='\\036__RT%s:%s:%s:%sTR__\\036'; PS1=''; PS2=''; "
                f'{{ printf "$f" {nonce} "$e" "$PWD" {nonce} >/dev/tty; }} 2>/dev/null || '
                f'printf "$f" {nonce} "$e" "$PWD" {nonce}; }}\n'  # /dev/tty: the agent may `exec >log`
                "PROMPT_COMMAND=__envserver_prompt\n"
            )
        env = dict(os.environ, TERM="dumb", PAGER="cat", GIT_PAGER="cat", COLUMNS=str(COLS), LINES=str(ROWS))
        for k in ("PS1", "PS2", "PROMPT_COMMAND", "BASH_ENV", "ENV"):
            env.pop(k, None)
        bash = shutil.which("bash") or "/bin/bash"
        pid, fd = os.forkpty()
        if pid == 0:  # child: only async-safe-ish work, always leave via exec or _exit
            try:
                for sig in (
                    signal.SIGINT,
                    signal.SIGPIPE,
                    signal.SIGXFSZ,
                    signal.SIGQUIT,
                    signal.SIGTERM,
                    signal.SIGHUP,
                    signal.SIGCHLD,
                ):
                    signal.signal(sig, signal.SIG_DFL)
                try:
                    with open("/proc/self/oom_score_adj", "w") as f:
                        f.write("1000")
                except OSError:
                    pass
                os.chdir(self.cwd0)
                os.execve(bash, [bash, "--noprofile", "--rcfile", rc, "--noediting", "-i"], env)
            finally:
                os._exit(127)
        self.pid, self.fd, self.running, self.pending = pid, fd, True, b""
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        attrs = termios.tcgetattr(fd)  # set on the master, applies to the slave
        attrs[1] &= ~termios.OPOST  # no "\n" -> "\r\n": the kernel's per-newline work costs 13x throughput
        attrs[3] &= ~(termios.ECHO | termios.ECHONL)
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        self.termios = attrs
        self.cwd = self.cwd0
        window = OutputWindow(4096)
        res = self._collect(window, time.monotonic() + 15, 15)  # the first prompt
        if res["status"] != "completed":
            self._kill_shell()
            raise OSError(errno.EIO, f"bash did not show its first prompt: {window.render('')[0][-300:]!r}")
        if init and self.init_script:
            self._send_command(self.init_script)
            window = OutputWindow(8000)
            res = self._collect(window, time.monotonic() + 300, 300)
            if res["status"] != "completed" or res["exit_code"] != 0:
                os.write(
                    2,
                    (
                        f"runtime: init script ended with {res['status']}/{res['exit_code']}: {window.render('')[0]}\n"
                    ).encode("utf-8", "replace"),
                )
            if res["status"] != "completed":  # a broken init script must not leave us without a shell
                self._kill_shell()
                self.start(init=False)

    def _send_command(self, command: str) -> None:
        self._ensure_dir()
        with open(self.cmd_path, "w", encoding="utf-8", errors="replace") as f:
            f.write(command if command.endswith("\n") else command + "\n")
        try:
            if self.fd is not None:  # else _write says ShellDied
                termios.tcsetattr(self.fd, termios.TCSANOW, self.termios)  # undo what a killed program left
        except termios.error:
            pass
        self.running = True
        self._write(f"source {self.cmd_path}\n".encode())

    def _write(self, data: bytes) -> None:
        """Write to the pty; gives up on what the program does not read within 5 s. ShellDied if it is gone."""
        fd = self.fd
        if fd is None:
            raise ShellDied()
        end = time.monotonic() + 5
        while data:
            try:
                data = data[os.write(fd, data) :]
            except BlockingIOError:
                if time.monotonic() > end:
                    return
                select.select([], [fd], [], 0.1)
            except OSError:
                raise ShellDied()

    def _ensure_dir(self) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)  # the agent may have wiped /tmp

    def _kill_shell(self) -> None:
        if self.pid is None:
            return
        pid, self.pid = abs(self.pid), None
        kill_tree(lambda p, info: p == pid or info[2] == pid)
        try:
            _, status = os.waitpid(pid, 0)
            self.exit_status = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        except ChildProcessError:
            pass
        try:
            if self.fd is not None:
                os.close(self.fd)
        except OSError:
            pass
        self.fd, self.running = None, False

    def _alive(self) -> bool:
        """Is bash alive? Reaps it (and, with REAP_ALL, every other finished child) when it is not."""
        while self.pid is not None and self.pid > 0:
            try:
                pid, status = os.waitpid(-1 if REAP_ALL else self.pid, os.WNOHANG)
            except ChildProcessError:  # not our child any more: gone
                self.pid = -self.pid
                break
            if pid == 0:
                break
            if pid == self.pid:
                self.exit_status = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
                self.pid = -pid  # reaped; _kill_shell still cleans up its session
        return self.pid is not None and self.pid > 0

    def close(self) -> None:
        self._kill_shell()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- output ------------------------------------------------------------------------------------------------
    def _read(self, wait: float) -> bytes:
        """Up to MAX_BATCH bytes (b"" if none within `wait`); raises ShellDied when the pty is closed."""
        fd = self.fd
        if fd is None:
            raise ShellDied()
        r, _, _ = select.select([fd], [], [], max(wait, 0))
        if not r:
            return b""
        chunks: list[bytes] = []
        n = 0
        while n < MAX_BATCH:
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                break
            except OSError as e:
                if e.errno == errno.EIO and not chunks:
                    raise ShellDied()
                break
            if not data:
                if not chunks:
                    raise ShellDied()
                break
            chunks.append(data)
            n += len(data)
        return b"".join(chunks)

    def _scan(self, data: bytes):
        """Split pending + data into (output bytes, marker or None); keeps a possible partial marker pending."""
        buf = self.pending + data
        i = buf.find(self.start_marker)
        if i < 0:
            hold = 0
            for k in range(min(len(self.start_marker) - 1, len(buf)), 0, -1):
                if buf.endswith(self.start_marker[:k]):
                    hold = k
                    break
            self.pending = buf[len(buf) - hold :] if hold else b""
            return buf[: len(buf) - hold], None
        j = buf.find(self.end_marker, i)
        if j < 0:
            if len(buf) - i > 16384:  # not a marker after all
                self.pending = b""
                return buf, None
            self.pending = buf[i:]
            return buf[:i], None
        body = buf[i + len(self.start_marker) : j].decode("utf-8", "replace").replace("\r\n", "\n")
        code_text, _, cwd = body.partition(":")
        self.pending = buf[j + len(self.end_marker) :]
        code: int | None
        try:
            code = int(code_text)
        except ValueError:
            code = None
        return buf[:i], (code, cwd)

    def _collect(self, window: OutputWindow, deadline: float, no_output_timeout: float):
        """Stream output into `window` until the marker, silence, the deadline, or the shell's death."""
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        carry = [""]  # a trailing "\r" that may start a "\r\n"

        def feed(raw: bytes, final: bool = False):
            text = carry[0] + decoder.decode(raw, final)
            carry[0] = ""
            if text.endswith("\r") and not final:
                text, carry[0] = text[:-1], "\r"
            window.add(text.replace("\r\n", "\n"))

        status, code, last = None, None, time.monotonic()
        check = last + 0.25
        while True:
            try:
                now = time.monotonic()
                out, marker = self._scan(self._read(min(deadline - now, last + no_output_timeout - now, 0.25)))
                if out:
                    feed(out)
                    last = time.monotonic()
                if marker:
                    code, self.cwd = marker
                    if self.cwd == "":
                        self.cwd = self.cwd0
                    self.running, status = False, "completed"
                    break
                now = time.monotonic()
                if now >= deadline:
                    status = "hard_timeout"
                    break
                if now - last >= no_output_timeout:
                    status = "no_output_timeout"
                    break
                if now >= check:
                    check = now + 0.25
                    if not self._alive():
                        raise ShellDied()
            except ShellDied:
                status = "shell_died"
                break
        feed(self.pending if status == "shell_died" else b"", final=True)
        return {"status": status, "exit_code": code}

    # ---- the op --------------------------------------------------------------------------------------------------
    def run(
        self,
        command: str,
        is_input: bool = False,
        timeout: float | None = None,
        no_output_timeout: float = 30.0,
        max_output_chars: int | None = None,
    ) -> dict:
        t0 = time.monotonic()
        timeout = self.hard_timeout if timeout is None else timeout
        window = OutputWindow(max_output_chars or self.max_output_chars)
        note = None
        if self.pid is None:
            try:
                self.start()
            except OSError as e:
                self._kill_shell()
                return self._result(
                    window,
                    "shell_restarted",
                    None,
                    t0,
                    f"The shell could not be started ({e}); "
                    "the command was NOT run. It will be retried with the next command.",
                )
        # take whatever arrived since the last call (background jobs, or the end of a running command)
        res = self._collect(window, t0, 1e9) if (self.running or self.pending) else None
        if res and res["status"] == "shell_died":
            return self._restart(window, t0, "")
        if is_input:
            if not self.running:
                return self._result(
                    window, "completed", None, t0, "ERROR: No previous running command to interact with."
                )
            keys = KEYS.get(command, command.encode("utf-8", "replace") + b"\n" if command else b"")
        else:
            if self.running:
                return self._result(
                    window,
                    "busy",
                    None,
                    t0,
                    (
                        "[Your command was NOT executed. The previous command is still running - you CANNOT send new "
                        "commands until the previous command is completed. By setting `is_input` to `true`, you can "
                        "interact with the current process: you may wait longer to see additional output by sending "
                        "empty command '', send other commands to interact with the current process, or send keys "
                        '("C-c", "C-z", "C-d") to interrupt/kill the previous command before sending your new '
                        "command.]"
                    ),
                )
        try:
            if is_input:
                self._write(keys)
            else:
                self._send_command(command)
        except ShellDied:
            return self._restart(window, t0, "")
        res = self._collect(window, t0 + timeout, no_output_timeout)
        status, code = res["status"], res["exit_code"]
        if status == "shell_died":
            return self._restart(window, t0, "")
        if status == "no_output_timeout":
            note = (
                f"[The command has no new output after {no_output_timeout:g} seconds. You may wait longer to see "
                "additional output by sending empty command '', send other commands to interact with the current "
                "process, send keys to interrupt/kill the command, or use the timeout parameter in execute_bash for "
                "future commands.]"
            )
        elif status == "hard_timeout":
            return self._interrupt(window, t0, timeout)
        return self._result(window, status, code, t0, note)

    def _interrupt(self, window: OutputWindow, t0: float, timeout: float) -> dict:
        """Ctrl-C, then SIGKILL the foreground job's tree, then everything but bash, then bash itself."""
        note = f"[The command timed out after {timeout:g} seconds and was interrupted.]"
        bash = self.pid
        try:
            self._write(KEYS["C-c"])
        except ShellDied:
            pass
        for step in range(3):
            res = self._collect(window, time.monotonic() + (1.0 if step == 0 else 2.0), 1e9)
            if res["status"] == "completed":
                return self._result(window, "hard_timeout", res["exit_code"], t0, note)
            if res["status"] == "shell_died":
                return self._restart(window, t0, note + " [The shell died.] ", "hard_timeout")
            if step == 0:
                note = f"[The command timed out after {timeout:g} seconds and was killed.]"
                try:
                    fg = os.tcgetpgrp(self.fd) if self.fd is not None else bash
                except OSError:
                    fg = bash
                kill_tree(lambda p, info, fg=fg: info[1] == fg, spare=[bash])
            elif step == 1:
                kill_tree(lambda p, info: info[0] == bash or info[2] == bash, spare=[bash])
        return self._restart(
            window, t0, note + " [The shell itself did not come back and was killed.] ", "hard_timeout"
        )

    def _restart(self, window: OutputWindow, t0: float, note: str, status: str = "shell_restarted") -> dict:
        self._kill_shell()
        code = self.exit_status
        try:
            self.start()
            note += (
                f"[The shell exited (status {code}); a new shell was started in {self.cwd0}. Variables, functions "
                "and background jobs from before are gone.]"
                if not note
                else f"[A new shell was started in {self.cwd0}. Variables, functions and background jobs from before "
                "are gone.]"
            )
        except OSError as e:
            self._kill_shell()
            note += (
                f"[The shell exited (status {code}) and a new one could not be started ({e}); it will be retried "
                "with the next command.]"
            )
        return self._result(window, status, code if status == "shell_restarted" else None, t0, note)

    def _result(self, window: OutputWindow, status: str, code, t0: float, note) -> dict:
        output, cut = window.render(self.cmd_path + ": ")
        return {
            "output": output,
            "exit_code": code,
            "status": status,
            "cwd": self.cwd,
            "truncated_chars": cut,
            "duration_s": round(time.monotonic() - t0, 3),
            "note": note,
        }
