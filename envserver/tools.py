"""The agent's tools: OpenHands-named schemas (so SWE-Gym-trained models work unchanged), argument checking, and
the observation text each call returns."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

EXECUTE_BASH = "execute_bash"
STR_REPLACE_EDITOR = "str_replace_editor"
FINISH = "finish"
TOOL_ALIASES = {"submit": FINISH}
"""Other names models use for the same tool."""
TOOL_NAMES = (EXECUTE_BASH, STR_REPLACE_EDITOR, FINISH)
"""The tools a step may call (and TOOL_ALIASES)."""

EDITOR_COMMANDS = ("view", "create", "str_replace", "insert", "undo_edit")

TOOL_SCHEMAS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": EXECUTE_BASH,
            "description": (
                "Execute a bash command in the terminal within a persistent shell session.\n"
                "* One command at a time: chain several with `&&` or `;`.\n"
                "* Persistent session: environment variables, the working directory and background jobs persist "
                "between calls.\n"
                "* Long running commands: run them in the background and redirect their output to a file, e.g. "
                "`python3 app.py > server.log 2>&1 &`.\n"
                "* Interactive: if a command returns exit code `-1`, the process is not yet finished. Set "
                "`is_input` to `true` and send an empty `command` to retrieve more output, text to write to its "
                "STDIN, or `C-c` (Ctrl+C), `C-d` or `C-z` to interrupt it.\n"
                "* Timeout: a command is interrupted after `timeout` seconds (default 120)."
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {
                        "type": "string",
                        "description": (
                            "The bash command to execute. Can be empty to view additional logs when the previous "
                            "exit code is `-1`. Can be `C-c` (Ctrl+C) to interrupt the currently running process."
                        ),
                    },
                    "is_input": {
                        "type": "string",
                        "enum": ["true", "false"],
                        "description": (
                            "If `true`, the command is sent as input to the process that is still running "
                            "(STDIN or a key such as `C-c`). Default `false`."
                        ),
                    },
                    "timeout": {
                        "type": "number",
                        "description": "Optional hard limit in seconds for this command.",
                    },
                },
                "required": ["command"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": STR_REPLACE_EDITOR,
            "description": (
                "Custom editing tool for viewing, creating and editing files\n"
                "* State is persistent across command calls and discussions with the user\n"
                "* If `path` is a file, `view` displays the result of applying `cat -n`. If `path` is a directory, "
                "`view` lists non-hidden files and directories up to 2 levels deep\n"
                "* The `create` command cannot be used if the specified `path` already exists as a file\n"
                "* If a `command` generates a long output, it will be truncated and marked with "
                "`<response clipped>`\n"
                "* The `undo_edit` command will revert the last edit made to the file at `path`\n\n"
                "Notes for using the `str_replace` command:\n"
                "* The `old_str` parameter should match EXACTLY one or more consecutive lines from the original "
                "file. Be mindful of whitespaces!\n"
                "* If the `old_str` parameter is not unique in the file, the replacement will not be performed. "
                "Make sure to include enough context in `old_str` to make it unique\n"
                "* The `new_str` parameter should contain the edited lines that should replace the `old_str`\n"
            ),
            "parameters": {
                "type": "object",
                "properties": {
                    "command": {
                        "type": "string",
                        "enum": list(EDITOR_COMMANDS),
                        "description": "The commands to run. Allowed options are: `view`, `create`, `str_replace`, "
                        "`insert`, `undo_edit`.",
                    },
                    "path": {
                        "type": "string",
                        "description": "Absolute path to file or directory, e.g. `/repo/file.py` or `/repo`.",
                    },
                    "file_text": {
                        "type": "string",
                        "description": "Required parameter of `create` command, with the content of the file to be "
                        "created.",
                    },
                    "old_str": {
                        "type": "string",
                        "description": "Required parameter of `str_replace` command containing the string in `path` "
                        "to replace.",
                    },
                    "new_str": {
                        "type": "string",
                        "description": "Optional parameter of `str_replace` command containing the new string (if "
                        "not given, no string will be added). Required parameter of `insert` command containing the "
                        "string to insert.",
                    },
                    "insert_line": {
                        "type": "integer",
                        "description": "Required parameter of `insert` command. The `new_str` will be inserted AFTER "
                        "the line `insert_line` of `path`.",
                    },
                    "view_range": {
                        "type": "array",
                        "items": {"type": "integer"},
                        "description": "Optional parameter of `view` command when `path` points to a file. If none "
                        "is given, the full file is shown. If provided, the file will be shown in the indicated line "
                        "number range, e.g. [11, 12] will show lines 11 and 12. Indexing at 1 to start. Setting "
                        "`[start_line, -1]` shows all lines from `start_line` to the end of the file.",
                    },
                },
                "required": ["command", "path"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": FINISH,
            "description": (
                "Finish the interaction when the task is complete OR if the assistant cannot proceed further with "
                "the task. Your changes to the repository are then graded with the hidden tests."
            ),
            "parameters": {"type": "object", "properties": {}, "required": []},
        },
    },
]


class ToolCallError(ValueError):
    """A tool call the server cannot run: unknown tool or bad arguments (answered 422, the step is not counted)."""


class BashArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    command: str
    is_input: bool = False
    timeout: float | None = Field(default=None, gt=0)

    @field_validator("is_input", mode="before")
    @classmethod
    def _bool_from_text(cls, value: Any) -> Any:
        # OpenHands sends "true"/"false" strings.
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
        return value


class EditorArgs(BaseModel):
    """Only the command is checked here: the editor itself answers missing or wrong parameters with the same error
    text openhands-aci gives, which is what models trained on SWE-Gym expect to see."""

    model_config = ConfigDict(extra="forbid")

    command: str
    path: str
    file_text: str | None = None
    old_str: str | None = None
    new_str: str | None = None
    insert_line: int | None = None
    view_range: list[int] | None = None


class FinishArgs(BaseModel):
    model_config = ConfigDict(extra="allow")  # some models put a message or a summary here


_ARG_MODELS: dict[str, type[BaseModel]] = {EXECUTE_BASH: BashArgs, STR_REPLACE_EDITOR: EditorArgs, FINISH: FinishArgs}


def canonical_tool_name(name: str) -> str:
    return TOOL_ALIASES.get(name, name)


def parse_tool_call(name: str, arguments: dict[str, Any]) -> tuple[str, BaseModel]:
    """Validate a call; returns (canonical name, typed arguments) or raises ToolCallError with a clear message."""
    tool = canonical_tool_name(name)
    model = _ARG_MODELS.get(tool)
    if model is None:
        known = ", ".join([*_ARG_MODELS, *TOOL_ALIASES])
        raise ToolCallError(f"unknown tool {name!r}; this environment has: {known}")
    try:
        return tool, model.model_validate(arguments)
    except ValidationError as exc:
        problems = "; ".join(
            f"'{'.'.join(str(p) for p in err['loc']) or 'arguments'}': {err['msg']}" for err in exc.errors()
        )
        raise ToolCallError(f"invalid arguments for {tool}: {problems}") from None


def format_bash_observation(result: dict[str, Any]) -> str:
    """The observation text of an `execute_bash` call, in the OpenHands style SWE-Gym models were trained on."""
    output = result.get("output", "")
    parts = [output.rstrip("\n")] if output else []
    note = result.get("note")
    status = result.get("status")
    if note:
        parts.append(note if note.startswith("[") else f"[{note}]")
    if result.get("cwd"):
        parts.append(f"[Current working directory: {result['cwd']}]")
    if status == "no_output_timeout" or result.get("exit_code") is None:
        parts.append("[Command finished with exit code -1]")
    else:
        parts.append(f"[Command finished with exit code {result['exit_code']}]")
    return "\n".join(parts)


def task_prompt(problem_statement: str, workdir: str) -> str:
    """The reset observation: the problem statement framed the way SWE-Gym / OpenHands present it."""
    return (
        f"<uploaded_files>\n{workdir}\n</uploaded_files>\n"
        f"I've uploaded a python code repository in the directory {workdir}. Consider the following issue "
        f"description:\n\n<issue_description>\n{problem_statement}\n</issue_description>\n\n"
        "Can you help me implement the necessary changes to the repository so that the requirements specified in "
        "the issue description are met? I've already taken care of all changes to any of the test files described "
        "in the issue. This means you DON'T have to modify the testing logic or any of the tests in any way!\n"
        f"Your task is to make the minimal changes to non-test files in the {workdir} directory to ensure the "
        "issue is resolved. When you are done, call the `finish` tool: your changes are then graded with the "
        "repository's hidden tests."
    )
