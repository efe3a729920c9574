"""The bounded view of a command's output: its first and last characters, and a note counting what was cut between.

Part of the in-container runtime (stdlib only, run with the task image's own python3 >= 3.8): bash_session.py
streams every command's output through one, so memory stays bounded however much a command prints.
"""

from __future__ import annotations


class OutputWindow:
    """Keeps the first `head` and last `tail` characters of a stream and counts what falls in between."""

    def __init__(self, budget: int):
        self.head_cap = budget // 2
        self.tail_cap = budget - self.head_cap
        self.head, self.tail = "", ""
        self.chars = self.lines = 0

    def add(self, text: str) -> None:
        if not text:
            return
        self.chars += len(text)
        self.lines += text.count("\n")
        if len(self.head) < self.head_cap:
            take = self.head_cap - len(self.head)
            self.head, text = self.head + text[:take], text[take:]
        if text:
            self.tail = (self.tail + text)[-self.tail_cap :] if self.tail_cap else ""

    def render(self, scrub: str) -> tuple:
        head, tail = self.head.replace(scrub, ""), self.tail.replace(scrub, "")
        cut = self.chars - len(self.head) - len(self.tail)
        if cut <= 0:
            return head + tail, 0
        lines = self.lines - self.head.count("\n") - self.tail.count("\n")
        note = (
            f"[... {cut} characters ({lines} lines) truncated: showing the first {len(head)} and last {len(tail)} "
            "characters ...]"
        )
        return head + ("" if head.endswith("\n") or not head else "\n") + note + "\n" + tail, cut
