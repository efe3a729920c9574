"""Our Qwen3-style chat template (Jinja, run by transformers' `apply_chat_template` and by vLLM's chat endpoint).

It produces Qwen3's prompt format, so real Qwen3 checkpoints see what they were trained on:
- system turn, with a `# Tools` section listing each tool's JSON schema inside <tools></tools> and the instruction to
  answer with <tool_call>{"name": ..., "arguments": ...}</tool_call> blocks;
- assistant turns: an optional `<think>\\n…\\n</think>\\n\\n` block, the content, then one `<tool_call>` JSON block
  per tool call (arguments rendered as given when a string, as JSON otherwise);
- tool results: a *user* turn holding one `<tool_response>` block per tool message; consecutive tool messages share
  one turn;
- `add_generation_prompt` opens an assistant turn; `enable_thinking=False` adds an empty think block to it (Qwen3's
  way of turning reasoning off).

One deliberate difference from Qwen3's official template: Qwen3 shows an assistant turn's reasoning only when the turn
comes after the last real user message, so adding a user message changes how *earlier* turns render. Ours decides per
message: `reasoning_content` (a string, even empty) is rendered unless the caller passes `keep_reasoning=False`.
That makes rendering prefix-stable — rendering messages[:k] is a prefix of rendering messages, except inside a run of
tool messages — which the token-exact conversation (agent/chat.py) relies on to tokenize only the new suffix.
Dropping earlier reasoning the way Qwen3 does is done on token ids there (think_mode "drop"), never by re-rendering.

Template variables: `messages`, `tools`, `add_generation_prompt`, `enable_thinking` (default true), `keep_reasoning`
(default true). Message content may be a string, None, or a list of `{"type": "text", "text": ...}` parts.
"""

from __future__ import annotations

from typing import Any

CHAT_TEMPLATE = r"""{%- macro text(content) -%}
    {%- if content is string -%}
        {{- content -}}
    {%- elif content is iterable and content is not mapping -%}
        {%- for part in content -%}
            {%- if part is string -%}
                {{- part -}}
            {%- elif part is mapping and part.type == 'text' -%}
                {{- part.text -}}
            {%- endif -%}
        {%- endfor -%}
    {%- endif -%}
{%- endmacro -%}
{%- set show_reasoning = keep_reasoning is not defined or keep_reasoning -%}
{%- set has_system = messages and messages[0].role == 'system' -%}
{%- if tools -%}
    {{- '<|im_start|>system\n' -}}
    {%- if has_system -%}
        {{- text(messages[0].content) + '\n\n' -}}
    {%- endif -%}
    {{- '# Tools\n\nYou may call one or more functions to assist with the user query.\n\n' -}}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\n<tools>' -}}
    {%- for tool in tools -%}
        {{- '\n' + (tool | tojson) -}}
    {%- endfor -%}
    {{- '\n</tools>\n\nFor each function call, return a json object with function name and arguments within ' -}}
    {{- '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}' -}}
    {{- '\n</tool_call><|im_end|>\n' -}}
{%- elif has_system -%}
    {{- '<|im_start|>system\n' + text(messages[0].content) + '<|im_end|>\n' -}}
{%- endif -%}
{%- for message in messages -%}
    {%- if loop.first and message.role == 'system' -%}
        {#- rendered above, with the tools -#}
    {%- elif message.role == 'user' or message.role == 'system' -%}
        {{- '<|im_start|>' + message.role + '\n' + text(message.content) + '<|im_end|>\n' -}}
    {%- elif message.role == 'assistant' -%}
        {%- set content = text(message.content) -%}
        {%- set reasoning = none -%}
        {%- if message.reasoning_content is string -%}
            {%- set reasoning = message.reasoning_content -%}
        {%- elif message.reasoning is string -%}
            {%- set reasoning = message.reasoning -%}
        {%- elif '</think>' in content -%}
            {%- set reasoning = content.split('</think>')[0].split('<think>')[-1] -%}
            {%- set content = content.split('</think>')[-1] -%}
        {%- endif -%}
        {{- '<|im_start|>assistant\n' -}}
        {%- if reasoning is not none -%}
            {%- set content = content.lstrip('\n') -%}
            {%- if show_reasoning -%}
                {{- '<think>\n' + reasoning.strip('\n') + '\n</think>\n\n' -}}
            {%- endif -%}
        {%- endif -%}
        {{- content -}}
        {%- if message.tool_calls -%}
            {%- for tool_call in message.tool_calls -%}
                {%- if content or not loop.first -%}
                    {{- '\n' -}}
                {%- endif -%}
                {%- if tool_call.function is defined and tool_call.function -%}
                    {%- set call = tool_call.function -%}
                {%- else -%}
                    {%- set call = tool_call -%}
                {%- endif -%}
                {{- '<tool_call>\n{"name": ' + (call.name | tojson) + ', "arguments": ' -}}
                {%- if call.arguments is string -%}
                    {{- call.arguments -}}
                {%- elif call.arguments is defined and call.arguments is not none -%}
                    {{- call.arguments | tojson -}}
                {%- else -%}
                    {{- '{}' -}}
                {%- endif -%}
                {{- '}\n</tool_call>' -}}
            {%- endfor -%}
        {%- endif -%}
        {{- '<|im_end|>\n' -}}
    {%- elif message.role == 'tool' -%}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}
            {{- '<|im_start|>user' -}}
        {%- endif -%}
        {{- '\n<tool_response>\n' + text(message.content) + '\n</tool_response>' -}}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}
            {{- '<|im_end|>\n' -}}
        {%- endif -%}
    {%- else -%}
        {{- raise_exception('unexpected message role: ' + (message.role | string)) -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
    {%- if enable_thinking is defined and enable_thinking is false -%}
        {{- '<think>\n\n</think>\n\n' -}}
    {%- endif -%}
{%- endif -%}
"""
"""The template source (set as the tokenizer's `chat_template`; saved in tokenizer_config.json)."""

EMPTY_THINK = "<think>\n\n</think>\n\n"
"""What `enable_thinking=False` appends to the generation prompt."""


def render(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None = None,
    *,
    add_generation_prompt: bool = False,
    enable_thinking: bool = True,
    keep_reasoning: bool = True,
) -> str:
    """The template's text for `messages` (always our template, whatever the tokenizer carries)."""
    text = tokenizer.apply_chat_template(
        messages,
        tools=tools or None,
        chat_template=CHAT_TEMPLATE,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
        keep_reasoning=keep_reasoning,
    )
    assert isinstance(text, str)
    return text
